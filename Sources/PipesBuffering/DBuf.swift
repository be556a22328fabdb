#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

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

/// A Beltway data ring (DBuf, paper §5.2) in shared memory: one producer, up to `maxReaders` readers, each
/// with a private position (the paper's multiway pipe, §5.1). The layout is `pipes_ring.h`, so a reader may be
/// another process (the client library) mapping the same memfd, and later the kernel module.
///
/// The producer side (`write`, `flush`, `close`) must be used by one thread at a time; each `DBufReader` by
/// one thread at a time. Nothing else is locked: indices are published with release stores and read with
/// acquire loads.
public final class DBuf: @unchecked Sendable {
    public enum Policy: UInt32, Sendable {
        /// IPC: the producer waits for the slowest reader; nothing is lost.
        case block = 0
        /// Packet reception: the producer never waits; lagging readers lose the oldest records, counted exactly.
        case drop = 1
    }

    /// The memfd behind the ring (pass it to another process to share the ring).
    public let fd: Int32
    public let capacity: Int
    public let policy: Policy
    let mask: UInt64
    let mappedSize: Int
    let base: UnsafeMutableRawPointer
    let header: UnsafeMutablePointer<pipes_ring_header>
    let data: UnsafeMutableRawPointer
    let ownsFD: Bool
    /// Pointers to the shared fields, resolved once.
    let f: RingFields
    let maxReaders: Int
    /// The moderation timeout readers sleep at most (from the ring's `info`).
    public let timeoutNanoseconds: UInt64

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

    /// The largest payload one record may carry: a record and a pad record must fit in the ring together.
    public var maxRecordLength: Int { capacity / 2 - MemoryLayout<pipes_rec>.size - Int(PIPES_REC_ALIGN) }

