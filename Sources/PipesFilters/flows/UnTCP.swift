import PipesRuntime

/// `untcp`: TCP reassembly (§6.1, the reordering class; §4.2, connection handling). Turns TCP segments into the
/// byte streams of their connections, one stream per direction, multiplexed over the filter's one output: every
/// block out carries its flow tag (`Block.flow`, named in `FlowTable.shared`) and the class of its direction, 1
/// for the bytes the connection's opener sent (`untcp/client`), 2 for the other side's (`untcp/server`). A
/// direction's first block is marked `.start`; an empty block marked `.end` follows its last (FIN, RST, eviction or
/// the end of the input).
///
/// In-order segments go on without a copy: the block's view moves to the payload. Only segments that arrive ahead
/// of a gap are copied, and held until the gap fills. Policy (man pipesfs-filters(7)):
/// * Bytes already handed on are never handed on again: a retransmission is dropped, an overlap trimmed. Between
///   held segments, the one earlier in sequence order gives the overlapping bytes.
/// * A gap that does not fill is skipped (counted in `untcp_gaps`, `untcp_gap_bytes`) when the direction holds
///   more than `window` bytes ahead of it, when all connections hold more than `memory` (then the connections idle
///   longest skip theirs too), when the connection ends or is evicted, when a SYN with another ISN reuses its
///   ports, and at the end of the input. Bytes a capture's snap length cut off count as a gap too. Held segments
///   count `segmentOverhead` bytes each on top of their payload.
/// * A connection starts at its SYN, or mid-stream at its first segment with data. At most `connections` are
///   tracked: a new one evicts the one idle longest (`untcp_evicted`). A SYN on a port pair whose connection
///   has finished starts a new connection.
/// * Sequence numbers compare modulo 2^32, so streams wrap around; a segment more than 1 GiB ahead is ignored
///   (`untcp_out_of_window`).
public final class UnTCP: SpaceBoundFilter, FlushingFilter, MakesBlocks {
    public struct Limits: Equatable, Sendable {
        public var connections = 262_144
        public var memory = 64 << 20
        public var window = 1 << 20
        public init() {}
    }

    public let limits: Limits
    private let text: String

    /// A segment held ahead of a gap: a copy of its captured bytes and its length on the wire.
    struct Segment {
        var seq: UInt32
        var data: [UInt8]
        var wireLength: Int
    }

    /// One direction of a connection.
    struct Side {
        enum State: UInt8 { case unseen, open, finished }
        var state = State.unseen
        /// The sequence number of the next byte to hand on.
        var next: UInt32 = 0
        var fin: UInt32 = 0
        var hasFin = false
        var started = false
        /// The sequence number of its SYN, if one was seen.
        var isn: UInt32 = 0
        var synSeen = false
        /// Held segments, in sequence order from `next`.
        var pending: [Segment] = []
        /// What they cost: their captured bytes plus `segmentOverhead` each.
        var pendingBytes = 0
    }

    /// What holding a segment costs beyond its bytes (the copy's header, the array entry), counted against
    /// `window` and `memory` so that many tiny segments cannot hold far more memory than the limits say.
    static let segmentOverhead = 64

    struct Connection {
        /// Direction 0: the side that opened it (sent the SYN), or the first seen.
        var key: FlowKey
        var canonical: FlowKey
        /// Its number in `FlowTable.shared`, given when it first hands on bytes (0 until then: a half-open connection
        /// costs the table nothing).
        var number: UInt32 = 0
        var sides = (Side(), Side())
        var newer: Int32 = -1
        var older: Int32 = -1
        /// Ended (both FINs, a RST): kept, so late copies of its segments are known as such, until a new SYN on its
        /// ports or eviction.
        var done = false
        /// When its last segment was captured (its end marks at the end of the input carry it).
        var lastSeconds: Int64 = 0
        var lastNanoseconds: Int32 = 0
    }

    // Connection slots live in chunks that never move, reached by index: no reference counting per segment.
    private static let chunkShift = 12
    private var chunks: [UnsafeMutablePointer<Connection>] = []
    private var slotCount = 0
    private var freeSlots: [Int32] = []
    private var index: [FlowKey: Int32] = [:]
    /// Most and least recently active connections (a list through `newer`/`older`).
    private var newest: Int32 = -1
    private var oldest: Int32 = -1
    private var pendingTotal = 0

    /// How it hands on the blocks it makes (`MakesBlocks`).
    public var blockOutput = FilterOutput()

