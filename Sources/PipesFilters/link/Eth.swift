import PipesRuntime

/// `eth`: Ethernet frames; the class is the EtherType, so `eth/arp` or `eth/0x86dd` select by it.
public final class Eth: Filter {
    public init() {}
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        guard block.linkType == .ethernet, let t = block.u16(12) else { return 0 }
        return UInt32(t)
    }

    public static let descriptor = FilterDescriptor(
        name: "eth", summary: "Ethernet frames, classified by EtherType",
        usage: "eth (class names: ipv4 ipv6 arp vlan rarp lldp)", structuralClass: .filtering,
        classNames: ["ipv4": 0x0800, "ipv6": 0x86DD, "arp": 0x0806, "rarp": 0x8035, "vlan": 0x8100, "lldp": 0x88CC],
        classifying: true) { a throws(FilterError) in try requireNoArguments(a); return Eth() }
}
