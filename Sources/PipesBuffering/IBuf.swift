#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

/// A rich pointer (paper §5.3.1, `struct pipes_index`): which DBuf, which record in it (its byte index, whose lap
/// tells whether it is still there), a region of that record's payload, and the block's class and flow tag.
public struct RichPointer: Equatable, Sendable {
    public var ringID: UInt64
    public var position: UInt64
    public var offset: UInt32
    public var length: UInt32
    public var classValue: UInt32
    public var flowTag: UInt32

    init(_ i: pipes_index) {
        ringID = i.ring_id
        position = i.position
        offset = i.offset
        length = i.length
        classValue = i.class_value
        flowTag = i.flow_tag
    }
}

/// A Beltway index ring (IBuf, paper §5.3): a stream of rich pointers into DBufs, read through `IBufReader`
/// exactly like a DBuf (the pointers are resolved behind `peek` and `read`). Writing a block that already lies
/// in a registered DBuf stores only a pointer to it (splicing, §5.3.3); any other block is copied into the
/// IBuf's own data ring, `backing` (the "default buffer" of §5.3.2), and pointed at there. Filters that only
/// select, reorder or trim blocks therefore produce IBufs, not copies.
///
/// The index ring `ring` is a DBuf whose records are one `pipes_index` each, so an IBuf has the DBuf's multiway
/// readers, policies and moderation. The writing side (`write`, `forward`, `flush`, `close`) must be used by one
/// thread at a time; each `IBufReader` by one thread at a time.
///
/// **Keep-alive.** An index into a `.drop` DBuf may outlive its record: readers validate it against the ring's
/// `oldest` (after copying, for `read`) and count it as lost, as a DBuf reader does. An index into a `.block`
/// DBuf is kept valid: the IBuf holds one reader slot (a *hold*) on each `.block` ring it points into, and the
/// ring's producer cannot overwrite anything at or after the hold's tail. The rule that keeps every unread index
/// at or after the hold:
///
/// 1. The writer keeps a *floor* per ring and splices a record only if its position is at or above the floor;
///    anything below is copied instead. Only the hold updater raises floors, never above a record boundary that
///    the ring's real readers still hold (their smallest tail; holds of IBufs are not counted), and the
///    floor starts at the hold's first tail. So floors only rise.
/// 2. The updater raises floors, then waits until the writer is outside its splice section (a Dekker pair:
///    the writer sets `busy` and fences before it loads the floor, the updater stores the floor and fences
///    before it loads `busy`), then reads the index ring's head `h`. Every index at `h` or later was checked
///    against the new floor `v`, so it records the statement "indices from `h` on point at `v` or later".
/// 3. The hold's tail is moved to the `v` of the newest statement whose `h` every IBuf reader has passed (the
///    smallest tail of the index ring's readers), and never backwards. Every unread index is at or after that
///    smallest tail, so it points at or after the hold; so does every later one, because the floor is never
///    below the hold.
///
/// A spliced record is therefore never overwritten between the moment it was produced (its position was at or
/// above the floor, so the hold was below it ever since) and the moment the last IBuf reader consumes its
/// index. Holds move when readers consume (every 32 records, and at once when the ring's producer is waiting
/// for room), when a reader goes to sleep, on `flush`, and before the writer waits for room in `backing`.
/// Readers must attach through `attach()` (it is serialized with the updater), not on `ring` directly.
public final class IBuf: @unchecked Sendable {
    /// How `write` or `forward` stored a block.
    public enum Outcome: Equatable, Sendable {
        /// Only a rich pointer was written: the block is in a registered DBuf.
        case spliced
        /// The block was copied into `backing` and a pointer to the copy written.
        case copied
        /// Nothing was written: no room without waiting, or a copy longer than `backing` takes.
        case refused
        /// Nothing was written: `forward` was handed a record its `.drop` ring has already overwritten.
        case lost
    }