    // Statistics.
    private(set) var live = 0
    private(set) var total: UInt64 = 0
    private(set) var evicted: UInt64 = 0
    private(set) var inOrder: UInt64 = 0
    private(set) var outOfOrder: UInt64 = 0
    private(set) var retransmitted: UInt64 = 0
    private(set) var overlapBytes: UInt64 = 0
    private(set) var gaps: UInt64 = 0
    private(set) var gapBytes: UInt64 = 0
    private(set) var bytesOut: UInt64 = 0
    private(set) var notTCP: UInt64 = 0
    private(set) var outOfWindow: UInt64 = 0
    private(set) var pendingHigh = 0

    init(_ arguments: String) throws(FilterError) {
        var l = Limits()
        for item in arguments.split(separator: " ", omittingEmptySubsequences: true) {
            let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else {
                throw FilterError("untcp: unknown argument '\(item)' (want connections=N, memory=SIZE or window=SIZE)")
            }
            guard let v = UnTCP.size(kv[1]), v > 0 else {
                throw FilterError("untcp: \(kv[0]) wants a positive number (K, M and G suffixes allowed), got '\(kv[1])'")
            }
            switch kv[0] {
            case "connections":
                guard v <= 1 << 26 else { throw FilterError("untcp: connections is at most \(1 << 26), got \(v)") }
                l.connections = v
            case "memory": l.memory = v
            case "window": l.window = v
            default:
                throw FilterError("untcp: unknown argument '\(kv[0])' (want connections=N, memory=SIZE or window=SIZE)")
            }
        }
        limits = l
        text = arguments
    }

    deinit {
        for (i, c) in chunks.enumerated() {
            let n = min(1 << UnTCP.chunkShift, slotCount - i << UnTCP.chunkShift)
            c.deinitialize(count: n)
            c.deallocate()
        }
    }

    /// `12`, `64K`, `1M`, `2G`.
    static func size(_ s: String) -> Int? {
        guard let last = s.last else { return nil }
        let mult: Int
        var digits = Substring(s)
        switch last {
        case "K", "k": mult = 1 << 10; digits = digits.dropLast()
        case "M", "m": mult = 1 << 20; digits = digits.dropLast()
        case "G", "g": mult = 1 << 30; digits = digits.dropLast()
        default: mult = 1
        }
        guard let v = Int(digits), v >= 0, v <= Int.max / mult else { return nil }
        return v * mult
    }

    public var arguments: String { text }

    public func bind(space: Space, node: Node) throws(FilterError) {
        blockOutput.owner = Unmanaged.passUnretained(node)
    }

    public func outputLinkType(_ input: LinkType?) -> LinkType? { .user }

    // MARK: the data path

    @inline(__always)
    private func slot(_ i: Int32) -> UnsafeMutablePointer<Connection> {
        chunks[Int(i) >> UnTCP.chunkShift] + (Int(i) & (1 << UnTCP.chunkShift - 1))
    }

