#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI
import Synchronization

/// Why a ring could not be created or mapped: a one-line reason and the errno.
public struct RingError: Error, CustomStringConvertible, Sendable {
    public var errno: Int32
    public var message: String
    public init(_ errno: Int32, _ message: String) {
        self.errno = errno
        self.message = message
    }
    public var description: String { message }
}

/// How a ring adapts its size at run time to the distance between producer and readers (paper §5.4,
/// self-scaling ring buffers): it grows under pressure and shrinks after staying under a quarter full.
public struct RingScaling: Sendable, Equatable {
    public enum Method: Sendable, Equatable {
        /// A fixed size (the cut may still be moved by hand with `setCut`).
        case none
        /// One region of the maximum size; the producer uses only the first `cutCapacity` bytes of each lap.
        case deckCut
        /// The ring moves to a new region of the new size; readers follow it.
        case reallocate
    }

    public var method: Method
    /// The ring never shrinks below `1 << minLog2` bytes.
    public var minLog2: Int
    /// The ring never grows beyond `1 << maxLog2` bytes (deck-cut: never beyond the mapped size either).
    public var maxLog2: Int
    /// Decision moments (laps, when the producer wraps) the ring must stay under a quarter full before it
    /// halves.
    public var quietLaps: Int

    public init(method: Method, minLog2: Int = 12, maxLog2: Int = 26, quietLaps: Int = 4) {
        self.method = method
        self.minLog2 = minLog2
        self.maxLog2 = maxLog2
        self.quietLaps = max(1, quietLaps)
    }

    public static let none = RingScaling(method: .none)
    /// Deck-cut between 4 KiB and the mapped size. Its watermarks are closer (two quiet laps) than
    /// reallocation's: moving the cut costs nothing (paper §5.4).
    public static let deckCut = RingScaling(method: .deckCut, maxLog2: 34, quietLaps: 2)
    /// Reallocation between 4 KiB and 64 MiB.
    public static let reallocate = RingScaling(method: .reallocate)
}

/// One memory region holding a ring: a memfd mapped here, header and data area. A ring that reallocates moves
/// to a `successor` region; readers still reading this one keep it alive (paper §5.4: "as long as consumers
/// are accessing the old region, both regions must be kept in memory").
final class RingRegion: @unchecked Sendable {
    let fd: Int32
    let ownsFD: Bool
    let base: UnsafeMutableRawPointer
    let mappedSize: Int
    let header: UnsafeMutablePointer<pipes_ring_header>
    let data: UnsafeMutableRawPointer
    let capacity: Int
    let sizeLog2: Int
    let mask: UInt64
    let f: RingFields
    /// The region the ring moved to. Written under the ring's lock, before `producer.moved` is set.
    var successor: RingRegion?

    private init(fd: Int32, ownsFD: Bool, base: UnsafeMutableRawPointer, sizeLog2: Int) {
        self.fd = fd
        self.ownsFD = ownsFD
        self.base = base
        self.sizeLog2 = sizeLog2
        capacity = 1 << sizeLog2
        mappedSize = Int(PIPES_RING_HEADER_SIZE) + capacity
        header = base.assumingMemoryBound(to: pipes_ring_header.self)
        data = base + Int(PIPES_RING_HEADER_SIZE)
        mask = UInt64(capacity - 1)
        f = RingFields(base)
    }

    deinit {
        munmap(base, mappedSize)
        if ownsFD { Glibc.close(fd) }
    }

    /// A new zero-filled region in a new memfd (every reader slot free, every index 0).
    static func create(sizeLog2: Int) throws(RingError) -> RingRegion {
        let size = Int(PIPES_RING_HEADER_SIZE) + (1 << sizeLog2)
        let fd = pipes_ring_memfd("pipes-dbuf", UInt64(size))
        if fd < 0 { throw RingError(-fd, "memfd_create: \(String(cString: strerror(-fd)))") }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno
            Glibc.close(fd)
            throw RingError(e, "mmap of a \(size)-byte ring: \(String(cString: strerror(e)))")
        }
        return RingRegion(fd: fd, ownsFD: true, base: p, sizeLog2: sizeLog2)
    }

    /// Maps a region another process created; checks that it is a ring of this version. `fd` stays the caller's.
    static func map(fd: Int32) throws(RingError) -> RingRegion {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw RingError(errno, "fstat: \(String(cString: strerror(errno)))") }
        let size = Int(st.st_size)
        guard size > Int(PIPES_RING_HEADER_SIZE) else { throw RingError(EINVAL, "not a ring: \(size) bytes") }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw RingError(errno, "mmap: \(String(cString: strerror(errno)))")
        }
        let h = p.assumingMemoryBound(to: pipes_ring_header.self)
        let magic = pipes_load_acquire64(RingFields(p).magic)
        let sizeLog2 = Int(h.pointee.info.size_log2)
        let cutLog2 = Int(pipes_load_acquire32(RingFields(p).cutLog2))
        guard magic == PIPES_RING_MAGIC, h.pointee.info.version == PIPES_RING_VERSION,
              (12...34).contains(sizeLog2), Int(PIPES_RING_HEADER_SIZE) + (1 << sizeLog2) == size,
              (12...sizeLog2).contains(cutLog2), DBuf.Policy(rawValue: h.pointee.info.policy) != nil
        else {
            munmap(p, size)
            throw RingError(EINVAL, "not a PipesFS ring of version \(PIPES_RING_VERSION)")
        }
        return RingRegion(fd: fd, ownsFD: false, base: p, sizeLog2: sizeLog2)
    }
}

/// A Beltway data ring (DBuf, paper §5.2) in shared memory: one producer, up to `maxReaders` readers, each
/// with a private position (the paper's multiway pipe, §5.1). The layout is `pipes_ring.h`, so a reader may be
/// another process (the client library) mapping the same memfd, and later the kernel module.
///
/// The ring may scale at run time (§5.4), by deck-cut (`setCut`, within one region sized for the maximum) or by
/// reallocation (`reallocate`, to a new region that readers follow), by hand or automatically (`scaling`).
///
/// The producer side (`write`, `reserve`/`commit`, `flush`, `close`, `setCut`, `reallocate`, the counters) must
/// be used by one thread at a time; each `DBufReader` by one thread at a time; `attach` from any thread. Nothing
/// on the data path is locked: indices are published with release stores and read with acquire loads. The
/// region (`fd`, `capacity`, `data`, `mask`, `f`) changes only in `reallocate`, on the producer's thread and
/// under `lock`; other threads that read them while the ring may reallocate take `lock`.
public final class DBuf: @unchecked Sendable {
    public enum Policy: UInt32, Sendable {
        /// IPC: the producer waits for the slowest reader; nothing is lost.
        case block = 0
        /// Packet reception: the producer never waits; lagging readers lose the oldest records, counted exactly.
        case drop = 1
    }

    /// The memfd behind the ring (pass it to another process to share the ring). Changes when it reallocates.
    public private(set) var fd: Int32
    /// The data area of the region: the mapped size (deck-cut: the maximum; `cutCapacity` is what is in use).
    public private(set) var capacity: Int
    public let policy: Policy
    private(set) var mask: UInt64
    private(set) var header: UnsafeMutablePointer<pipes_ring_header>
    private(set) var data: UnsafeMutableRawPointer
    /// Pointers to the shared fields, resolved once per region.
    private(set) var f: RingFields
    /// The region the producer writes. Swapped only by `reallocate`, under `lock`.
    private(set) var region: RingRegion
    /// Guards `region` and the regions' `successor` links against `attach`, `DBufReader.detach` and readers
    /// following the ring (all rare).
    let lock = ConditionLock()
    let maxReaders: Int
    /// The moderation timeout readers sleep at most (from the ring's `info`).
    public let timeoutNanoseconds: UInt64
    /// How the ring scales by itself (§5.4).
    public let scaling: RingScaling

