import PipesRuntime

/// `ip6`: IPv6 packets.
public final class IP6: Filter {
    public init() {}
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        block.decodeNetwork()
        return block.layers.networkType == etherTypeIPv6 ? 1 : 0
    }

    public static let descriptor = FilterDescriptor(
        name: "ip6", summary: "IPv6 packets", usage: "ip6", structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return IP6() }
}
