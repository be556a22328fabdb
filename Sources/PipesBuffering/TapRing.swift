#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

/// What a tap reader is handed: up to two contiguous segments of the ring (it may wrap), a list of segments (blocks
/// gathered in place from a shared ring), end of stream, or an errno. The pointers are valid only for the duration
/// of the delivery call.
public enum ReadOutcome {
    case data(UnsafeRawBufferPointer, UnsafeRawBufferPointer)
    case segments(UnsafeBufferPointer<iovec>)
    case endOfStream
    case error(Int32)

    /// The bytes delivered, copied (tests, and readers that want one buffer).
    public var bytes: [UInt8] {
        switch self {
        case .data(let a, let b): return Array(a) + Array(b)
        case .segments(let v):
            var out: [UInt8] = []
            for s in v where s.iov_len > 0 { out += UnsafeRawBufferPointer(start: s.iov_base, count: s.iov_len) }
            return out
        case .endOfStream, .error: return []
        }
    }
}

/// What happens to a record that does not fit because the reader lags.
public enum OverflowPolicy: String, Sendable {
    /// The producer is asked to wait (backpressure): no data is lost. Capture files and injection use this.
    case block
    /// The record is dropped for this reader and counted. Live capture uses this: the wire cannot wait.
    case drop
}

/// The outcome of `TapRing.append`.
public struct AppendResult: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The record was stored (otherwise it was dropped and counted).
    public static let stored = AppendResult(rawValue: 1)
    /// The ring went from empty to non-empty and a reader waits or polls: call `serviceWaiters()`.
    public static let becameReadable = AppendResult(rawValue: 2)
    /// A `.block` ring is past its high-water mark: the producer should `waitUntilDrained`.
    public static let congested = AppendResult(rawValue: 4)
}

/// A byte ring between one producer (the graph) and one reader (an open tap file).
///
/// Records are appended whole or not at all; the reader sees a byte stream. Indices are free-running and the
/// capacity is a power of two (as in io_uring and netmap). A read that finds the ring empty is parked and
/// delivered later by `serviceWaiters()`, which the runtime calls once per batch (signal moderation, §6.2).
/// All state is guarded by `lock`.
public final class TapRing: @unchecked Sendable {
    public typealias Delivery = (ReadOutcome) -> Void

    private struct Parked {
        let id: UInt64
        let max: Int
        let deliver: Delivery
    }

    /// Current size in bytes. A `.block` ring grows (doubling, up to `maxCapacity`) rather than drop a record
    /// that overshoots the high-water mark, and shrinks back to `initialCapacity` once a reader emptied it.
    public private(set) var capacity: Int
    public let initialCapacity: Int
    public let maxCapacity: Int
    private var mask: Int
    private var storage: UnsafeMutableRawPointer
    /// Free-running write and read indices (bytes).
    private var head = 0
    private var tail = 0
    /// `.block` or `.drop`; the graph re-evaluates it after every change (a tap moved under a live source
    /// becomes lossy).
    public private(set) var policy: OverflowPolicy
    /// Above this fill level a `.block` ring asks its producer to wait. Fixed: growth absorbs overshoot only.
    public let highWater: Int
    private let lock = ConditionLock()
    private var parked: [Parked] = []
    /// Called once (outside the lock) when the ring is no longer congested: parked writers retry.
    private var drainWaiters: [() -> Void] = []
    /// Times the ring grew to keep a record on a lossless stream.
    public private(set) var grown: UInt64 = 0
    private var producerEnded = false
    private var readerGone = false
    /// Records dropped for this reader (policy `.drop`, or a record larger than the ring).
    public private(set) var dropped: UInt64 = 0
    public private(set) var bytesDelivered: UInt64 = 0
    /// Called (outside the ring lock) when the ring becomes readable, for poll notifications.
    private var readableNotifier: (@Sendable () -> Void)?
    /// `copyOut` is copying outside the lock: bytes from `tail` on are being read (no other reader may move
    /// `tail`), and a resize must not free the storage they are read from.
    private var copying = false
    /// Storage a resize replaced while `copying`; the copier frees it.
    private var retired: UnsafeMutableRawPointer?

