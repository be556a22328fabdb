import PipesRuntime

/// `defrag`: reassembles fragmented IPv4 and IPv6 datagrams. Whole datagrams go on untouched (no copy); fragments
/// are held (copied) until their datagram is complete, which then goes on as one block of the same link type: the
/// first fragment's link header, its IP header without fragmentation (IPv4: offset 0, MF clear, total length and
/// checksum set; IPv6: the fragment header taken out, payload length set) and the whole payload, timestamped as the
/// fragment that completed it. Its class is the completing fragment's.
///
/// Policy (man pipesfs-filters(7)): where fragments overlap, the bytes that arrived first stay. A datagram is
/// complete when the fragment without "more fragments" has come and every byte before its end is there. At most
/// `datagrams` (default 4096) and 64 MiB of payload are held; past either, a new datagram evicts the one that
/// started first (`defrag_evicted`). A fragment that would end past 65535 bytes of payload, or that disagrees with
/// its datagram's known end, is dropped, as is a datagram that would not fit an IP length field
/// (`defrag_malformed`).
public final class Defrag: SpaceBoundFilter, MakesBlocks {
    struct Key: Hashable {
        var source: FlowAddress
        var destination: FlowAddress
        var id: UInt32
        var proto: UInt8
        var v6: Bool
    }

    final class Datagram {
        /// The link header and the IP header (without fragmentation) of the fragment at offset 0, once it came.
        var header: [UInt8] = []
        /// Where, in `header`, the IP header starts, and (IPv6) the next-header byte to set.
        var network = 0
        var nextHeaderAt = -1
        var nextHeader: UInt8 = 0
        var payload = [UInt8](repeating: 0, count: 0)
        /// Byte ranges of the payload that are there, sorted and merged.
        var have: [Range<Int>] = []
        var end = -1
        var age: UInt64 = 0
        var linkType: LinkType = .ethernet

        /// Copies what of `bytes` at `offset` is not there yet.
        func add(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
            let r = offset..<(offset + bytes.count)
            if payload.count < r.upperBound { payload += [UInt8](repeating: 0, count: r.upperBound - payload.count) }
            var missing: [Range<Int>] = [r]
            for h in have {
                missing = missing.flatMap { m -> [Range<Int>] in
                    if !m.overlaps(h) { return [m] }
                    var out: [Range<Int>] = []
                    if m.lowerBound < h.lowerBound { out.append(m.lowerBound..<h.lowerBound) }
                    if h.upperBound < m.upperBound { out.append(h.upperBound..<m.upperBound) }
                    return out
                }
            }
            for m in missing where !m.isEmpty {
                payload.withUnsafeMutableBytes { p in
                    (p.baseAddress! + m.lowerBound).copyMemory(from: bytes.baseAddress! + (m.lowerBound - offset),
                                                               byteCount: m.count)
                }
            }
            have.append(r)
            have.sort { $0.lowerBound < $1.lowerBound }
            var merged: [Range<Int>] = []
            for h in have {
                if let l = merged.last, l.upperBound >= h.lowerBound {
                    merged[merged.count - 1] = l.lowerBound..<max(l.upperBound, h.upperBound)
                } else {
                    merged.append(h)
                }
            }
            have = merged
        }

        var complete: Bool { end >= 0 && !header.isEmpty && have.count == 1 && have[0] == 0..<end }
    }

    public let limit: Int
    private var held: [Key: Datagram] = [:]
    private var clock: UInt64 = 0
    private var order: [(Key, UInt64)] = []
    private var orderHead = 0
    /// Payload bytes held over all datagrams, and their bound (a tiny fragment far into a datagram makes room for
    /// all before it).
    private var heldBytes = 0
    static let maxHeldBytes = 64 << 20
    /// How it hands on the blocks it makes (`MakesBlocks`).
    public var blockOutput = FilterOutput()

    private(set) var fragments: UInt64 = 0
    private(set) var reassembled: UInt64 = 0
    private(set) var evicted: UInt64 = 0
    private(set) var malformed: UInt64 = 0

