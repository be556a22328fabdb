#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

/// Where an execution space's thread sleeps when none of its input rings holds a record (§6.2): one futex word
/// for all of them, so a thread that consumes several rings never sleeps on one ring's word while another fills.
///
/// Producers ring it only while the consumer sleeps (a seq_cst fence and one load otherwise), so a busy consumer
/// costs its producers no system call.
public final class Doorbell: @unchecked Sendable {
    /// [0]: the futex word (bumped per ring), [1]: set while the consumer is about to sleep or sleeps.
    private let words: UnsafeMutablePointer<UInt32>
    /// Times the consumer was woken by a ring (not by its timeout).
    public var rings: UInt64 { pipes_load_relaxed64(counts) }
    private let counts: UnsafeMutablePointer<UInt64>

    public init() {
        words = .allocate(capacity: 2)
        words.initialize(repeating: 0, count: 2)
        counts = .allocate(capacity: 1)
        counts.initialize(to: 0)
    }

    deinit {
        words.deallocate()
        counts.deallocate()
    }

    /// Wakes the consumer if it sleeps. Call after publishing (the fence orders the publication before the
    /// check; the consumer fences between announcing its sleep and looking for work).
    @inline(__always)
    public func ring() {
        pipes_fence_seq_cst()
        if pipes_load_acquire32(words + 1) == 0 { return }
        ringSlow()
    }

    @inline(never)
    private func ringSlow() {
        _ = pipes_fetch_add32(words, 1)
        _ = pipes_futex_wake(words, 1)
        pipes_store_relaxed64(counts, pipes_load_relaxed64(counts) &+ 1)
    }

    /// Consumer: announces a sleep. Look for work after this; if there is none, `sleep(token:)`, else
    /// `cancelSleep()`.
    public func prepareSleep() -> UInt32 {
        pipes_store_release32(words + 1, 1)
        pipes_fence_seq_cst()
        return pipes_load_acquire32(words)
    }

    /// Consumer: sleeps until a ring since `prepareSleep` returned `token`, or `timeoutNanoseconds`.
    public func sleep(token: UInt32, timeoutNanoseconds: UInt64) {
        _ = pipes_futex_wait(words, token, max(1000, timeoutNanoseconds))
        pipes_store_release32(words + 1, 0)
    }

    public func cancelSleep() { pipes_store_release32(words + 1, 0) }

    /// Wakes the consumer whether or not it announced a sleep (control changes, shutdown).
    public func wake() {
        _ = pipes_fetch_add32(words, 1)
        _ = pipes_futex_wake(words, 1)
    }
}

/// A ring on an edge between two execution spaces (§6.2): one producing space appends records under its own
/// lock, one consuming space's thread reads them in place and runs them through the filters on its side.
///
/// A `DBuf` with one reader, self-scaling by deck-cut (4 MiB in use, up to 64 MiB when producers overshoot).
/// Signalling is moderated: the consumer's doorbell rings every `threshold` records and at the end of a
/// producer's batch (deferred by the space's moderation delay), and only while the consumer sleeps.
///
/// Lossless (`.block`, no live source upstream): past a quarter of the ring the producer is told it is
/// congested, ends its batch and waits outside its lock (`BatchRing`), exactly as for a lagging tap; the
/// consumer wakes it when it drains below the mark. Lossy (`.drop`, a live source upstream): the producer never
/// waits; records the consumer was overtaken on are counted (`dropped`), so delivered + dropped = produced.
public final class ChannelRing: BatchRing, @unchecked Sendable {
    public let policy: OverflowPolicy
    public let ring: DBuf
    public let reader: DBufReader
    /// Moderation (§6.2), per ring: the consumer is signalled every `threshold` records, and what a producer's
    /// batch leaves unsignalled at most `delayNanoseconds` after the batch (0: at its end). Set under the graph
    /// lock (it holds the producer's).
    public var threshold: UInt32
    public var delayNanoseconds: UInt32 = 200_000
    private let doorbell: Doorbell
    /// Producer side (the producing space's lock).
    private var sinceSignal: UInt32 = 0
    private var cachedMinTail: UInt64 = 0
    /// Records appended; records refused (a lossless ring overshot by its whole maximum: counted, not lost silently).
    public private(set) var produced: UInt64 = 0
    public private(set) var refused: UInt64 = 0
    /// Set while the ring is in the producer's batch list for an end-of-batch signal (producer's lock).
    public var pendingSignal = false
    /// Consumer side: a private copy of the record being pushed from a `.drop` ring (the producer may overwrite
    /// the ring's bytes meanwhile).
    private var scratch: UnsafeMutableRawBufferPointer
    /// [0]: room sequence (futex word producers wait on), [1]: producers waiting.
    private let room: UnsafeMutablePointer<UInt32>
    private let drainLock = ConditionLock()
    private var drainWaiters: [() -> Void] = []
    private let watcher = OnDemandWorker(name: "channel-drain")
    private var closed = false