    /// The index ring: one `pipes_index` per record.
    public let ring: DBuf
    /// The IBuf's own data ring, for blocks that were not in a registered DBuf (registered, so other IBufs can
    /// splice from it).
    public let backing: DBuf
    public let registry: DBufRegistry
    /// The most DBufs one IBuf points into.
    public static let maxTargets = 32
    static let indexSize = MemoryLayout<pipes_index>.size
    static let maxStatements = 64

    /// A DBuf this IBuf points into, in the region it had when the IBuf met it. Written once by the writer
    /// (under the hold lock) before `published` counts it; immutable afterwards, so readers use it without
    /// locks. If the ring reallocates (§5.4), its old region is frozen (the producer writes only the new one)
    /// and stays mapped (`regions`), so indices into it stay valid; the IBuf copies the ring's later blocks.
    struct Target {
        let ringID: UInt64
        let ring: Unmanaged<DBuf>  // kept alive by `owners`
        let data: UnsafeMutableRawPointer
        let mask: UInt64
        let capacity: UInt64
        let head: UnsafeMutablePointer<UInt64>
        let oldest: UnsafeMutablePointer<UInt64>
        let moved: UnsafeMutablePointer<UInt32>
        let roomFlag: UnsafeMutablePointer<UInt32>
        let roomSeq: UnsafeMutablePointer<UInt32>
        let slots: UnsafeMutablePointer<pipes_ring_reader>
        let maxReaders: Int
        let isDrop: Bool
        let isBacking: Bool
        /// The hold's tail (`.block` rings with a free reader slot); nil: never spliced into.
        let holdTail: UnsafeMutablePointer<UInt64>?
    }

    // Shared between the writer, the readers and the updater (ABI atomics only).
    let table: UnsafeMutablePointer<Target>
    let published: UnsafeMutablePointer<UInt64>
    let floors: UnsafeMutablePointer<UInt64>
    let busy: UnsafeMutablePointer<UInt32>
    let frontier: UnsafeMutablePointer<UInt64>
    let backingID: UInt64
    private let indexHead: UnsafeMutablePointer<UInt64>
    private let indexSlots: UnsafeMutablePointer<pipes_ring_reader>
    private let backingHead: UnsafeMutablePointer<UInt64>

    // Writer-private.
    private var count = 0
    private let cursors: UnsafeMutablePointer<UInt64>
    /// The targets' heads as last loaded (only ever too small): the producer's head line is loaded again only
    /// when a search reaches it, not on every splice.
    private let heads: UnsafeMutablePointer<UInt64>
    private var lastTarget = 0
    private var unspliceable: ObjectIdentifier?
    private var snapshotGeneration: UInt64 = .max
    private var snapshot: [DBuf] = []
    private var ranges: UnsafeMutableBufferPointer<(lo: UInt, hi: UInt)> = .init(start: nil, count: 0)
    private var writesSinceUpdate = 0
    /// Blocks written as pointers only, and blocks copied into `backing`.
    public private(set) var spliced: UInt64 = 0
    public private(set) var copied: UInt64 = 0

    // The hold updater's state, under `holdLock`.
    private let holdLock: UnsafeMutablePointer<pthread_mutex_t>
    private var owners: [DBuf] = []
    private var regions: [RingRegion] = []
    private var holds: [DBufReader?] = []
    private var holdGone: [Bool] = []
    private var statements: [[(h: UInt64, v: UInt64)]] = []
    private var bases: [UInt64] = []
    private var raisedTo: [UInt64] = []