    // Producer-private state (the shared copies are in `header.pointee.producer`).
    private var head: UInt64 = 0
    private var records: UInt64 = 0
    private var oldest: UInt64 = 0
    /// The smallest tail of the active readers, as last computed (only ever too small: it is refreshed when
    /// the ring looks full).
    private var cachedMinTail: UInt64 = 0
    private var sinceWake: UInt32 = 0
    private var lastWakeHead: UInt64 = 0
    private let threshold: UInt32
    /// Deck-cut: bytes of each lap the producer writes (`capacity` when the ring is not cut).
    private var cut: UInt64
    private var cutLog2: Int
    /// The largest payload for the cut, and a quarter of it (the moderation wake-up distance).
    private var recordLimit: Int
    private var quarter: UInt64
    /// Laps in a row the ring stayed under a quarter full (automatic shrinking).
    private var quietLaps = 0
    /// Deck-cut memory above `from` (an offset in the data area) to give back once every reader is at `until`.
    private var pendingRelease: (from: UInt64, until: UInt64)?

    /// When `reclaimDeadReaders` last looked (monotonic ns); any thread.
    private let lastReclaim = Atomic<UInt64>(0)
    static let reclaimInterval: UInt64 = 10_000_000

    /// Times the ring grew and shrank (by itself or by hand), for statistics and tests.
    public private(set) var grows = 0
    public private(set) var shrinks = 0

    /// The largest payload one record may carry now: a record and a pad record must fit below the cut together.
    /// (A scaling ring grows, up to its maximum, for a longer record.)
    public var maxRecordLength: Int { recordLimit }

    /// Bytes of each lap in use now (deck-cut), else the ring's size.
    public var cutCapacity: Int { Int(cut) }

    /// The size in use as a power of two: the cut (deck-cut) or the region's size.
    public var sizeLog2: Int { cutLog2 }

    /// Creates a ring in a new memfd (the producer side): `1 << sizeLog2` bytes of data area, of which the
    /// producer uses the first `1 << cutLog2` (deck-cut, default all). Moderation (§6.2): sleeping readers are
    /// woken every `threshold` records, and a record published without a wake-up is seen at most
    /// `timeoutNanoseconds` later (readers sleep no longer than that).
    ///
    /// `scaling` (§5.4): `.deckCut` moves the cut between `minLog2` and `sizeLog2` (the region is sized for the
    /// maximum, untouched pages take no memory); `.reallocate` starts at `sizeLog2` and moves between `minLog2`
    /// and `maxLog2`.
    public init(sizeLog2: Int, policy: Policy, maxReaders: Int = 16, threshold: Int = 32,
                timeoutNanoseconds: UInt64 = 1_000_000, ringID: UInt64 = 0, cutLog2: Int? = nil,
                scaling: RingScaling = .none) throws(RingError) {
        guard (12...34).contains(sizeLog2) else { throw RingError(EINVAL, "ring size 2^\(sizeLog2): want 2^12 to 2^34 bytes") }
        guard (1...Int(PIPES_RING_MAX_READERS)).contains(maxReaders) else {
            throw RingError(EINVAL, "maxReaders \(maxReaders): want 1 to \(PIPES_RING_MAX_READERS)")
        }
        let cutLog2 = cutLog2 ?? sizeLog2
        guard (12...sizeLog2).contains(cutLog2) else { throw RingError(EINVAL, "cut 2^\(cutLog2): want 2^12 to the ring's size") }
        var scaling = scaling
        switch scaling.method {
        case .none: break
        case .deckCut:
            scaling.maxLog2 = sizeLog2
            guard (12...sizeLog2).contains(scaling.minLog2) else { throw RingError(EINVAL, "scaling minimum 2^\(scaling.minLog2): want 2^12 to the ring's size") }
        case .reallocate:
            guard cutLog2 == sizeLog2, 12 <= scaling.minLog2, scaling.minLog2 <= sizeLog2, sizeLog2 <= scaling.maxLog2, scaling.maxLog2 <= 34 else {
                throw RingError(EINVAL, "reallocation between 2^\(scaling.minLog2) and 2^\(scaling.maxLog2) bytes starting at 2^\(sizeLog2), uncut")
            }
        }
        let r = try RingRegion.create(sizeLog2: sizeLog2)
        region = r
        fd = r.fd
        capacity = r.capacity
        mask = r.mask
        header = r.header
        data = r.data
        f = r.f
        self.maxReaders = maxReaders
        self.timeoutNanoseconds = max(1000, timeoutNanoseconds)
        self.policy = policy
        self.threshold = UInt32(max(1, threshold))
        self.scaling = scaling
        self.cutLog2 = cutLog2
        cut = UInt64(1) << cutLog2
        recordLimit = DBuf.recordLimit(cut)
        quarter = cut / 4
        DBuf.initHeader(r, sizeLog2: sizeLog2, cutLog2: cutLog2, policy: policy, maxReaders: maxReaders,
                        threshold: UInt32(max(1, threshold)), timeout: max(1000, timeoutNanoseconds), ringID: ringID)
    }

    /// Maps a ring another process created (the reader side). `fd` stays the caller's.
    public init(mapping fd: Int32) throws(RingError) {
        let r = try RingRegion.map(fd: fd)
        region = r
        self.fd = fd
        capacity = r.capacity
        mask = r.mask
        header = r.header
        data = r.data
        f = r.f
        let h = r.header
        maxReaders = min(Int(h.pointee.info.max_readers), Int(PIPES_RING_MAX_READERS))
        timeoutNanoseconds = max(1000, h.pointee.info.timeout_ns)
        policy = Policy(rawValue: h.pointee.info.policy)!
        threshold = max(1, h.pointee.info.threshold)
        scaling = .none
        cutLog2 = Int(pipes_load_acquire32(r.f.cutLog2))
        cut = UInt64(1) << cutLog2
        recordLimit = DBuf.recordLimit(cut)
        quarter = cut / 4
        // A mapping may also take over producing (another process): continue from the published indices.
        head = pipes_load_acquire64(f.head)
        records = pipes_load_acquire64(f.records)
        oldest = pipes_load_acquire64(f.oldest)
        cachedMinTail = minTail()
    }

    private static func recordLimit(_ cut: UInt64) -> Int { Int(cut) / 2 - MemoryLayout<pipes_rec>.size - Int(PIPES_REC_ALIGN) }

    /// Fills in a new region's header; the magic last, with release order (a reader that sees it sees the rest).
    private static func initHeader(_ r: RingRegion, sizeLog2: Int, cutLog2: Int, policy: Policy, maxReaders: Int,
                                   threshold: UInt32, timeout: UInt64, ringID: UInt64) {
        let h = r.header
        h.pointee.info.version = PIPES_RING_VERSION
        h.pointee.info.header_size = PIPES_RING_HEADER_SIZE
        h.pointee.info.size_log2 = UInt32(sizeLog2)
        h.pointee.info.policy = policy.rawValue
        h.pointee.info.max_readers = UInt32(maxReaders)
        h.pointee.info.threshold = threshold
        h.pointee.info.timeout_ns = timeout
        h.pointee.info.ring_id = ringID
        pipes_store_release32(r.f.cutLog2, UInt32(cutLog2))
        pipes_store_release64(r.f.magic, PIPES_RING_MAGIC)
    }

    // MARK: producer

    /// Appends one record. A `.block` ring waits for room when `wait` (else returns false); a `.drop` ring
    /// overwrites the oldest records. Returns false for a payload longer than `maxRecordLength` too.
    @discardableResult
    public func write(_ payload: UnsafeRawBufferPointer, classValue: UInt32 = 1, wireLength: Int? = nil,
                      linkType: UInt16 = 0, timestampNanoseconds: Int64 = 0, wait: Bool = true) -> Bool {
        guard let p = reserve(payload.count, wait: wait) else { return false }
        if let b = payload.baseAddress, payload.count > 0 { p.copyMemory(from: b, byteCount: payload.count) }
        commit(payload.count, classValue: classValue, wireLength: wireLength ?? payload.count, linkType: linkType,
               timestampNanoseconds: timestampNanoseconds)
        return true
    }

