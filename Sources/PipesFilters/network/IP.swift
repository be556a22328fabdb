import PipesRuntime

/// `ip`: IPv4 packets (as tcpdump's `ip`, IPv4 only), on any link type the runtime decodes.
public final class IP: Filter {
    public init() {}
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        block.decodeNetwork()
        return block.layers.networkType == etherTypeIPv4 ? 1 : 0
    }

    public static let descriptor = FilterDescriptor(
        name: "ip", summary: "IPv4 packets", usage: "ip", structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return IP() }
}