    /// An IBuf whose index ring has `1 << sizeLog2` bytes (64 bytes per index) and whose own data ring has
    /// `1 << backingSizeLog2`. `policy`, `maxReaders`, `threshold` and `timeoutNanoseconds` are the index ring's.
    public init(sizeLog2: Int = 16, policy: DBuf.Policy = .block, maxReaders: Int = 16, threshold: Int = 32,
                timeoutNanoseconds: UInt64 = 1_000_000, backingSizeLog2: Int = 20,
                registry: DBufRegistry = .shared) throws(RingError) {
        self.registry = registry
        ring = try DBuf(sizeLog2: sizeLog2, policy: policy, maxReaders: maxReaders, threshold: threshold,
                        timeoutNanoseconds: timeoutNanoseconds, ringID: registry.makeRingID())
        backing = try registry.makeRing(sizeLog2: backingSizeLog2, policy: .block, timeoutNanoseconds: timeoutNanoseconds)
        backingID = DBufRegistry.id(of: backing)
        indexHead = ring.f.head  // neither ring of an IBuf scales: their regions never change
        indexSlots = ring.f.slots
        backingHead = backing.f.head
        table = .allocate(capacity: IBuf.maxTargets)
        published = .allocate(capacity: 1)
        published.initialize(to: 0)
        floors = .allocate(capacity: IBuf.maxTargets)
        floors.initialize(repeating: 0, count: IBuf.maxTargets)
        cursors = .allocate(capacity: IBuf.maxTargets)
        cursors.initialize(repeating: 0, count: IBuf.maxTargets)
        heads = .allocate(capacity: IBuf.maxTargets)
        heads.initialize(repeating: 0, count: IBuf.maxTargets)
        busy = .allocate(capacity: 1)
        busy.initialize(to: 0)
        frontier = .allocate(capacity: 1)
        frontier.initialize(to: 0)
        holdLock = .allocate(capacity: 1)
        pthread_mutex_init(holdLock, nil)
        raisedTo = [UInt64](repeating: 0, count: IBuf.maxTargets)
        _ = addTarget(backing, isBacking: true)
    }

    deinit {
        for (t, (ring, hold)) in zip(owners, holds).enumerated() {
            guard let hold, !holdGone[t] else { continue }
            registry.removeHold(ring, slot: hold.slotIndex)
            hold.detach()
        }
        registry.unregister(backing)
        table.deinitialize(count: count)
        table.deallocate()
        published.deallocate()
        floors.deallocate()
        cursors.deallocate()
        heads.deallocate()
        busy.deallocate()
        frontier.deallocate()
        ranges.deallocate()
        pthread_mutex_destroy(holdLock)
        holdLock.deallocate()
    }

    // MARK: writing