    init(_ arguments: String) throws(FilterError) {
        if arguments.isEmpty {
            limit = 4096
        } else {
            let kv = arguments.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[0] == "datagrams" else {
                throw FilterError("defrag: unknown argument '\(arguments)' (want datagrams=N)")
            }
            guard let n = Int(kv[1]), (1...1 << 20).contains(n) else {
                throw FilterError("defrag: datagrams wants a number from 1 to \(1 << 20), got '\(kv[1])'")
            }
            limit = n
        }
    }

    public var arguments: String { limit == 4096 ? "" : "datagrams=\(limit)" }

    public func bind(space: Space, node: Node) throws(FilterError) { blockOutput.owner = Unmanaged.passUnretained(node) }

    public func process(_ block: inout Block) -> UInt32 {
        block.decodeNetwork()
        let n = Int(block.layers.network)
        let c = block.classValue == 0 ? 1 : block.classValue
        let bytes = block.bytes
        guard n >= 0, let base = bytes.baseAddress else { return c }
        if block.layers.networkType == etherTypeIPv4 {
            guard let vihl = block.u8(n), vihl >> 4 == 4, let frag = block.u16(n + 6), frag & 0x3FFF != 0 else { return c }
            let ihl = Int(vihl & 0x0F) * 4
            guard ihl >= 20, let total = block.u16(n + 2), let id = block.u16(n + 4), let proto = block.u8(n + 9),
                  n + Int(total) <= block.count, Int(total) >= ihl else {
                malformed &+= 1
                return 0
            }
            let key = Key(source: FlowAddress(base + n + 12, count: 4), destination: FlowAddress(base + n + 16, count: 4),
                          id: UInt32(id), proto: proto, v6: false)
            let offset = Int(frag & 0x1FFF) * 8
            let data = UnsafeRawBufferPointer(rebasing: block.bytes[(n + ihl)..<(n + Int(total))])
            fragment(key, offset: offset, more: frag & 0x2000 != 0, data, block, c) { d in
                d.header = Array(bytes[0..<(n + ihl)])
                d.network = n
            }
            return 0
        }
        if block.layers.networkType == etherTypeIPv6 {
            guard let v = block.u8(n), v >> 4 == 6, var next = block.u8(n + 6), let plen = block.u16(n + 4) else { return c }
            var off = n + 40
            var nextAt = n + 6
            var hops = 0
            while hops < 8, next == 0 || next == 43 || next == 60 {
                guard let nh = block.u8(off), let len = block.u8(off + 1) else { return c }
                nextAt = off
                next = nh
                off += (Int(len) + 1) * 8
                hops += 1
            }
            guard next == 44 else { return c }
            let end = n + 40 + Int(plen)
            guard plen != 0, end <= block.count, off + 8 <= end, let nh = block.u8(off), let fo = block.u16(off + 2),
                  let id = block.u32(off + 4) else {
                malformed &+= 1
                return 0
            }
            let key = Key(source: FlowAddress(base + n + 8, count: 16), destination: FlowAddress(base + n + 24, count: 16),
                          id: id, proto: 0, v6: true)
            let data = UnsafeRawBufferPointer(rebasing: block.bytes[(off + 8)..<end])
            let unfragmentable = off
            fragment(key, offset: Int(fo & 0xFFF8), more: fo & 1 != 0, data, block, c) { d in
                d.header = Array(bytes[0..<unfragmentable])
                d.network = n
                d.nextHeaderAt = nextAt
                d.nextHeader = nh
            }
            return 0
        }
        return c
    }

