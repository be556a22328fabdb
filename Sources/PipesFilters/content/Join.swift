import PipesRuntime

/// Boolean selection (§4.2) on top of class-based filtering: join filters where several paths meet. Every copy
/// of one block that arrives by several paths carries the same `Block.serial`, so a join recognises it. A join
/// remembers the last 1024 serials it saw (a direct-mapped table, no allocation per block): copies further
/// apart than that, which only happens when paths cross execution spaces under load, count as different blocks.
struct SerialTable {
    static let size = 1024
    private var serials = [UInt64](repeating: 0, count: SerialTable.size)
    private var counts = [UInt32](repeating: 0, count: SerialTable.size)

    /// Counts one arrival of `serial`; returns how many arrived so far (1 for the first).
    @inline(__always)
    mutating func arrive(_ serial: UInt64) -> UInt32 {
        let i = Int(truncatingIfNeeded: (serial &* 0x9E37_79B9_7F4A_7C15) >> 54)
        if serials[i] == serial {
            counts[i] &+= 1
        } else {
            serials[i] = serial
            counts[i] = 1
        }
        return counts[i]
    }

    /// True when `serial` arrived since it was last overwritten, without counting.
    @inline(__always)
    func contains(_ serial: UInt64) -> Bool {
        serials[Int(truncatingIfNeeded: (serial &* 0x9E37_79B9_7F4A_7C15) >> 54)] == serial
    }
}

/// `union` (`a ++ b`): forwards a block once, however many of its inputs pass it.
public final class Union: Filter {
    private var seen = SerialTable()
    private var duplicates: UInt64 = 0
    public init() {}

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        if seen.arrive(block.serial) > 1 {
            duplicates &+= 1
            return 0
        }
        return block.classValue == 0 ? 1 : block.classValue
    }

    public func statistics() -> [(String, String)] { [("duplicates_removed", "\(duplicates)")] }

    public static let descriptor = FilterDescriptor(
        name: "union", summary: "passes a block once however many inputs pass it (a ++ b)", usage: "union",
        structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return Union() }
}

/// `intersect=N` (`a +* b`): forwards a block when it arrived from N inputs.
public final class Intersect: Filter {
    private var seen = SerialTable()
    public let inputs: UInt32
    public init(inputs: UInt32) { self.inputs = inputs }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        seen.arrive(block.serial) == inputs ? (block.classValue == 0 ? 1 : block.classValue) : 0
    }

    public var arguments: String { "\(inputs)" }

    public static let descriptor = FilterDescriptor(
        name: "intersect", summary: "passes a block that all N inputs passed (a +* b)", usage: "intersect=N (inputs, 1 to 64)",
        structuralClass: .filtering
    ) { a throws(FilterError) in
        guard let n = UInt32(a), (1...64).contains(n) else { throw FilterError("intersect=N: N is the number of inputs, 1 to 64 (got '\(a)')") }
        return Intersect(inputs: n)
    }
}

/// `veto`: marks what it forwards as a veto for a `difference` below (class `Veto.classValue`).
public final class Veto: Filter {
    /// The class a veto travels with (reserved).
    public static let classValue: UInt32 = 0xFFFF_FFFE
    public init() {}

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 { Veto.classValue }

    public static let descriptor = FilterDescriptor(
        name: "veto", summary: "marks blocks as vetoes for a difference (the negated branch of !e)", usage: "veto",
        structuralClass: .passThrough
    ) { a throws(FilterError) in try requireNoArguments(a); return Veto() }
}

/// `difference` (`!e`): forwards what reaches it directly unless the same block reached it first as a veto
/// (through `e` and a `veto` filter). The veto path must come before the direct one among their common
/// parent's outputs (the request builder makes it so), so the verdict is in when the block itself arrives.
public final class Difference: Filter {
    private var vetoed = SerialTable()
    private var dropped: UInt64 = 0
    public init() {}

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        if block.classValue == Veto.classValue {
            _ = vetoed.arrive(block.serial)
            return 0
        }
        if vetoed.contains(block.serial) {
            dropped &+= 1
            return 0
        }
        return block.classValue == 0 ? 1 : block.classValue
    }

    public func statistics() -> [(String, String)] { [("vetoed", "\(dropped)")] }

    public static let descriptor = FilterDescriptor(
        name: "difference", summary: "passes what its vetoing input did not pass (!e)", usage: "difference",
        structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return Difference() }
}
