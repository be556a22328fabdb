import PipesRuntime

/// `count`: counts packets and bytes (Table I "pass-through"); forwards everything with its class.
/// Write `reset` to its `ctl` to zero the counters.
public final class Count: Filter {
    public private(set) var packets: UInt64 = 0
    public private(set) var bytes: UInt64 = 0
    public init() {}
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        packets &+= 1
        bytes &+= UInt64(block.wireLength)
        return block.classValue == 0 ? 1 : block.classValue
    }
    public func statistics() -> [(String, String)] { [("count_packets", "\(packets)"), ("count_bytes", "\(bytes)")] }
    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        guard command == "reset" else { return nil }
        packets = 0
        bytes = 0
        return .success(())
    }

    public static let descriptor = FilterDescriptor(
        name: "count", summary: "counts packets and bytes (see stats; 'reset' in ctl zeroes)", usage: "count",
        structuralClass: .passThrough
    ) { a throws(FilterError) in try requireNoArguments(a); return Count() }
}
