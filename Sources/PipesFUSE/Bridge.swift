#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import PipesBuffering
import PipesControl
import PipesFS

/// The libfuse3 low-level wire layer: turns requests into calls on a `Tree` and replies exactly once.
///
/// As in libfuse's `hello_ll.c`, each `do_x` returns an errno (through `FSError`) and each callback replies.
/// Blocking reads are parked in the tap's ring and answered from the producer's thread.
public final class FUSEBridge: @unchecked Sendable {
    public let tree: Tree
    /// Seconds the kernel may cache entries and attributes (0: the graph can change under it).
    let timeout: Double = 0
    private var nextRequestID: UInt64 = 0
    private let idLock = ConditionLock()
    /// Stream requests that may be parked, by id: what an interrupt needs to find. libfuse may run the interrupt
    /// callback while another thread replies, so the callback gets only the id and looks it up here.
    private var inFlight: [UInt64: OpenFile] = [:]

    public init(tree: Tree) {
        self.tree = tree
        inFlight.reserveCapacity(256)
    }

    func requestID() -> UInt64 {
        idLock.withLock {
            nextRequestID &+= 1
            return nextRequestID
        }
    }

    /// Records a stream request before it may park, and registers the interrupt callback (after recording:
    /// libfuse calls it at once if the request was already interrupted).
    func track(_ id: UInt64, _ f: OpenFile, _ req: fuse_req_t) {
        idLock.withLock { inFlight[id] = f }
        fuse_req_interrupt_func(req, { req, data in
            bridge(req).interrupt(UInt64(UInt(bitPattern: data)))
        }, UnsafeMutableRawPointer(bitPattern: UInt(id)))
    }

    /// Forgets a request; call before replying.
    func untrack(_ id: UInt64) {
        idLock.withLock { _ = inFlight.removeValue(forKey: id) }
    }

    private func interrupt(_ id: UInt64) {
        let f = idLock.withLock { inFlight[id] }
        f?.cancel(requestID: id)
    }

    // MARK: attribute conversion

    func stat(_ a: Attributes) -> stat {
        var st = Glibc.stat()
        st.st_ino = ino_t(a.inode)
        switch a.kind {
        case .directory: st.st_mode = Glibc.S_IFDIR | mode_t(a.mode)
        case .file: st.st_mode = Glibc.S_IFREG | mode_t(a.mode)
        case .symlink: st.st_mode = Glibc.S_IFLNK | mode_t(a.mode)
        }
        st.st_nlink = nlink_t(a.links)
        st.st_uid = a.uid
        st.st_gid = a.gid
        st.st_size = off_t(a.size)
        st.st_blksize = 1 << 20  // makes cat read 1 MiB at a time
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        st.st_atim = now
        st.st_mtim = now
        st.st_ctim = now
        return st
    }

    func entry(_ a: Attributes) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = fuse_ino_t(a.inode)
        e.generation = 1
        e.attr = stat(a)
        e.attr_timeout = timeout
        e.entry_timeout = timeout
        return e
    }

    // MARK: file handles

    static func handle(_ f: OpenFile) -> UInt64 {
        UInt64(UInt(bitPattern: Unmanaged.passRetained(f).toOpaque()))
    }

    static func file(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> OpenFile? {
        guard let fi, fi.pointee.fh != 0, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else { return nil }
        return Unmanaged<OpenFile>.fromOpaque(p).takeUnretainedValue()
    }

    static func releaseHandle(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> OpenFile? {
        guard let fi, fi.pointee.fh != 0, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else { return nil }
        fi.pointee.fh = 0
        return Unmanaged<OpenFile>.fromOpaque(p).takeRetainedValue()
    }

    static func caller(_ req: fuse_req_t?) -> Caller {
        guard let c = fuse_req_ctx(req) else { return .root }
        return Caller(uid: c.pointee.uid, gid: c.pointee.gid)
    }
}

/// Poll handle bookkeeping for one open file: the kernel's handle is notified once, then destroyed.
final class PollBox: @unchecked Sendable {
    private let lock = ConditionLock()
    private var handle: OpaquePointer?

    deinit { if let h = handle { fuse_pollhandle_destroy(h) } }

    func replace(_ ph: OpaquePointer?) {
        lock.withLock {
            if let old = handle { fuse_pollhandle_destroy(old) }
            handle = ph
        }
    }

    func fire() {
        lock.withLock {
            if let h = handle {
                fuse_lowlevel_notify_poll(h)
                fuse_pollhandle_destroy(h)
                handle = nil
            }
        }
    }
}

/// Sends a ReadOutcome as the reply to `req`.
func reply(_ req: fuse_req_t?, _ outcome: ReadOutcome) {
    switch outcome {
    case .data(let a, let b):
        if b.count == 0 {
            fuse_reply_buf(req, a.baseAddress?.assumingMemoryBound(to: CChar.self), a.count)
        } else {
            var iov = (iovec(iov_base: UnsafeMutableRawPointer(mutating: a.baseAddress), iov_len: a.count),
                       iovec(iov_base: UnsafeMutableRawPointer(mutating: b.baseAddress), iov_len: b.count))
            withUnsafeMutableBytes(of: &iov) { p in
                _ = fuse_reply_iov(req, p.baseAddress!.assumingMemoryBound(to: iovec.self), 2)
            }
        }
    case .segments(let v):
        _ = fuse_reply_iov(req, v.baseAddress, Int32(v.count))
    case .endOfStream:
        fuse_reply_buf(req, nil, 0)
    case .error(let e):
        fuse_reply_err(req, e)
    }
}