    /// Reserves room for a record of `length` payload bytes and returns where to write the payload (zero-copy
    /// production); publish it with `commit`. Nil when it does not fit (`.block` without `wait`) or is too long.
    public func reserve(_ length: Int, wait: Bool = true) -> UnsafeMutableRawPointer? {
        if length > recordLimit || length < 0 {
            if length < 0 || !growToFit(length) { return nil }
        }
        let span = pipes_rec_span(UInt32(length))
        var offset = head & mask
        // A record never crosses the cut: pad to the next lap of the region (deck-cut leaves the rest unused).
        var pad = offset &+ span > cut ? UInt64(capacity) &- offset : 0
        if pad != 0 && (scaling.method != .none || pendingRelease != nil) {
            atWrap(span)  // a decision moment (§5.4): may move the cut or the region
            offset = head & mask
            pad = offset &+ span > cut ? UInt64(capacity) &- offset : 0
        }
        let need = pad &+ span
        switch policy {
        case .block:
            if head &+ need &- cachedMinTail > UInt64(capacity) {
                cachedMinTail = minTail()
                while head &+ need &- cachedMinTail > UInt64(capacity) {
                    if growByReallocation() { return reserve(length, wait: wait) }  // grow instead of waiting
                    if !wait { return nil }
                    waitForRoom(need)
                    cachedMinTail = minTail()
                }
            }
            // Small records: ask for the lines a few records ahead while this side is busy with this one: known
            // free (behind the slowest tail by a lap), so no reader is reading them. Their previous lap is in the
            // readers' caches; without the hint each new line's ownership transfer stalls the producer's stores
            // (`bench ipc`, 512 B: ~25 GB/s with it, ~14.5 without). Not for records of a kilobyte and more: there
            // the copy streams and the hint cost a third of the throughput at 4 KiB (28-34 GB/s with it, 43-49
            // without; AMD EPYC, 2 cores).
            if span <= DBuf.prefetchSpanLimit {
                let ahead = head &+ need &+ DBuf.prefetchDistance
                if ahead &+ 64 &- cachedMinTail <= UInt64(capacity) {
                    pipes_prefetch_write(data + Int(ahead & mask))
                    pipes_prefetch_write(data + Int((ahead &+ 64) & mask))
                }
            }
        case .drop:
            if scaling.method == .reallocate && head &+ need &- cachedMinTail > UInt64(capacity)
                && cutLog2 < scaling.maxLog2 {
                // It would overwrite what a reader has not read: grow instead (up to the maximum).
                cachedMinTail = minTail()
                if head &+ need &- cachedMinTail > UInt64(capacity) && growByReallocation() {
                    return reserve(length, wait: wait)
                }
            }
            // Move `oldest` past what this record will overwrite, and publish it before writing.
            var o = oldest
            while head &+ need &- o > UInt64(capacity) {
                let r = pipes_rec_at(data, mask, o)!
                o &+= r.pointee.length == PIPES_REC_PAD ? pipes_rec_pad_skip(r, mask, o) : pipes_rec_span(r.pointee.length)
            }
            if o != oldest {
                oldest = o
                pipes_store_release64(f.oldest, o)
                pipes_fence_seq_cst()  // readers validate copies against `oldest`: order it before the overwrite
            }
        }
        if pad != 0 {
            pipes_rec_set_pad(pipes_rec_at(data, mask, head)!, pad)
            head &+= pad
        }
        return data + Int(head & mask) + MemoryLayout<pipes_rec>.size
    }

    /// Publishes the record reserved last.
    public func commit(_ length: Int, classValue: UInt32 = 1, wireLength: Int, linkType: UInt16 = 0,
                       timestampNanoseconds: Int64 = 0) {
        let r = pipes_rec_at(data, mask, head)!
        r.pointee.length = UInt32(length)
        r.pointee.class_value = classValue
        r.pointee.sequence = records
        r.pointee.wire_length = UInt32(clamping: wireLength)
        r.pointee.link_type = linkType
        r.pointee.flags = 0
        r.pointee.timestamp_ns = timestampNanoseconds
        head &+= pipes_rec_span(UInt32(length))
        records &+= 1
        pipes_store_relaxed64(f.records, records)
        pipes_store_release64(f.head, head)
        sinceWake &+= 1
        // Moderation (§6.2): wake sleepers every `threshold` records, or every quarter ring of bytes so large
        // records do not fill the ring before anyone is woken.
        if sinceWake >= threshold || head &- lastWakeHead >= quarter { flush() }
    }

    /// Wakes sleeping readers if records were published since the last wake-up (call at the end of a batch:
    /// it bounds the latency the moderation threshold adds).
    public func flush() {
        if sinceWake == 0 { return }
        sinceWake = 0
        lastWakeHead = head
        pipes_fence_seq_cst()  // the head store before the sleepers load (pairs with the reader's fence)
        let sleepers = pipes_load_acquire32(f.sleepers)
        if sleepers == 0 { return }
        _ = pipes_fetch_add32(f.wakeSeq, 1)
        _ = pipes_futex_wake(f.wakeSeq, Int32.max)
        pipes_store_relaxed64(f.wakeups, pipes_load_relaxed64(f.wakeups) &+ 1)
    }

    /// Ends the stream: readers get what is there, then end of stream.
    public func close() {
        pipes_store_release32(f.closed, 1)
        sinceWake = max(sinceWake, 1)
        flush()
    }

    /// Records published so far.
    public var produced: UInt64 { records }

    /// Bytes published that the slowest active reader has not read yet (on a `.drop` ring, of those still
    /// kept), without the parts of deck-cut laps that pads skip. Any thread (it reads the shared indices).
    public var unreadBytes: Int {
        let h = pipes_load_acquire64(f.head)
        var m = h
        let floor = policy == .drop ? pipes_load_acquire64(f.oldest) : h
        for i in 0..<maxReaders {
            let s = f.slots + i
            guard pipes_load_acquire32(RingFields.state(s)) == PIPES_READER_ACTIVE.rawValue else { continue }
            var t = pipes_load_acquire64(RingFields.tail(s))
            if policy == .drop && h &- t > h &- floor { t = floor }
            if h &- t > h &- m { m = t }
        }
        let c = UInt64(1) << UInt64(pipes_load_acquire32(f.cutLog2))
        let laps = (h >> UInt64(region.sizeLog2)) &- (m >> UInt64(region.sizeLog2))
        let d = h &- m
        let skipped = laps &* (UInt64(capacity) &- c)
        return Int(laps == 0 ? d : max(d > skipped ? d &- skipped : 0, h & mask))
    }

    private func minTail() -> UInt64 {
        var m = head
        for i in 0..<maxReaders {
            let s = f.slots + i
            guard pipes_load_acquire32(RingFields.state(s)) == PIPES_READER_ACTIVE.rawValue else { continue }
            let t = pipes_load_acquire64(RingFields.tail(s))
            if head &- t > head &- m { m = t }
        }
        return m
    }

    /// The smallest position a reader may still read: on a `.drop` ring a reader behind `oldest` resyncs to it.
    private func neededFrom() -> UInt64 {
        let t = minTail()
        return policy == .drop && head &- t > head &- oldest ? oldest : t
    }

    /// Frees the slots of readers whose process has gone (killed while mapped): a blocking ring would
    /// otherwise wait for them for ever. Called before the producer sleeps for room.
    ///
    /// At most once per `reclaimInterval` (callers that sleep for room call it before every sleep, and with many
    /// readers a `kill(pid, 0)` per reader per sleep was a visible part of the producer's time): a dead reader
    /// holds the producer at most that much longer.
    public func reclaimDeadReaders() {
        let now = UInt64(monotonicNanoseconds())
        let last = lastReclaim.load(ordering: .relaxed)
        if now &- last < DBuf.reclaimInterval && last != 0 { return }
        lastReclaim.store(now, ordering: .relaxed)
        let me = UInt32(getpid())
        for i in 0..<maxReaders {
            let state = RingFields.state(f.slots + i)
            guard pipes_load_acquire32(state) == PIPES_READER_ACTIVE.rawValue else { continue }
            let pid = pipes_load_acquire32(RingFields.pid(f.slots + i))
            if pid == 0 || pid == me { continue }
            if kill(pid_t(pid), 0) != 0 && errno == ESRCH {
                _ = pipes_cas32(state, PIPES_READER_ACTIVE.rawValue, PIPES_READER_FREE.rawValue)
            }
        }
    }

