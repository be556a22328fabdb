import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("defrag")
struct DefragTests {
    func make(_ args: String = "") throws -> (Defrag, Box) {
        let f = try #require(try FilterLibrary.byName["defrag"]!.make(args) as? Defrag)
        let out = Box()
        f.unboundOutput = { b in out.frames.append(Array(b.bytes)); out.classes.append(b.classValue) }
        return (f, out)
    }
    final class Box {
        var frames: [[UInt8]] = []
        var classes: [UInt32] = []
    }

    /// A TCP segment to port 80 with `n` payload bytes, cut into IPv4 fragments at 8-byte multiples `cuts`.
    static func fragments4(_ n: Int, cuts: [Int], id: UInt16 = 0x1234) -> (whole: [UInt8], frames: [[UInt8]]) {
        let seg = Pkt.tcp(sport: 4000, dport: 80, flags: 0x18, seq: 7, (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let bounds = [0] + cuts + [seg.count]
        var frames: [[UInt8]] = []
        for i in 0..<(bounds.count - 1) {
            let piece = Array(seg[bounds[i]..<bounds[i + 1]])
            var ip = Pkt.ipv4(proto: 6, fragmentOffset: UInt16(bounds[i] / 8), moreFragments: i < bounds.count - 2, piece)
            ip[4] = UInt8(id >> 8); ip[5] = UInt8(id & 0xFF)
            frames.append(Pkt.ethernet(type: 0x0800, ip))
        }
        return (Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 6, seg)), frames)
    }

    static func checksumOK(_ frame: [UInt8]) -> Bool {
        var sum: UInt32 = 0
        var i = 14
        while i < 34 { sum += UInt32(frame[i]) << 8 | UInt32(frame[i + 1]); i += 2 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return sum == 0xFFFF
    }

    @Test("IPv4 fragments in any order make the whole datagram: length, flags and checksum set", arguments: [false, true])
    func ipv4(reversed: Bool) throws {
        let (f, out) = try make()
        let (whole, frames) = DefragTests.fragments4(300, cuts: [24, 160])
        for fr in reversed ? frames.reversed() : frames { #expect(classify(f, fr, classValue: 5) == 0) }
        let got = try #require(out.frames.first)
        #expect(out.frames.count == 1)
        var expected = whole
        expected[24] = 0; expected[25] = 0  // the checksum, set below
        var g = got
        g[24] = 0; g[25] = 0
        #expect(g == expected, "header fields other than the checksum and the payload as sent whole")
        #expect(DefragTests.checksumOK(got))
        #expect(out.classes == [5])
        got.withUnsafeBytes { raw in
            var b = Block(bytes: raw, linkType: .ethernet)
            #expect(b.ports()?.destination == 80, "the reassembled datagram decodes as TCP")
        }
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["defrag_fragments"] == "3" && stats["defrag_reassembled"] == "1" && stats["defrag_held"] == "0")
    }

    @Test("whole datagrams go on untouched, as the same bytes")
    func passThrough() throws {
        let (f, out) = try make()
        let frame = Pkt.ethTCP4(dport: 80, [1, 2, 3])
        frame.withUnsafeBytes { raw in
            var b = Block(bytes: raw, linkType: .ethernet)
            #expect(f.process(&b) == 1)
            #expect(b.bytes.baseAddress == raw.baseAddress && b.count == raw.count)
        }
        #expect(classify(f, Pkt.ethARP(), classValue: 9) == 9)
        #expect(out.frames.isEmpty)
    }

    @Test("IPv6 fragments: the fragment header goes, its next header takes its place")
    func ipv6() throws {
        let (f, out) = try make()
        let seg = Pkt.tcp(sport: 4000, dport: 443, flags: 0x18, seq: 1, (0..<100).map { UInt8($0) })
        func frag(_ off: Int, _ end: Int, more: Bool) -> [UInt8] {
            let fh: [UInt8] = [6, 0] + be16(UInt16(off) | (more ? 1 : 0)) + [0, 0, 0xBE, 0xEF]
            return Pkt.ethernet(type: 0x86DD, Pkt.ipv6(next: 44, fh + Array(seg[off..<end])))
        }
        classify(f, frag(64, seg.count, more: false))
        classify(f, frag(0, 64, more: true))
        #expect(out.frames == [Pkt.ethernet(type: 0x86DD, Pkt.ipv6(next: 6, seg))])
    }

    @Test("overlapping fragments: the bytes that came first stay")
    func overlap() throws {
        let (f, out) = try make()
        let seg = [UInt8](repeating: 0xAA, count: 48)
        func frag(_ off: Int, _ bytes: [UInt8], more: Bool) -> [UInt8] {
            Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 17, fragmentOffset: UInt16(off / 8), moreFragments: more, bytes))
        }
        classify(f, frag(0, Array(seg[0..<32]), more: true))
        classify(f, frag(16, [UInt8](repeating: 0xBB, count: 32), more: false))  // overlaps 16..<32
        let got = try #require(out.frames.first)
        #expect(Array(got[34...]) == [UInt8](repeating: 0xAA, count: 32) + [UInt8](repeating: 0xBB, count: 16))
    }

    @Test("malformed fragments are dropped and counted; datagrams past the limit are evicted")
    func limits() throws {
        let (f, out) = try make("datagrams=2")
        // Offset 8190 * 8 + 16 bytes ends past 65535.
        classify(f, Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 17, fragmentOffset: 8190, moreFragments: false, [UInt8](repeating: 0, count: 16))))
        // A middle fragment whose length is not a multiple of 8.
        classify(f, Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 17, fragmentOffset: 1, moreFragments: true, [1, 2, 3])))
        for id in 0..<5 as Range<UInt16> {
            let (_, frames) = DefragTests.fragments4(40, cuts: [24], id: id)
            classify(f, frames[1])  // only the second half of each
        }
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["defrag_malformed"] == "2")
        #expect(stats["defrag_held"] == "2")
        #expect(stats["defrag_evicted"] == "3")
        #expect(out.frames.isEmpty)
        #expect(makeError("defrag", "datagrams=0")?.message == "defrag: datagrams wants a number from 1 to 1048576, got '0'")
        #expect(makeError("defrag", "x")?.message == "defrag: unknown argument 'x' (want datagrams=N)")
    }
}