    /// The size in use (log2 bytes) and the most it grows to by deck-cut.
    public static let defaultSizeLog2 = 22
    public static let maxLog2 = 26

    public init(policy: OverflowPolicy, doorbell: Doorbell, sizeLog2: Int = ChannelRing.defaultSizeLog2,
                threshold: Int = 32, ringID: UInt64 = 0) throws(RingError) {
        self.policy = policy
        self.doorbell = doorbell
        self.threshold = UInt32(max(1, threshold))
        let mapped = Swift.max(sizeLog2, ChannelRing.maxLog2)
        ring = try DBuf(sizeLog2: mapped, policy: policy == .drop ? .drop : .block, maxReaders: 1,
                        threshold: max(1, threshold), timeoutNanoseconds: 20_000_000, ringID: ringID, cutLog2: sizeLog2,
                        scaling: RingScaling(method: .deckCut, minLog2: sizeLog2, maxLog2: mapped, quietLaps: 2))
        guard let r = ring.attach() else { throw RingError(EBUSY, "channel ring: no reader slot") }
        reader = r
        scratch = .allocate(byteCount: 2048, alignment: 16)
        room = .allocate(capacity: 2)
        room.initialize(repeating: 0, count: 2)
    }

    deinit {
        reader.detach()
        scratch.deallocate()
        room.deallocate()
    }

    // MARK: producer (the producing space's lock held)

    /// The bytes before a record's payload: the block's serial (8), flow tag (4) and flow marks (4).
    public static let prefixBytes = 16

    /// Appends one record: `serial`, `flow` and `flowMarks` (the prefix, read back by `split`) then the bytes.
    /// `.stored` unless refused, plus `.congested` when a lossless ring is past its mark.
    @inline(__always)
    public func append(_ bytes: UnsafeRawBufferPointer, serial: UInt64, flow: UInt32 = 0, flowMarks: UInt8 = 0,
                       classValue: UInt32, wireLength: Int, linkType: UInt16,
                       timestampNanoseconds: Int64) -> AppendResult {
        let r = ring
        let pre = ChannelRing.prefixBytes
        guard let p = r.reserve(bytes.count &+ pre, wait: false) else {
            refused &+= 1
            return policy == .block ? .congested : []
        }
        p.storeBytes(of: serial, as: UInt64.self)
        p.storeBytes(of: flow, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: UInt32(flowMarks), toByteOffset: 12, as: UInt32.self)
        if let b = bytes.baseAddress, bytes.count > 0 { (p + pre).copyMemory(from: b, byteCount: bytes.count) }
        r.commit(bytes.count &+ pre, classValue: classValue, wireLength: wireLength, linkType: linkType,
                 timestampNanoseconds: timestampNanoseconds)
        produced &+= 1
        sinceSignal &+= 1
        if sinceSignal >= threshold {
            sinceSignal = 0
            doorbell.ring()
        }
        if policy == .block {
            // As `ExportRing`: the distance to a stale slowest tail bounds what is unread; only when it reaches the
            // mark is the exact figure needed.
            let head = pipes_load_relaxed64(r.f.head)
            let limit = ChannelRing.congestionLimit(r)
            if head &- cachedMinTail >= limit {
                cachedMinTail = pipes_load_acquire64(RingFields.tail(r.f.slots))
                if UInt64(r.unreadBytes) >= limit { return [.stored, .congested] }
            }
        }
        return .stored
    }

    /// End of a batch (or the moderation delay after it): rings the consumer if it sleeps and records wait.
    public func signal() {
        pendingSignal = false
        sinceSignal = 0
        doorbell.ring()
    }

    /// No more appends (the edge went away, or the ring was replaced): the consumer reads what is there.
    public func close() {
        drainLock.withLock { closed = true }
        ring.close()
        doorbell.ring()
        wakeProducers()
        fireDrainWaiters()
    }

    /// Where congestion starts: a quarter of the part of the ring in use (its deck-cut).
    private static func congestionLimit(_ r: DBuf) -> UInt64 {
        (UInt64(1) << UInt64(pipes_load_acquire32(r.f.cutLog2))) / 4
    }

    /// True when a waiting producer may go on: the consumer drained to half the congestion mark. The gap
    /// (hysteresis) lets each wait cover many blocks instead of one wake-up per block at the mark.
    private var hasRoom: Bool {
        if policy != .block { return true }
        if drainLock.withLock({ closed }) { return true }
        return UInt64(ring.unreadBytes) < ChannelRing.congestionLimit(ring) / 2
    }

    // MARK: consumer (the consuming space's lock held)