    public func process(_ block: inout Block) -> UInt32 {
        block.decodeTransport()
        let l = block.layers
        guard l.transportProtocol == 6, !l.laterFragment, l.transport >= 0, l.payload >= 0,
              let base = block.bytes.baseAddress else {
            notTCP &+= 1
            return 0
        }
        let n = Int(l.network), t = Int(l.transport), p = Int(l.payload)
        let v6 = l.networkType == etherTypeIPv6
        guard let sport = block.u16(t), let dport = block.u16(t + 2), let seqField = block.u32(t + 4),
              let flags = block.u8(t + 13) else {
            notTCP &+= 1
            return 0
        }
        let key = FlowKey(source: FlowAddress(base + n + (v6 ? 8 : 12), count: v6 ? 16 : 4),
                          destination: FlowAddress(base + n + (v6 ? 24 : 16), count: v6 ? 16 : 4),
                          sourcePort: sport, destinationPort: dport, v6: v6)
        // The payload: what was captured of it, and its length on the wire (from the IP length).
        let end = l.end >= 0 ? Int(l.end) : block.count
        let captured = p < end ? UnsafeRawBufferPointer(rebasing: block.bytes[p..<end]) : UnsafeRawBufferPointer(start: nil, count: 0)
        var wire = captured.count
        if !v6, let total = block.u16(n + 2), total != 0 {
            wire = max(0, n + Int(total) - p)
        } else if v6, let plen = block.u16(n + 4), plen != 0 {
            wire = max(0, n + 40 + Int(plen) - p)
        }
        wire = max(wire, captured.count)
        let syn = flags & 0x02 != 0, fin = flags & 0x01 != 0, rst = flags & 0x04 != 0, ack = flags & 0x10 != 0
        blockOutput.begin()

        let canonical = UnTCP.canonical(key)
        var s = index[canonical] ?? -1
        // A SYN from the opener with another ISN: the port pair was reused while the old connection had not ended
        // (its FIN behind a gap that never filled): the old one ends, gaps skipped, and a new one starts.
        if s >= 0 && syn && !ack && !slot(s).pointee.done && slot(s).pointee.key == key
            && slot(s).pointee.sides.0.synSeen && slot(s).pointee.sides.0.isn != seqField {
            endConnection(s, block)
            forget(s)
            s = -1
        }
        if s >= 0 && slot(s).pointee.done {
            // A new connection on a port pair whose last one ended; else a late copy of the old one's segments.
            if syn && !ack {
                forget(s)
                s = -1
            } else {
                if wire > 0 { retransmitted &+= 1 }
                return 0
            }
        }
        if s < 0 {
            if !syn && wire == 0 { return 0 }  // a bare ACK, FIN or RST of a connection not seen: nothing to start
            s = open(syn && ack ? key.reversed : key, canonical, block)
        }
        touch(s)
        let c = slot(s)
        c.pointee.lastSeconds = block.seconds
        c.pointee.lastNanoseconds = block.nanoseconds
        let dir: UInt32 = c.pointee.key == key ? 0 : 1
        if dir == 0 {
            segment(&c.pointee.sides.0, s, dir, seqField, syn: syn, fin: fin, captured, wire, block)
        } else {
            segment(&c.pointee.sides.1, s, dir, seqField, syn: syn, fin: fin, captured, wire, block)
        }
        if rst || (c.pointee.sides.0.state == .finished && c.pointee.sides.1.state == .finished) {
            endConnection(s, block)
        }
        return 0
    }

    /// One segment of one direction.
    @inline(__always)
    private func segment(_ side: inout Side, _ s: Int32, _ dir: UInt32, _ seqField: UInt32, syn: Bool, fin: Bool,
                         _ captured: UnsafeRawBufferPointer, _ wire: Int, _ block: Block) {
        var seq = seqField
        if syn {
            if side.state == .unseen {
                side.next = seq &+ 1
                side.state = .open
            }
            if !side.synSeen {
                side.synSeen = true
                side.isn = seq
            }
            seq = seq &+ 1
        }
        if side.state == .finished { retransmitted &+= 1; return }
        if side.state == .unseen {
            side.next = seq
            side.state = .open
        }
        if wire > 0 { accept(&side, s, dir, seq, captured, wire, block) }
        if fin && !side.hasFin {
            side.hasFin = true
            side.fin = seq &+ UInt32(truncatingIfNeeded: wire)
        }
        if side.hasFin && side.next == side.fin {
            side.state = .finished
            while !side.pending.isEmpty { skipGap(&side, s, dir, block) }
            if side.started { emit(nil, s, dir, [.end], block) }
        }
    }

    /// Hands on what of a segment is new, or holds it if it is ahead of a gap.
    @inline(__always)
    private func accept(_ side: inout Side, _ s: Int32, _ dir: UInt32, _ seq: UInt32, _ captured: UnsafeRawBufferPointer,
                        _ wire: Int, _ block: Block) {
        let d = Int32(bitPattern: seq &- side.next)
        var bytes = captured, w = wire
        if d < 0 {
            let over = Int(-Int64(d))
            if over >= w {
                retransmitted &+= 1
                return
            }
            overlapBytes &+= UInt64(over)
            bytes = UnsafeRawBufferPointer(rebasing: bytes[min(over, bytes.count)...])
            w -= over
        } else if d > 0 {
            if d >= 1 << 30 {
                outOfWindow &+= 1
                return
            }
            hold(&side, seq, captured, wire)
            outOfOrder &+= 1
            while !side.pending.isEmpty && (side.pendingBytes > limits.window || pendingTotal > limits.memory) {
                skipGap(&side, s, dir, block)
            }
            if pendingTotal > limits.memory { relieveMemory(block) }
            return
        }
        inOrder &+= 1
        deliver(&side, s, dir, bytes, w, block)
        if !side.pending.isEmpty { drain(&side, s, dir, block) }
    }

    /// Hands on `bytes` at `next` (a segment of `wire` bytes on the wire, of which `bytes` were captured).
    @inline(__always)
    private func deliver(_ side: inout Side, _ s: Int32, _ dir: UInt32, _ bytes: UnsafeRawBufferPointer, _ wire: Int,
                         _ block: Block) {
        if bytes.count < wire {
            gaps &+= 1
            gapBytes &+= UInt64(wire - bytes.count)
        }
        side.next = side.next &+ UInt32(truncatingIfNeeded: wire)
        if bytes.count > 0 {
            let marks: FlowMarks = side.started ? [] : .start
            side.started = true
            emit(bytes, s, dir, marks, block)
        }
    }