    public init(capacity requested: Int = 4 << 20, policy: OverflowPolicy, maxCapacity: Int = 64 << 20) {
        var c = 4096
        while c < requested { c <<= 1 }
        capacity = c
        initialCapacity = c
        self.maxCapacity = max(c, maxCapacity)
        mask = c - 1
        storage = .allocate(byteCount: c, alignment: 64)
        self.policy = policy
        highWater = c / 2
    }

    deinit {
        storage.deallocate()
        retired?.deallocate()
    }

    // MARK: producer side (called with the graph's space lock held)

    /// Appends one record made of an optional header and a body, whole or not at all.
    @inline(__always)
    public func append(header: UnsafeRawBufferPointer?, body: UnsafeRawBufferPointer) -> AppendResult {
        let n = (header?.count ?? 0) + body.count
        lock.lock()
        defer { lock.unlock() }
        if readerGone || producerEnded { return [] }
        let used = head - tail
        if n > capacity - used {
            // Lossless: several producers may each overshoot the high-water mark by a record before they
            // wait; grow rather than lose one. Lossy, or past the hard limit: drop and count.
            if policy == .drop || used + n > maxCapacity {
                dropped &+= 1
                return []
            }
            grow(toHold: used + n)
        }
        if let h = header { copyIn(h) }
        copyIn(body)
        var r: AppendResult = .stored
        if used == 0 && (!parked.isEmpty || readableNotifier != nil) { r.insert(.becameReadable) }
        if policy == .block && used + n >= highWater { r.insert(.congested) }
        return r
    }

    @inline(__always)
    private func copyIn(_ src: UnsafeRawBufferPointer) {
        guard let base = src.baseAddress, src.count > 0 else { return }
        let start = head & mask
        let first = min(src.count, capacity - start)
        (storage + start).copyMemory(from: base, byteCount: first)
        if first < src.count {
            storage.copyMemory(from: base + first, byteCount: src.count - first)
        }
        head &+= src.count
        prefetchAhead()
    }

    /// How far ahead of `head` the producer asks for its lines. The reader (another thread, on another CPU) read
    /// them on the last lap, so each is a transfer of ownership; without the hint the stores of a record wait for
    /// them, and the unlock after the append (a locked instruction, a full fence) waits for the stores (perf:
    /// most of pcapout's time per record in `pthread_mutex_unlock`). As DBuf does for small records.
    private static let prefetchDistance = 2048
    /// The index up to which lines have been asked for.
    private var prefetched = 0

    @inline(__always)
    private func prefetchAhead() {
        let end = head &+ TapRing.prefetchDistance
        if prefetched < head || prefetched - head > TapRing.prefetchDistance { prefetched = head }
        // Only free lines: the reader may still be reading the lap before within a capacity of `tail`.
        let limit = min(end, tail &+ capacity)
        while prefetched < limit {
            pipes_prefetch_write(storage + (prefetched & mask))
            prefetched &+= 64
        }
    }

    @inline(__always)
    private var congestedLocked: Bool { policy == .block && !readerGone && !producerEnded && head - tail >= highWater }

    /// True when a `.block` ring is filled past its high-water mark: the producer should wait.
    public var isCongested: Bool { lock.withLock { congestedLocked } }

    /// Registers `f` to run once (on the thread that drains the ring, without the ring lock) when the ring is no
    /// longer congested. Returns false, without registering, if it is not congested now.
    public func whenDrained(_ f: @escaping () -> Void) -> Bool {
        lock.withLock {
            guard congestedLocked else { return false }
            drainWaiters.append(f)
            return true
        }
    }