    /// The next record, or nil. On a `.drop` ring the bytes are a private copy, valid until the next `next()`;
    /// records the producer overtook are skipped and counted in `dropped`.
    @inline(__always)
    public func next() -> DBufReader.Record? {
        if policy == .block { return reader.peek() }
        return nextCopied()
    }

    private func nextCopied() -> DBufReader.Record? {
        while let rec = reader.peek() {
            let n = rec.bytes.count
            if n > scratch.count {
                scratch.deallocate()
                scratch = .allocate(byteCount: max(n, scratch.count * 2), alignment: 16)
            }
            if n > 0 { scratch.baseAddress!.copyMemory(from: rec.bytes.baseAddress!, byteCount: n) }
            if !reader.isStillValid(rec) { continue }  // overwritten while copied: lost (the reader counts it)
            return DBufReader.Record(copyOf: rec, bytes: UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
        }
        return nil
    }

    /// The serial, flow tag and flow marks a record carries (its prefix) and its payload after them.
    @inline(__always)
    public static func split(_ record: DBufReader.Record)
        -> (serial: UInt64, flow: UInt32, flowMarks: UInt8, bytes: UnsafeRawBufferPointer) {
        let b = record.bytes
        let pre = ChannelRing.prefixBytes
        guard b.count >= pre, let base = b.baseAddress else { return (0, 0, 0, b) }
        return (base.loadUnaligned(as: UInt64.self), base.loadUnaligned(fromByteOffset: 8, as: UInt32.self),
                UInt8(truncatingIfNeeded: base.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
                UnsafeRawBufferPointer(start: base + pre, count: b.count - pre))
    }

    /// Moves past the record `next()` returned.
    @inline(__always)
    public func consume(_ record: DBufReader.Record) { reader.consume(record) }

    /// After a pass of `consume`s: wakes producers waiting for room once the ring is below its mark (the drain
    /// watcher, for parked writes, is one of them). Cheap when nobody waits.
    public func consumerProgress() {
        pipes_fence_seq_cst()
        if pipes_load_acquire32(room + 1) == 0 { return }
        if !hasRoom { return }
        wakeProducers()
    }

    private func wakeProducers() {
        _ = pipes_fetch_add32(room, 1)
        _ = pipes_futex_wake(room, Int32.max)
    }

    /// True when the consumer has read every record appended so far. Consumer side (its lock held).
    public var isDrained: Bool { reader.peek() == nil }

    /// True when a record may wait (the producer's head is past the consumer's published tail). Any thread; only
    /// a hint (a trailing pad also counts), used before sleeping.
    public var mayHaveRecords: Bool {
        pipes_load_acquire64(ring.f.head) != pipes_load_acquire64(RingFields.tail(ring.f.slots))
    }

    /// Records the consumer received and lost (overtaken on a `.drop` ring).
    public var delivered: UInt64 { reader.delivered }
    public var dropped: UInt64 { reader.dropped }

    /// Consumer wake-ups the producers rang.
    public var wakeups: UInt64 { doorbell.rings }

    // MARK: BatchRing (producer side, without its lock)

    public func serviceWaiters() { doorbell.ring() }

    public var isCongested: Bool {
        if policy != .block { return false }
        if drainLock.withLock({ closed }) { return false }
        return UInt64(ring.unreadBytes) >= ChannelRing.congestionLimit(ring)
    }

    public func whenDrained(_ f: @escaping () -> Void) -> Bool {
        guard isCongested else { return false }
        drainLock.withLock { drainWaiters.append(f) }
        watcher.request { [self] in
            while !hasRoom { _ = waitUntilDrained(timeoutNanoseconds: 10_000_000) }
            fireDrainWaiters()
        }
        return true
    }

    private func fireDrainWaiters() { drainLock.runTaking(&drainWaiters) }

    public func waitUntilDrained(timeoutNanoseconds: Int64) -> Bool {
        let deadline = monotonicNow() &+ UInt64(max(0, timeoutNanoseconds))
        while !hasRoom {
            let now = monotonicNow()
            if now >= deadline { return false }
            let seen = pipes_load_acquire32(room)
            _ = pipes_fetch_add32(room + 1, 1)
            pipes_fence_seq_cst()
            if !hasRoom { _ = pipes_futex_wait(room, seen, max(1000, min(deadline - now, 10_000_000))) }
            _ = pipes_fetch_add32(room + 1, UInt32.max)
        }
        return true
    }
}

extension DBufReader.Record {
    /// The same record with its bytes elsewhere (a private copy).
    init(copyOf r: DBufReader.Record, bytes: UnsafeRawBufferPointer) {
        self.init(bytes: bytes, classValue: r.classValue, sequence: r.sequence, wireLength: r.wireLength,
                  linkType: r.linkType, timestampNanoseconds: r.timestampNanoseconds, position: r.position, span: r.span)
    }
}
