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

    /// Cancels a parked read (interrupt).
    public func cancel(requestID: UInt64) {}

    /// Writes. Returns bytes accepted or throws.
    public func write(_ data: UnsafeRawBufferPointer, offset: Int, interrupted: @escaping () -> Bool) throws(FSError) -> Int {
        throw FSError(EBADF, "not open for writing")
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

    override func write(_ data: UnsafeRawBufferPointer, offset: Int, interrupted: @escaping () -> Bool) throws(FSError) -> Int {
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
    let ring: TapRing?
    let writable: Bool

    init(tree: Tree, node: Node, ring: TapRing?, writable: Bool) {
        self.tree = tree
        self.node = node
        self.ring = ring
        self.writable = writable
    }

    override var isStream: Bool { true }

    override func read(size: Int, offset: Int, requestID: UInt64, nonBlocking: Bool,
                        interrupted: () -> Bool = { false }, deliver: @escaping TapRing.Delivery) {
        guard let ring else { deliver(.error(EBADF)); return }
        ring.read(max: size, id: requestID, nonBlocking: nonBlocking, interrupted: interrupted, deliver: deliver)
    }

    override func cancel(requestID: UInt64) { ring?.cancel(id: requestID) }

    override func write(_ data: UnsafeRawBufferPointer, offset: Int, interrupted: @escaping () -> Bool) throws(FSError) -> Int {
        guard writable else { throw FSError(EBADF, "not open for writing") }
        if data.count == 0 { return 0 }
        let rc = tree.space.inject(node, bytes: data, interrupted: interrupted)
        if rc != 0 {
            let why = rc == EIO ? "the filter refused the block (see its stats)"
                : rc == EAGAIN ? "too many writers are waiting for lagging readers; try again" : "filter was removed"
            throw tree.controller.fail("write \(node.path)/all", FSError(rc, why))
        }
        return data.count
    }

    override func poll(notify: (@Sendable () -> Void)?) -> Bool {
        guard let ring else { return true }
        ring.setReadableNotifier(notify)
        return ring.isReadable
    }

    override func release() {
        if let ring { tree.closeTap(node, ring) }
    }
}