    /// Spin iterations (with a CPU pause) before a producer or reader sleeps on a futex: on a busy ring the
    /// other side usually moves within microseconds, and a futex round trip costs more than that.
    static let spins = 4000

    /// How far ahead of its position the producer asks for cache lines (bytes), for records up to
    /// `prefetchSpanLimit` bytes long.
    static let prefetchDistance: UInt64 = 2048
    static let prefetchSpanLimit: UInt64 = 1024
    /// A reader that waited takes a batch of this many bytes if the producer publishes them within `batchSpins`.
    static let readBatch: UInt64 = 1024
    static let batchSpins = 48

    private func waitForRoom(_ need: UInt64) {
        flush()  // readers asleep must see what is there, or nobody makes room
        // Hysteresis: a producer that found the ring full spins until a quarter ring more than this record is
        // free, not just the record. Resuming at the first free record would make producer and reader move in
        // lock step, one shared-line transfer of the reader's tail (and, asleep, one wake-up) per record; with a
        // quarter of headroom the producer then writes a quarter ring on its cached tail. Spinning only: once
        // the spin is over, room for the record is enough (a reader that stopped reading costs no extra wait).
        // Each look at a reader's tail takes its line away from the reader, whose next tail store then stalls on
        // getting it back (behind that store, all its later stores wait too): look every 8 pauses (~0.25 µs on
        // current x86), not every pause, over the same spin time.
        let want = need &+ min(quarter, UInt64(capacity) &- need)
        for i in 0..<DBuf.spins {
            pipes_cpu_relax()
            if i & 7 == 7 && head &+ want &- minTail() <= UInt64(capacity) { return }
        }
        reclaimDeadReaders()
        let seqPtr = f.roomSeq
        let flag = f.roomFlag
        let seen = pipes_load_acquire32(seqPtr)
        pipes_store_release32(flag, 1)
        pipes_fence_seq_cst()  // the flag before the tails (pairs with the reader's tail store, then flag load)
        if head &+ need &- minTail() > UInt64(capacity) {
            _ = pipes_futex_wait(seqPtr, seen, 1_000_000)  // bounded: a missed or dead reader costs at most 1 ms
        }
        pipes_store_release32(flag, 0)
    }

    // MARK: scaling (§5.4)

    /// Moves the deck-cut: from the next record on, the producer writes only the first `1 << log2` bytes of
    /// each lap (a producer past a lowered cut pads to the next lap). Memory above a lowered cut is given back
    /// once no reader can need it (`releaseUnusedMemory`). Producer side.
    public func setCut(log2 n: Int) throws(RingError) {
        guard n >= 12 && n <= region.sizeLog2 else {
            throw RingError(EINVAL, "cut 2^\(n): want 2^12 to the ring's size 2^\(region.sizeLog2)")
        }
        let c = UInt64(1) << UInt64(n)
        if c > cut { grows += 1 } else if c < cut { shrinks += 1 }
        applyCut(c)
    }

    private func applyCut(_ c: UInt64) {
        if c == cut { return }
        let capacity = UInt64(capacity)
        // A pad may sit right at the cut (after a record that ends there): keep the page above the cut.
        let from = c &+ 4096
        if c < cut {
            // What lies above the new cut was written before index `until`: the start of this lap, or of the
            // next if the producer is already at or past the cut (its pad goes there too).
            let offset = head & mask
            let until = head &- offset &+ (offset >= c ? capacity : 0)
            if let p = pendingRelease {
                pendingRelease = (min(p.from, from), Int64(bitPattern: until &- p.until) > 0 ? until : p.until)
            } else if from < capacity {
                pendingRelease = (from, until)
            }
        } else if let p = pendingRelease {
            pendingRelease = from >= capacity ? nil : (max(p.from, from), p.until)
        }
        cut = c
        cutLog2 = c.trailingZeroBitCount
        recordLimit = DBuf.recordLimit(c)
        quarter = c / 4
        quietLaps = 0
        pipes_store_release32(f.cutLog2, UInt32(cutLog2))
        if pendingRelease != nil { releaseUnusedMemory() }
    }

    /// Gives the memory above a lowered cut back to the system (fallocate PUNCH_HOLE) if every active reader
    /// has passed the last record written there. Returns true if it did. The producer also calls it when it
    /// wraps. Producer side.
    @discardableResult
    public func releaseUnusedMemory() -> Bool {
        guard let p = pendingRelease else { return false }
        let from = neededFrom()
        guard Int64(bitPattern: from &- p.until) >= 0 else { return false }
        pendingRelease = nil
        if policy == .drop && Int64(bitPattern: p.until &- oldest) > 0 {
            // No reader needs what lies before `until` (a lap start, so a record boundary), but the producer
            // walks from `oldest` when it overwrites: never through the released pages.
            oldest = p.until
            pipes_store_release64(f.oldest, oldest)
        }
        return pipes_ring_release(fd, UInt64(PIPES_RING_HEADER_SIZE) + p.from, UInt64(capacity) - p.from) == 0
    }

    /// The producer is at the cut and about to wrap: a decision moment (§5.4). Grows the cut if the wrap would
    /// overwrite what a reader has not read (and the record fits the current lap under a larger cut); halves
    /// the size after `quietLaps` laps under a quarter full; gives back memory no reader needs any more.
    private func atWrap(_ span: UInt64) {
        if scaling.method != .none {
            let t = neededFrom()
            let offset = head & mask
            let capacity = UInt64(capacity)
            if head &+ (capacity &- offset) &+ span &- t > capacity {
                quietLaps = 0
                if scaling.method == .deckCut && offset &+ span <= capacity && cutLog2 < scaling.maxLog2 {
                    var c = cut << 1
                    while c < offset &+ span { c <<= 1 }
                    applyCut(min(c, UInt64(1) << UInt64(scaling.maxLog2)))
                    grows += 1
                }
                // Reallocation grows in the room check (.block) or before overwriting (.drop).
            } else if head &- t <= quarter {
                quietLaps += 1
                if quietLaps >= scaling.quietLaps && cutLog2 > scaling.minLog2 {
                    quietLaps = 0
                    if scaling.method == .deckCut {
                        applyCut(cut >> 1)
                        shrinks += 1
                    } else {
                        // Only when what readers still need fits the half without straddling; else next lap.
                        do {
                            try reallocate(sizeLog2: cutLog2 - 1)
                        } catch {}
                    }
                }
            } else {
                quietLaps = 0
            }
        }
        if pendingRelease != nil { releaseUnusedMemory() }
    }

    /// A record of `length` bytes is too long for the size in use: grow until it fits, if the ring scales.
    private func growToFit(_ length: Int) -> Bool {
        if scaling.method == .none { return false }
        var n = cutLog2
        while n < scaling.maxLog2 && DBuf.recordLimit(UInt64(1) << UInt64(n)) < length { n += 1 }
        guard DBuf.recordLimit(UInt64(1) << UInt64(n)) >= length else { return false }
        if scaling.method == .deckCut {
            applyCut(UInt64(1) << UInt64(n))
            grows += 1
            return true
        }
        do { try reallocate(sizeLog2: n) } catch { return false }
        return true
    }

    /// Under pressure, a reallocating ring doubles (up to its maximum) instead of waiting or overwriting.
    private func growByReallocation() -> Bool {
        guard scaling.method == .reallocate && cutLog2 < scaling.maxLog2 else { return false }
        do { try reallocate(sizeLog2: cutLog2 + 1) } catch { return false }
        return true
    }

