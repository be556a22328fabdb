import PipesRuntime

/// A transport-protocol filter: `tcp`, `udp`, `icmp`. Matches like tcpdump's primitives of the same name
/// (IPv4 fragments included; `icmp` is ICMP for IPv4).
public final class TransportProtocol: Filter {
    let number: Int16
    let requireIPv4: Bool
    init(number: Int16, requireIPv4: Bool = false) {
        self.number = number
        self.requireIPv4 = requireIPv4
    }
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        block.decodeTransport()
        if requireIPv4 && block.layers.networkType != etherTypeIPv4 { return 0 }
        return block.layers.transportProtocol == number ? 1 : 0
    }
}
