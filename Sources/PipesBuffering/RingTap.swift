#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

/// One open `all` or `all.pcap` read through FUSE: an in-process reader of the node's shared ring (the same ring
/// the client library maps), with read(2) semantics — records concatenated, a read may end inside one, reads
/// that find nothing park until the ring's service thread finds data for them.
///
/// `all.pcap` readers get a pcap file header first and a 16-byte record header before each block; blocks of
/// another link type than the one the file was opened with are skipped and counted as dropped.
public final class RingTap: @unchecked Sendable {
    public typealias Delivery = TapRing.Delivery

    private struct Parked {
        let id: UInt64
        let max: Int
        let deliver: Delivery
    }

    public let export: ExportRing
    private let lock = ConditionLock()
    private var reader: DBufReader?
    private let pcapLinkType: Int32
    /// Bytes to deliver before the stream (the pcap file header).
    private var prefix: [UInt8]
    /// Bytes of the current record (with its pcap header) already delivered.
    private var part = 0
    private var buffer: UnsafeMutableRawPointer
    private var bufferSize: Int
    private var parked: [Parked] = []
    private var notifier: (@Sendable () -> Void)?
    private var closed = false
    private var skipped: UInt64 = 0
    private var droppedBefore: UInt64 = 0
    /// Zero-copy reads: segments pointing into the ring (and at pcap record headers built beside it), handed to
    /// one FUSE reply; the records are freed for the producer only after the reply copied them.
    private static let maxSegments = 512
    private let segments = UnsafeMutablePointer<iovec>.allocate(capacity: RingTap.maxSegments)
    private let headers = UnsafeMutablePointer<(UInt32, UInt32, UInt32, UInt32)>.allocate(capacity: RingTap.maxSegments / 2)
    /// Average record size seen lately: small records are copied (a segment each would cost more than a copy).
    private var averageRecord = 65536
    /// On a lossy ring a record is never left half-delivered in the ring (the producer may overwrite the rest
    /// before the next read): one that does not fit a read whole is copied out, validated, and its remainder
    /// served from here.
    private var carry: [UInt8] = []
    private var carryOffset = 0

    /// Attaches to `export`'s current ring at its head. Nil when every reader slot is taken.
    public init?(export: ExportRing, pcapLinkType: Int32 = -1, fileHeader: [UInt8] = []) {
        guard let r = export.currentRing().attach() else { return nil }
        self.export = export
        reader = r
        self.pcapLinkType = pcapLinkType
        prefix = fileHeader
        bufferSize = 1 << 16
        buffer = .allocate(byteCount: bufferSize, alignment: 64)
    }

    deinit {
        reader?.detach()
        buffer.deallocate()
        segments.deallocate()
        headers.deallocate()
    }

    /// Records this reader lost: overwritten on a lossy stream, or of another link type than its pcap header.
    public var dropped: UInt64 { lock.withLock { droppedBefore &+ (reader?.dropped ?? 0) &+ skipped } }

    // MARK: reading

    /// Reads up to `max` bytes: at once if there is data (or the end of the stream), otherwise parks the read
    /// under `id` until there is, `cancel(id:)`, or the reader closes. Returns true when delivered at once.
    @discardableResult
    public func read(max: Int, id: UInt64, nonBlocking: Bool = false, interrupted: () -> Bool = { false },
                     deliver: @escaping Delivery) -> Bool {
        lock.lock()
        if parked.isEmpty {
            if deliverLocked(max: max, deliver) { lock.unlock(); return true }
            if nonBlocking { lock.unlock(); deliver(.error(EAGAIN)); return true }
            if interrupted() { lock.unlock(); deliver(.error(EINTR)); return true }
        } else if nonBlocking {
            lock.unlock()
            deliver(.error(EAGAIN))
            return true
        }
        parked.append(Parked(id: id, max: max, deliver: deliver))
        lock.unlock()
        export.watch(self)
        return false
    }

    /// Ends a parked read with EINTR (an interrupt). No-op if it was delivered already.
    public func cancel(id: UInt64) {
        let p: Parked? = lock.withLock {
            guard let i = parked.firstIndex(where: { $0.id == id }) else { return nil }
            return parked.remove(at: i)
        }
        p?.deliver(.error(EINTR))
    }

    /// The reader closed its file: parked reads end, the slot is given back.
    public func close() {
        let ps: [Parked] = lock.withLock {
            closed = true
            notifier = nil
            if let r = reader, r.ring.closedState == ringClosedReplaced {
                // Never followed: give back the slot the new ring holds for this reader.
                let next = export.currentRing()
                if next !== r.ring { next.adopt(slot: r.slotIndex, sequence: 0)?.detach() }
            }
            if let r = reader { droppedBefore &+= r.dropped; r.detach() }
            reader = nil
            defer { parked = [] }
            return parked
        }
        for p in ps { p.deliver(.endOfStream) }
    }

