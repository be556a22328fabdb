import PipesRuntime

/// `icmp`: ICMP for IPv4 (tcpdump's `icmp`).
public enum ICMP {
    public static let descriptor = FilterDescriptor(
        name: "icmp", summary: "ICMP messages (IPv4)", usage: "icmp", structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return TransportProtocol(number: 1, requireIPv4: true) }
}
