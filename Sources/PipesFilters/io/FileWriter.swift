#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering

/// One file being written by the `FileWriter`: a queue (a `TapRing`, filled under the space lock, never
/// waiting) and the file the writer thread moves it into.
///
/// The producer side appends to `queue`; everything else is the writer's. Counters are published under the
/// writer's lock at the end of each pass, so `bytesOnFile` never runs ahead of a close or an error report.
public final class WriterSink: @unchecked Sendable {
    /// Queued bytes, in file order. Lossless (`.block`): a producer that can wait is held up past its
    /// high-water mark; one that cannot (live capture) fills it up to `maxCapacity`, then drops and counts.
    public let queue: TapRing
    let fd: Int32
    let path: String
    /// Where a line for `.errors` goes when the file fails (the space's log once the filter is bound); dropped
    /// when the file is closed, which breaks the cycle through the space. Guarded by the writer's lock.
    var reporter: (@Sendable (String) -> Void)?
    // Writer thread only.
    var offset: Int
    // Guarded by the writer's lock.
    var closeRequested = false
    public internal(set) var closed = false
    var published = Published()

    struct Published {
        /// Bytes taken from the queue and written (or, after an error, given up on).
        var bytesTaken: UInt64 = 0
        var bytesWritten: UInt64 = 0
        var bytesLost: UInt64 = 0
        var error: Int32 = 0
    }

    /// The file is to be emptied before the first write (writer thread only). Truncating a large file frees its
    /// blocks, milliseconds for tens of megabytes: done here, it overlaps the producer's start instead of delaying
    /// the filter's creation (`pipesfs exec` paid 7-13 ms for a 28 MB output file left by the last run).
    var truncatePending: Bool

    init(fd: Int32, path: String, offset: Int = 0, truncate: Bool = false, capacity: Int = 4 << 20, maxCapacity: Int = 64 << 20) {
        self.fd = fd
        self.path = path
        self.offset = offset
        truncatePending = truncate
        queue = TapRing(capacity: capacity, policy: .block, maxCapacity: maxCapacity)
    }
}

/// The thread that writes every `pcapout` file: queued bytes go out in writes of up to 1 MiB, two in flight per
/// file, through io_uring (`URing`), or `pwrite` where io_uring is refused. No file I/O happens under the space
/// lock: filters only append to their sink's queue.
///
/// The thread starts with the first sink and ends when the last one is closed.
public final class FileWriter: @unchecked Sendable {
    public static let shared = FileWriter()
    public static let chunk = 1 << 20
    /// Per sink and pass, so one busy file does not starve the others.
    static let passBudget = 16 << 20

    private let lock = ConditionLock()
    private var sinks: [WriterSink] = []
    private var work = false
    /// A close, a sync or a new file: write at once, without waiting for more bytes.
    private var urgent = false
    private var running = false
    /// Moderation of writes: a pass for fewer queued bytes than this waits up to `gatherNanoseconds` for more, so
    /// a stream of small batches becomes a few large writes instead of a system call and a thread switch per batch.
    static let gatherBytes = 256 << 10
    static let gatherNanoseconds: Int64 = 1_000_000
    private var passes: UInt64 = 0
    /// How the writer thread writes: "io_uring", or "pwrite (reason)". A refusal of io_uring is reported once
    /// per process, through the sink being written then.
    private var _method = "io_uring"
    private var fallbackReported = false
    /// The fallback note, until a sink that can report it (one bound to a space) is written.
    private var fallbackNote: String?
    public var method: String { lock.withLock { _method } }

    init() {}

    /// Starts writing `sink`'s queue to its file.
    func register(_ sink: WriterSink) {
        sink.queue.setReadableNotifier { [self] in wake() }
        let start: Bool = lock.withLock {
            sinks.append(sink)
            work = true
            urgent = true
            lock.broadcast()
            if running { return false }
            running = true
            return true
        }
        if start { startThread(name: "file-writer") { [self] in loop() } }
    }

