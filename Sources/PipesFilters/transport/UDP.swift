import PipesRuntime

/// `udp`: UDP datagrams over IPv4 or IPv6.
public enum UDP {
    public static let descriptor = FilterDescriptor(
        name: "udp", summary: "UDP datagrams (IPv4 and IPv6)", usage: "udp", structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return TransportProtocol(number: 17) }
}