    /// Appends `bytes` as one block. When they lie inside one record of a registered DBuf (a block, or part of
    /// one, that a filter got from a ring and has not consumed yet), only a rich pointer to them is written; the
    /// record's own wire length, link type and timestamp then stand (a region that ends before the record does
    /// has its own length as wire length). Otherwise the bytes are copied into `backing` with the metadata given.
    /// `wait` as for `DBuf.write`.
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer, classValue: UInt32 = 1, flowTag: UInt32 = 0, wireLength: Int? = nil,
                      linkType: UInt16 = 0, timestampNanoseconds: Int64 = 0, wait: Bool = true) -> Outcome {
        let t = bytes.baseAddress.flatMap { target(containing: $0, bytes.count) }
        if t == nil && bytes.count > backing.maxRecordLength { return .refused }
        guard let slot = ring.reserve(IBuf.indexSize, wait: wait) else { return .refused }
        if let t, splice(t, bytes.baseAddress!, bytes.count, slot, classValue, flowTag) { return .spliced }
        return copy(bytes, slot, classValue, flowTag, wireLength ?? bytes.count, linkType, timestampNanoseconds, wait)
    }

    /// Appends (a region of) `record`, which `reader` peeked and has not consumed, as a pointer into the reader's
    /// ring: the splice without an address lookup. `offset` and `length` select a region of the payload (a
    /// header trimmed off, a segment in a frame); `classValue` defaults to the record's. Copies when the ring is
    /// not registered, and a record older than the IBuf's hold on the ring; `.lost` for a record of a `.drop`
    /// ring that is already overwritten.
    @discardableResult
    public func forward(_ record: DBufReader.Record, from reader: DBufReader, offset: Int = 0, length: Int? = nil,
                        classValue: UInt32? = nil, flowTag: UInt32 = 0, wait: Bool = true) -> Outcome {
        let length = length ?? record.bytes.count - offset
        guard offset >= 0, length >= 0, offset + length <= record.bytes.count else { return .refused }
        let classValue = classValue ?? record.classValue
        let t = target(for: reader.ring)
        if t == nil && length > backing.maxRecordLength { return .refused }
        guard let slot = ring.reserve(IBuf.indexSize, wait: wait) else { return .refused }
        if let t, reader.region.data == table[t].data {  // else the reader follows a region the table does not know
            let T = table[t]
            let p = record.position
            if T.isDrop {
                // Never copy such a record: it may be torn by now.
                guard p >= pipes_load_acquire64(T.oldest) else { return .lost }
                publish(slot, T.ringID, p, offset, length, classValue, flowTag)
                spliced &+= 1
                return .spliced
            } else if T.holdTail != nil {
                enterBusy()
                if p >= pipes_load_acquire64(floors + t) {
                    cursors[t] = p
                    publish(slot, T.ringID, p, offset, length, classValue, flowTag)
                    leaveBusy()
                    spliced &+= 1
                    afterSplice(T)
                    return .spliced
                }
                leaveBusy()
            }
        }
        let region = UnsafeRawBufferPointer(rebasing: record.bytes[offset..<offset + length])
        let wire = offset + length == record.bytes.count ? length + max(0, record.wireLength - record.bytes.count) : length
        return copy(region, slot, classValue, flowTag, wire, record.linkType, record.timestampNanoseconds, wait)
    }

    /// Makes `ring` a ring this IBuf may splice from, now: its hold starts at the ring's head, so every record
    /// produced from now on can be spliced (a ring met first in `write` or `forward` is added then, and the
    /// records already in it are copied). False when the ring has no `ring_id` in the registry or the IBuf
    /// points into `maxTargets` rings already.
    @discardableResult
    public func addSource(_ ring: DBuf) -> Bool { target(for: ring) != nil }

    /// Wakes sleeping readers (end of a batch, as `DBuf.flush`) and moves the holds.
    public func flush() {
        ring.flush()
        updateHolds(blocking: false)
    }

    /// Ends the stream: readers get what is there, then end of stream.
    public func close() { ring.close() }

    /// Attaches a reader at the current head (it sees indices written from now on). Nil when every slot is taken.
    public func attach() -> IBufReader? {
        pthread_mutex_lock(holdLock)
        defer { pthread_mutex_unlock(holdLock) }
        guard let r = ring.attach() else { return nil }
        return IBufReader(ibuf: self, reader: r)
    }

    // MARK: writer internals

    @inline(__always) private func enterBusy() {
        pipes_store_release32(busy, 1)
        pipes_fence_seq_cst()  // before the floor load (pairs with the updater's fence)
    }

    @inline(__always) private func leaveBusy() { pipes_store_release32(busy, 0) }

    /// Fills the reserved index record and publishes it.
    @inline(__always)
    private func publish(_ slot: UnsafeMutableRawPointer, _ id: UInt64, _ position: UInt64, _ offset: Int, _ length: Int,
                         _ classValue: UInt32, _ flowTag: UInt32) {
        slot.storeBytes(of: pipes_index(ring_id: id, position: position, offset: UInt32(offset), length: UInt32(length),
                                        class_value: classValue, flow_tag: flowTag), as: pipes_index.self)
        ring.commit(IBuf.indexSize, classValue: classValue, wireLength: length)
    }

    /// After a splice into a ring whose producer waits for room: move the holds every few blocks, so the hold
    /// follows the writer closely (the readers move it too).
    @inline(__always) private func afterSplice(_ T: Target) {
        if pipes_load_acquire32(T.roomFlag) == 0 { return }
        writesSinceUpdate += 1
        if writesSinceUpdate >= 4 {
            writesSinceUpdate = 0
            updateHolds(blocking: false)
        }
    }

    private func splice(_ t: Int, _ p: UnsafeRawPointer, _ n: Int, _ slot: UnsafeMutableRawPointer, _ classValue: UInt32,
                        _ flowTag: UInt32) -> Bool {
        let T = table[t]
        if T.isDrop {
            // Nothing holds a drop ring: find the record between `oldest` and the head, and check afterwards that
            // the producer did not overwrite what the walk read.
            for _ in 0..<4 {
                let oldest = pipes_load_acquire64(T.oldest)
                let head = pipes_load_acquire64(T.head)
                let from = cursors[t] >= oldest && cursors[t] <= head ? cursors[t] : oldest
                var found = locate(T, p, n, from: from, head: head)
                if found == nil && from != oldest { found = locate(T, p, n, from: oldest, head: head) }
                pipes_fence_seq_cst()
                if pipes_load_acquire64(T.oldest) != oldest { continue }
                guard let (position, offset) = found else { return false }
                cursors[t] = position
                publish(slot, T.ringID, position, offset, n, classValue, flowTag)
                spliced &+= 1
                return true
            }
            return false
        }
        guard T.holdTail != nil else { return false }
        enterBusy()
        // Everything from the floor to the head stays put while we are busy: the hold is at or below the floor.
        let floor = pipes_load_acquire64(floors + t)
        var head = heads[t]
        if head < floor || cursors[t] >= head {  // the cached head is stale for sure: reload it
            head = pipes_load_acquire64(T.head)
            heads[t] = head
        }
        let from = cursors[t] >= floor && cursors[t] <= head ? cursors[t] : floor
        var found = locate(T, p, n, from: from, head: head)
        if found == nil {
            // Past what we knew of, or behind the cursor (reordering): look again with the head reloaded.
            head = pipes_load_acquire64(T.head)
            heads[t] = head
            found = locate(T, p, n, from: from, head: head)
            if found == nil && from != floor { found = locate(T, p, n, from: floor, head: head) }
        }
        guard let (position, offset) = found else {
            leaveBusy()
            return false
        }
        cursors[t] = position
        publish(slot, T.ringID, position, offset, n, classValue, flowTag)
        leaveBusy()
        spliced &+= 1
        afterSplice(T)
        return true
    }

    /// The record of `T` between the record boundary `from` and `head` whose payload holds `[p, p + n)`: its
    /// position and the region's offset in the payload. Nil when no record there does (the block straddles
    /// records, or is older than `from`).
    private func locate(_ T: Target, _ p: UnsafeRawPointer, _ n: Int, from: UInt64, head: UInt64) -> (UInt64, Int)? {
        let want = UInt64(UInt(bitPattern: p - UnsafeRawPointer(T.data)))
        var w = from
        while w != head && head &- w <= T.capacity {
            let at = w & T.mask
            let rec = pipes_rec_at(T.data, T.mask, w)!
            let len = rec.pointee.length
            if len == PIPES_REC_PAD {
                w &+= pipes_rec_pad_skip(rec, T.mask, w)
                continue
            }
            let payload = at + UInt64(MemoryLayout<pipes_rec>.size)
            if UInt64(len) > T.capacity { return nil }  // torn (a drop ring overwriting it): the caller retries
            if want >= payload && want + UInt64(n) <= payload + UInt64(len) { return (w, Int(want - payload)) }
            w &+= pipes_rec_span(len)
        }
        return nil
    }

    private func copy(_ bytes: UnsafeRawBufferPointer, _ slot: UnsafeMutableRawPointer, _ classValue: UInt32, _ flowTag: UInt32,
                      _ wireLength: Int, _ linkType: UInt16, _ timestamp: Int64, _ wait: Bool) -> Outcome {
        let n = bytes.count
        // The writer will not point below the backing ring's head any more: the updater may raise its floor to it.
        pipes_store_release64(frontier, pipes_load_relaxed64(backingHead))
        guard let dst = reserveBacking(n, wait) else { return .refused }
        if let src = bytes.baseAddress, n > 0 { dst.copyMemory(from: src, byteCount: n) }
        backing.commit(n, classValue: classValue, wireLength: wireLength, linkType: linkType, timestampNanoseconds: timestamp)
        let position = pipes_load_relaxed64(backingHead) &- pipes_rec_span(UInt32(n))
        // No busy section: the backing ring's floor is raised only to `frontier`, which is at or below `position`.
        publish(slot, backingID, position, 0, n, classValue, flowTag)
        copied &+= 1
        return .copied
    }

    private func reserveBacking(_ n: Int, _ wait: Bool) -> UnsafeMutableRawPointer? {
        if let p = backing.reserve(n, wait: false) { return p }
        updateHolds(blocking: true)  // readers may have consumed copies since the hold last moved
        if let p = backing.reserve(n, wait: false) { return p }
        return wait ? backing.reserve(n, wait: true) : nil
    }

    /// The target `ring` is (added if it is registered), or nil.
    private func target(for ring: DBuf) -> Int? {
        let ref = Unmanaged.passUnretained(ring).toOpaque()
        if lastTarget < count && table[lastTarget].ring.toOpaque() == ref { return lastTarget }
        for i in 0..<count where table[i].ring.toOpaque() == ref {
            lastTarget = i
            return i
        }
        if unspliceable == ObjectIdentifier(ring) { return nil }
        let id = DBufRegistry.id(of: ring)  // the same in every region
        guard id != 0, registry.ring(id: id) === ring, let t = addTarget(ring, isBacking: false) else {
            unspliceable = ObjectIdentifier(ring)
            return nil
        }
        return t
    }

    /// The target whose data area holds `[p, p + n)`, looked up in the IBuf's rings, then in the registry's.
    private func target(containing p: UnsafeRawPointer, _ n: Int) -> Int? {
        let lo = UInt(bitPattern: p), hi = lo + UInt(n)
        @inline(__always) func inside(_ T: Target) -> Bool {
            let d = UInt(bitPattern: T.data)
            return lo >= d && hi <= d + UInt(T.capacity)
        }
        if lastTarget < count && inside(table[lastTarget]) { return lastTarget }
        for i in 0..<count where inside(table[i]) {
            lastTarget = i
            return i
        }
        let g = pipes_load_acquire64(registry.generation)
        if g != snapshotGeneration { refreshRanges() }
        for i in 0..<ranges.count where lo >= ranges[i].lo && hi <= ranges[i].hi {
            if let t = target(for: snapshot[i]) { return t }
        }
        return nil
    }

    private func refreshRanges() {
        (snapshotGeneration, snapshot) = registry.snapshot()
        ranges.deallocate()
        ranges = .allocate(capacity: snapshot.count)
        for (i, r) in snapshot.enumerated() {
            let (data, capacity) = r.lock.withLock { (r.data, r.capacity) }  // the ring may be reallocating
            let d = UInt(bitPattern: data)
            ranges[i] = (d, d + UInt(capacity))
        }
    }

    /// Adds `ring` to the table with a hold if it is a `.block` ring with a free slot (writer only).
    private func addTarget(_ ring: DBuf, isBacking: Bool) -> Int? {
        if count == IBuf.maxTargets { return nil }
        var hold: DBufReader?
        var start: UInt64 = 0
        let region: RingRegion
        if ring.policy == .block, let r = ring.attach() {
            hold = r
            region = r.region  // the hold's region: it never follows a reallocation (it never reads)
            start = pipes_load_acquire64(RingFields.tail(r.slot))
            registry.addHold(ring, slot: r.slotIndex)
        } else {
            region = ring.lock.withLock { ring.region }
        }
        let f = region.f
        pthread_mutex_lock(holdLock)
        (table + count).initialize(to: Target(
            ringID: region.header.pointee.info.ring_id, ring: .passUnretained(ring), data: region.data, mask: region.mask,
            capacity: UInt64(region.capacity), head: f.head, oldest: f.oldest, moved: f.moved, roomFlag: f.roomFlag,
            roomSeq: f.roomSeq, slots: f.slots, maxReaders: ring.maxReaders, isDrop: ring.policy == .drop,
            isBacking: isBacking, holdTail: hold.map { RingFields.tail($0.slot) }))
        pipes_store_release64(floors + count, start)
        cursors[count] = start
        heads[count] = start
        owners.append(ring)
        regions.append(region)
        holds.append(hold)
        holdGone.append(false)
        statements.append([])
        statements[count].reserveCapacity(IBuf.maxStatements + 1)
        bases.append(start)
        count += 1
        pipes_store_release64(published, UInt64(count))
        pthread_mutex_unlock(holdLock)
        lastTarget = count - 1
        return count - 1
    }

    // MARK: holds

    /// Raises the floors and moves each hold to the newest floor every IBuf reader has passed (the rule in the
    /// type's comment). Any thread; `blocking: false` gives up if another thread is doing it.
    func updateHolds(blocking: Bool) {
        if blocking { pthread_mutex_lock(holdLock) } else if pthread_mutex_trylock(holdLock) != 0 { return }
        defer { pthread_mutex_unlock(holdLock) }
        let n = owners.count
        for t in 0..<n {
            raisedTo[t] = 0
            let T = table[t]
            guard T.holdTail != nil, !holdGone[t] else { continue }
            if pipes_load_acquire32(T.moved) != 0 {
                // Reallocated: the producer writes only the new region, so nothing here needs holding any more
                // (and a hold slot copied to the new region must not hold the producer there).
                holdGone[t] = true
                registry.removeHold(owners[t], slot: holds[t]!.slotIndex)
                holds[t]!.detach()
                continue
            }
            guard statements[t].count < IBuf.maxStatements else { continue }
            let m = T.isBacking ? pipes_load_acquire64(frontier) : minRealTail(T, owners[t])
            if m > pipes_load_relaxed64(floors + t) {
                pipes_store_release64(floors + t, m)
                raisedTo[t] = m
            }
        }
        pipes_fence_seq_cst()  // the floors before `busy` (pairs with the writer's fence)
        var spins = 0
        while pipes_load_acquire32(busy) != 0 {
            spins += 1
            if spins < 1000 { pipes_cpu_relax() } else { sched_yield() }
        }
        let h = pipes_load_acquire64(indexHead)
        let passed = indexMinTail(h)
        for t in 0..<n {
            guard let tail = table[t].holdTail, !holdGone[t] else { continue }
            if raisedTo[t] != 0 { statements[t].append((h, raisedTo[t])) }
            var v = bases[t]
            var k = 0
            while k < statements[t].count && statements[t][k].h <= passed {
                v = statements[t][k].v
                k += 1
            }
            if k > 0 { statements[t].removeFirst(k) }
            bases[t] = v
            if v > pipes_load_relaxed64(tail) {
                pipes_store_release64(tail, v)
                let T = table[t]
                if pipes_load_acquire32(T.roomFlag) != 0 {
                    _ = pipes_fetch_add32(T.roomSeq, 1)
                    _ = pipes_futex_wake(T.roomSeq, 1)
                }
            }
        }
    }

    /// The smallest tail of the index ring's readers (`head` if there are none).
    private func indexMinTail(_ head: UInt64) -> UInt64 {
        var m = head
        for i in 0..<ring.maxReaders {
            let s = indexSlots + i
            guard pipes_load_acquire32(RingFields.state(s)) == PIPES_READER_ACTIVE.rawValue else { continue }
            let t = pipes_load_acquire64(RingFields.tail(s))
            if head &- t > head &- m { m = t }
        }
        return m
    }

    /// The smallest tail of `r`'s readers that are not IBuf holds (its head if there are none): every record
    /// from there on is still held by a reader that may hand it to the writer.
    private func minRealTail(_ T: Target, _ r: DBuf) -> UInt64 {
        let (h0, h1) = registry.holdSlots(of: r)
        let head = pipes_load_acquire64(T.head)
        var m = head
        for i in 0..<T.maxReaders {
            if (i < 64 ? h0 >> UInt64(i) : h1 >> UInt64(i - 64)) & 1 != 0 { continue }
            let s = T.slots + i
            guard pipes_load_acquire32(RingFields.state(s)) == PIPES_READER_ACTIVE.rawValue else { continue }
            let t = pipes_load_acquire64(RingFields.tail(s))
            if head &- t > head &- m { m = t }
        }
        return m
    }
}