    /// Creates a ring of `1 << sizeLog2` bytes in a new memfd (the producer side). Moderation (§6.2): sleeping
    /// readers are woken every `threshold` records, and a record published without a wake-up is seen at most
    /// `timeoutNanoseconds` later (readers sleep no longer than that).
    public init(sizeLog2: Int, policy: Policy, maxReaders: Int = 16, threshold: Int = 32,
                timeoutNanoseconds: UInt64 = 1_000_000, ringID: UInt64 = 0) throws(RingError) {
        guard (12...34).contains(sizeLog2) else { throw RingError(EINVAL, "ring size 2^\(sizeLog2): want 2^12 to 2^34 bytes") }
        guard (1...Int(PIPES_RING_MAX_READERS)).contains(maxReaders) else {
            throw RingError(EINVAL, "maxReaders \(maxReaders): want 1 to \(PIPES_RING_MAX_READERS)")
        }
        let size = Int(PIPES_RING_HEADER_SIZE) + (1 << sizeLog2)
        let fd = pipes_ring_memfd("pipes-dbuf", UInt64(size))
        if fd < 0 { throw RingError(-fd, "memfd_create: \(String(cString: strerror(-fd)))") }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno
            Glibc.close(fd)
            throw RingError(e, "mmap of a \(size)-byte ring: \(String(cString: strerror(e)))")
        }
        self.fd = fd
        ownsFD = true
        mappedSize = size
        base = p
        header = p.assumingMemoryBound(to: pipes_ring_header.self)
        f = RingFields(p)
        self.maxReaders = maxReaders
        self.timeoutNanoseconds = max(1000, timeoutNanoseconds)
        data = p + Int(PIPES_RING_HEADER_SIZE)
        capacity = 1 << sizeLog2
        mask = UInt64(capacity - 1)
        self.policy = policy
        self.threshold = UInt32(max(1, threshold))
        // A fresh memfd is zero-filled: every reader slot is free and every index 0.
        header.pointee.info.version = PIPES_RING_VERSION
        header.pointee.info.header_size = PIPES_RING_HEADER_SIZE
        header.pointee.info.size_log2 = UInt32(sizeLog2)
        header.pointee.info.policy = policy.rawValue
        header.pointee.info.max_readers = UInt32(maxReaders)
        header.pointee.info.threshold = UInt32(max(1, threshold))
        header.pointee.info.timeout_ns = max(1000, timeoutNanoseconds)
        header.pointee.info.ring_id = ringID
        header.pointee.producer.size_log2 = UInt32(sizeLog2)
        // The magic last, with release order: a reader that sees it sees the rest.
        pipes_store_release64(f.magic, PIPES_RING_MAGIC)
    }

    /// Maps a ring another process created (the reader side). `fd` stays the caller's.
    public init(mapping fd: Int32) throws(RingError) {
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
        guard magic == PIPES_RING_MAGIC, h.pointee.info.version == PIPES_RING_VERSION,
              (12...34).contains(sizeLog2), Int(PIPES_RING_HEADER_SIZE) + (1 << sizeLog2) == size,
              let pol = Policy(rawValue: h.pointee.info.policy)
        else {
            munmap(p, size)
            throw RingError(EINVAL, "not a PipesFS ring of version \(PIPES_RING_VERSION)")
        }
        self.fd = fd
        ownsFD = false
        mappedSize = size
        base = p
        header = h
        f = RingFields(p)
        maxReaders = min(Int(h.pointee.info.max_readers), Int(PIPES_RING_MAX_READERS))
        timeoutNanoseconds = max(1000, h.pointee.info.timeout_ns)
        data = p + Int(PIPES_RING_HEADER_SIZE)
        capacity = 1 << sizeLog2
        mask = UInt64(capacity - 1)
        policy = pol
        threshold = max(1, h.pointee.info.threshold)
        // A mapping may also take over producing (another process): continue from the published indices.
        head = pipes_load_acquire64(f.head)
        records = pipes_load_acquire64(f.records)
        oldest = pipes_load_acquire64(f.oldest)
        cachedMinTail = minTail()
    }

    deinit {
        munmap(base, mappedSize)
        if ownsFD { Glibc.close(fd) }
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
        if length > maxRecordLength || length < 0 { return nil }
        let span = pipes_rec_span(UInt32(length))
        let offset = head & mask
        let pad = offset + span > UInt64(capacity) ? UInt64(capacity) - offset : 0
        let need = pad + span
        switch policy {
        case .block:
            if head &+ need &- cachedMinTail > UInt64(capacity) {
                cachedMinTail = minTail()
                while head &+ need &- cachedMinTail > UInt64(capacity) {
                    if !wait { return nil }
                    waitForRoom(need)
                    cachedMinTail = minTail()
                }
            }
        case .drop:
            // Move `oldest` past what this record will overwrite, and publish it before writing.
            var o = oldest
            while head &+ need &- o > UInt64(capacity) {
                let r = pipes_rec_at(data, mask, o)!
                o &+= r.pointee.length == PIPES_REC_PAD ? UInt64(capacity) - (o & mask) : pipes_rec_span(r.pointee.length)
            }
            if o != oldest {
                oldest = o
                pipes_store_release64(f.oldest, o)
                pipes_fence_seq_cst()  // readers validate copies against `oldest`: order it before the overwrite
            }
        }
        if pad != 0 {
            let r = pipes_rec_at(data, mask, head)!
            r.pointee.length = PIPES_REC_PAD
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
        if sinceWake >= threshold || head &- lastWakeHead >= UInt64(capacity / 4) { flush() }
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

    /// Frees the slots of readers whose process has gone (killed while mapped): a blocking ring would
    /// otherwise wait for them for ever. Called before the producer sleeps for room.
    public func reclaimDeadReaders() {
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

    private func waitForRoom(_ need: UInt64) {
        flush()  // readers asleep must see what is there, or nobody makes room
        for _ in 0..<DBuf.spins {
            pipes_cpu_relax()
            if head &+ need &- minTail() <= UInt64(capacity) { return }
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

    // MARK: readers

    /// The state word of reader slot `i` (0 free, 1 active), for tools and tests.
    public func slotState(_ i: Int) -> UInt32 {
        guard i >= 0 && i < maxReaders else { return 0 }
        return pipes_load_acquire32(RingFields.state(f.slots + i))
    }

    /// Attaches a reader at the current head (it sees records published from now on). Nil when every slot is
    /// taken.
    public func attach() -> DBufReader? {
        for i in 0..<maxReaders {
            let s = f.slots + i
            if pipes_cas32(RingFields.state(s), PIPES_READER_FREE.rawValue, PIPES_READER_ACTIVE.rawValue) != 0 {
                return DBufReader(ring: self, slot: s)
            }
        }
        return nil
    }
}

/// One reader of a `DBuf`: a private position in the shared ring (paper §5.1). `peek` hands out the next
/// record in place; `consume` moves on; `read` is peek plus a copy. Use from one thread at a time.
public final class DBufReader: @unchecked Sendable {
    public let ring: DBuf
    let slot: UnsafeMutablePointer<pipes_ring_reader>
    private var tail: UInt64
    private var cachedHead: UInt64
    private let headPointer: UnsafeMutablePointer<UInt64>
    private let tailPointer: UnsafeMutablePointer<UInt64>
    private let roomFlag: UnsafeMutablePointer<UInt32>
    private let isBlocking: Bool
    private var nextSequence: UInt64
    /// Records delivered and, on a `.drop` ring, records lost because this reader lagged.
    public private(set) var delivered: UInt64 = 0
    public private(set) var dropped: UInt64 = 0
    private var detached = false

    init(ring: DBuf, slot: UnsafeMutablePointer<pipes_ring_reader>) {
        self.ring = ring
        self.slot = slot
        headPointer = ring.f.head
        tailPointer = RingFields.tail(slot)
        roomFlag = ring.f.roomFlag
        isBlocking = ring.policy == .block
        let h = pipes_load_acquire64(headPointer)
        tail = h
        cachedHead = h
        nextSequence = pipes_load_acquire64(ring.f.records)
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
        pipes_store_release32(RingFields.state(slot), PIPES_READER_FREE.rawValue)
        wakeProducer()
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
        let position: UInt64
        let span: UInt64
    }

    /// The next record, without copying, or nil if there is none yet.
    public func peek() -> Record? {
        let r = ring
        while true {
            // The producer's head is reloaded only when what we knew of is used up: one shared cache line
            // transfer per batch of records, not one per record.
            if r.policy == .drop {
                // Overtaken readers jump forward to `oldest`, which may lie past a cached head: reload it.
                resyncIfOvertaken()
                cachedHead = pipes_load_acquire64(headPointer)
            }
            if tail == cachedHead {
                cachedHead = pipes_load_acquire64(headPointer)
                if tail == cachedHead { return nil }
            }
            let rec = pipes_rec_at(r.data, r.mask, tail)!
            let len = rec.pointee.length
            if len == PIPES_REC_PAD {
                tail &+= UInt64(r.capacity) - (tail & r.mask)
                continue
            }
            let record = Record(
                bytes: UnsafeRawBufferPointer(start: UnsafeRawPointer(rec) + MemoryLayout<pipes_rec>.size, count: Int(len)),
                classValue: rec.pointee.class_value, sequence: rec.pointee.sequence,
                wireLength: Int(rec.pointee.wire_length), linkType: rec.pointee.link_type,
                timestampNanoseconds: rec.pointee.timestamp_ns,
                position: tail, span: pipes_rec_span(len))
            if r.policy == .drop {
                // The header may have been overwritten while we read it: validate, else resync and retry.
                if !isStillValid(record) { continue }
                if record.sequence > nextSequence { dropped &+= record.sequence - nextSequence }
                nextSequence = record.sequence
            }
            return record
        }
    }

    /// True while a `.drop` ring's producer has not overwritten `record` (always true on `.block` rings).
    public func isStillValid(_ record: Record) -> Bool {
        if ring.policy == .block { return true }
        pipes_fence_seq_cst()
        let oldest = pipes_load_acquire64(ring.f.oldest)
        return record.position >= oldest
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

    /// Copies the delivered and dropped counts into the shared slot (they are otherwise published lazily).
    public func publishCounters() {
        pipes_store_relaxed64(RingFields.records(slot), delivered)
        pipes_store_relaxed64(RingFields.dropped(slot), dropped)
    }

    /// Copies the next record into `buffer` (up to its size) and moves past it. Returns the record's length
    /// (it may exceed what was copied), or nil if there is none yet.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> (length: Int, classValue: UInt32)? {
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
        let closed = pipes_load_acquire32(ring.f.closed) != 0
        let head = pipes_load_acquire64(ring.f.head)
        return closed && tail == head
    }

    /// Sleeps until a record may be there, the ring closed, or `timeoutNanoseconds` passed (default: the
    /// ring's moderation timeout, which bounds how late an unsignalled record is seen).
    public func wait(timeoutNanoseconds: UInt64? = nil) {
        let timeoutNanoseconds = timeoutNanoseconds ?? ring.timeoutNanoseconds
        let headPtr = ring.f.head
        for _ in 0..<DBuf.spins {
            if pipes_load_acquire64(headPtr) != tail { return }
            pipes_cpu_relax()
        }
        let seqPtr = ring.f.wakeSeq
        let seen = pipes_load_acquire32(seqPtr)
        _ = pipes_fetch_add32(ring.f.sleepers, 1)
        pipes_fence_seq_cst()
        let head = pipes_load_acquire64(ring.f.head)
        let closed = pipes_load_acquire32(ring.f.closed) != 0
        if head == tail && !closed { _ = pipes_futex_wait(seqPtr, seen, timeoutNanoseconds) }
        _ = pipes_fetch_add32(ring.f.sleepers, UInt32.max)
    }

    private func resyncIfOvertaken() {
        let oldest = pipes_load_acquire64(ring.f.oldest)
        if tail < oldest { tail = oldest }
    }

    /// No fence between our tail store and this load (it would cost a full barrier per record): in the rare
    /// interleaving where the producer misses the new tail and this reader misses its flag, the producer's
    /// bounded futex wait (1 ms) covers it; the producer spins before it sleeps, so that is rare.
    @inline(__always)
    private func wakeProducer() {
        if pipes_load_acquire32(roomFlag) == 0 { return }
        _ = pipes_fetch_add32(ring.f.roomSeq, 1)
        _ = pipes_futex_wake(ring.f.roomSeq, 1)
    }
}

/// Pointers to the fields of a ring header that both sides touch, computed once from the layout. All access to
/// them goes through the ABI's atomic helpers, never through Swift inout access to shared memory (which the
/// exclusivity model and the thread sanitizer would see as plain conflicting accesses).
struct RingFields {
    let magic, head, records, oldest, wakeups: UnsafeMutablePointer<UInt64>
    let closed, wakeSeq, roomFlag, sleepers, roomSeq: UnsafeMutablePointer<UInt32>
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