    /// Moves the ring to a new region (a new memfd) of `1 << sizeLog2` bytes while it is in use (reallocation,
    /// §5.4). Byte indices are kept: the window readers still need is copied to the same indices, with the
    /// reader slots, so tails stay valid; readers in this process follow by themselves once they have read
    /// the old region to its end (`pipes_ring.h` says what a reader in another process does). Growing always
    /// works; shrinking a `.block` ring only when that window fits the new size without a record straddling
    /// its end (EAGAIN otherwise: try again when readers have caught up), while a `.drop` ring shrinks at once,
    /// losing its oldest records as needed (counted by the readers as drops). The ring is uncut afterwards.
    /// Producer side.
    public func reallocate(sizeLog2 n: Int) throws(RingError) {
        guard (12...34).contains(n) else { throw RingError(EINVAL, "ring size 2^\(n): want 2^12 to 2^34 bytes") }
        guard pipes_load_acquire32(f.closed) == 0 else { throw RingError(EINVAL, "the ring is closed") }
        if n == region.sizeLog2 && cut == UInt64(capacity) { return }
        let newCapacity = UInt64(1) << UInt64(n)
        let newMask = newCapacity - 1
        var lo = neededFrom()
        if policy == .drop && newCapacity < UInt64(capacity) {
            // A drop ring shrinks at any time: it loses its oldest records (readers count them, as when they are
            // overwritten) up to the first from which the rest fits without straddling a lap of the new size.
            var i = lo
            while i != head {
                let r = pipes_rec_at(data, mask, i)!
                let isPad = r.pointee.length == PIPES_REC_PAD
                let step = isPad ? pipes_rec_pad_skip(r, mask, i) : pipes_rec_span(r.pointee.length)
                let end = i &+ (isPad ? UInt64(PIPES_REC_ALIGN) : step)
                if head &- i > newCapacity || (i & ~newMask) != ((end &- 1) & ~newMask) { lo = i &+ step }
                i &+= step
            }
        }
        guard head &- lo <= newCapacity else {
            throw RingError(EAGAIN, "\(head &- lo) bytes are still needed: more than 2^\(n)")
        }
        // The records in [lo, head): each must lie within one lap of the new size (always so when growing).
        var runs: [(UInt64, UInt64)] = []
        var runStart = lo
        var i = lo
        while i != head {
            let r = pipes_rec_at(data, mask, i)!
            let isPad = r.pointee.length == PIPES_REC_PAD
            let step = isPad ? pipes_rec_pad_skip(r, mask, i) : pipes_rec_span(r.pointee.length)
            let end = i &+ (isPad ? UInt64(PIPES_REC_ALIGN) : step)  // a pad is its first 8 bytes
            if newCapacity < UInt64(capacity) && (i & ~newMask) != ((end &- 1) & ~newMask) {
                throw RingError(EAGAIN, "a record straddles the end of a 2^\(n)-byte lap")
            }
            if isPad {
                runs.append((runStart, end))
                runStart = i &+ step
            }
            i &+= step
        }
        runs.append((runStart, head))
        let next = try RingRegion.create(sizeLog2: n)
        let old = region
        DBuf.initHeader(next, sizeLog2: n, cutLog2: n, policy: policy, maxReaders: maxReaders,
                        threshold: old.header.pointee.info.threshold, timeout: old.header.pointee.info.timeout_ns,
                        ringID: old.header.pointee.info.ring_id)
        for (a, b) in runs { DBuf.copy(from: old, to: next, a, b) }
        if policy == .drop { oldest = lo }
        pipes_store_relaxed64(next.f.records, records)
        pipes_store_relaxed64(next.f.oldest, oldest)
        pipes_store_relaxed64(next.f.wakeups, pipes_load_relaxed64(old.f.wakeups))
        pipes_store_release64(next.f.head, head)
        lock.withLock {
            // Readers attach and detach under the lock: the slots copied here are exactly the active ones.
            for s in 0..<maxReaders {
                let from = old.f.slots + s, to = next.f.slots + s
                guard pipes_load_acquire32(RingFields.state(from)) == PIPES_READER_ACTIVE.rawValue else { continue }
                pipes_store_relaxed64(RingFields.records(to), pipes_load_relaxed64(RingFields.records(from)))
                pipes_store_relaxed64(RingFields.dropped(to), pipes_load_relaxed64(RingFields.dropped(from)))
                pipes_store_release32(RingFields.pid(to), pipes_load_acquire32(RingFields.pid(from)))
                pipes_store_release64(RingFields.tail(to), pipes_load_acquire64(RingFields.tail(from)))
                pipes_store_release32(RingFields.state(to), PIPES_READER_ACTIVE.rawValue)
            }
            old.successor = next
            pipes_store_release32(old.f.moved, 1)
            region = next
            fd = next.fd
            capacity = next.capacity
            mask = next.mask
            header = next.header
            data = next.data
            f = next.f
        }
        // Wake readers asleep on the old region: they finish it and follow.
        pipes_fence_seq_cst()
        _ = pipes_fetch_add32(old.f.wakeSeq, 1)
        _ = pipes_futex_wake(old.f.wakeSeq, Int32.max)
        if newCapacity > cut { grows += 1 } else if newCapacity < cut { shrinks += 1 }
        cut = newCapacity
        cutLog2 = n
        recordLimit = DBuf.recordLimit(newCapacity)
        quarter = newCapacity / 4
        quietLaps = 0
        pendingRelease = nil
        cachedMinTail = lo
        lastWakeHead = head
    }

    /// Copies the bytes of indices [a, b) from one region to the same indices of another.
    private static func copy(from src: RingRegion, to dst: RingRegion, _ a: UInt64, _ b: UInt64) {
        let unit = UInt64(min(src.capacity, dst.capacity))
        var i = a
        while i != b {
            let chunk = min(b &- i, unit &- (i & (unit &- 1)))
            (dst.data + Int(i & dst.mask)).copyMemory(from: src.data + Int(i & src.mask), byteCount: Int(chunk))
            i &+= chunk
        }
    }

    /// The region `r` moved to, if it did (readers following the ring).
    func successor(of r: RingRegion) -> RingRegion? { lock.withLock { r.successor } }

    // MARK: readers

    /// The state word of reader slot `i` (0 free, 1 active), for tools and tests.
    public func slotState(_ i: Int) -> UInt32 {
        guard i >= 0 && i < maxReaders else { return 0 }
        return lock.withLock { pipes_load_acquire32(RingFields.state(region.f.slots + i)) }
    }

    /// Attaches a reader at the current head (it sees records published from now on). Nil when every slot is
    /// taken. Any thread.
    public func attach() -> DBufReader? {
        lock.withLock {
            let r = region
            for i in 0..<maxReaders {
                if pipes_cas32(RingFields.state(r.f.slots + i), PIPES_READER_FREE.rawValue, PIPES_READER_ACTIVE.rawValue) != 0 {
                    return DBufReader(ring: self, region: r, slotIndex: i)
                }
            }
            return nil
        }
    }

    /// Takes over reader slot `i`, claimed earlier for this reader (by the runtime, when it moved the stream to
    /// this ring), at the position stored in the slot; `sequence` is the number of the record there. Nil if
    /// the slot is not active. Any thread.
    public func adopt(slot i: Int, sequence: UInt64) -> DBufReader? {
        lock.withLock {
            let r = region
            guard i >= 0 && i < maxReaders,
                  pipes_load_acquire32(RingFields.state(r.f.slots + i)) == PIPES_READER_ACTIVE.rawValue else { return nil }
            return DBufReader(ring: self, region: r, slotIndex: i, at: pipes_load_acquire64(RingFields.tail(r.f.slots + i)),
                              sequence: sequence)
        }
    }
}

/// One reader of a `DBuf`: a private position in the shared ring (paper §5.1). `peek` hands out the next
/// record in place; `consume` moves on; `read` is peek plus a copy. Use from one thread at a time.
///
/// When the ring reallocates, the reader reads the old region to its end and then continues in the new one on
/// its own (same slot, same position).
public final class DBufReader: @unchecked Sendable {
    public let ring: DBuf
    /// The region this reader reads (the ring's, or one the ring has moved away from).
    private(set) var region: RingRegion
    let slotIndex: Int
    private(set) var slot: UnsafeMutablePointer<pipes_ring_reader>
    private var tail: UInt64
    private var cachedHead: UInt64
    private var data: UnsafeMutableRawPointer
    private var mask: UInt64
    private var headPointer: UnsafeMutablePointer<UInt64>
    private var tailPointer: UnsafeMutablePointer<UInt64>
    private var oldestPointer: UnsafeMutablePointer<UInt64>
    private var movedPointer: UnsafeMutablePointer<UInt32>
    private var roomFlag: UnsafeMutablePointer<UInt32>
    private let isBlocking: Bool
    private var nextSequence: UInt64
    /// Records delivered and, on a `.drop` ring, records lost because this reader lagged.
    public private(set) var delivered: UInt64 = 0
    public private(set) var dropped: UInt64 = 0
    private var detached = false
    /// `tail` when this reader last woke a producer waiting for room (moderation of those wake-ups).
    private var wokeProducerAt: UInt64 = 0

