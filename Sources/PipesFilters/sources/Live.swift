#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesBuffering
import PipesRuntime

/// The live capture source `rx`: `--source NAME=live:IFACE[,promisc][,snaplen=N]` (IFACE `any` = all).
///
/// Captures through libpcap only while something is attached below it. Live traffic cannot wait, so a reader
/// that lags loses records (counted in `stats` as drops) instead of stalling capture.
public final class LiveSource: SourceFilter, @unchecked Sendable {
    public let interface: String
    public let promiscuous: Bool
    public let snaplen: Int32
    public private(set) var linkType: LinkType
    private let state = ConditionLock()
    private var demand = false
    private var running = false
    private var stopping = false
    private let thread = JoinableThread()
    private var received: UInt64 = 0
    private var kernelDrops: UInt32 = 0
    private var lastError: String?
    /// Strong while the source thread runs (so an rmdir of the source, or a controller dropped without
    /// shutdown, cannot free them under it); the thread clears both when it exits, which breaks the
    /// node → filter → node cycle. Not weak: a weak reference gives an object a side table and makes every
    /// retain of it slow.
    private var space: Space?
    private var node: Node?

    public init(spec: String) throws(FilterError) {
        var parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let i = parts.first ?? ""
        if !parts.isEmpty { parts.removeFirst() }
        var promisc = false
        var snap: Int32 = 262_144
        for o in parts {
            if o == "promisc" { promisc = true }
            else if o.hasPrefix("snaplen="), let v = Int32(o.dropFirst(8)), v > 0 { snap = v }
            else { throw FilterError("live source: unknown option '\(o)' (promisc, snaplen=N)") }
        }
        interface = i.isEmpty ? "any" : i
        promiscuous = promisc
        snaplen = snap
        // The link type is known after activation; `any` captures as Linux cooked v2... if the
        // kernel/libpcap support it, else v1. Open a handle briefly to learn it (and fail early if unknown).
        linkType = interface == "any" ? .linuxSLL : .ethernet
        if interface != "any" {
            var err = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
            var devs: UnsafeMutablePointer<pcap_if_t>?
            if pcap_findalldevs(&devs, &err) == 0 {
                var found = false
                var d = devs
                while let x = d { if String(cString: x.pointee.name) == interface { found = true }; d = x.pointee.next }
                pcap_freealldevs(devs)
                if !found { throw FilterError("live source: no such interface '\(interface)'", errno: ENODEV) }
            }
        }
    }

    public var isLive: Bool { true }
    public var finished: Bool { false }
    public func process(_ block: inout Block) -> UInt32 { 1 }

    public func attach(space: Space, node: Node) throws(FilterError) {
        self.space = space
        self.node = node
        thread.start(name: "rx-\(interface)") { [self] in
            space.pinSourceThread(name: "rx-\(interface)")
            run()
        }
    }

    public func setDemand(_ d: Bool) {
        state.withLock { demand = d; state.broadcast() }
    }

    public func shutdown() { state.withLock { stopping = true; state.broadcast() } }

    public func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool {
        thread.join(timeoutNanoseconds: timeoutNanoseconds)
    }

    public func statistics() -> [(String, String)] {
        state.withLock {
            var r = [("source", "live:\(interface)"), ("state", running ? "capturing" : demand ? "starting" : "idle (nothing attached)"),
                     ("link_type", linkType.description), ("packets_received", "\(received)"), ("kernel_drops", "\(kernelDrops)")]
            if let e = lastError { r.append(("last_error", e)) }
            return r
        }
    }

    private func openHandle() -> OpaquePointer? {
        var err = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
        guard let h = pcap_create(interface, &err) else { fail(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)); return nil }
        pcap_set_snaplen(h, snaplen)
        pcap_set_promisc(h, promiscuous ? 1 : 0)
        pcap_set_timeout(h, 50)
        pcap_set_immediate_mode(h, 1)
        pcap_set_buffer_size(h, 8 << 20)
        pcap_set_tstamp_precision(h, Int32(PCAP_TSTAMP_PRECISION_NANO))
        let rc = pcap_activate(h)
        if rc < 0 {
            fail("cannot capture on '\(interface)': \(String(cString: pcap_geterr(h)))")
            pcap_close(h)
            return nil
        }
        pcap_setnonblock(h, 1, &err)
        return h
    }

    private func fail(_ msg: String) {
        let m = "source \(node?.name ?? "rx"): \(msg)"
        state.withLock { lastError = m }
        space?.reportError(m)
    }

    private func run() {
        while true {
            state.lock()
            while !stopping && !demand { state.wait() }
            let stop = stopping
            state.unlock()
            if stop {
                space = nil  // see `space`: breaks the node → filter → node cycle
                node = nil
                        return
            }
            guard let space, let node, let h = openHandle() else {
                // Could not open: wait for demand to go away and come back (or a retry every 5 s).
                state.withLock { _ = state.wait(timeoutNanoseconds: 5_000_000_000) }
                continue
            }
            let lt = LinkType(rawValue: pcap_datalink(h))
            space.lock.withLock { linkType = lt }
            state.withLock { running = true; lastError = nil }
            let ctx = PcapDispatcher(space: space, node: node, linkType: lt)
            let fd = pcap_get_selectable_fd(h)
            let batch = Batch()
            while true {
                if state.withLock({ stopping || !demand }) { break }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, 100)
                space.begin(batch)
                if node.removed { space.end(); break }
                let n = ctx.dispatch(h, max: 256)
                space.end()
                space.finishBatch(batch, mayWait: false)
                if n == PCAP_ERROR { fail("capture failed: \(String(cString: pcap_geterr(h)))"); break }
                if ctx.count > 0 {
                    var st = pcap_stat()
                    let have = pcap_stats(h, &st) == 0
                    state.withLock {
                        received &+= UInt64(ctx.count)
                        if have { kernelDrops = st.ps_drop }
                    }
                    ctx.count = 0
                }
            }
            pcap_close(h)
            state.withLock { running = false }
        }
    }

    public static let descriptor = FilterDescriptor(
        name: "live", summary: "live capture through libpcap (rx)",
        usage: "--source NAME=live:IFACE[,promisc][,snaplen=N]  (IFACE 'any' = all interfaces)",
        structuralClass: .source
    ) { a throws(FilterError) in try LiveSource(spec: a) }
}
