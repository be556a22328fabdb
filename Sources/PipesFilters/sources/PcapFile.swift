#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesBuffering
import PipesRuntime

/// A capture-file source: `--source NAME=pcap:PATH[,loop][,paused][,rate=PPS]`.
///
/// Reads classic pcap and pcapng files of any link type libpcap reads, with nanosecond timestamps. It runs on
/// its own thread, only while something is attached below it, and never loses data: when a reader lags, it
/// waits (backpressure). `ctl` takes `start`, `stop`, `rewind`, `rate PPS`.
public final class PcapFileSource: SourceFilter, @unchecked Sendable {
    public let path: String
    public let loop: Bool
    public let linkType: LinkType
    // State below is guarded by `state`.
    private let state = ConditionLock()
    private var paused: Bool
    private var rate: Int
    private var demand = false
    private var rewindRequested = false
    /// Set when the rate changes: pacing restarts from now.
    private var rewindPacing = false
    private var _finished = false
    private var stopping = false
    private let thread = JoinableThread()
    private var packetsRead: UInt64 = 0
    private var loops: UInt64 = 0
    private var lastError: String?
    private var handle: OpaquePointer?
    /// The zero-copy reader, for classic pcap files (pcapng goes through `handle`).
    private var fastReader: PcapFileReader?
    /// Strong while the source thread runs (so an rmdir of the source, or a controller dropped without
    /// shutdown, cannot free them under it); the thread clears both when it exits, which breaks the
    /// node → filter → node cycle. Not weak: a weak reference gives an object a side table and makes every
    /// retain of it slow.
    private var space: Space?
    private var dispatcher: PcapDispatcher?
    private var node: Node?

    public init(spec: String) throws(FilterError) {
        var parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let p = parts.first, !p.isEmpty else { throw FilterError("pcap source: missing file path in 'pcap:\(spec)'") }
        parts.removeFirst()
        var loop = false, paused = false, rate = 0
        for o in parts {
            switch o {
            case "loop": loop = true
            case "paused": paused = true
            case _ where o.hasPrefix("rate="):
                guard let r = Int(o.dropFirst(5)), r >= 0 else { throw FilterError("pcap source: bad rate '\(o)' (want rate=PACKETS_PER_SECOND; 0 = as fast as possible)") }
                rate = r
            default:
                throw FilterError("pcap source: unknown option '\(o)' (loop, paused, rate=PPS)")
            }
        }
        path = p
        self.loop = loop
        self.paused = paused
        self.rate = rate
        let h = try PcapFileSource.open(p)
        handle = h
        linkType = LinkType(rawValue: pcap_datalink(h))
        fastReader = PcapFileReader(path: p, linkType: linkType)
    }

