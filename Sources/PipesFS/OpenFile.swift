#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesControl
import PipesRuntime

/// An open file: the FUSE layer keeps one per open(2) and forwards read, write, poll and release to it.
public class OpenFile: @unchecked Sendable {
    /// Tap files stream (direct I/O, not seekable, reads may block); the others are small text snapshots.
    public var isStream: Bool { false }

    /// Reads up to `size` bytes at `offset`. May deliver later (a parked read), under `requestID`.
    public func read(size: Int, offset: Int, requestID: UInt64, nonBlocking: Bool,
                     interrupted: () -> Bool = { false }, deliver: @escaping TapRing.Delivery) {
        deliver(.error(EINVAL))
    }

    /// Cancels a parked read or write (interrupt).
    public func cancel(requestID: UInt64) {}

    /// Writes. Returns bytes accepted or throws. Files whose writes may wait override the asynchronous form.
    public func write(_ data: UnsafeRawBufferPointer, offset: Int) throws(FSError) -> Int {
        throw FSError(EBADF, "not open for writing")
    }

    /// Writes, answering through `completion` exactly once: at once, or later for a write parked behind a lagging
    /// reader (no thread waits for it). `interrupted` is checked before parking; `cancel(requestID:)` ends a
    /// parked write with EINTR.
    public func write(_ data: UnsafeRawBufferPointer, offset: Int, requestID: UInt64, nonBlocking: Bool,
                      interrupted: () -> Bool, completion: @escaping @Sendable (Result<Int, FSError>) -> Void) {
        do throws(FSError) { completion(.success(try write(data, offset: offset))) } catch { completion(.failure(error)) }
    }

    /// Whether a read would not block now; `notify` is called once when that changes.
    public func poll(notify: (@Sendable () -> Void)?) -> Bool { true }

    public func release() {}
}

/// A text file whose contents are fixed at open (stats, ctl when read, .errors).
final class SnapshotFile: OpenFile, @unchecked Sendable {
    let bytes: [UInt8]
    init(_ text: String) { bytes = Array(text.utf8) }

    override func read(size: Int, offset: Int, requestID: UInt64, nonBlocking: Bool,
                        interrupted: () -> Bool = { false }, deliver: @escaping TapRing.Delivery) {
        let start = min(offset, bytes.count)
        let end = min(bytes.count, start + size)
        bytes.withUnsafeBytes { b in
            deliver(.data(UnsafeRawBufferPointer(rebasing: b[start..<end]), UnsafeRawBufferPointer(start: nil, count: 0)))
        }
    }
}

/// A `ctl` file: reads show the filter's settings; each written line is a command.
final class ControlFile: OpenFile, @unchecked Sendable {
    let tree: Tree
    let node: Node?
    let caller: Caller
    let text: [UInt8]
    private var partial: [UInt8] = []
    private let lock = ConditionLock()

    init(tree: Tree, node: Node?, caller: Caller, text: String = "") {
        self.tree = tree
        self.node = node
        self.caller = caller
        self.text = Array(text.utf8)
    }

    override func read(size: Int, offset: Int, requestID: UInt64, nonBlocking: Bool,
                        interrupted: () -> Bool = { false }, deliver: @escaping TapRing.Delivery) {
        let start = min(offset, text.count)
        let end = min(text.count, start + size)
        text.withUnsafeBytes { b in
            deliver(.data(UnsafeRawBufferPointer(rebasing: b[start..<end]), UnsafeRawBufferPointer(start: nil, count: 0)))
        }
    }

    override func write(_ data: UnsafeRawBufferPointer, offset: Int) throws(FSError) -> Int {
        // Complete lines run now; a trailing partial line runs at close (echo -n works too).
        var lines: [String] = []
        let tooLong = lock.withLock { () -> Bool in
            if partial.count + data.count > 65_536 { partial.removeAll(); return true }
            partial.append(contentsOf: data)
            while let nl = partial.firstIndex(of: 10) {
                lines.append(String(decoding: partial[..<nl], as: UTF8.self))
                partial.removeSubrange(...nl)
            }
            return false
        }
        if tooLong { throw tree.controller.fail("ctl", FSError(EINVAL, "a control line longer than 64 KiB")) }
        for l in lines { try run(l) }
        return data.count
    }