    /// Changes the overflow policy (the stream feeding the tap changed). Waiting producers are released when
    /// the ring becomes lossy.
    public func setPolicy(_ p: OverflowPolicy) {
        let fire: [() -> Void] = lock.withLock {
            if policy == p { return [] }
            policy = p
            lock.broadcast()
            return takeDrainWaitersLocked()
        }
        for f in fire { f() }
    }

    /// Waits (producer side, without the space lock) until the reader drained below the high-water mark,
    /// went away, or `timeout` passed. Returns true when no longer congested.
    public func waitUntilDrained(timeoutNanoseconds: Int64) -> Bool {
        lock.withLock { lock.wait(until: { !congestedLocked }, timeoutNanoseconds: timeoutNanoseconds) }
    }

    /// Delivers data to parked reads and calls the poll notifier. Call without the space lock if possible.
    public func serviceWaiters() {
        var notifier: (@Sendable () -> Void)?
        var fire: [() -> Void] = []
        lock.withLock {
            if deliverParkedLocked() { fire = takeDrainWaitersLocked() }
            if head != tail || producerEnded { notifier = readableNotifier }
        }
        notifier?()
        for f in fire { f() }
    }

    /// The producer will write no more: readers get what is buffered, then end of stream.
    public func endOfStream() {
        let fire = lock.withLock { () -> [() -> Void] in
            producerEnded = true
            lock.broadcast()
            return takeDrainWaitersLocked()
        }
        serviceWaiters()
        for f in fire { f() }
    }

    public var isEnded: Bool { lock.withLock { producerEnded } }

    // MARK: reader side

    /// Reads up to `max` bytes. Delivers at once if data (or end of stream) is there, otherwise parks the read
    /// under `id` until data arrives or `cancel(id:)`. Returns true if it was delivered at once.
    @discardableResult
    /// `interrupted` is checked under the ring lock just before parking (an interrupt that arrived earlier
    /// found nothing to cancel): if it says so, the read ends with EINTR instead.
    public func read(max: Int, id: UInt64, nonBlocking: Bool = false, interrupted: () -> Bool = { false },
                     deliver: @escaping Delivery) -> Bool {
        lock.lock()
        if head != tail {
            let drained = deliverLocked(max: max, deliver)
            let fire = drained ? takeDrainWaitersLocked() : []
            lock.unlock()
            for f in fire { f() }
            return true
        }
        if producerEnded || readerGone {
            lock.unlock()
            deliver(.endOfStream)
            return true
        }
        if nonBlocking || interrupted() {
            lock.unlock()
            deliver(.error(nonBlocking ? EAGAIN : EINTR))
            return true
        }
        parked.append(Parked(id: id, max: max, deliver: deliver))
        lock.unlock()
        return false
    }

    /// Copies up to `max` queued bytes into `buffer` and moves past them, without waiting (the file writer's
    /// read: no closure, so nothing is allocated per call). Returns how many.
    ///
    /// The copy runs outside the ring lock, so the producer (which appends under it, with the space lock held)
    /// never waits for a megabyte to be copied: only the indices are read and moved under the lock. The bytes
    /// being copied lie between `tail` and `head`, where the producer never writes; a resize meanwhile (the
    /// producer growing the ring) keeps the old storage until the copy ends (`retired`). One copier at a time:
    /// a second one, or a locked read, finds nothing while a copy is running.
    public func copyOut(into buffer: UnsafeMutableRawPointer, max: Int) -> Int {
        lock.lock()
        let n = min(max, head - tail)
        if n <= 0 || copying { lock.unlock(); return 0 }
        copying = true
        let start = tail & mask, size = capacity, from = storage
        lock.unlock()
        let first = min(n, size - start)
        buffer.copyMemory(from: from + start, byteCount: first)
        if first < n { (buffer + first).copyMemory(from: from, byteCount: n - first) }
        lock.lock()
        copying = false
        if let old = retired { old.deallocate(); retired = nil }
        let wasCongested = head - tail >= highWater
        tail &+= n
        bytesDelivered &+= UInt64(n)
        if head == tail && capacity > initialCapacity { resize(initialCapacity) }
        var fire: [() -> Void] = []
        if wasCongested && head - tail < highWater {
            lock.broadcast()
            fire = takeDrainWaitersLocked()
        }
        lock.unlock()
        for f in fire { f() }
        return n
    }