    /// Called with the ring's lock held, the slot claimed; the reader starts at `at` (default: the head), whose
    /// record has number `sequence`.
    init(ring: DBuf, region: RingRegion, slotIndex: Int, at start: UInt64? = nil, sequence: UInt64? = nil) {
        self.ring = ring
        self.region = region
        self.slotIndex = slotIndex
        slot = region.f.slots + slotIndex
        data = region.data
        mask = region.mask
        headPointer = region.f.head
        tailPointer = RingFields.tail(slot)
        oldestPointer = region.f.oldest
        movedPointer = region.f.moved
        roomFlag = region.f.roomFlag
        isBlocking = ring.policy == .block
        let h = start ?? pipes_load_acquire64(headPointer)
        tail = h
        cachedHead = h
        nextSequence = sequence ?? pipes_load_acquire64(region.f.records)
        pipes_store_relaxed64(RingFields.records(slot), 0)
        pipes_store_relaxed64(RingFields.dropped(slot), 0)
        pipes_store_release32(RingFields.pid(slot), UInt32(getpid()))
        pipes_store_release64(tailPointer, h)
    }

    deinit { detach() }

    /// Gives the slot back; the producer no longer waits for this reader.
    public func detach() {
        if detached { return }
        detached = true
        publishCounters()
        // Free the slot in this region and in every region the ring has moved to since (copied for us there).
        let last: RingRegion = ring.lock.withLock {
            var r = region
            while true {
                pipes_store_release32(RingFields.state(r.f.slots + slotIndex), PIPES_READER_FREE.rawValue)
                guard let next = r.successor else { return r }
                r = next
            }
        }
        if pipes_load_acquire32(last.f.roomFlag) != 0 {
            _ = pipes_fetch_add32(last.f.roomSeq, 1)
            _ = pipes_futex_wake(last.f.roomSeq, 1)
        }
    }

    /// A record in the ring, valid until `consume` (on a `.drop` ring, until the producer overtakes it: check
    /// `isStillValid` after using it).
    public struct Record {
        public let bytes: UnsafeRawBufferPointer
        public let classValue: UInt32
        public let sequence: UInt64
        public let wireLength: Int
        public let linkType: UInt16
        /// Capture time in nanoseconds since the Unix epoch (0: none).
        public let timestampNanoseconds: Int64
        @usableFromInline let position: UInt64
        @usableFromInline let span: UInt64

        @inlinable
        init(bytes: UnsafeRawBufferPointer, classValue: UInt32, sequence: UInt64, wireLength: Int, linkType: UInt16,
             timestampNanoseconds: Int64, position: UInt64, span: UInt64) {
            self.bytes = bytes
            self.classValue = classValue
            self.sequence = sequence
            self.wireLength = wireLength
            self.linkType = linkType
            self.timestampNanoseconds = timestampNanoseconds
            self.position = position
            self.span = span
        }

        /// The record whose header is at `rec` (byte index `position`), with `len` payload bytes.
        @inlinable @inline(__always)
        init(_ rec: UnsafeMutablePointer<pipes_rec>, _ len: UInt32, at position: UInt64) {
            self.init(bytes: UnsafeRawBufferPointer(start: UnsafeRawPointer(rec) + MemoryLayout<pipes_rec>.size, count: Int(len)),
                      classValue: rec.pointee.class_value, sequence: rec.pointee.sequence,
                      wireLength: Int(rec.pointee.wire_length), linkType: rec.pointee.link_type,
                      timestampNanoseconds: rec.pointee.timestamp_ns, position: position, span: pipes_rec_span(len))
        }
    }

    /// A run of published records handed out in place one after the other (batched peek, as netmap's receive
    /// slots or an io_uring completion queue): the producer's head is loaded once for the run and the tail
    /// published once, by `consume(_ run:)`, instead of once per record. Take one with `peekRun`, walk it with
    /// `next()`, give it back with `consume(_:)` (records not yet handed out stay unread). Every record it
    /// hands out stays valid until the run is consumed, on a `.block` ring.
    ///
    /// On a `.drop` ring the producer may overwrite records while they are used: a record must be used before
    /// the next call to `next()` or `consume`, which validate it (one fence each, as `isStillValid`); one the
    /// producer overtook meanwhile counts as dropped, not delivered (`torn`), and a record whose header was
    /// already overwritten ends the run (the reader resyncs on the next peek, counting what it lost). So for
    /// every reader delivered + dropped = produced, exactly, as with `peek`.
    public struct RecordRun {
        @usableFromInline let data: UnsafeMutableRawPointer
        @usableFromInline let mask: UInt64
        /// Records start before this byte index (the head when the run was taken, at most `limit` bytes on).
        @usableFromInline let end: UInt64
        @usableFromInline let validates: Bool
        @usableFromInline let oldestPointer: UnsafeMutablePointer<UInt64>
        /// The byte index after the last record handed out (and the pads after it).
        @usableFromInline var position: UInt64
        @usableFromInline var remaining: Int
        @usableFromInline var handedOut = 0
        @usableFromInline var overtaken = 0
        /// Records handed out so far.
        public var count: Int { handedOut }
        /// `.drop`: records handed out that the producer overwrote before they were validated.
        public var torn: Int { overtaken }
        @usableFromInline var lastSequence: UInt64 = 0
        @usableFromInline var lastPosition: UInt64 = 0
        /// `.drop`: the record handed out last is not validated yet.
        @usableFromInline var unvalidated = false

        @usableFromInline
        init(data: UnsafeMutableRawPointer, mask: UInt64, start: UInt64, end: UInt64, validates: Bool,
             oldestPointer: UnsafeMutablePointer<UInt64>, maxRecords: Int) {
            self.data = data
            self.mask = mask
            self.position = start
            self.end = end
            self.validates = validates
            self.oldestPointer = oldestPointer
            self.remaining = maxRecords
        }

        /// The next record of the run, or nil at its end. No shared index is loaded or stored on a `.block` ring.
        @inlinable
        public mutating func next() -> Record? {
            if validates { return nextValidated() }
            while remaining > 0 && position < end {
                let rec = pipes_rec_at(data, mask, position)!
                let len = rec.pointee.length
                if len == PIPES_REC_PAD {
                    position &+= pipes_rec_pad_skip(rec, mask, position)
                    continue
                }
                let r = Record(rec, len, at: position)
                position &+= r.span
                remaining &-= 1
                handedOut &+= 1
                lastSequence = r.sequence
                return r
            }
            return nil
        }

        /// `.drop`: validates the record handed out last (it was used meanwhile) and the next one's header.
        @usableFromInline
        mutating func nextValidated() -> Record? {
            if unvalidated {
                unvalidated = false
                if !isValid(lastPosition) {
                    overtaken += 1
                    remaining = 0
                    return nil  // overtaken: what follows is gone too; the reader resyncs on its next peek
                }
            }
            while remaining > 0 && position < end {
                let rec = pipes_rec_at(data, mask, position)!
                let len = rec.pointee.length
                let step = len == PIPES_REC_PAD ? pipes_rec_pad_skip(rec, mask, position) : pipes_rec_span(len)
                let r = len == PIPES_REC_PAD ? nil : Record(rec, len, at: position)
                if !isValid(position) {  // the header was overwritten while read
                    remaining = 0
                    return nil
                }
                guard let r else {
                    position &+= step
                    continue
                }
                position &+= step
                remaining -= 1
                handedOut += 1
                lastSequence = r.sequence
                lastPosition = r.position
                unvalidated = true
                return r
            }
            return nil
        }

