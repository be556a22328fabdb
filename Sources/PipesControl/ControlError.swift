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
    case EDEADLK: "EDEADLK"
    case ENOTSUP: "ENOTSUP"
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
    private let writer = OnDemandWorker(name: "errorlog")
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
        let toSink: Bool = lock.withLock {
            lines.append(line)
            if lines.count > limit { lines.removeFirst(lines.count - limit) }
            guard _sink != nil else { return false }
            queued.append(line)
            if queued.count > limit { queued.removeFirst(); queueDropped += 1 }
            return true
        }
        if toSink { writer.request { [self] in writeQueued() } }
    }

    /// Hands the queued lines to the sink (on the writer thread).
    private func writeQueued() {
        while true {
            let (batch, sink): ([String], (@Sendable (String) -> Void)?) = lock.withLock {
                var batch = queued
                queued.removeAll()
                if queueDropped > 0 {
                    batch.insert("(\(queueDropped) log lines dropped: the log was not keeping up)", at: 0)
                    queueDropped = 0
                }
                return (batch, _sink)
            }
            if batch.isEmpty { return }
            for l in batch { sink?(l) }
        }
    }

    /// Waits until queued lines were handed to the sink (tests, shutdown). Returns false on timeout.
    /// Waits until every queued line was handed to the sink (tests, shutdown).
    public func flush() {
        writer.waitIdle()
    }

    public var text: String {
        lock.withLock { lines.map { $0 + "\n" }.joined() }
    }
}
