#if canImport(Glibc)
import Glibc
#endif
import CPipesClient

/// Why a tap could not be opened or read: the errno and a one-line reason.
public struct TapError: Error, CustomStringConvertible, Sendable {
    public let errno: Int32
    public let operation: String
    public init(_ errno: Int32, _ operation: String) {
        self.errno = errno
        self.operation = operation
    }
    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

/// A reader of a PipesFS stream through the client library (libpipes): the node's ring mapped into this process,
/// read in place with no FUSE round trip; plain read(2) of the path where mapping is not possible.
/// Use from one thread at a time.
public final class Tap {
    private let handle: OpaquePointer

    /// Opens `path` (a stream file, `DIR/all`). `map: false` reads through the filesystem.
    public init(path: String, map: Bool = true) throws(TapError) {
        guard let h = pipes_tap_open(path, map ? 0 : UInt32(PIPES_TAP_NO_MAP)) else { throw TapError(errno, "open \(path)") }
        handle = h
    }

    deinit { pipes_tap_close(handle) }

    /// True when the ring is mapped (zero-copy).
    public var isMapped: Bool { pipes_tap_is_mapped(handle) != 0 }

    /// A block of the stream, valid until `consume()`.
    public typealias Block = pipes_block

    /// The outcome of `peek`.
    public enum Peek {
        case block(Block)
        case endOfStream
        case timedOut
    }

    /// The next block in place; waits at most `timeoutMilliseconds` (-1: no limit).
    public func peek(timeoutMilliseconds: Int32 = -1) throws(TapError) -> Peek {
        var b = pipes_block()
        let rc = pipes_tap_peek(handle, &b, timeoutMilliseconds)
        if rc == 1 { return .block(b) }
        if rc == 0 { return .endOfStream }
        if errno == EAGAIN { return .timedOut }
        throw TapError(errno, "peek")
    }

    /// True while the block `peek` returned last was not overwritten (lossy streams; always true otherwise).
    public var isValid: Bool { pipes_tap_valid(handle) != 0 }

    /// Moves past the block `peek` returned last.
    public func consume() { pipes_tap_consume(handle) }

    /// Copies stream bytes into `buffer` (read(2) semantics). 0 at end of stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TapError) -> Int {
        let n = pipes_tap_read(handle, buffer.baseAddress, buffer.count)
        if n < 0 { throw TapError(errno, "read") }
        return n
    }

    /// Blocks delivered, and blocks a lossy stream overwrote before this reader got them.
    public var delivered: UInt64 { pipes_tap_delivered(handle) }
    public var dropped: UInt64 { pipes_tap_dropped(handle) }
}
