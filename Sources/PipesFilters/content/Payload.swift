import PipesRuntime

/// `payload`: narrows each packet to its transport payload (no copy: only the view moves, Table I
/// "reordering"); packets without payload are dropped. Its `all` reads as the application byte stream.
public final class Payload: Filter {
    public init() {}
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        let p = block.payloadBytes()
        if p.count == 0 { return 0 }
        block.bytes = p
        block.wireLength = p.count
        block.linkType = .user
        block.layers = Layers()
        return block.classValue == 0 ? 1 : block.classValue
    }

    public func outputLinkType(_ input: LinkType?) -> LinkType? { .user }

    public static let descriptor = FilterDescriptor(
        name: "payload", summary: "transport payload only (headers stripped by moving the view)",
        usage: "payload", structuralClass: .reordering
    ) { a throws(FilterError) in try requireNoArguments(a); return Payload() }
}
