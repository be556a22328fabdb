import PipesRuntime

/// `sport` / `dport`: TCP, UDP and SCTP packets classified by source or destination port.
/// Like tcpdump's `port` primitives, only first fragments carry ports.
public final class PortClassifier: Filter {
    let destination: Bool
    init(destination: Bool) { self.destination = destination }
    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        guard let p = block.ports() else { return 0 }
        return UInt32(destination ? p.destination : p.source)
    }

    public static let serviceNames: [String: UInt32] = [
        "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "dns": 53, "bootps": 67,
        "bootpc": 68, "tftp": 69, "http": 80, "pop3": 110, "ntp": 123, "imap": 143, "snmp": 161, "ldap": 389,
        "https": 443, "smtps": 465, "syslog": 514, "submission": 587, "imaps": 993, "pop3s": 995,
        "openvpn": 1194, "mysql": 3306, "rdp": 3389, "postgresql": 5432, "http-alt": 8080,
    ]
}

public enum DPort {
    public static let descriptor = FilterDescriptor(
        name: "dport", summary: "TCP/UDP/SCTP packets classified by destination port",
        usage: "dport (class: PORT, LO:HI, !PORT, names such as ssh http https domain)", structuralClass: .filtering,
        classNames: PortClassifier.serviceNames, classifying: true
    ) { a throws(FilterError) in try requireNoArguments(a); return PortClassifier(destination: true) }
}

public enum SPort {
    public static let descriptor = FilterDescriptor(
        name: "sport", summary: "TCP/UDP/SCTP packets classified by source port",
        usage: "sport (class: PORT, LO:HI, !PORT, names such as ssh http https domain)", structuralClass: .filtering,
        classNames: PortClassifier.serviceNames, classifying: true
    ) { a throws(FilterError) in try requireNoArguments(a); return PortClassifier(destination: false) }
}
