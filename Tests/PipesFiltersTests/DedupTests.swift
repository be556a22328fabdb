#if canImport(Glibc)
import Glibc
#endif
@testable import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("dedup")
struct DedupTests {
    /// The records `dedup=args` keeps, in order, and the filter.
    static func kept(_ records: [PcapRecord], _ args: String,
                     linkType: LinkType = .ethernet) throws -> ([PcapRecord], Dedup) {
        let f = try #require(try make("dedup", args) as? Dedup)
        let out = records.filter { r in classify(f, r.bytes, linkType, wireLength: r.wire) != 0 }
        return (out, f)
    }

    /// The records `editcap -D window` keeps (`-d` when window is nil), read back with libpcap.
    static func editcap(_ path: String, window: Int?) throws -> [PcapRecord] {
        let out = temporaryPath("editcap.pcap")
        defer { unlink(out) }
        let run = try runTool(["editcap", "-F", "pcap"] + (window.map { ["-D", "\($0)"] } ?? ["-d"]) + [path, out])
        try #require(run.status == 0, "editcap failed: \(run.errors)")
        let (r, records) = readRecords(out)
        try #require(r.openError == nil && r.readError == nil, "editcap's output: \(r)")
        return records
    }

    /// Nil when equal, else where the sequences part.
    static func difference(_ a: [PcapRecord], _ b: [PcapRecord]) -> String? {
        if let i = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            return "first difference at kept record \(i)"
        }
        return a.count == b.count ? nil : "\(a.count) records against \(b.count)"
    }

    /// Distinct frames and repeats of a frame 1 to 10 records back (some with another wire length or timestamp,
    /// two empty records among them), so every window from 2 to 11 keeps a different set.
    static func handMade() -> HandPcap {
        var rng = SplitMix(seed: 11)
        var file = HandPcap()
        var frames: [([UInt8], UInt32?)] = [([], nil), ([], nil)]
        for i in 0..<600 {
            if frames.count > 10 && rng.below(3) == 0 {
                let back = 1 + rng.below(10)
                let (bytes, _) = frames[frames.count - back]
                frames.append((bytes, rng.below(4) == 0 ? UInt32(bytes.count + 100) : nil))
            } else {
                frames.append((Pkt.ethUDP4(sport: UInt16(i % 7), dport: 53, Array("query \(i % 97)".utf8)), nil))
            }
        }
        for (i, (bytes, wire)) in frames.enumerated() {
            file.record(seconds: 1_700_000_000 + UInt32(i), fraction: UInt32(i * 7 % 1_000_000), data: bytes,
                        wire: wire)
        }
        return file
    }

    @Test("keeps what editcap -D N keeps, for every window from 2 to 12, and dedup is editcap -d")
    func handMadeAgainstEditcap() throws {
        let path = try DedupTests.handMade().write("dups.pcap")
        defer { unlink(path) }
        let (r, records) = readRecords(path)
        try #require(r.openError == nil && records.count == 602)
        var droppedBefore: UInt64 = 0
        for window in 2...12 {
            let reference = try DedupTests.editcap(path, window: window)
            let (mine, f) = try DedupTests.kept(records, "\(window)")
            #expect(DedupTests.difference(mine, reference) == nil, "dedup=\(window) against editcap -D \(window)")
            #expect(f.dropped == UInt64(records.count - reference.count))
            #expect(f.dropped >= droppedBefore, "a wider window drops at least as much")
            #expect(f.unverified == 0, "every copy fits in the arena")
            droppedBefore = f.dropped
        }
        let (mine, f) = try DedupTests.kept(records, "")
        let reference = try DedupTests.editcap(path, window: nil)
        #expect(DedupTests.difference(mine, reference) == nil, "dedup against editcap -d")
        #expect(f.window == 5)
        #expect(f.dropped > 0)
    }

    @Test("keeps what editcap -D N keeps on the synthetic capture (retransmitted segments)",
          arguments: [2, 5, 40, 1000])
    func syntheticAgainstEditcap(window: Int) throws {
        let path = try syntheticCapture(flows: 2000, seed: 5)
        defer { unlink(path) }
        let (r, records) = readRecords(path)
        try #require(r.openError == nil && records.count > 10_000)
        let reference = try DedupTests.editcap(path, window: window)
        let (mine, f) = try DedupTests.kept(records, "\(window)")
        #expect(DedupTests.difference(mine, reference) == nil, "dedup=\(window) against editcap -D \(window)")
        #expect(f.dropped == UInt64(records.count - reference.count))
        if window >= 40 { #expect(f.dropped > 10, "the capture has duplicates within \(window) packets") }
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["dedup_dropped"] == "\(f.dropped)")
        #expect(stats["dedup_window"] == "\(window)")
    }

    @Test("the window counts the block itself: dedup=2 compares with the one before, dedup=3 with two")
    func window() throws {
        let (a, b, c, d, e) = (Pkt.ethTCP4([1]), Pkt.ethTCP4([2]), Pkt.ethTCP4([3]), Pkt.ethTCP4([4]), Pkt.ethTCP4([5]))
        func passes(_ args: String, _ frames: [[UInt8]]) throws -> [UInt32] {
            let f = try make("dedup", args)
            return frames.map { classify(f, $0) }
        }
        #expect(try passes("2", [a, a, b, a]) == [1, 0, 1, 1])
        #expect(try passes("3", [a, a, b, a]) == [1, 0, 1, 0], "the dropped copy still holds its place")
        #expect(try passes("3", [a, b, c, a]) == [1, 1, 1, 1])
        #expect(try passes("4", [a, b, c, a]) == [1, 1, 1, 0])
        #expect(try passes("", [a, b, c, d, a, e, b]) == [1, 1, 1, 1, 0, 1, 1], "5 by default: the 4 before")
    }

    @Test("only the captured bytes count: not the wire length, timestamp or class; one differing byte keeps it")
    func whatCounts() throws {
        let f = try make("dedup")
        let p = Pkt.ethUDP4(Array("x".utf8))
        #expect(classify(f, p, classValue: 7) == 7)
        #expect(classify(f, p, wireLength: 1500) == 0)
        var q = p
        q[q.count - 1] ^= 1
        #expect(classify(f, q) == 1)
        #expect(classify(f, Array(p.dropLast())) == 1, "a prefix is not a copy")
        #expect(classify(f, [], .user) == 1)
        #expect(classify(f, [], .user) == 0, "two empty blocks are the same")
        #expect((f as? Dedup)?.dropped == 2)
    }

    @Test("blocks larger than the arena are compared by hash and length (dedup_unverified)")
    func unverified() throws {
        let f = try #require(try make("dedup", "2") as? Dedup)
        let big = (0..<(Dedup.arenaSize(window: 2) + 1)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var other = big
        other[big.count / 2] ^= 0x80
        #expect(classify(f, big, .user) == 1)
        #expect(classify(f, big, .user) == 0)
        #expect(classify(f, other, .user) == 1, "the hash tells them apart")
        #expect(f.unverified == 1)
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["dedup_unverified"] == "1")
    }

    @Test("copies overwritten in the arena: a long window of large blocks still matches editcap's choice")
    func arenaWraps() throws {
        // 64 distinct 9000-byte blocks, then the same 64 again: with dedup=100 all of the second round are copies,
        // but the arena (6.25 MiB) holds only part of the window's copies.
        let f = try #require(try make("dedup", "100") as? Dedup)
        let blocks = (0..<64).map { i in [UInt8](repeating: UInt8(i), count: 9000) + [UInt8(i)] }
        for b in blocks { #expect(classify(f, b, .user) == 1) }
        for b in blocks { #expect(classify(f, b, .user) == 0) }
        #expect(f.dropped == 64)
        #expect(Dedup.arenaSize(window: 100) == 6_553_600)
        #expect(f.unverified == 0, "9 KB blocks: 64 of them fit")
        let g = try #require(try make("dedup", "1000") as? Dedup)
        let large = (0..<300).map { i in [UInt8](repeating: UInt8(i & 0xFF), count: 60_000) + [UInt8(i >> 8)] }
        for b in large { #expect(classify(g, b, .user) == 1) }
        for b in large { #expect(classify(g, b, .user) == 0) }
        #expect(g.unverified > 0, "16 MiB holds fewer than 300 blocks of 60 KB")
    }

    @Test("XXH64 of the reference vectors")
    func hash() {
        func h(_ s: String) -> UInt64 { Array(s.utf8).withUnsafeBytes { Dedup.hash($0) } }
        #expect(h("") == 0xEF46_DB37_51D8_E999)
        #expect(h("a") == 0xD24E_C4F1_A98C_6E5B)
        #expect(h("abc") == 0x44BC_2CF5_AD77_0999)
        #expect(h("Nobody inspects the spammish repetition") == 0xFBCE_A83C_8A37_8BF1)
    }

    @Test("bad windows are refused",
          arguments: ["0", "1", "1000001", "abc", "-5", "+5", " 5", "5x", "5,random", "99999999999999999999"])
    func errors(args: String) {
        let e = makeError("dedup", args)
        let want = "dedup=N: N is the window in blocks, this one included (as editcap -D), 2 to 1000000"
        #expect(e?.message == want + " (got '\(args)')")
        #expect(e?.errno == 22)
    }

    @Test("arguments: what it shows makes the same filter again")
    func arguments() throws {
        #expect(try make("dedup").arguments == "")
        #expect(try make("dedup", "1000000").arguments == "1000000")
        #expect((try make("dedup", "2") as? Dedup)?.window == 2)
    }
}
