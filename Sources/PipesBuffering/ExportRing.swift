#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

/// What a producer's batch keeps to do after it releases the space lock for a ring it wrote to: wake readers,
/// wait for a lossless reader that lags. `TapRing` (a FUSE reader's ring) and `ExportRing` (a node's shared
/// ring for the client library) are both.
public protocol BatchRing: AnyObject {
    /// Wakes readers (called once per batch: moderation, §6.2).
    func serviceWaiters()
    /// True when a lossless ring is past its high-water mark: its producer should wait.
    var isCongested: Bool { get }
    /// Registers `f` to run once when the ring is no longer congested; false (not registered) if it is not.
    func whenDrained(_ f: @escaping () -> Void) -> Bool
    /// Waits, without the space lock, until the ring is no longer congested or the timeout passed.
    func waitUntilDrained(timeoutNanoseconds: Int64) -> Bool
}

extension TapRing: BatchRing {}

/// `producer.closed` values beyond 0 (open): the stream ended, or the daemon moved it to a new ring (its policy
/// changed) and readers must ask for the ring again.
public let ringClosedEnd: UInt32 = 1
public let ringClosedReplaced: UInt32 = 2

/// A node's stream published in a shared `DBuf` (the multiway pipe of §5.1): readers in other processes map it
/// through the client library (`libpipes`) and read with no copy and no FUSE round trip.
///
/// The producer side (`append`, `flush`, `setPolicy`, `endOfStream`) runs under the space lock, like every
/// producer of the graph. A lossless ring never makes the producer wait inside the lock: past half full it
/// reports congestion, and the producer ends its batch and waits outside the lock (`waitUntilDrained`), as it
/// does for FUSE taps. Congestion starts at a quarter of the ring, so producers that each push one more block
/// before they notice have three quarters of room. A lossy ring (a live source upstream) overwrites, and each
/// reader counts its losses.
public final class ExportRing: BatchRing, @unchecked Sendable {
    /// The ring readers map now. Replaced (and the old one closed with `ringClosedReplaced`) when the policy
    /// changes. Read it under the space lock.
    public private(set) var ring: DBuf
    public private(set) var policy: OverflowPolicy
    public let sizeLog2: Int
    public let ringID: UInt64
    public let maxReaders: Int
    /// Records that did not fit (a lossless ring overshot by a whole ring: counted, never overwritten).
    public private(set) var refused: UInt64 = 0
    /// Set while the ring is in the current batch's flush list. Space lock held.
    public var pendingFlush = false
    /// The slowest reader's tail as last computed (producer side, space lock held).
    private var cachedMinTail: UInt64 = 0
    private var ended = false

    private let drainLock = ConditionLock()
    private var drainWaiters: [() -> Void] = []
    private let watcher = OnDemandWorker(name: "export-drain")

    public init(policy: OverflowPolicy, sizeLog2: Int = 24, maxReaders: Int = 64, ringID: UInt64) throws(RingError) {
        self.policy = policy
        self.sizeLog2 = sizeLog2
        self.ringID = ringID
        self.maxReaders = maxReaders
        ring = try ExportRing.makeRing(sizeLog2, policy, maxReaders, ringID)
    }

    /// Every batch ends with a flush (`Space.end`), which bounds the latency; the readers' timeout is only a
    /// safety net, so it can be long and spare sleeping readers periodic wake-ups.
    static let readerTimeoutNanoseconds: UInt64 = 20_000_000

    /// The most a shared ring grows to (deck-cut, §5.4): the region is mapped at this size, pages materialise
    /// only when the cut reaches them.
    static let maxLog2 = 26

    /// A ring that uses `1 << sizeLog2` bytes and grows by deck-cut when a producer overshoots (a wrap would
    /// overwrite what a reader has not read), up to 64 MiB, then shrinks back after quiet laps: lossless
    /// streams are not refused a block when several producers each push one past the congestion mark.
    static func makeRing(_ sizeLog2: Int, _ p: OverflowPolicy, _ maxReaders: Int, _ id: UInt64) throws(RingError) -> DBuf {
        let mapped = Swift.max(sizeLog2, maxLog2)
        return try DBuf(sizeLog2: mapped, policy: p == .drop ? .drop : .block, maxReaders: maxReaders, threshold: 128,
                        timeoutNanoseconds: readerTimeoutNanoseconds, ringID: id, cutLog2: sizeLog2,
                        scaling: RingScaling(method: .deckCut, minLog2: sizeLog2, maxLog2: mapped, quietLaps: 2))
    }