    /// Cancels a parked read (an interrupt): it is answered with EINTR. No-op if already delivered.
    public func cancel(id: UInt64) {
        lock.lock()
        guard let i = parked.firstIndex(where: { $0.id == id }) else { lock.unlock(); return }
        let p = parked.remove(at: i)
        lock.unlock()
        p.deliver(.error(EINTR))
    }

    /// The reader closed its file: parked reads end, the producer stops writing and stops waiting on it.
    public func closeReader() {
        let fire = lock.withLock { () -> [() -> Void] in
            readerGone = true
            let ps = parked
            parked.removeAll()
            for p in ps { p.deliver(.endOfStream) }
            lock.broadcast()
            return takeDrainWaitersLocked()
        }
        for f in fire { f() }
    }

    public func setReadableNotifier(_ f: (@Sendable () -> Void)?) {
        lock.withLock { readableNotifier = f }
    }

    /// Bytes waiting to be read.
    public var available: Int { lock.withLock { head - tail } }
    public var isReadable: Bool { lock.withLock { head != tail || producerEnded } }

    // MARK: internals (lock held)

    /// Returns true if a delivery took the ring below its high-water mark.
    private func deliverParkedLocked() -> Bool {
        var drained = false
        while !parked.isEmpty {
            if head != tail {
                let p = parked.removeFirst()
                if deliverLocked(max: p.max, p.deliver) { drained = true }
            } else if producerEnded {
                let p = parked.removeFirst()
                p.deliver(.endOfStream)
            } else {
                break
            }
        }
        return drained
    }

    /// Hands the reader up to `max` bytes. Returns true if that took the ring below its high-water mark.
    private func deliverLocked(max: Int, _ deliver: Delivery) -> Bool {
        precondition(!copying, "TapRing: read and copyOut on the same ring (it has one reader)")
        let n = min(max, head - tail)
        let start = tail & mask
        let first = min(n, capacity - start)
        let a = UnsafeRawBufferPointer(start: storage + start, count: first)
        let b = UnsafeRawBufferPointer(start: first < n ? storage : nil, count: n - first)
        deliver(.data(a, b))
        let wasCongested = head - tail >= highWater
        tail &+= n
        bytesDelivered &+= UInt64(n)
        if head == tail && capacity > initialCapacity { resize(initialCapacity) }
        if wasCongested && head - tail < highWater {
            lock.broadcast()
            return true
        }
        return false
    }

    private func takeDrainWaitersLocked() -> [() -> Void] {
        if drainWaiters.isEmpty { return [] }
        defer { drainWaiters = [] }
        return drainWaiters
    }

    private func grow(toHold need: Int) {
        var c = capacity
        while c < need { c <<= 1 }
        resize(min(c, maxCapacity))
        grown &+= 1
    }

    /// Moves the buffered bytes into storage of `newCapacity` (a power of two). Indices stay valid: they are
    /// free-running and only ever taken modulo the capacity.
    private func resize(_ newCapacity: Int) {
        let used = head - tail
        precondition(used <= newCapacity)
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 64)
        let newMask = newCapacity - 1
        var copied = 0
        while copied < used {
            let from = (tail &+ copied) & mask
            let to = (tail &+ copied) & newMask
            let n = min(used - copied, capacity - from, newCapacity - to)
            (fresh + to).copyMemory(from: storage + from, byteCount: n)
            copied += n
        }
        if copying && retired == nil {
            retired = storage  // the copy reads from it
        } else {  // (a second resize within one copy: the storage it replaces is not the one being read)
            storage.deallocate()
        }
        storage = fresh
        capacity = newCapacity
        mask = newMask
    }
}