    static func open(_ path: String) throws(FilterError) -> OpaquePointer {
        var err = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
        if access(path, R_OK) != 0 {
            let e = errno
            throw FilterError("pcap source: cannot read '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        // Only regular files: a FIFO or device would block the source (and the graph) while it is silent.
        var st = stat()
        let fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)  // O_NONBLOCK: opening a FIFO must not wait
        let isRegular = fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
        if fd >= 0 { close(fd) }
        if !isRegular {
            throw FilterError("pcap source: '\(path)' is not a regular file (FIFOs and devices are not supported)")
        }
        guard let h = pcap_open_offline_with_tstamp_precision(path, UInt32(PCAP_TSTAMP_PRECISION_NANO), &err) else {
            throw FilterError("pcap source: '\(path)' is not a capture file libpcap can read: \(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
        }
        return h
    }

    deinit { if let h = handle { pcap_close(h) } }

    public var isLive: Bool { false }
    public var finished: Bool { state.withLock { _finished } }

    public func process(_ block: inout Block) -> UInt32 { 1 }

    public func attach(space: Space, node: Node) throws(FilterError) {
        self.space = space
        self.node = node
        let threadName = "src-\(node.name)"
        thread.start(name: threadName) { [self] in
            space.pinSourceThread(name: threadName)
            run()
        }
    }

    public func setDemand(_ d: Bool) {
        state.withLock {
            demand = d
            state.broadcast()
        }
    }

    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        switch command {
        case "start":
            state.withLock { paused = false; state.broadcast() }
        case "stop", "pause":
            state.withLock { paused = true }
        case "rewind":
            // The caller (control) holds the space lock and refreshes end-of-stream state afterwards.
            state.withLock { rewindRequested = true; _finished = false; state.broadcast() }
        case "rate":
            guard let r = Int(argument), r >= 0 else { return .failure(FilterError("rate: want packets per second (0 = as fast as possible)")) }
            state.withLock { rate = r; rewindPacing = true; state.broadcast() }
        default:
            return nil
        }
        return .success(())
    }

    public func statistics() -> [(String, String)] {
        state.withLock {
            let s = stopping ? "stopped" : _finished ? "finished" : paused ? "paused" : demand ? "running" : "idle (nothing attached)"
            var r = [("source", "pcap:\(path)"), ("state", s), ("link_type", linkType.description),
                     ("packets_read", "\(packetsRead)"), ("loops", "\(loops)"), ("rate", rate == 0 ? "max" : "\(rate)")]
            if let e = lastError { r.append(("last_error", e)) }
            return r
        }
    }

    public func shutdown() {
        state.withLock { stopping = true; state.broadcast() }
    }

    /// Waits until the file has been played to its end (or the source stops). Returns false on timeout.
    public func waitUntilFinished(timeoutNanoseconds: Int64) -> Bool {
        state.withLock {
            _ = state.wait(until: { _finished || stopping }, timeoutNanoseconds: timeoutNanoseconds)
            return _finished
        }
    }

    public func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool {
        thread.join(timeoutNanoseconds: timeoutNanoseconds)
    }

    // MARK: the source thread

    private func run() {
        var noted = false  // (not before the first read: `Controller.validateSource` starts and drops sources)
        var pending = 0  // packets pushed since the last rate check
        let batchState = Batch()
        var paceStart = monotonicNanoseconds()
        while true {
            // Wait until running, with demand.
            var reopen = false
            state.lock()
            while !stopping && (paused || !demand || (_finished && !rewindRequested)) {
                state.wait()
            }
            if stopping { state.unlock(); break }
            if rewindRequested { rewindRequested = false; reopen = true }
            let rate = self.rate
            state.unlock()
            if reopen { reopenFile(); paceStart = monotonicNanoseconds(); pending = 0 }
            guard let space, let node else { break }
            if !noted, let why = fastReader?.ioFallbackReason, IOFallbackNote.first() {
                space.reportError("source \(node.name): io_uring unavailable (\(why)); capture files are read with pread")
            }
            noted = true
            guard let h = handle else {
                state.withLock { _finished = true; state.broadcast() }
                space.lock.withLock { space.refresh() }
                continue
            }

            // A batch: up to `batch` packets with the lock held, cut short when a lossless reader lags. Unpaced, 1024:
            // the lock is held for about 100 µs at most, and each batch end (wake-ups, flushes) is paid once per 1024.
            let batch = rate > 0 ? max(1, min(64, rate / 100)) : 1024
            var ended = false
            var failure: String?
            let dispatcher = self.dispatcher ?? PcapDispatcher(space: space, node: node, linkType: linkType)
            self.dispatcher = dispatcher
            var n = 0
            fastReader?.prepareIO()  // reads wait here, never under the space lock
            space.begin(batchState)
            if node.removed { space.end(); break }
            if let m = fastReader {
                switch m.dispatch(space: space, node: Unmanaged.passUnretained(node), max: batch, count: &n) {
                case .more: break
                case .end: ended = true
                case .failed(let why): failure = why; ended = true
                }
            }
            while fastReader == nil && n < batch {
                let rc = dispatcher.dispatch(h, max: Int32(batch - n))
                n += dispatcher.count
                // A lossless reader lags (pcap_breakloop may surface as PCAP_ERROR_BREAK on the next call).
                if dispatcher.drained || rc == PCAP_ERROR_BREAK { break }
                if rc == 0 {  // end of file
                    ended = true
                    break
                } else if rc < 0 {
                    failure = String(cString: pcap_geterr(h))
                    ended = true
                    break
                }
            }
            space.end()
            state.withLock { packetsRead &+= UInt64(n) }
            space.finishBatch(batchState, mayWait: true) { [self] in state.withLock { stopping || rewindRequested } }

            if let f = failure {
                let msg = PcapFileSource.damageMessage(source: node.name, path: path, packets: packetsRead, why: f)
                state.withLock { lastError = msg }
                space.reportError(msg)
            }
            if ended {
                if loop && failure == nil && n + Int(packetsRead) > 0 {
                    state.withLock { loops &+= 1 }
                    reopenFile()
                } else {
                    state.withLock { _finished = true; state.broadcast() }
                    space.lock.withLock { space.refresh() }
                }
            }
            if state.withLock({ defer { rewindPacing = false }; return rewindPacing }) {
                paceStart = monotonicNanoseconds(); pending = 0
            }
            if rate > 0 {
                pending += n
                let due = paceStart + Int64(pending) * 1_000_000_000 / Int64(rate)
                if pending >= rate * 10 { paceStart = due; pending = 0 }  // fold, so the product cannot overflow
                let now = monotonicNanoseconds()
                if due > now {
                    // Sleep on the state lock so that ctl (rate, stop) and shutdown wake it.
                    state.withLock { _ = state.wait(timeoutNanoseconds: min(due - now, 1_000_000_000)) }
                } else if now - due > 1_000_000_000 {
                    paceStart = now; pending = 0  // fell behind by >1 s (e.g. paused): do not burst
                }
            }
        }
        if let h = handle { pcap_close(h); handle = nil }
        dispatcher = nil
        space = nil
        node = nil
    }

    /// What a damaged capture is reported as, by this source and by `pipesfs exec`'s batch path alike.
    public static func damageMessage(source: String, path: String, packets: UInt64, why: String) -> String {
        "source \(source): '\(path)' is damaged after \(packets) packets: \(why)"
    }

    private func reopenFile() {
        if let h = handle { pcap_close(h) }
        handle = nil
        do {
            handle = try PcapFileSource.open(path)
            fastReader = PcapFileReader(path: path, linkType: handle.map { LinkType(rawValue: pcap_datalink($0)) })
        } catch {
            let msg = "source \(node?.name ?? "?"): \(error.message)"
            state.withLock { lastError = msg; _finished = true; state.broadcast() }
            space?.reportError(msg)
            space?.lock.withLock { space?.refresh() }
        }
    }

    public static let descriptor = FilterDescriptor(
        name: "pcap", summary: "capture-file source (pcap or pcapng)",
        usage: "--source NAME=pcap:PATH[,loop][,paused][,rate=PPS]", structuralClass: .source
    ) { a throws(FilterError) in try PcapFileSource(spec: a) }
}

/// The note that capture files are read without io_uring goes to `.errors` once per process.
enum IOFallbackNote {
    private static let lock = ConditionLock()
    nonisolated(unsafe) private static var noted = false

    /// True the first time only.
    static func first() -> Bool {
        lock.withLock {
            defer { noted = true }
            return !noted
        }
    }
}