    /// Where congestion starts: a quarter of the part of the ring in use (its deck-cut). Any thread.
    private static func congestionLimit(_ r: DBuf) -> UInt64 {
        (UInt64(1) << UInt64(pipes_load_acquire32(r.f.cutLog2))) / 4
    }

    deinit {
        if !ended { ring.close() }
    }

    // MARK: producer (space lock held)

    /// Publishes one block. Returns `.stored` unless it was refused, plus `.congested` when a lossless ring is
    /// now past half full.
    @inline(__always)
    public func append(_ bytes: UnsafeRawBufferPointer, classValue: UInt32, wireLength: Int, linkType: UInt16,
                       timestampNanoseconds: Int64) -> AppendResult {
        if ended { return [] }  // a stream that ended takes no more (a rewind opens a new ring: `reopen`)
        let r = ring
        guard let p = r.reserve(bytes.count, wait: false) else {
            refused &+= 1
            return policy == .block ? .congested : []
        }
        if let b = bytes.baseAddress, bytes.count > 0 { p.copyMemory(from: b, byteCount: bytes.count) }
        r.commit(bytes.count, classValue: classValue, wireLength: wireLength, linkType: linkType,
                 timestampNanoseconds: timestampNanoseconds)
        if policy == .block {
            // Tails only move forward, so a slowest tail computed earlier is never too far ahead: scan the
            // reader slots (a cache line each) only when that stale figure says the ring may be congested.
            // The index distance to a stale slowest tail is an upper bound of what is unread (it also counts the
            // parts of deck-cut laps that pads skip): only when it reaches the limit is the exact figure needed.
            let head = pipes_load_relaxed64(r.f.head)
            let limit = ExportRing.congestionLimit(r)
            if head &- cachedMinTail >= limit {
                cachedMinTail = minTail(r)
                if UInt64(r.unreadBytes) >= limit { return [.stored, .congested] }
            }
        }
        return .stored
    }

    /// True if a reader sleeps on the ring now. The head was published before this (with a full fence here):
    /// a reader that goes to sleep later sees it first and does not sleep, so with no sleeper now nobody needs a
    /// wake-up for what was published. Space lock held.
    public var hasSleepers: Bool {
        pipes_fence_seq_cst()
        return pipes_load_acquire32(ring.f.sleepers) != 0
    }

    /// Wakes sleeping readers (end of a batch). Space lock held.
    public func flush() {
        pendingFlush = false
        ring.flush()
    }

    /// Changes the policy: a new ring, and readers of the old one are told to ask again. Space lock held.
    public func setPolicy(_ p: OverflowPolicy) throws(RingError) {
        if p == policy || ended { return }
        let fresh = try ExportRing.makeRing(sizeLog2, p, maxReaders, ringID)
        let old = ring
        // Every reader of the old ring has its slot (same index, same pid) in the new one from the start, at
        // its beginning: what the producer writes before a reader follows is kept for it (and, on a lossless
        // stream, holds the producer back as the reader would).
        for i in 0..<min(old.maxReaders, fresh.maxReaders) {
            let s = old.f.slots + i
            guard pipes_load_acquire32(RingFields.state(s)) == PIPES_READER_ACTIVE.rawValue else { continue }
            let n = fresh.f.slots + i
            pipes_store_release32(RingFields.pid(n), pipes_load_acquire32(RingFields.pid(s)))
            pipes_store_release64(RingFields.tail(n), 0)
            pipes_store_release32(RingFields.state(n), PIPES_READER_ACTIVE.rawValue)
        }
        drainLock.withLock {
            ring = fresh
            policy = p
        }
        cachedMinTail = 0
        pipes_store_release32(old.f.closed, ringClosedReplaced)
        pipes_fence_seq_cst()
        _ = pipes_fetch_add32(old.f.wakeSeq, 1)
        _ = pipes_futex_wake(old.f.wakeSeq, Int32.max)
        fireDrainWaiters()
    }

