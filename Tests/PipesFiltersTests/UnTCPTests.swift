import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

/// What `untcp` handed on, gathered per flow tag.
final class Streams {
    var bytes: [UInt32: [UInt8]] = [:]
    var marks: [UInt32: [FlowMarks]] = [:]
    var classes: [UInt32: Set<UInt32>] = [:]
    var blocks = 0
    var lastView: UnsafeRawBufferPointer?

    func attach(_ f: UnTCP) {
        f.unboundOutput = { [self] b in
            blocks += 1
            bytes[b.flow, default: []] += Array(b.bytes)
            marks[b.flow, default: []].append(b.flowMarks)
            classes[b.flow, default: []].insert(b.classValue)
            lastView = b.bytes
            #expect(b.linkType == .user)
            #expect(b.flow != 0)
        }
    }

    /// The tags, direction 0 first, of the one connection seen.
    var tags: [UInt32] { bytes.keys.sorted() }
}

/// Segments of one connection between 10.0.0.1:40000 (client) and 10.0.0.2:80.
struct Conversation {
    var client: UInt32
    var server: UInt32
    var sport: UInt16 = 40000

    func frame(fromClient: Bool, flags: UInt8, seq: UInt32, _ data: [UInt8] = []) -> [UInt8] {
        let seg = Pkt.tcp(sport: fromClient ? sport : 80, dport: fromClient ? 80 : sport, flags: flags, seq: seq, data)
        let ip = fromClient ? Pkt.ipv4(proto: 6, src: [10, 0, 0, 1], dst: [10, 0, 0, 2], seg)
            : Pkt.ipv4(proto: 6, src: [10, 0, 0, 2], dst: [10, 0, 0, 1], seg)
        return Pkt.ethernet(type: 0x0800, ip)
    }
    func syn() -> [UInt8] { frame(fromClient: true, flags: 0x02, seq: client) }
    func synAck() -> [UInt8] { frame(fromClient: false, flags: 0x12, seq: server) }
    /// Data at byte `offset` of a direction's stream.
    func data(fromClient: Bool, at offset: Int, _ d: [UInt8], flags: UInt8 = 0x18) -> [UInt8] {
        frame(fromClient: fromClient, flags: flags, seq: (fromClient ? client : server) &+ 1 &+ UInt32(truncatingIfNeeded: offset), d)
    }
    func fin(fromClient: Bool, at offset: Int) -> [UInt8] { data(fromClient: fromClient, at: offset, [], flags: 0x11) }
}

@discardableResult
func feed(_ f: UnTCP, _ frames: [[UInt8]]) -> Int {
    var forwarded = 0
    for fr in frames where classify(f, fr) != 0 { forwarded += 1 }
    return forwarded
}

func randomBytes(_ n: Int, _ rng: inout SplitMix) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }

@Suite("untcp")
struct UnTCPTests {
    func make(_ args: String = "") throws -> UnTCP {
        try #require(try FilterLibrary.byName["untcp"]!.make(args) as? UnTCP)
    }