        @usableFromInline
        func isValid(_ p: UInt64) -> Bool {
            pipes_fence_seq_cst()
            return p >= pipes_load_acquire64(oldestPointer)
        }

        /// `.drop`: validates the last record handed out, at `consume`.
        mutating func settle() {
            if unvalidated {
                unvalidated = false
                if !isValid(lastPosition) { overtaken += 1 }
            }
        }
    }

    /// The next record, without copying, or nil if there is none yet.
    public func peek() -> Record? {
        // Fast path (a `.block` ring, a record already known to be there): no reload, no validation.
        if isBlocking && tail != cachedHead {
            let rec = pipes_rec_at(data, mask, tail)!
            let len = rec.pointee.length
            if len != PIPES_REC_PAD { return record(rec, len) }
        }
        return peekSlow()
    }

    @inline(__always)
    private func record(_ rec: UnsafeMutablePointer<pipes_rec>, _ len: UInt32) -> Record {
        Record(rec, len, at: tail)
    }

    /// The records published and not yet read, as a run to walk in place (at most `maxRecords` of them, and
    /// at most `maxBytes` bytes of ring from the first, default an eighth of the ring: a `.block` producer
    /// gets room back run by run), or nil if there is none yet. One load of the producer's head per run; the
    /// tail is published once, by `consume(_ run:)`. See `RecordRun`.
    public func peekRun(maxRecords: Int = Int.max, maxBytes: Int? = nil) -> RecordRun? {
        guard let first = peek() else { return nil }  // pads, a `.drop` ring's resync and a moved ring: as `peek`
        if isBlocking { cachedHead = pipes_load_acquire64(headPointer) }
        let limit = UInt64(max(1, maxBytes ?? Int(mask &+ 1) >> 3))
        let end = cachedHead &- first.position > limit ? first.position &+ limit : cachedHead
        return RecordRun(data: data, mask: mask, start: first.position, end: end, validates: !isBlocking,
                         oldestPointer: oldestPointer, maxRecords: max(1, maxRecords))
    }

    /// Moves past every record `run` handed out: one tail store (and, for a producer waiting for room, at most
    /// one wake-up). On a `.drop` ring, validates the last of them first (see `RecordRun`).
    public func consume(_ run: RecordRun) {
        var run = run
        run.settle()
        tail = run.position
        guard run.count > 0 else {
            pipes_store_release64(tailPointer, tail)
            return
        }
        nextSequence = run.lastSequence &+ 1
        let before = delivered
        delivered &+= UInt64(run.count - run.torn)
        dropped &+= UInt64(run.torn)
        if delivered >> 6 != before >> 6 || run.torn > 0 { publishCounters() }
        pipes_store_release64(tailPointer, tail)
        if isBlocking { wakeProducer() }
    }

    @inline(never)
    private func peekSlow() -> Record? {
        let isDrop = !isBlocking
        while true {
            // The producer's head is reloaded only when what we knew of is used up: one shared cache line
            // transfer per batch of records, not one per record.
            if isDrop {
                // Overtaken readers jump forward to `oldest`, which may lie past a cached head: reload it.
                resyncIfOvertaken()
                cachedHead = pipes_load_acquire64(headPointer)
            }
            if tail == cachedHead {
                cachedHead = pipes_load_acquire64(headPointer)
                if tail == cachedHead {
                    // Nothing more here: if the ring moved (reallocation), go on in its new region.
                    if pipes_load_acquire32(movedPointer) != 0 && follow() { continue }
                    return nil
                }
            }
            let rec = pipes_rec_at(data, mask, tail)!
            let len = rec.pointee.length
            if len == PIPES_REC_PAD {
                let skip = pipes_rec_pad_skip(rec, mask, tail)
                // On a `.drop` ring the pad may have been overwritten while we read it: validate it too.
                if isDrop && !isValid(tail) { continue }
                tail &+= skip
                continue
            }
            let record = record(rec, len)
            if isDrop {
                // The header may have been overwritten while we read it: validate, else resync and retry.
                if !isValid(tail) { continue }
                if record.sequence > nextSequence { dropped &+= record.sequence - nextSequence }
                nextSequence = record.sequence
            }
            return record
        }
    }

    /// True while a `.drop` ring's producer has not overwritten `record` (always true on `.block` rings).
    public func isStillValid(_ record: Record) -> Bool {
        if isBlocking { return true }
        return isValid(record.position)
    }

    @inline(__always)
    private func isValid(_ position: UInt64) -> Bool {
        pipes_fence_seq_cst()
        return position >= pipes_load_acquire64(oldestPointer)
    }

    /// Moves past `record` (the one `peek` returned).
    public func consume(_ record: Record) {
        tail = record.position &+ record.span
        nextSequence = record.sequence &+ 1
        delivered &+= 1
        if delivered & 63 == 0 { publishCounters() }  // statistics for other processes, every 64 records
        pipes_store_release64(tailPointer, tail)
        if isBlocking { wakeProducer() }
    }

    /// Moves past `record` without telling the producer: its bytes (and those of records consumed the same way
    /// before it) stay valid until `publishTail()`. A reader that hands several records to one system call (a
    /// FUSE reply gathering them) frees them together once the call copied them.
    public func consumeDeferred(_ record: Record) {
        tail = record.position &+ record.span
        nextSequence = record.sequence &+ 1
        delivered &+= 1
    }

    /// Tells the producer how far this reader got (after `consumeDeferred`).
    public func publishTail() {
        if delivered & 63 == 0 { publishCounters() }
        pipes_store_release64(tailPointer, tail)
        if isBlocking { wakeProducer() }
    }

    /// Copies the delivered and dropped counts into the shared slot (they are otherwise published lazily).
    public func publishCounters() {
        pipes_store_relaxed64(RingFields.records(slot), delivered)
        pipes_store_relaxed64(RingFields.dropped(slot), dropped)
    }

