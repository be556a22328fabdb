#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering

/// A refused control operation: the errno the file operation returns and a one-line reason.
public struct ControlError: Error, Equatable, CustomStringConvertible, Sendable {
    public var errno: Int32
    public var message: String
    public init(_ errno: Int32, _ message: String) {
        self.errno = errno
        self.message = message
    }
    public var description: String { "\(message) (\(errnoName(errno)))" }
}

/// The symbolic name of an errno, e.g. `EINVAL`.
public func errnoName(_ e: Int32) -> String {
    switch e {
    case EPERM: "EPERM"
    case ENOENT: "ENOENT"
    case EIO: "EIO"
    case EACCES: "EACCES"
    case EEXIST: "EEXIST"
    case ENOTDIR: "ENOTDIR"
    case EISDIR: "EISDIR"
    case EINVAL: "EINVAL"
    case ENOTEMPTY: "ENOTEMPTY"
    case ELOOP: "ELOOP"
    case ENAMETOOLONG: "ENAMETOOLONG"
    case EBUSY: "EBUSY"
    case ENODEV: "ENODEV"
    case EXDEV: "EXDEV"
    case ENOSYS: "ENOSYS"
    case EAGAIN: "EAGAIN"
    case EINTR: "EINTR"
    case EMFILE: "EMFILE"
    case ENOTCONN: "ENOTCONN"
    default: "errno \(e)"
    }
}

/// Recent errors, newest last: the contents of `/pipes/.errors`. Thread-safe.
///
/// `append` never blocks on I/O: it is called with the space lock held, and the log `sink` (stderr, syslog) may
/// block. Lines for the sink are queued (at most `limit`; the oldest are dropped and counted) and written by a
/// logging thread that starts on the first line and ends when idle.
public final class ErrorLog: @unchecked Sendable {
    private var lines: [String] = []
    private let limit: Int
    private let lock = ConditionLock()
    private var queued: [String] = []
    private var queueDropped = 0
    private var writerRunning = false
    /// Lines taken from the queue and not yet handed to the sink.
    private var writing = 0
    /// Called for every line, on the logging thread (the daemon logs to stderr or syslog).
    public var sink: (@Sendable (String) -> Void)? {
        get { lock.withLock { _sink } }
        set { lock.withLock { _sink = newValue } }
    }
    private var _sink: (@Sendable (String) -> Void)?

    public init(limit: Int = 256) {
        self.limit = limit
    }

    public func append(_ message: String) {
        var t = time(nil)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tmv)
        let line = "\(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)) \(message)"
        let start: Bool = lock.withLock {
            lines.append(line)
            if lines.count > limit { lines.removeFirst(lines.count - limit) }
            guard _sink != nil else { return false }
            queued.append(line)
            if queued.count > limit { queued.removeFirst(); queueDropped += 1 }
            lock.signal()
            if writerRunning { return false }
            writerRunning = true
            return true
        }
        if start { startThread(name: "errorlog") { [self] in writeQueued() } }
    }

    private func writeQueued() {
        while true {
            lock.lock()
            while queued.isEmpty {
                if !lock.wait(timeoutNanoseconds: 1_000_000_000) && queued.isEmpty {
                    writerRunning = false
                    lock.unlock()
                    return
                }
            }
            var batch = queued
            queued.removeAll()
            if queueDropped > 0 {
                batch.insert("(\(queueDropped) log lines dropped: the log was not keeping up)", at: 0)
                queueDropped = 0
            }
            let sink = _sink
            writing = batch.count
            lock.unlock()
            for l in batch { sink?(l) }
            lock.withLock { writing = 0 }
        }
    }

    /// Waits until queued lines were handed to the sink (tests, shutdown). Returns false on timeout.
    @discardableResult
    public func flush(timeoutNanoseconds: Int64 = 2_000_000_000) -> Bool {
        let deadline = monotonicNanoseconds() + timeoutNanoseconds
        while lock.withLock({ !queued.isEmpty || writing > 0 }) {
            if monotonicNanoseconds() > deadline { return false }
            usleep(1000)
        }
        return true
    }

    public var text: String {
        lock.withLock { lines.map { $0 + "\n" }.joined() }
    }
}