    /// The stream ended: readers get what is there, then end of stream. Space lock held.
    public func endOfStream() {
        if ended { return }
        drainLock.withLock { ended = true }
        ring.close()
        fireDrainWaiters()
        finishTaps()
    }

    /// Answers what waits on the ring now (parked reads get their data, then end of stream; poll notifiers
    /// fire) on this thread, and waits until the service thread is idle: after the stream ended nothing
    /// answers a FUSE request later (unmount destroys the session right after).
    private func finishTaps() {
        let taps = serviceLock.withLock { Array(watched.values) }
        for t in taps { _ = t.service() }
        serviceLock.withLock {
            for t in taps where !t.needsService { watched[ObjectIdentifier(t)] = nil }
        }
        service.waitIdle()
    }

    /// The ring readers attach to now (any thread).
    public func currentRing() -> DBuf { drainLock.withLock { ring } }

    /// True once the stream ended (until `reopen`).
    public var isEnded: Bool { drainLock.withLock { ended } }

    /// Clients of the ring service holding this ring (their leases): while there are any, the stream is
    /// wanted. Space lock held.
    public var clients = 0
    public var clientRequested: Bool { clients > 0 }

    /// The stream goes on after it had ended (a capture file rewound): a new ring; readers of the old one had
    /// their end of stream. Space lock held.
    public func reopen() throws(RingError) {
        if !ended { return }
        let fresh = try ExportRing.makeRing(sizeLog2, policy, maxReaders, ringID)
        drainLock.withLock {
            ring = fresh
            ended = false
        }
        cachedMinTail = 0
    }

    /// Claims a reader slot of the current ring for a reader in another process (`pid`), at the head: the
    /// stream is held for it from now on, before it has even mapped the ring (a demand-driven source started for
    /// it cannot run ahead of it). Returns the slot and the sequence number of the next record. Space lock held.
    public func claimSlot(pid: UInt32) -> (slot: Int, sequence: UInt64)? {
        let r = ring
        for i in 0..<r.maxReaders {
            let s = r.f.slots + i
            guard pipes_cas32(RingFields.state(s), PIPES_READER_FREE.rawValue, PIPES_READER_ACTIVE.rawValue) != 0 else { continue }
            let head = pipes_load_acquire64(r.f.head)
            pipes_store_relaxed64(RingFields.records(s), 0)
            pipes_store_relaxed64(RingFields.dropped(s), 0)
            pipes_store_release32(RingFields.pid(s), pid)
            pipes_store_release64(RingFields.tail(s), head)
            return (i, pipes_load_acquire64(r.f.records))
        }
        return nil
    }

    /// Frees every slot of the current ring held for process `pid` (its last client connection closed).
    public func releaseSlots(of pid: UInt32) {
        let r = ring
        for i in 0..<r.maxReaders {
            let s = r.f.slots + i
            if pipes_load_acquire32(RingFields.state(s)) == PIPES_READER_ACTIVE.rawValue && pipes_load_acquire32(RingFields.pid(s)) == pid {
                pipes_store_release32(RingFields.state(s), PIPES_READER_FREE.rawValue)
            }
        }
    }

    /// Frees a slot `claimSlot` gave out (a client that could not use it).
    public func releaseSlot(_ i: Int) {
        let r = ring
        guard i >= 0 && i < r.maxReaders else { return }
        pipes_store_release32(RingFields.state(r.f.slots + i), PIPES_READER_FREE.rawValue)
    }

    // MARK: in-process readers (FUSE reads of `all`)

    private let serviceLock = ConditionLock()
    private var watched: [ObjectIdentifier: RingTap] = [:]
    private let service = OnDemandWorker(name: "ring-taps")

    /// Serves `tap`'s parked reads and poll notifier from the ring's service thread until it no longer waits.
    func watch(_ tap: RingTap) {
        serviceLock.withLock { watched[ObjectIdentifier(tap)] = tap }
        service.request { [self] in serveTaps() }
    }