    /// Copies the next record into `buffer` (up to its size) and moves past it. Returns the record's length
    /// (it may exceed what was copied), or nil if there is none yet.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> (length: Int, classValue: UInt32)? {
        if isBlocking {
            // Fast path of a `.block` ring: copy straight from the record header's fields, no `Record` built.
            if tail == cachedHead { cachedHead = pipes_load_acquire64(headPointer) }
            if tail != cachedHead {
                let rec = pipes_rec_at(data, mask, tail)!
                let len = rec.pointee.length
                if len != PIPES_REC_PAD {
                    let n = min(Int(len), buffer.count)
                    if n > 0 { buffer.baseAddress!.copyMemory(from: UnsafeRawPointer(rec) + MemoryLayout<pipes_rec>.size, byteCount: n) }
                    let classValue = rec.pointee.class_value
                    nextSequence = rec.pointee.sequence &+ 1
                    tail &+= pipes_rec_span(len)
                    delivered &+= 1
                    if delivered & 63 == 0 { publishCounters() }
                    pipes_store_release64(tailPointer, tail)
                    wakeProducer()
                    return (Int(len), classValue)
                }
            }
        }
        while true {
            guard let rec = peek() else { return nil }
            let n = min(rec.bytes.count, buffer.count)
            if n > 0 { buffer.baseAddress!.copyMemory(from: rec.bytes.baseAddress!, byteCount: n) }
            if !isStillValid(rec) { continue }  // torn by the producer: that record is lost; take the next
            consume(rec)
            return (rec.bytes.count, rec.classValue)
        }
    }

    /// True when the producer closed the ring and everything was read.
    public var isAtEnd: Bool {
        let closed = pipes_load_acquire32(region.f.closed) != 0
        let head = pipes_load_acquire64(headPointer)
        return closed && tail == head
    }

    /// True when this reader's region was left behind by a reallocation and the reader cannot follow it (a
    /// mapping made with `DBuf(mapping:)` does not know the new region: ask the ring's owner again).
    public var isStranded: Bool {
        pipes_load_acquire32(movedPointer) != 0 && pipes_load_acquire64(headPointer) == tail
            && ring.successor(of: region) == nil
    }

    /// Sleeps until a record may be there, the ring closed or moved, or `timeoutNanoseconds` passed (default:
    /// the ring's moderation timeout, which bounds how late an unsignalled record is seen).
    public func wait(timeoutNanoseconds: UInt64? = nil) {
        let timeoutNanoseconds = timeoutNanoseconds ?? ring.timeoutNanoseconds
        let headPtr = headPointer
        // A reader that caught up and takes each record as soon as it is published reads lines the producer is
        // still writing (records do not end on line boundaries): each such line changes hands twice. While the
        // producer keeps publishing, wait a few spins more for a batch of `readBatch` bytes (at most
        // `batchSpins`: an isolated record is not held back beyond that).
        var movedAt = -1
        for i in 0..<DBuf.spins {
            let h = pipes_load_acquire64(headPtr)
            if h != tail {
                if h &- tail >= DBuf.readBatch { return }
                if movedAt < 0 { movedAt = i } else if i &- movedAt >= DBuf.batchSpins { return }
            }
            pipes_cpu_relax()
        }
        if movedAt >= 0 { return }
        let f = region.f
        if isBlocking {
            // About to sleep: a producer waiting for room must not miss what this reader consumed (`consume`
            // checks its flag without a fence and moderates its wake-ups); here, once per sleep, with a fence.
            pipes_fence_seq_cst()
            // Not again for a tail it was already woken for: a producer that slept after that wake-up set its
            // flag first, so it read this tail or a later one.
            if wokeProducerAt != tail && pipes_load_acquire32(roomFlag) != 0 {
                wokeProducerAt = tail
                _ = pipes_fetch_add32(f.roomSeq, 1)
                _ = pipes_futex_wake(f.roomSeq, Int32.max)
            }
        }
        let seqPtr = f.wakeSeq
        let seen = pipes_load_acquire32(seqPtr)
        _ = pipes_fetch_add32(f.sleepers, 1)
        pipes_fence_seq_cst()
        let head = pipes_load_acquire64(headPtr)
        let closed = pipes_load_acquire32(f.closed) != 0
        let moved = pipes_load_acquire32(f.moved) != 0
        if head == tail && !closed && !moved { _ = pipes_futex_wait(seqPtr, seen, timeoutNanoseconds) }
        _ = pipes_fetch_add32(f.sleepers, UInt32.max)
    }

    private func resyncIfOvertaken() {
        let oldest = pipes_load_acquire64(oldestPointer)
        if tail < oldest { tail = oldest }
    }

    /// The region moved and `tail` reached its head, which is final once `moved` is seen: continue in the
    /// successor on the same slot (the producer copied it there, active) with the same tail. False if this
    /// reader cannot know the successor (a mapping of another process's ring).
    private func follow() -> Bool {
        let h = pipes_load_acquire64(headPointer)
        if h != tail {
            cachedHead = h
            return true
        }
        guard let next = ring.successor(of: region) else { return false }
        region = next
        slot = next.f.slots + slotIndex
        data = next.data
        mask = next.mask
        headPointer = next.f.head
        tailPointer = RingFields.tail(slot)
        oldestPointer = next.f.oldest
        movedPointer = next.f.moved
        roomFlag = next.f.roomFlag
        cachedHead = tail
        publishCounters()
        pipes_store_release32(RingFields.pid(slot), UInt32(getpid()))
        pipes_store_release64(tailPointer, tail)
        if isBlocking { wakeProducer() }
        return true
    }

    /// No fence between our tail store and this load (it would cost a full barrier per record): in the rare
    /// interleaving where the producer misses the new tail and this reader misses its flag, the producer's
    /// bounded futex wait (1 ms) covers it, and `wait` checks the flag with a fence before this reader sleeps.
    ///
    /// Moderated like the producer's wake-ups (§6.2): while the flag stays set, this reader wakes the producer
    /// at most once per eighth of the ring it consumes. The flag is a count of waiters (`ExportRing` adds its
    /// own), so it cannot be claimed; without the moderation, every record consumed until a woken producer ran
    /// again (on a loaded machine, thousands) cost a futex system call on a shared mapping (`get_futex_key`
    /// pins the page each time). A producer that went back to sleep meanwhile waits at most until this reader
    /// has consumed another eighth of a ring that was full (or its 1 ms timeout).
    @inline(__always)
    private func wakeProducer() {
        if pipes_load_acquire32(roomFlag) == 0 { return }
        wakeProducerSlow()
    }

    @inline(never)
    private func wakeProducerSlow() {
        // An eighth of the part in use (the deck-cut), not of the mapped region.
        let cut = min(UInt64(1) << UInt64(min(34, pipes_load_acquire32(region.f.cutLog2))), mask &+ 1)
        if tail &- wokeProducerAt < cut >> 3 { return }
        wokeProducerAt = tail
        _ = pipes_fetch_add32(region.f.roomSeq, 1)
        _ = pipes_futex_wake(region.f.roomSeq, Int32.max)
    }
}

/// Pointers to the fields of a ring header that both sides touch, computed once from the layout. All access to
/// them goes through the ABI's atomic helpers, never through Swift inout access to shared memory (which the
/// exclusivity model and the thread sanitizer would see as plain conflicting accesses).
struct RingFields {
    let magic, head, records, oldest, wakeups: UnsafeMutablePointer<UInt64>
    let closed, moved, cutLog2, wakeSeq, roomFlag, sleepers, roomSeq: UnsafeMutablePointer<UInt32>
    let slots: UnsafeMutablePointer<pipes_ring_reader>

    init(_ base: UnsafeMutableRawPointer) {
        func at<T>(_ k: KeyPath<pipes_ring_header, T>, _: T.Type = T.self) -> UnsafeMutablePointer<T> {
            (base + MemoryLayout<pipes_ring_header>.offset(of: k)!).assumingMemoryBound(to: T.self)
        }
        magic = at(\.info.magic)
        head = at(\.producer.head)
        records = at(\.producer.records)
        oldest = at(\.producer.oldest)
        wakeups = at(\.producer.wakeups)
        closed = at(\.producer.closed)
        moved = at(\.producer.moved)
        cutLog2 = at(\.producer.size_log2)
        wakeSeq = at(\.producer.wake_seq)
        roomFlag = at(\.producer.waiting_for_room)
        sleepers = at(\.consumers.sleepers)
        roomSeq = at(\.consumers.room_seq)
        slots = (base + MemoryLayout<pipes_ring_header>.offset(of: \.readers)!).assumingMemoryBound(to: pipes_ring_reader.self)
    }

    // Offsets within a reader slot, computed once.
    static let stateOffset = MemoryLayout<pipes_ring_reader>.offset(of: \.state)!
    static let tailOffset = MemoryLayout<pipes_ring_reader>.offset(of: \.tail)!
    static let recordsOffset = MemoryLayout<pipes_ring_reader>.offset(of: \.records)!
    static let droppedOffset = MemoryLayout<pipes_ring_reader>.offset(of: \.dropped)!
    static let pidOffset = MemoryLayout<pipes_ring_reader>.offset(of: \.pid)!

    @inline(__always) static func at<T>(_ s: UnsafeMutablePointer<pipes_ring_reader>, _ offset: Int, _: T.Type) -> UnsafeMutablePointer<T> {
        (UnsafeMutableRawPointer(s) + offset).assumingMemoryBound(to: T.self)
    }
    static func state(_ s: UnsafeMutablePointer<pipes_ring_reader>) -> UnsafeMutablePointer<UInt32> { at(s, stateOffset, UInt32.self) }
    static func tail(_ s: UnsafeMutablePointer<pipes_ring_reader>) -> UnsafeMutablePointer<UInt64> { at(s, tailOffset, UInt64.self) }
    static func records(_ s: UnsafeMutablePointer<pipes_ring_reader>) -> UnsafeMutablePointer<UInt64> { at(s, recordsOffset, UInt64.self) }
    static func dropped(_ s: UnsafeMutablePointer<pipes_ring_reader>) -> UnsafeMutablePointer<UInt64> { at(s, droppedOffset, UInt64.self) }
    static func pid(_ s: UnsafeMutablePointer<pipes_ring_reader>) -> UnsafeMutablePointer<UInt32> { at(s, pidOffset, UInt32.self) }
}