    private func run(_ line: String) throws(FSError) {
        if let n = node {
            try tree.controller.control(n, line)
        } else {
            try tree.controller.rootControl(line, uid: caller.uid, gid: caller.gid)
        }
    }

    override func release() {
        let rest = lock.withLock { () -> String in
            defer { partial.removeAll() }
            return String(decoding: partial, as: UTF8.self)
        }
        try? run(rest)  // errors are in .errors; close(2) cannot report them
    }
}

/// An open `all` or `all.pcap`: a live copy of the node's output from the moment of opening (reads), and an
/// injection point (writes).
final class TapFile: OpenFile, @unchecked Sendable {
    let tree: Tree
    let node: Node
    let tap: RingTap?
    let writable: Bool
    let uid: UInt32

    init(tree: Tree, node: Node, tap: RingTap?, writable: Bool, uid: UInt32) {
        self.tree = tree
        self.node = node
        self.tap = tap
        self.writable = writable
        self.uid = uid
    }

    override var isStream: Bool { true }

    override func read(size: Int, offset: Int, requestID: UInt64, nonBlocking: Bool,
                        interrupted: () -> Bool = { false }, deliver: @escaping TapRing.Delivery) {
        guard let tap else { deliver(.error(EBADF)); return }
        tap.read(max: size, id: requestID, nonBlocking: nonBlocking, interrupted: interrupted, deliver: deliver)
    }

    override func cancel(requestID: UInt64) {
        tap?.cancel(id: requestID)
        tree.space.cancelWrite(node, id: requestID)
    }

    override func write(_ data: UnsafeRawBufferPointer, offset: Int, requestID: UInt64, nonBlocking: Bool,
                        interrupted: () -> Bool, completion: @escaping @Sendable (Result<Int, FSError>) -> Void) {
        guard writable else { completion(.failure(FSError(EBADF, "not open for writing"))); return }
        if data.count == 0 { completion(.success(0)); return }
        let n = data.count
        let outcome = tree.space.inject(node, bytes: data, id: requestID, nonBlocking: nonBlocking, interrupted: interrupted) {
            [self] rc in completion(rc == 0 ? .success(n) : .failure(failure(rc, nonBlocking: false)))
        }
        switch outcome {
        case .done: completion(.success(n))
        case .parked: break
        case .failed(let rc): completion(.failure(failure(rc, nonBlocking: nonBlocking)))
        }
    }

    /// The error a refused injection reports; the unusual ones are also recorded in `.errors`.
    private func failure(_ rc: Int32, nonBlocking: Bool) -> FSError {
        let op = "write \(node.path)/all"
        switch rc {
        case EINTR: return FSError(EINTR, "interrupted before the block was delivered")
        case EAGAIN where nonBlocking: return FSError(EAGAIN, "a lossless reader lags (non-blocking write)")
        case EAGAIN:
            return tree.controller.fail(op, FSError(EAGAIN, "more than \(Space.maxPendingWriteBytes >> 20) MiB of writes wait for lagging readers; try again"))
        case EIO: return tree.controller.fail(op, FSError(EIO, "the filter refused the block (see its stats)"))
        case ENOTCONN: return FSError(ENOTCONN, "the file system is being unmounted")
        default: return tree.controller.fail(op, FSError(rc, "filter was removed"))
        }
    }

    override func poll(notify: (@Sendable () -> Void)?) -> Bool {
        guard let tap else { return true }
        tap.setReadableNotifier(notify)
        return tap.isReadable
    }

    override func release() {
        if let tap { tree.closeTap(node, tap, uid: uid) }
    }
}