    private func fragment(_ key: Key, offset: Int, more: Bool, _ data: UnsafeRawBufferPointer, _ block: Block,
                          _ c: UInt32, first: (Datagram) -> Void) {
        fragments &+= 1
        let stop = offset + data.count
        if stop > 65535 || (more && data.count % 8 != 0) {
            malformed &+= 1
            return
        }
        let d: Datagram
        if let known = held[key] {
            d = known
        } else {
            // Past the limit (datagrams, or held bytes) the datagram that started first goes: a queue of keys in
            // the order they came, skipping those completed since.
            while (held.count >= limit || heldBytes > Defrag.maxHeldBytes), orderHead < order.count {
                let (k, born) = order[orderHead]
                orderHead += 1
                if let old = held[k], old.age == born {
                    heldBytes -= old.payload.count
                    held.removeValue(forKey: k)
                    evicted &+= 1
                }
            }
            if orderHead > 4096 && orderHead * 2 > order.count {
                order.removeFirst(orderHead)
                orderHead = 0
            }
            d = Datagram()
            clock &+= 1
            d.age = clock
            held[key] = d
            order.append((key, clock))
        }
        if d.end >= 0 && (stop > d.end || (!more && stop != d.end)) {
            malformed &+= 1
            return
        }
        if !more { d.end = stop }
        if offset == 0 && d.header.isEmpty {
            first(d)
            d.linkType = block.linkType
        }
        let before = d.payload.count
        d.add(data, at: offset)
        heldBytes += d.payload.count - before
        if d.have.last.map({ $0.upperBound > max(d.end, 0) && d.end >= 0 }) == true {
            malformed &+= 1
            heldBytes -= d.payload.count
            held.removeValue(forKey: key)
            return
        }
        guard d.complete else { return }
        heldBytes -= d.payload.count
        held.removeValue(forKey: key)
        // The whole datagram must fit an IP length field.
        let ipLength = key.v6 ? d.header.count - d.network - 40 + d.end : d.header.count - d.network + d.end
        if ipLength > 65535 {
            malformed &+= 1
            return
        }
        reassembled &+= 1
        var frame = d.header + d.payload[0..<d.end]
        let n = d.network
        if key.v6 {
            frame[d.nextHeaderAt] = d.nextHeader
            let plen = frame.count - n - 40
            frame[n + 4] = UInt8(truncatingIfNeeded: plen >> 8)
            frame[n + 5] = UInt8(truncatingIfNeeded: plen)
        } else {
            let ihl = Int(frame[n] & 0x0F) * 4
            let total = frame.count - n
            frame[n + 2] = UInt8(truncatingIfNeeded: total >> 8)
            frame[n + 3] = UInt8(truncatingIfNeeded: total)
            frame[n + 6] &= 0x40  // keep DF, clear MF and the offset
            frame[n + 7] = 0
            frame[n + 10] = 0
            frame[n + 11] = 0
            var sum: UInt32 = 0
            var i = n
            while i < n + ihl {
                sum += UInt32(frame[i]) << 8 | UInt32(frame[i + 1])
                i += 2
            }
            while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
            let ck = ~UInt16(sum)
            frame[n + 10] = UInt8(ck >> 8)
            frame[n + 11] = UInt8(ck & 0xFF)
        }
        frame.withUnsafeBytes { raw in
            var b = Block(bytes: raw, wireLength: raw.count, seconds: block.seconds, nanoseconds: block.nanoseconds,
                          linkType: d.linkType)
            b.flow = block.flow
            blockOutput.begin()  // one datagram per fragment at most: it keeps the fragment's serial
            blockOutput.hand(&b, c, from: block)
        }
    }

    public func statistics() -> [(String, String)] {
        [("defrag_fragments", "\(fragments)"), ("defrag_reassembled", "\(reassembled)"), ("defrag_held", "\(held.count)"),
         ("defrag_evicted", "\(evicted)"), ("defrag_malformed", "\(malformed)")]
    }

    public func shutdown() {
        held.removeAll()
        order.removeAll()
        orderHead = 0
        heldBytes = 0
    }

    public static let descriptor = FilterDescriptor(
        name: "defrag", summary: "reassembles fragmented IPv4 and IPv6 datagrams", usage: "defrag [datagrams=N]",
        structuralClass: .rewriting
    ) { a throws(FilterError) in try Defrag(a) }
}