    /// Calls `f` once when a read would not block (poll). Nil cancels.
    public func setReadableNotifier(_ f: (@Sendable () -> Void)?) {
        lock.withLock { notifier = f }
        if f != nil { export.watch(self) }
    }

    /// True when a read would not block now.
    public var isReadable: Bool {
        lock.withLock {
            if closed || !prefix.isEmpty || carryOffset < carry.count { return true }
            guard let r = reader else { return true }
            if r.peek() != nil { return true }
            return atEndLocked()
        }
    }

    /// Called by the ring's service thread: delivers parked reads that can go now and fires the poll notifier.
    /// Returns true while this tap still waits for data.
    func service() -> Bool {
        var fire: (@Sendable () -> Void)?
        lock.lock()
        while let p = parked.first {
            if !deliverLocked(max: p.max, p.deliver) { break }
            parked.removeFirst()
        }
        if notifier != nil, closed || !prefix.isEmpty || carryOffset < carry.count || reader?.peek() != nil || atEndLocked() {
            fire = notifier
            notifier = nil
        }
        let waiting = !parked.isEmpty || notifier != nil
        lock.unlock()
        fire?()
        return waiting
    }

    var needsService: Bool { lock.withLock { !parked.isEmpty || notifier != nil } }

    /// Delivers what there is (up to `max` bytes), or the end of the stream. False if there is nothing yet.
    private func deliverLocked(max: Int, _ deliver: Delivery) -> Bool {
        if closed { deliver(.endOfStream); return true }
        while true {
            if let r = reader, r.ring.policy == .block, averageRecord >= 1024 {
                let (count, records) = gatherLocked(max: max)
                if count > 0 {
                    deliver(.segments(UnsafeBufferPointer(start: segments, count: count)))
                }
                if records > 0 {
                    r.publishTail()
                    wakeWaitingProducer(r.ring)
                }
                if count > 0 { return true }
            } else {
                let n = fillLocked(max: max)
                if n > 0 {
                    deliver(.data(UnsafeRawBufferPointer(start: buffer, count: n), UnsafeRawBufferPointer(start: nil, count: 0)))
                    return true
                }
            }
            let before = reader
            if atEndLocked() { deliver(.endOfStream); return true }
            if reader === before { return false }  // nothing yet; else the stream moved to a new ring: read there
        }
    }

    /// True at the end of the stream. A ring that was replaced (the stream's policy changed) is followed to the
    /// new one first.
    private func atEndLocked() -> Bool {
        guard let r = reader else { return true }
        if !r.isAtEnd { return false }
        if r.ring.closedState == ringClosedReplaced {
            // The stream moved to a new ring (its policy changed); this reader's slot is there already, at the
            // start, holding what was written since (`ExportRing.setPolicy`).
            let next = export.currentRing()
            if next !== r.ring, let fresh = next.adopt(slot: r.slotIndex, sequence: 0) ?? next.attach() {
                droppedBefore &+= r.dropped
                r.detach()
                reader = fresh
                part = 0
                return false
            }
        }
        return true
    }

