#if canImport(Glibc)
import Glibc
#endif

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
    default: "errno \(e)"
    }
}

/// Recent errors, newest last: the contents of `/pipes/.errors`. Thread-safe.
public final class ErrorLog: @unchecked Sendable {
    private var lines: [String] = []
    private let limit: Int
    private var lock = pthread_mutex_t()
    /// Also called for every line (the daemon logs to stderr/syslog).
    public var sink: (@Sendable (String) -> Void)?

    public init(limit: Int = 256) {
        self.limit = limit
        pthread_mutex_init(&lock, nil)
    }

    public func append(_ message: String) {
        var t = time(nil)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tmv)
        let line = "\(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)) \(message)"
        pthread_mutex_lock(&lock)
        lines.append(line)
        if lines.count > limit { lines.removeFirst(lines.count - limit) }
        pthread_mutex_unlock(&lock)
        sink?(line)
    }

    public var text: String {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return lines.map { $0 + "\n" }.joined()
    }
}