    @Test("a connection in order: two streams, tagged by flow and direction, start and end marked")
    func inOrder() throws {
        let f = try make()
        let s = Streams()
        s.attach(f)
        let c = Conversation(client: 1000, server: 5000)
        let req = Array("GET / HTTP/1.1\r\n\r\n".utf8), resp = Array("HTTP/1.1 200 OK\r\n\r\nhello".utf8)
        let forwarded = feed(f, [c.syn(), c.synAck(), c.data(fromClient: true, at: 0, req), c.data(fromClient: false, at: 0, resp),
                                 c.fin(fromClient: true, at: req.count), c.fin(fromClient: false, at: resp.count)])
        #expect(forwarded == 0, "segments themselves never go on")
        #expect(s.tags.count == 2)
        let (t0, t1) = (s.tags[0], s.tags[1])
        #expect(t0 >> 1 == t1 >> 1 && t0 & 1 == 0 && t1 & 1 == 1, "one connection, two directions")
        #expect(s.bytes[t0] == req)
        #expect(s.bytes[t1] == resp)
        #expect(s.classes[t0] == [1] && s.classes[t1] == [2], "client 1, server 2")
        #expect(s.marks[t0] == [.start, .end] && s.marks[t1] == [.start, .end])
        let info = try #require(FlowTable.shared.info(t1))
        #expect(info.key.tcpflowName == "010.000.000.002.00080-010.000.000.001.40000")
        #expect(FlowTable.shared.info(t0)?.key.tcpflowName == "010.000.000.001.40000-010.000.000.002.00080")
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["untcp_connections_total"] == "1")
        #expect(stats["untcp_segments_in_order"] == "2")
        #expect(stats["untcp_bytes_out"] == "\(req.count + resp.count)")
    }

    @Test("an in-order segment goes on as a view of the packet: no copy")
    func zeroCopy() throws {
        let f = try make()
        let s = Streams()
        s.attach(f)
        let c = Conversation(client: 7, server: 9)
        classify(f, c.syn())
        let frame = c.data(fromClient: true, at: 0, [1, 2, 3, 4])
        frame.withUnsafeBytes { raw in
            var b = Block(bytes: raw, linkType: .ethernet)
            _ = f.process(&b)
            let v = s.lastView!
            #expect(v.baseAddress! >= raw.baseAddress! && v.baseAddress! + v.count <= raw.baseAddress! + raw.count)
            #expect(Array(v) == [1, 2, 3, 4])
        }
    }

    @Test("reordered, duplicated and overlapping segments give the stream back exactly, across sequence wrap-around",
          arguments: [UInt64(1), 2, 3, 4, 5, 6])
    func shuffled(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        let f = try make()
        let s = Streams()
        s.attach(f)
        // The client's ISN sits just below 2^32 so the stream wraps.
        let c = Conversation(client: 0xFFFF_F000 &+ UInt32(rng.below(0x800)), server: UInt32(truncatingIfNeeded: rng.next()))
        let stream = randomBytes(20_000 + rng.below(20_000), &rng)
        var segs: [(Int, [UInt8])] = []
        var o = 0
        while o < stream.count {
            let n = min(1 + rng.below(1460), stream.count - o)
            segs.append((o, Array(stream[o..<o + n])))
            // Re-sends: a copy, or a piece that overlaps this segment and the next.
            if rng.below(5) == 0 { segs.append((o, Array(stream[o..<o + n]))) }
            if rng.below(5) == 0 {
                let a = o + rng.below(n), b = min(stream.count, a + 1 + rng.below(2000))
                segs.append((a, Array(stream[a..<b])))
            }
            o += n
        }
        // Shuffle within a window of 8.
        for i in segs.indices {
            let j = min(segs.count - 1, i + rng.below(8))
            segs.swapAt(i, j)
        }
        var frames = [c.syn(), c.synAck()]
        frames += segs.map { c.data(fromClient: true, at: $0.0, $0.1) }
        frames.append(c.fin(fromClient: true, at: stream.count))
        feed(f, frames)
        let tag = try #require(s.tags.first)
        #expect(s.bytes[tag]?.count == stream.count)
        #expect(s.bytes[tag] == stream)
        #expect(s.marks[tag]?.first == .start && s.marks[tag]?.last == .end)
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["untcp_gaps"] == "0")
        #expect(stats["untcp_held_bytes"] == "0")
        #expect(Int(stats["untcp_segments_out_of_order"]!)! > 0)
        #expect(Int(stats["untcp_retransmitted"]!)! + Int(stats["untcp_overlap_bytes"]!)! > 0)
    }

    @Test("a gap that never fills is skipped past the window, and counted; what is held goes on at the end of input")
    func gaps() throws {
        let f = try make("window=4K")
        let s = Streams()
        s.attach(f)
        let c = Conversation(client: 100, server: 200)
        let a = [UInt8](repeating: 0x61, count: 1000), b = [UInt8](repeating: 0x62, count: 1000)
        classify(f, c.syn())
        classify(f, c.data(fromClient: true, at: 0, a))
        // 500 bytes lost, then 6 segments of 1000 after the gap: past 4K held, the gap is skipped.
        for k in 0..<6 { classify(f, c.data(fromClient: true, at: 1500 + 1000 * k, b)) }
        let tag = try #require(s.tags.first)
        #expect(s.bytes[tag] == a + [UInt8](repeating: 0x62, count: 6000), "the gap skipped, nothing after it lost")
        var stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["untcp_gaps"] == "1" && stats["untcp_gap_bytes"] == "500")
        // A second gap, held at the end of the input: it goes on then, with its end mark.
        classify(f, c.data(fromClient: true, at: 9000, b))
        #expect(s.bytes[tag]!.count == 7000)
        f.endOfStream()
        #expect(s.bytes[tag]!.count == 8000)
        #expect(s.marks[tag]?.last == .end)
        stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["untcp_gaps"] == "2" && stats["untcp_gap_bytes"] == "2000")
        #expect(stats["untcp_connections"] == "0")
    }

    @Test("RST ends both directions; late copies of an ended connection are not a new one; a new SYN is")
    func resetAndReuse() throws {
        let f = try make()
        let s = Streams()
        s.attach(f)
        let c = Conversation(client: 1, server: 2)
        feed(f, [c.syn(), c.synAck(), c.data(fromClient: true, at: 0, [1, 2, 3]), c.data(fromClient: false, at: 0, [4, 5])])
        classify(f, c.frame(fromClient: false, flags: 0x14, seq: 2 &+ 3))  // RST
        #expect(s.tags.count == 2)
        #expect(s.tags.allSatisfy { s.marks[$0]?.last == .end })
        classify(f, c.data(fromClient: true, at: 0, [1, 2, 3]))  // a late copy
        #expect(s.tags.count == 2, "a late copy starts nothing")
        let again = Conversation(client: 500, server: 900)
        feed(f, [again.syn(), again.data(fromClient: true, at: 0, [9, 9])])
        #expect(s.tags.count == 3, "a new SYN on the same ports is a new connection")
        let newest = s.tags.last!
        #expect(newest >> 1 != s.tags[0] >> 1)
        #expect(s.bytes[newest] == [9, 9])
        #expect(Dictionary(uniqueKeysWithValues: f.statistics())["untcp_connections_total"] == "2")
    }

    @Test("a FIN behind a gap that never fills: a SYN with another ISN on the ports ends it and starts a new one")
    func reuseAfterStuckFin() throws {
        let f = try make()
        let s = Streams()
        s.attach(f)
        let old = Conversation(client: 1000, server: 2000)
        classify(f, old.syn())
        // Bytes 0..<100 never come; 100..<200 arrive with the FIN: held behind the gap.
        classify(f, old.data(fromClient: true, at: 100, [UInt8](repeating: 7, count: 100), flags: 0x19))
        #expect(s.blocks == 0)
        let new = Conversation(client: 90_000, server: 3000)
        feed(f, [new.syn(), new.data(fromClient: true, at: 0, [1, 2, 3])])
        #expect(s.tags.count == 2, "the old connection's direction and the new one's")
        let (t0, t1) = (s.tags[0], s.tags[1])
        #expect(s.bytes[t0] == [UInt8](repeating: 7, count: 100) && s.marks[t0]?.last == .end, "the old one: its gap skipped, ended")
        #expect(s.bytes[t1] == [1, 2, 3])
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["untcp_gaps"] == "1" && stats["untcp_gap_bytes"] == "100")
    }

    @Test("at the end of the input, what goes on carries its connection's last timestamp")
    func endOfInputTimestamps() throws {
        let f = try make()
        var stamps: [(Int64, FlowMarks)] = []
        f.unboundOutput = { b in stamps.append((b.seconds, b.flowMarks)) }
        let c = Conversation(client: 5, server: 6)
        for (i, fr) in [c.syn(), c.data(fromClient: true, at: 10, [9, 9])].enumerated() {
            fr.withUnsafeBytes { raw in
                var b = Block(bytes: raw, seconds: 1_700_000_000 + Int64(i), linkType: .ethernet)
                _ = f.process(&b)
            }
        }
        #expect(stamps.isEmpty)
        f.endOfStream()
        #expect(stamps.map(\.0) == [1_700_000_001, 1_700_000_001])
        #expect(stamps.map(\.1) == [.start, .end])
    }

    @Test("IPv6 connections reassemble and are named as tcpflow names them")
    func ipv6() throws {
        let f = try make()
        let s = Streams()
        s.attach(f)
        let seg1 = Pkt.tcp(sport: 1234, dport: 443, flags: 0x18, seq: 10, [1, 2])
        let seg2 = Pkt.tcp(sport: 1234, dport: 443, flags: 0x18, seq: 12, [3])
        classify(f, Pkt.ethernet(type: 0x86DD, Pkt.ipv6(next: 6, seg2)))
        classify(f, Pkt.ethernet(type: 0x86DD, Pkt.ipv6(next: 6, seg1)))
        // Mid-stream: the first segment seen starts the stream, so the earlier one is a retransmission.
        let tag = try #require(s.tags.first)
        #expect(s.bytes[tag] == [3])
        #expect(FlowTable.shared.info(tag)?.key.tcpflowName == "2001:db8::1.01234-2001:db8::2.00443")
    }

    @Test("memory stays bounded: 200,000 half-open connections against a limit of 1000 evict, and count it")
    func halfOpen() throws {
        let f = try make("connections=1000")
        let s = Streams()
        s.attach(f)
        for i in 0..<200_000 {
            let seg = Pkt.tcp(sport: UInt16(1024 + i % 60000), dport: 80, flags: 0x02, seq: UInt32(i))
            classify(f, Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 6, src: [10, UInt8(i >> 16), UInt8((i >> 8) & 255), UInt8(i & 255)],
                                                            dst: [192, 0, 2, 1], seg)))
        }
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["untcp_connections"] == "1000")
        #expect(stats["untcp_evicted"] == "199000")
        #expect(stats["untcp_connections_total"] == "200000")
        #expect(s.blocks == 0, "half-open connections carried no bytes: no end marks either")
        #expect(FlowTable.shared.liveCount < 1000 + 50_000, "ended connections leave the table")
    }

    @Test("held bytes over all connections stay under memory=")
    func memoryLimit() throws {
        let f = try make("memory=64K")
        let s = Streams()
        s.attach(f)
        for k in 0..<200 {
            let c = Conversation(client: 1, server: 2, sport: UInt16(2000 + k))
            classify(f, c.syn())
            classify(f, c.data(fromClient: true, at: 100, [UInt8](repeating: 1, count: 1000)))  // ahead of a gap
        }
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(Int(stats["untcp_held_bytes_max"]!)! <= 64 * 1024 + 1000)
        #expect(Int(stats["untcp_gaps"]!)! > 100)
        #expect(s.blocks > 100, "skipping a gap hands on what was held")
    }

    @Test("arguments: limits with suffixes; anything else is refused with a reason")
    func arguments() throws {
        let f = try make("connections=10 memory=1M window=64k")
        #expect(f.limits.connections == 10 && f.limits.memory == 1 << 20 && f.limits.window == 64 << 10)
        #expect(makeError("untcp", "bogus")?.message == "untcp: unknown argument 'bogus' (want connections=N, memory=SIZE or window=SIZE)")
        #expect(makeError("untcp", "memory=lots")?.message == "untcp: memory wants a positive number (K, M and G suffixes allowed), got 'lots'")
        #expect(makeError("untcp", "connections=0")?.message == "untcp: connections wants a positive number (K, M and G suffixes allowed), got '0'")
        #expect(makeError("untcp", "speed=1")?.message == "untcp: unknown argument 'speed' (want connections=N, memory=SIZE or window=SIZE)")
    }

    @Test("non-TCP packets and later fragments are counted and dropped")
    func notTCP() throws {
        let f = try make()
        #expect(classify(f, Pkt.ethUDP4()) == 0)
        #expect(classify(f, Pkt.ethARP()) == 0)
        #expect(classify(f, Pkt.ethTCP4LaterFragment()) == 0)
        #expect(Dictionary(uniqueKeysWithValues: f.statistics())["untcp_not_tcp"] == "3")
    }
}
