#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesBuffering
import PipesRuntime

/// `tx`: sends frames with `pcap_inject` on one interface (`--source tx=inject:IFACE`).
/// Each write(2) to `tx/all` is one frame; so is each block that reaches it through a symlink edge.
/// Its output (and taps) carry the frames that were sent.
public final class Tx: Filter, InputInjectable, InjectionLinkType, @unchecked Sendable {
    public let interface: String
    private var handle: OpaquePointer?
    public private(set) var injectedLinkType: LinkType = .ethernet
    private var sent: UInt64 = 0
    private var errors: UInt64 = 0
    private var lastError: String?

    public init(spec: String) throws(FilterError) {
        interface = spec.isEmpty ? "lo" : spec
    }

    private func open() -> OpaquePointer? {
        if let h = handle { return h }
        var err = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
        guard let h = pcap_open_live(interface, 65535, 0, 100, &err) else {
            lastError = "tx: cannot open '\(interface)' for sending: \(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))"
            return nil
        }
        injectedLinkType = LinkType(rawValue: pcap_datalink(h))
        handle = h
        return h
    }

    public func process(_ block: inout Block) -> UInt32 {
        guard let h = open() else { errors &+= 1; return 0 }
        if pcap_inject(h, block.bytes.baseAddress, block.count) < 0 {
            errors &+= 1
            lastError = "tx: \(String(cString: pcap_geterr(h)))"
            return 0
        }
        sent &+= 1
        block.linkType = injectedLinkType
        return 1
    }

    public func statistics() -> [(String, String)] {
        var r = [("interface", interface), ("frames_sent", "\(sent)"), ("send_errors", "\(errors)")]
        if let e = lastError { r.append(("last_error", e)) }
        return r
    }

    public func shutdown() {
        if let h = handle { pcap_close(h) }
        handle = nil
    }

    public static let descriptor = FilterDescriptor(
        name: "inject", summary: "sends frames written to it (tx)", usage: "--source NAME=inject:IFACE",
        structuralClass: .sink
    ) { a throws(FilterError) in try Tx(spec: a) }
}