    /// New bytes, a close or a sync: run a pass soon. Never waits (it may run under the space lock).
    func wake() {
        lock.withLock {
            work = true
            lock.broadcast()
        }
    }

    /// Asks the writer to write what is queued, then close the file. Never waits.
    func close(_ sink: WriterSink) {
        lock.withLock {
            sink.closeRequested = true
            work = true
            urgent = true
            lock.broadcast()
        }
    }

    /// Waits until the first `target` bytes queued in `sink` are in its file (or given up on after an error),
    /// at most `timeoutNanoseconds`. Returns false on timeout.
    func sync(_ sink: WriterSink, upTo target: UInt64, timeoutNanoseconds: Int64) -> Bool {
        lock.withLock {
            work = true
            urgent = true
            lock.broadcast()
            return lock.wait(until: { sink.closed || sink.published.bytesTaken >= target }, timeoutNanoseconds: timeoutNanoseconds)
        }
    }

    /// Waits until `sink` is closed. Returns false on timeout.
    func waitClosed(_ sink: WriterSink, timeoutNanoseconds: Int64) -> Bool {
        lock.withLock { lock.wait(until: { sink.closed }, timeoutNanoseconds: timeoutNanoseconds) }
    }

    func published(_ sink: WriterSink) -> WriterSink.Published { lock.withLock { sink.published } }

    /// Sets where `sink`'s failures are reported.
    func setReporter(_ sink: WriterSink, _ f: (@Sendable (String) -> Void)?) { lock.withLock { sink.reporter = f } }

    private func report(_ sink: WriterSink, _ line: String) {
        let f = lock.withLock { sink.reporter }
        f?(line)
    }

    // MARK: the writer thread

    private func loop() {
        let uring = URing(entries: 16)
        lock.withLock {
            _method = uring.usesIOURing ? "io_uring" : "pwrite (\(uring.fallbackReason ?? ""))"
            if let why = uring.fallbackReason, !fallbackReported {
                fallbackNote = "pcapout: io_uring unavailable (\(why)); files are written with pwrite"
            }
        }
        let buffers = (0..<2).map { _ in UnsafeMutableRawPointer.allocate(byteCount: FileWriter.chunk, alignment: 4096) }
        defer { for b in buffers { b.deallocate() } }
        // Reused every pass: a pass allocates nothing (09-no-alloc counts the writer too).
        var results: [(WriterSink, WriterSink.Published)] = []
        var closing: [WriterSink] = []
        results.reserveCapacity(8)
        closing.reserveCapacity(8)
        while true {
            lock.lock()
            while !work && !sinks.isEmpty { lock.wait() }
            if sinks.isEmpty {
                running = false
                lock.unlock()
                return
            }
            // Gather: unless something is urgent, give small amounts a moment to grow (in steps, since appends to
            // a non-empty queue do not signal).
            let deadline = monotonicNanoseconds() + FileWriter.gatherNanoseconds
            while !urgent && !sinks.contains(where: { $0.queue.available >= FileWriter.gatherBytes }) {
                let left = deadline - monotonicNanoseconds()
                if left <= 0 { break }
                lock.wait(timeoutNanoseconds: min(left, 100_000))
            }
            urgent = false
            work = false
            let list = sinks
            lock.unlock()

            var more = false
            results.removeAll(keepingCapacity: true)
            closing.removeAll(keepingCapacity: true)
            for s in list {
                var p = lock.withLock { s.published }
                if drain(s, &p, uring, buffers) { more = true }
                results.append((s, p))
            }
            lock.withLock {
                for (s, p) in results { s.published = p }
                for s in list where s.closeRequested && s.queue.available == 0 { closing.append(s) }
                if more { work = true }
                passes &+= 1
            }
            for s in closing {
                s.queue.closeReader()
                s.queue.setReadableNotifier(nil)
                Glibc.close(s.fd)
            }
            lock.withLock {
                for s in closing { s.closed = true; s.reporter = nil }
                sinks.removeAll { s in closing.contains { $0 === s } }
                lock.broadcast()
            }
        }
    }

