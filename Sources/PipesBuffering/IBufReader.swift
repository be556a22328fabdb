#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

/// One reader of an `IBuf`: the same calls as `DBufReader`, with each rich pointer resolved to the bytes it
/// names (paper §5.3.2, transparent indirection). `peek` hands out the region in place in the DBuf it points
/// into; `read` is peek plus a copy. An index whose record a `.drop` ring has overwritten is skipped and counted
/// in `lost`, never returned. Use from one thread at a time.
public final class IBufReader: @unchecked Sendable {
    public let ibuf: IBuf
    let reader: DBufReader
    private let table: UnsafeMutablePointer<IBuf.Target>
    private let published: UnsafeMutablePointer<UInt64>
    private let indexRingDrops: Bool
    private var known = 0
    private var last = 0
    private var sinceUpdate = 0
    private var bytesSinceUpdate: UInt64 = 0
    /// Blocks delivered (consumed), and indices skipped because a `.drop` ring overwrote what they named.
    public private(set) var delivered: UInt64 = 0
    public private(set) var lost: UInt64 = 0

    init(ibuf: IBuf, reader: DBufReader) {
        self.ibuf = ibuf
        self.reader = reader
        table = ibuf.table
        published = ibuf.published
        indexRingDrops = ibuf.ring.policy == .drop
    }

    /// Indices lost in the index ring itself (a `.drop` IBuf whose reader lagged).
    public var dropped: UInt64 { reader.dropped }

    /// A resolved block, valid until `consume` (for a `.drop` DBuf, until its producer overtakes it: check
    /// `isStillValid` after using it). The metadata is read from the record when asked, like `bytes`.
    public struct Record {
        /// The region the pointer names, in place.
        public let bytes: UnsafeRawBufferPointer
        /// The rich pointer itself.
        public let pointer: RichPointer
        let header: UnsafePointer<pipes_rec>
        let entryPosition: UInt64
        let entrySequence: UInt64
        let target: Int
        public var classValue: UInt32 { pointer.classValue }
        public var flowTag: UInt32 { pointer.flowTag }
        /// The record's wire length, less what a region that ends before the record's end leaves out.
        public var wireLength: Int {
            let len = Int(header.pointee.length), wire = Int(header.pointee.wire_length)
            return Int(pointer.length) + (Int(pointer.offset) + Int(pointer.length) == len ? max(0, wire - len) : 0)
        }
        public var linkType: UInt16 { header.pointee.link_type }
        /// Capture time in nanoseconds since the Unix epoch (0: none).
        public var timestampNanoseconds: Int64 { header.pointee.timestamp_ns }
        /// The index record in the IBuf's own ring (what `consume` moves past).
        var entry: DBufReader.Record {
            DBufReader.Record(bytes: UnsafeRawBufferPointer(start: nil, count: 0), classValue: 0, sequence: entrySequence,
                              wireLength: 0, linkType: 0, timestampNanoseconds: 0, position: entryPosition,
                              span: pipes_rec_span(UInt32(IBuf.indexSize)))
        }
    }

    /// The next block, resolved without copying, or nil if there is none yet.
    public func peek() -> Record? {
        while true {
            guard let e = reader.peek() else { return nil }
            let ix = e.bytes.count >= IBuf.indexSize ? e.bytes.load(as: pipes_index.self) : pipes_index()
            if indexRingDrops && !reader.isStillValid(e) { continue }  // the index itself was overwritten: peek again
            guard let t = target(ix.ring_id) else {
                skip(e)
                continue
            }
            let T = table[t]
            let rec = pipes_rec_at(T.data, T.mask, ix.position)!
            let len = rec.pointee.length
            if T.isDrop && !isValid(T, ix.position) {
                skip(e)  // overwritten: what we read may be torn
                continue
            }
            guard len != PIPES_REC_PAD, UInt64(ix.offset) + UInt64(ix.length) <= UInt64(len) else {
                skip(e)
                continue
            }
            let start = UnsafeRawPointer(rec) + MemoryLayout<pipes_rec>.size + Int(ix.offset)
            return Record(bytes: UnsafeRawBufferPointer(start: start, count: Int(ix.length)), pointer: RichPointer(ix),
                          header: UnsafePointer(rec), entryPosition: e.position, entrySequence: e.sequence, target: t)
        }
    }

    /// True while the DBuf `record` points into has not overwritten it (always true for `.block` DBufs, which
    /// the IBuf holds).
    public func isStillValid(_ record: Record) -> Bool {
        let T = table[record.target]
        return !T.isDrop || isValid(T, record.pointer.position)
    }

    /// Moves past `record` (the one `peek` returned).
    public func consume(_ record: Record) {
        reader.consume(record.entry)
        delivered &+= 1
        let T = table[record.target]
        guard T.holdTail != nil else { return }
        sinceUpdate += 1
        bytesSinceUpdate &+= UInt64(record.pointer.length)
        // Move the holds every 32 blocks or 1/16 of the ring's bytes (large blocks fill a ring in a few dozen),
        // and every 4 blocks while the ring's producer waits for room.
        if sinceUpdate >= 32 || bytesSinceUpdate >= T.capacity >> 4
            || (sinceUpdate >= 4 && pipes_load_acquire32(T.roomFlag) != 0) {
            sinceUpdate = 0
            bytesSinceUpdate = 0
            ibuf.updateHolds(blocking: false)
        }
    }

    /// Copies the next block into `buffer` (up to its size) and moves past it. Returns the block's length (it
    /// may exceed what was copied), class and flow tag, or nil if there is none yet.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> (length: Int, classValue: UInt32, flowTag: UInt32)? {
        while true {
            guard let r = peek() else { return nil }
            let n = min(r.bytes.count, buffer.count)
            if n > 0 { buffer.baseAddress!.copyMemory(from: r.bytes.baseAddress!, byteCount: n) }
            if !isStillValid(r) {  // overwritten while we copied: that block is lost; take the next
                skip(r.entry)
                continue
            }
            consume(r)
            return (r.bytes.count, r.pointer.classValue, r.pointer.flowTag)
        }
    }

    /// True when the writer closed the IBuf and everything was read.
    public var isAtEnd: Bool { reader.isAtEnd }

    /// Moves the holds (so a producer waiting on them goes on), then sleeps as `DBufReader.wait`.
    public func wait(timeoutNanoseconds: UInt64? = nil) {
        ibuf.updateHolds(blocking: false)
        reader.wait(timeoutNanoseconds: timeoutNanoseconds)
    }

    /// Gives the slot back; the writer and the holds no longer wait for this reader.
    public func detach() { reader.detach() }

    private func skip(_ e: DBufReader.Record) {
        reader.consume(e)
        lost &+= 1
    }

    @inline(__always)
    private func isValid(_ T: IBuf.Target, _ position: UInt64) -> Bool {
        pipes_fence_seq_cst()
        return position >= pipes_load_acquire64(T.oldest)
    }

    /// The table entry of ring `id` (entries are only ever added).
    @inline(__always)
    private func target(_ id: UInt64) -> Int? {
        if last < known && table[last].ringID == id { return last }
        for pass in 0..<2 {
            for i in 0..<known where table[i].ringID == id {
                last = i
                return i
            }
            if pass == 0 {
                let k = Int(pipes_load_acquire64(published))
                if k == known { return nil }
                known = k
            }
        }
        return nil
    }
}
