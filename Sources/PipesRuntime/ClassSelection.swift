/// The filter behind a class directory (`dport/80`): forwards what its incoming edge selected, keeping the class.
public final class ClassSelection: Filter {
    public init() {}
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 { block.classValue }

    public static let descriptor = FilterDescriptor(
        name: "class", summary: "class selection below a classifying filter", usage: "PARENT/SELECTOR",
        structuralClass: .filtering) { _ throws(FilterError) in ClassSelection() }
}