    /// Gathers up to `max` bytes of a lossless ring as segments in place; records are consumed without telling the
    /// producer (`publishTail` after the reply). Returns the segment count and the records consumed.
    private func gatherLocked(max: Int) -> (Int, Int) {
        var count = 0
        var n = 0
        var records = 0
        if !prefix.isEmpty {
            let k = min(prefix.count, max)
            prefix.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: k) }
            prefix.removeFirst(k)
            segments[0] = iovec(iov_base: buffer, iov_len: k)
            count = 1
            n = k
        }
        guard let r = reader else { return (count, 0) }
        let pcap = pcapLinkType >= 0
        var hdrs = 0
        var payload = 0
        while n < max && count < RingTap.maxSegments - 2 && hdrs < RingTap.maxSegments / 2 {
            guard let rec = r.peek() else { break }
            if pcap && Int32(rec.linkType) != pcapLinkType {
                r.consumeDeferred(rec)
                records += 1
                skipped &+= 1
                continue
            }
            let headerLength = pcap ? 16 : 0
            let total = headerLength + rec.bytes.count
            var off = part
            if off < headerLength {
                let ts = rec.timestampNanoseconds
                headers[hdrs] = (UInt32(truncatingIfNeeded: ts / 1_000_000_000), UInt32(truncatingIfNeeded: (ts % 1_000_000_000) / 1000),
                                 UInt32(rec.bytes.count), UInt32(truncatingIfNeeded: rec.wireLength))
                let k = min(headerLength - off, max - n)
                segments[count] = iovec(iov_base: UnsafeMutableRawPointer(headers + hdrs) + off, iov_len: k)
                hdrs += 1
                count += 1
                n += k
                off += k
            }
            if off >= headerLength && n < max {
                let from = off - headerLength
                let k = min(rec.bytes.count - from, max - n)
                if k > 0 {
                    segments[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: rec.bytes.baseAddress! + from), iov_len: k)
                    count += 1
                    n += k
                    off += k
                    payload += k
                }
            }
            if off == total {
                r.consumeDeferred(rec)
                records += 1
                part = 0
            } else {
                part = off
                break
            }
        }
        if records > 0 { averageRecord = (averageRecord * 3 + payload / records) / 4 }
        return (count, records)
    }

    /// Copies up to `max` bytes of the stream into `buffer`.
    private func fillLocked(max: Int) -> Int {
        if bufferSize < max {
            buffer.deallocate()
            bufferSize = Swift.max(max, bufferSize * 2)
            buffer = .allocate(byteCount: bufferSize, alignment: 64)
        }
        var n = 0
        if !prefix.isEmpty {
            let k = min(prefix.count, max)
            prefix.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: k) }
            prefix.removeFirst(k)
            n = k
        }
        if carryOffset < carry.count && n < max {
            let k = min(carry.count - carryOffset, max - n)
            carry.withUnsafeBytes { (buffer + n).copyMemory(from: $0.baseAddress! + carryOffset, byteCount: k) }
            carryOffset += k
            n += k
            if carryOffset == carry.count { carry.removeAll(keepingCapacity: true); carryOffset = 0 }
        }
        guard let r = reader else { return n }
        let pcap = pcapLinkType >= 0
        var hdr: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
        var records = 0
        let first = n
        defer { if records > 0 { averageRecord = (averageRecord * 3 + (n - first) / records) / 4 } }
        while n < max {
            guard let rec = r.peek() else { break }
            if pcap && Int32(rec.linkType) != pcapLinkType {
                r.consume(rec)
                skipped &+= 1
                continue
            }
            let start = n
            let headerLength = pcap ? 16 : 0
            let total = headerLength + rec.bytes.count
            if r.ring.policy == .drop && total > max - n {
                // Whole into the carry buffer, validated, then served from there.
                carry.removeAll(keepingCapacity: true)
                carryOffset = 0
                if pcap {
                    let ts = rec.timestampNanoseconds
                    hdr = (UInt32(truncatingIfNeeded: ts / 1_000_000_000), UInt32(truncatingIfNeeded: (ts % 1_000_000_000) / 1000),
                           UInt32(rec.bytes.count), UInt32(truncatingIfNeeded: rec.wireLength))
                    withUnsafeBytes(of: &hdr) { carry.append(contentsOf: $0) }
                }
                carry.append(contentsOf: rec.bytes)
                if !r.isStillValid(rec) {  // overwritten while copied: lost
                    carry.removeAll(keepingCapacity: true)
                    continue
                }
                r.consume(rec)
                records += 1
                let k = max - n
                carry.withUnsafeBytes { (buffer + n).copyMemory(from: $0.baseAddress!, byteCount: k) }
                carryOffset = k
                n += k
                break
            }
            var off = part
            if off < headerLength {
                let ts = rec.timestampNanoseconds
                hdr = (UInt32(truncatingIfNeeded: ts / 1_000_000_000), UInt32(truncatingIfNeeded: (ts % 1_000_000_000) / 1000),
                       UInt32(rec.bytes.count), UInt32(truncatingIfNeeded: rec.wireLength))
                let k = min(headerLength - off, max - n)
                withUnsafeBytes(of: &hdr) { (buffer + n).copyMemory(from: $0.baseAddress! + off, byteCount: k) }
                n += k
                off += k
            }
            if off >= headerLength && n < max {
                let from = off - headerLength
                let k = min(rec.bytes.count - from, max - n)
                if k > 0 { (buffer + n).copyMemory(from: rec.bytes.baseAddress! + from, byteCount: k) }
                n += k
                off += k
            }
            if !r.isStillValid(rec) {  // overwritten while copied (lossy): that record is lost
                n = start
                part = 0
                continue
            }
            if off == total {
                r.consume(rec)
                records += 1
                part = 0
            } else {
                part = off
                break
            }
        }
        if n > 0 { wakeWaitingProducer(r.ring) }
        return n
    }

    /// A producer waiting for room sleeps until a reader bumps `room_seq`. `consume` checks for it without a
    /// fence (cheap per record, but it can miss the producer's flag); once per read(2), with a full fence, no
    /// wake-up is missed, so the producer never sleeps out its timeout while this reader drains the ring.
    private func wakeWaitingProducer(_ ring: DBuf) {
        pipes_fence_seq_cst()
        if pipes_load_acquire32(ring.f.roomFlag) == 0 { return }
        _ = pipes_fetch_add32(ring.f.roomSeq, 1)
        _ = pipes_futex_wake(ring.f.roomSeq, Int32.max)
    }
}
