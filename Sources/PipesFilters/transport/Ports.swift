import PipesRuntime

/// `sport` / `dport`: TCP, UDP and SCTP packets classified by source or destination port.
/// Like tcpdump's `port` primitives, only first fragments carry ports.
///
/// It remembers which ports it has seen (a 65536-bit map: one store per packet). `echo seen > ctl` makes its
/// directory show a class directory for each of them, as they appear (at most `maxShown`); `seen off` stops that.
public final class PortClassifier: Filter, ClassReporting {
    let destination: Bool
    static let maxShown = 4096
    private let seen: UnsafeMutablePointer<UInt64> = {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: 1024)
        p.initialize(repeating: 0, count: 1024)
        return p
    }()
    private var showing = false

    init(destination: Bool) { self.destination = destination }
    deinit { seen.deallocate() }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        guard let p = block.ports() else { return 0 }
        let port = destination ? p.destination : p.source
        seen[Int(port >> 6)] |= 1 << UInt64(port & 63)
        return UInt32(port)
    }

    /// The ports seen so far, ascending.
    public func seenPorts(limit: Int = Int.max) -> [UInt16] {
        var out: [UInt16] = []
        for w in 0..<1024 where seen[w] != 0 {
            var bits = seen[w]
            while bits != 0 && out.count < limit {
                out.append(UInt16(w * 64 + bits.trailingZeroBitCount))
                bits &= bits - 1
            }
        }
        return out
    }

    public func seenClassNames() -> [String] {
        // Port 0 is class 0, which never goes on: no directory for it.
        showing ? seenPorts(limit: PortClassifier.maxShown + 1).filter { $0 != 0 }.prefix(PortClassifier.maxShown).map { String($0) } : []
    }

    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        guard command == "seen" else { return nil }
        switch argument {
        case "", "on": showing = true
        case "off": showing = false
        default: return .failure(FilterError("seen takes 'on' (the default) or 'off', not '\(argument)'"))
        }
        return .success(())
    }

    public func statistics() -> [(String, String)] {
        var n = 0
        for w in 0..<1024 { n += seen[w].nonzeroBitCount }
        return [("ports_seen", "\(n)"), ("showing_seen", showing ? "yes" : "no")]
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
