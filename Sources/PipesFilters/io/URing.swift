#if canImport(Glibc)
import Glibc
#endif
import CURing

/// File reads and writes for one thread through an io_uring (liburing), or through plain `pread`/`pwrite` when
/// the kernel refuses one (seccomp, an old kernel, `PIPESFS_NO_IO_URING=1`): the caller queues operations,
/// submits them and collects completions the same way in both cases.
///
/// Not thread-safe: one owner thread. Buffers must stay valid until their completion has been collected.
final class URing {
    /// Why io_uring is not used (nil: it is).
    let fallbackReason: String?
    private var ring = io_uring()
    private let entries: UInt32
    /// Fallback: operations queued since the last submit, and completions not collected yet.
    private var queued: [(write: Bool, fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, offset: Int, tag: UInt64)] = []
    private var done: [(tag: UInt64, result: Int32)] = []
    private var prepared = 0
    private(set) var inFlight = 0

    /// `entries`: operations in flight at most. `pread`: use the fallback (tests).
    init(entries: UInt32 = 16, pread usePread: Bool = false) {
        self.entries = entries
        if usePread || getenv("PIPESFS_NO_IO_URING") != nil {
            fallbackReason = usePread ? "asked for pread" : "PIPESFS_NO_IO_URING is set"
            return
        }
        let rc = io_uring_queue_init(entries, &ring, 0)
        fallbackReason = rc < 0 ? "io_uring_queue_init: \(String(cString: strerror(-rc)))" : nil
    }

    deinit {
        if fallbackReason == nil { io_uring_queue_exit(&ring) }
    }

    var usesIOURing: Bool { fallbackReason == nil }

    /// Room for another operation before `submit`.
    var hasRoom: Bool { inFlight + prepared < Int(entries) }

    /// Queues a write of `count` bytes at `offset` (io_uring_prep_write). `async`: a kernel worker does it
    /// (IOSQE_ASYNC) rather than `submit` copying into the page cache inline.
    func write(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, at offset: Int, tag: UInt64, async: Bool = false) {
        prepare(write: true, fd, buffer, count, offset, tag, async: async)
    }

    /// Queues a read of up to `count` bytes at `offset` (io_uring_prep_read). A read of cached data is copied
    /// inline, in `submit`. (Making it async, IOSQE_ASYNC, so that a kernel worker on the other CPU does the copy,
    /// was measured and dropped: the lines then reach this thread from the other CPU, which cost as much again,
    /// and more CPU in all: `pipesfs exec` 94-102 ms inline against 104-113 ms async.)
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, at offset: Int, tag: UInt64) {
        prepare(write: false, fd, buffer, count, offset, tag)
    }

    private func prepare(write: Bool, _ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int, _ tag: UInt64, async: Bool = false) {
        precondition(hasRoom, "URing: more operations than entries")
        prepared += 1
        guard fallbackReason == nil else {
            queued.append((write, fd, buffer, count, offset, tag))
            return
        }
        var next = io_uring_get_sqe(&ring)
        if next == nil {  // the submission queue is full of prepared entries: hand them to the kernel first
            _ = io_uring_submit(&ring)
            next = io_uring_get_sqe(&ring)
        }
        guard let sqe = next else { preconditionFailure("URing: no submission entry after submitting") }
        if write {
            io_uring_prep_write(sqe, fd, buffer, UInt32(count), UInt64(offset))
            if async { io_uring_sqe_set_flags(sqe, UInt32(1) << UInt32(IOSQE_ASYNC_BIT)) }
        } else {
            io_uring_prep_read(sqe, fd, buffer, UInt32(count), UInt64(offset))
        }
        sqe.pointee.user_data = tag
    }

    /// Starts what was queued (io_uring_submit). In the fallback the operations run here, one after another.
    func submit() {
        if fallbackReason == nil {
            var rc: Int32
            repeat { rc = io_uring_submit(&ring) } while rc == -EINTR
            inFlight += prepared
            prepared = 0
            return
        }
        for op in queued {
            var r: Int
            repeat {
                r = op.write ? pwrite(op.fd, op.buffer, op.count, off_t(op.offset)) : pread(op.fd, op.buffer, op.count, off_t(op.offset))
            } while r < 0 && errno == EINTR
            done.append((op.tag, r < 0 ? -errno : Int32(r)))
        }
        queued.removeAll(keepingCapacity: true)
        inFlight += prepared
        prepared = 0
    }

    /// A completion if one is there (io_uring_peek_cqe), without waiting.
    func poll() -> (tag: UInt64, result: Int32)? {
        guard inFlight > 0 else { return nil }
        if fallbackReason != nil {
            inFlight -= 1
            return done.removeFirst()
        }
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        guard io_uring_peek_cqe(&ring, &cqe) == 0, let c = cqe else { return nil }
        inFlight -= 1
        let r = (c.pointee.user_data, c.pointee.res)
        io_uring_cqe_seen(&ring, c)
        return r
    }

    /// Waits for one completion (io_uring_wait_cqe): its tag and result (bytes, or -errno).
    func complete() -> (tag: UInt64, result: Int32) {
        precondition(inFlight > 0, "URing: nothing in flight")
        inFlight -= 1
        if fallbackReason != nil { return done.removeFirst() }
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        var rc: Int32
        repeat { rc = io_uring_wait_cqe(&ring, &cqe) } while rc == -EINTR
        guard rc == 0, let c = cqe else { return (0, rc) }
        let r = (c.pointee.user_data, c.pointee.res)
        io_uring_cqe_seen(&ring, c)
        return r
    }
}
