import PipesRuntime

/// `ipproto`: classifies IPv4/IPv6 packets by transport protocol number (§6.1's example of filtering).
public final class IPProto: Filter {
    public init() {}
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        block.decodeTransport()
        let p = block.layers.transportProtocol
        return p > 0 ? UInt32(p) : 0
    }

    public static let names: [String: UInt32] = [
        "icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "udp": 17, "ipv6": 41, "gre": 47, "esp": 50, "ah": 51,
        "icmp6": 58, "ospf": 89, "pim": 103, "vrrp": 112, "sctp": 132,
    ]

    public static let descriptor = FilterDescriptor(
        name: "ipproto", summary: "IP packets classified by protocol number",
        usage: "ipproto (class names: icmp igmp tcp udp gre esp ah icmp6 sctp ...)", structuralClass: .filtering,
        classNames: names, classifying: true
    ) { a throws(FilterError) in try requireNoArguments(a); return IPProto() }
}