    /// Keeps a copy of a segment ahead of a gap, in sequence order (after any that start at the same byte).
    private func hold(_ side: inout Side, _ seq: UInt32, _ captured: UnsafeRawBufferPointer, _ wire: Int) {
        // Binary search for the place after every held segment that starts at or before it.
        let d = seq &- side.next
        var lo = 0, hi = side.pending.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if side.pending[mid].seq &- side.next <= d { lo = mid + 1 } else { hi = mid }
        }
        side.pending.insert(Segment(seq: seq, data: Array(captured), wireLength: wire), at: lo)
        let cost = captured.count + UnTCP.segmentOverhead
        side.pendingBytes += cost
        pendingTotal += cost
        pendingHigh = max(pendingHigh, pendingTotal)
    }

    /// Over `memory` with the current direction's gaps skipped: the connections idle longest skip theirs.
    private func relieveMemory(_ block: Block) {
        var s = oldest
        while s >= 0 && pendingTotal > limits.memory {
            let c = slot(s)
            let next = c.pointee.newer
            if !c.pointee.done {
                while !c.pointee.sides.0.pending.isEmpty { skipGap(&c.pointee.sides.0, s, 0, block) }
                while !c.pointee.sides.1.pending.isEmpty { skipGap(&c.pointee.sides.1, s, 1, block) }
            }
            s = next
        }
    }

    /// Hands on held segments that the sequence has reached.
    private func drain(_ side: inout Side, _ s: Int32, _ dir: UInt32, _ block: Block) {
        // The segments handed on leave the array in one step at the end (removing them one by one is quadratic).
        var k = 0
        while k < side.pending.count, Int32(bitPattern: side.pending[k].seq &- side.next) <= 0 {
            let first = side.pending[k]
            k += 1
            let cost = first.data.count + UnTCP.segmentOverhead
            side.pendingBytes -= cost
            pendingTotal -= cost
            let over = Int(-Int64(Int32(bitPattern: first.seq &- side.next)))
            if over >= first.wireLength {
                retransmitted &+= 1
                continue
            }
            overlapBytes &+= UInt64(over)
            first.data.withUnsafeBytes { raw in
                let rest = UnsafeRawBufferPointer(rebasing: raw[min(over, raw.count)...])
                deliver(&side, s, dir, rest, first.wireLength - over, block)
            }
        }
        if k > 0 { side.pending.removeFirst(k) }
    }

    /// Skips the gap before the first held segment.
    private func skipGap(_ side: inout Side, _ s: Int32, _ dir: UInt32, _ block: Block) {
        guard let first = side.pending.first else { return }
        let gap = first.seq &- side.next
        if Int32(bitPattern: gap) > 0 {
            gaps &+= 1
            gapBytes &+= UInt64(gap)
            side.next = first.seq
        }
        drain(&side, s, dir, block)
    }

    /// One block out: a view of `bytes` (nil: an empty end mark) as the flow's next bytes.
    @inline(__always)
    private func emit(_ bytes: UnsafeRawBufferPointer?, _ s: Int32, _ dir: UInt32, _ marks: FlowMarks, _ from: Block) {
        let view = bytes ?? UnsafeRawBufferPointer(start: nil, count: 0)
        var b = Block(bytes: view, wireLength: view.count, seconds: from.seconds, nanoseconds: from.nanoseconds, linkType: .user)
        let c = slot(s)
        if c.pointee.number == 0 { c.pointee.number = FlowTable.shared.register(c.pointee.key) }
        b.flow = FlowTable.tag(connection: c.pointee.number, direction: dir)
        b.flowMarks = marks
        bytesOut &+= UInt64(view.count)
        blockOutput.hand(&b, dir + 1, from: from)
    }

    // MARK: connections

    static func canonical(_ k: FlowKey) -> FlowKey {
        let a = (k.source.high, k.source.low, k.sourcePort), b = (k.destination.high, k.destination.low, k.destinationPort)
        return a <= b ? k : k.reversed
    }

    private func open(_ key: FlowKey, _ canonical: FlowKey, _ block: Block) -> Int32 {
        if live >= limits.connections, oldest >= 0 {
            let o = oldest
            if !slot(o).pointee.done {
                evicted &+= 1
                endConnection(o, block)
            }
            forget(o)
        }
        let c = Connection(key: key, canonical: canonical)
        let s: Int32
        if let f = freeSlots.popLast() {
            s = f
            slot(s).pointee = c
        } else {
            s = Int32(slotCount)
            if slotCount >> UnTCP.chunkShift == chunks.count {
                chunks.append(.allocate(capacity: 1 << UnTCP.chunkShift))
            }
            slot(s).initialize(to: c)
            slotCount += 1
        }
        index[canonical] = s
        live += 1
        total &+= 1
        return s
    }

    /// Ends a connection: what it holds goes on (gaps skipped), each direction that started gets its end mark. Its
    /// slot stays (`done`) until `forget`.
    private func endConnection(_ s: Int32, _ block: Block) {
        let c = slot(s)
        finish(&c.pointee.sides.0, s, 0, block)
        finish(&c.pointee.sides.1, s, 1, block)
        if c.pointee.number != 0 { FlowTable.shared.retire(c.pointee.number) }
        c.pointee.done = true
    }

    /// Forgets an ended connection.
    private func forget(_ s: Int32) {
        let c = slot(s)
        if !c.pointee.done && c.pointee.number != 0 { FlowTable.shared.retire(c.pointee.number) }
        index.removeValue(forKey: c.pointee.canonical)
        unlink(s)
        pendingTotal -= c.pointee.sides.0.pendingBytes + c.pointee.sides.1.pendingBytes
        c.pointee.sides = (Side(), Side())
        c.pointee.done = true
        freeSlots.append(s)
        live -= 1
    }

    private func finish(_ side: inout Side, _ s: Int32, _ dir: UInt32, _ block: Block) {
        if side.state == .finished { return }
        while !side.pending.isEmpty { skipGap(&side, s, dir, block) }
        if side.started { emit(nil, s, dir, [.end], block) }
        side.state = .finished
    }

    @inline(__always)
    private func touch(_ s: Int32) {
        if newest == s { return }
        unlink(s)
        let c = slot(s)
        c.pointee.older = newest
        c.pointee.newer = -1
        if newest >= 0 { slot(newest).pointee.newer = s }
        newest = s
        if oldest < 0 { oldest = s }
    }

    private func unlink(_ s: Int32) {
        let c = slot(s)
        let o = c.pointee.older, nw = c.pointee.newer
        if o >= 0 { slot(o).pointee.newer = nw } else if oldest == s { oldest = nw }
        if nw >= 0 { slot(nw).pointee.older = o } else if newest == s { newest = o }
        c.pointee.older = -1
        c.pointee.newer = -1
    }

    /// The input ended: every connection ends, what is held goes on.
    public func endOfStream() {
        // Every block handed on now is a block of its own (a new serial), timestamped as its connection's last
        // segment.
        blockOutput.handedOn = 1
        while oldest >= 0 {
            let s = oldest
            let c = slot(s)
            if !c.pointee.done {
                let at = Block(bytes: UnsafeRawBufferPointer(start: nil, count: 0), seconds: c.pointee.lastSeconds,
                               nanoseconds: c.pointee.lastNanoseconds, linkType: .user)
                endConnection(s, at)
            }
            forget(s)
        }
    }

    public func shutdown() {
        while oldest >= 0 { forget(oldest) }
        pendingTotal = 0
    }

    public func statistics() -> [(String, String)] {
        [("untcp_connections", "\(live)"), ("untcp_connections_total", "\(total)"), ("untcp_evicted", "\(evicted)"),
         ("untcp_segments_in_order", "\(inOrder)"), ("untcp_segments_out_of_order", "\(outOfOrder)"),
         ("untcp_retransmitted", "\(retransmitted)"), ("untcp_overlap_bytes", "\(overlapBytes)"),
         ("untcp_gaps", "\(gaps)"), ("untcp_gap_bytes", "\(gapBytes)"), ("untcp_held_bytes", "\(pendingTotal)"),
         ("untcp_held_bytes_max", "\(pendingHigh)"), ("untcp_bytes_out", "\(bytesOut)"), ("untcp_not_tcp", "\(notTCP)"),
         ("untcp_out_of_window", "\(outOfWindow)")]
    }

    public static let descriptor = FilterDescriptor(
        name: "untcp", summary: "TCP reassembly: the byte streams of connections, tagged by flow",
        usage: "untcp [connections=N] [memory=SIZE] [window=SIZE]", structuralClass: .reordering,
        classNames: ["client": 1, "server": 2], classifying: true
    ) { a throws(FilterError) in try UnTCP(a) }
}