    /// Writes up to `passBudget` of `s`'s queue, two chunks in flight. Returns true if more is queued.
    /// What a failed write is reported as, by the writer and by `pipesfs exec`'s batch path alike.
    public static func writeFailedMessage(path: String, errno e: Int32) -> String {
        "pcapout '\(path)': write failed: \(String(cString: strerror(e))); later records are dropped"
    }

    /// Empties `s`'s file before its first write (every pass drains every sink, so this happens in the first pass
    /// after registration, closing or not); a failure is reported like a write error (what follows is lost).
    private func truncateIfPending(_ s: WriterSink, _ p: inout WriterSink.Published) {
        guard s.truncatePending else { return }
        s.truncatePending = false
        if ftruncate(s.fd, 0) != 0 {
            let e = errno
            if p.error == 0 {
                p.error = e
                report(s, "pcapout '\(s.path)': cannot empty the file: \(String(cString: strerror(e))); records are dropped")
            }
        }
    }

    private func drain(_ s: WriterSink, _ p: inout WriterSink.Published, _ uring: URing,
                       _ buffers: [UnsafeMutableRawPointer]) -> Bool {
        let (note, reporter): (String?, (@Sendable (String) -> Void)?) = lock.withLock {
            guard let n = fallbackNote, let r = s.reporter else { return (nil, nil) }
            fallbackNote = nil
            fallbackReported = true
            return (n, r)
        }
        if let note, let reporter { reporter(note) }
        truncateIfPending(s, &p)
        var budget = FileWriter.passBudget
        // Two buffers: which are free (bits 0 and 1), and each one's length and file offset. Plain values, not
        // arrays: nothing is allocated per pass.
        var freeMask: UInt8 = 0b11
        var lengths = (0, 0)
        var starts = (0, 0)
        while true {
            // Fill free buffers from the queue and start their writes.
            while freeMask != 0, budget > 0 {
                let i = freeMask & 0b10 != 0 ? 1 : 0
                let n = s.queue.copyOut(into: buffers[i], max: min(FileWriter.chunk, budget))
                if n == 0 { break }
                freeMask &= ~(1 << UInt8(i))
                budget -= n
                p.bytesTaken &+= UInt64(n)
                if p.error != 0 {
                    p.bytesLost &+= UInt64(n)
                    freeMask |= 1 << UInt8(i)
                    continue
                }
                if i == 0 { lengths.0 = n; starts.0 = s.offset } else { lengths.1 = n; starts.1 = s.offset }
                s.offset += n
                uring.write(s.fd, buffers[i], n, at: s.offset - n, tag: UInt64(i))
            }
            if uring.inFlight == 0 && freeMask == 0b11 {
                uring.submit()
                if uring.inFlight == 0 { break }
            } else {
                uring.submit()
            }
            let (tag, res) = uring.complete()
            let i = Int(tag)
            var r = Int(res)
            let len = i == 0 ? lengths.0 : lengths.1
            let at = i == 0 ? starts.0 : starts.1
            // A short write: the rest, synchronously (rare: a full disk usually shows as ENOSPC on the next).
            while r >= 0 && r < len {
                let w = pwrite(s.fd, buffers[i] + r, len - r, off_t(at + r))
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { r = w == 0 ? -Int(EIO) : -Int(errno); break }
                r += w
            }
            if r < 0 {
                if p.error == 0 {
                    p.error = Int32(-r)
                    report(s, FileWriter.writeFailedMessage(path: s.path, errno: Int32(-r)))
                }
                p.bytesLost &+= UInt64(len)
            } else {
                p.bytesWritten &+= UInt64(len)
            }
            freeMask |= 1 << UInt8(i)
        }
        return s.queue.available > 0
    }
}