    /// The service thread: wakes when the producer signals the ring (moderation, like any reader), and hands
    /// what arrived to the taps waiting for it.
    private func serveTaps() {
        while true {
            let taps = serviceLock.withLock { Array(watched.values) }
            if taps.isEmpty { return }
            let r = currentRing()
            let seen = pipes_load_acquire32(r.f.wakeSeq)
            let head = pipes_load_acquire64(r.f.head)
            for t in taps { _ = t.service() }
            serviceLock.withLock {
                for t in taps where !t.needsService { watched[ObjectIdentifier(t)] = nil }
            }
            if serviceLock.withLock({ watched.isEmpty }) { return }
            _ = pipes_fetch_add32(r.f.sleepers, 1)
            pipes_fence_seq_cst()
            if pipes_load_acquire64(r.f.head) == head && r.closedState == 0 && currentRing() === r {
                _ = pipes_futex_wait(r.f.wakeSeq, seen, ExportRing.readerTimeoutNanoseconds)
            }
            _ = pipes_fetch_add32(r.f.sleepers, UInt32.max)
        }
    }

    // MARK: backpressure (any thread)

    /// The slowest active reader's tail (the head if there is none).
    private func minTail(_ r: DBuf) -> UInt64 {
        let head = pipes_load_acquire64(r.f.head)
        var m = head
        for i in 0..<r.maxReaders {
            let s = r.f.slots + i
            guard pipes_load_acquire32(RingFields.state(s)) == PIPES_READER_ACTIVE.rawValue else { continue }
            let t = pipes_load_acquire64(RingFields.tail(s))
            if head &- t > head &- m { m = t }
        }
        return m
    }

    public var isCongested: Bool {
        let (r, p, e) = drainLock.withLock { (ring, policy, ended) }
        return p == .block && !e && pipes_load_acquire32(r.f.closed) == 0
            && UInt64(r.unreadBytes) >= ExportRing.congestionLimit(r)
    }

    public func serviceWaiters() {}

    public func whenDrained(_ f: @escaping () -> Void) -> Bool {
        guard isCongested else { return false }
        drainLock.withLock { drainWaiters.append(f) }
        watcher.request { [self] in watchUntilDrained() }
        return true
    }

    public func waitUntilDrained(timeoutNanoseconds: Int64) -> Bool {
        let deadline = monotonicNow() &+ UInt64(max(0, timeoutNanoseconds))
        while isCongested {
            let now = monotonicNow()
            if now >= deadline { return false }
            sleepForRoom(min(deadline - now, 1_000_000))
        }
        return true
    }

    /// True while FUSE readers wait for data: a batch then signals at once instead of after the moderation delay.
    public var hasWaitingTaps: Bool { serviceLock.withLock { !watched.isEmpty } }

    /// Readers that move their tail bump `consumers.room_seq` while `producer.waiting_for_room` is non-zero; a
    /// reader process that died is reclaimed. Bounded, so a missed wake-up costs at most `ns`.
    private func sleepForRoom(_ ns: UInt64) {
        let r = drainLock.withLock { ring }
        r.reclaimDeadReaders()
        let seen = pipes_load_acquire32(r.f.roomSeq)
        _ = pipes_fetch_add32(r.f.roomFlag, 1)
        pipes_fence_seq_cst()
        if isCongested { _ = pipes_futex_wait(r.f.roomSeq, seen, max(1000, ns)) }
        _ = pipes_fetch_add32(r.f.roomFlag, UInt32.max)
    }

    private func watchUntilDrained() {
        while isCongested { sleepForRoom(1_000_000) }
        fireDrainWaiters()
    }

    private func fireDrainWaiters() { drainLock.runTaking(&drainWaiters) }

    /// Active reader slots now (for stats).
    public var readers: Int {
        let r = drainLock.withLock { ring }
        var n = 0
        for i in 0..<r.maxReaders where pipes_load_acquire32(RingFields.state(r.f.slots + i)) == PIPES_READER_ACTIVE.rawValue { n += 1 }
        return n
    }

    /// Records published on the current ring.
    public var produced: UInt64 { ring.produced }
}

@inline(__always)
func monotonicNow() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

extension DBuf {
    /// `producer.closed`: 0 open, `ringClosedEnd`, or `ringClosedReplaced`.
    public var closedState: UInt32 { pipes_load_acquire32(f.closed) }
}
