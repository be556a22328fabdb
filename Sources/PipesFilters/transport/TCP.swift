import PipesRuntime

/// `tcp`: TCP segments over IPv4 or IPv6.
public enum TCP {
    public static let descriptor = FilterDescriptor(
        name: "tcp", summary: "TCP segments (IPv4 and IPv6)", usage: "tcp", structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return TransportProtocol(number: 6) }
}
