#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import Testing

/// FUSE reads of `all` / `all.pcap` from a node's shared ring (`RingTap` over an `ExportRing`).
@Suite("Ring taps")
struct RingTapTests {
    func append(_ x: ExportRing, _ size: Int, _ v: UInt8, linkType: UInt16 = 1) {
        let b = [UInt8](repeating: v, count: size)
        _ = b.withUnsafeBytes { x.append($0, classValue: 1, wireLength: size, linkType: linkType, timestampNanoseconds: 0) }
        x.flush()
    }

    /// Reads without blocking until nothing more comes; the bytes and whether the end of the stream was seen.
    func readAll(_ t: RingTap, max: Int) -> (bytes: [UInt8], ended: Bool) {
        var out: [UInt8] = []
        var id: UInt64 = 100
        while true {
            var got: [UInt8] = []
            var ended = false
            var failed = false
            id += 1
            t.read(max: max, id: id, nonBlocking: true) { o in
                switch o {
                case .endOfStream: ended = true
                case .error: failed = true
                default: got = o.bytes
                }
            }
            if ended { return (out, true) }
            if failed || got.isEmpty { return (out, false) }
            out += got
        }
    }

    /// Parses a pcap stream (24-byte file header, then 16-byte record headers): caplens, and whether every record
    /// is made of one byte value (each block here is).
    func records(_ s: [UInt8]) -> (lengths: [Int], uniform: Bool) {
        var i = 24
        var lengths: [Int] = []
        var uniform = true
        while i + 16 <= s.count {
            let caplen = Int(s[i + 8]) | Int(s[i + 9]) << 8 | Int(s[i + 10]) << 16 | Int(s[i + 11]) << 24
            let body = s[(i + 16)..<min(s.count, i + 16 + caplen)]
            if Set(body).count > 1 { uniform = false }
            lengths.append(caplen)
            i += 16 + caplen
        }
        return (lengths, uniform)
    }

    @Test("a lossless stream reads whole and in order through segments, across reads that end inside records")
    func lossless() throws {
        let x = try ExportRing(policy: .block, sizeLog2: 16, ringID: 1)
        let t = try #require(RingTap(export: x))
        for i in 0..<20 { append(x, 1000 + i, UInt8(i)) }
        let got = readAll(t, max: 777).bytes
        var want: [UInt8] = []
        for i in 0..<20 { want += [UInt8](repeating: UInt8(i), count: 1000 + i) }
        #expect(got == want)
        x.endOfStream()
        #expect(readAll(t, max: 4096).ended)
    }

    @Test("a lossy all.pcap reader whose read ends inside a record never gets a record mixed from two blocks")
    func lossyPcapFraming() throws {
        let x = try ExportRing(policy: .drop, sizeLog2: 12, ringID: 2)
        let t = try #require(RingTap(export: x, pcapLinkType: 1, fileHeader: [UInt8](repeating: 0xEE, count: 24)))
        let size = 30000
        append(x, size, 0xA0)
        var first: [UInt8] = []
        t.read(max: 540, id: 1, nonBlocking: true) { o in first = o.bytes }
        #expect(first.count == 540, "file header, record header and the start of block 0")
        for i in 0..<3000 { append(x, size, UInt8(truncatingIfNeeded: 0xB0 &+ i % 7)) }  // overrun the reader
        let stream = first + readAll(t, max: 131_072).bytes
        let r = records(stream)
        #expect(r.uniform, "a record holds the bytes of one block only")
        #expect(r.lengths.allSatisfy { $0 == size })
        #expect(r.lengths.first == size && stream[40] == 0xA0, "block 0 whole, although the ring overwrote it")
        #expect(t.dropped > 0)
    }

    @Test("a stream that ended takes no more blocks: refused, not congested; readers stay at their end")
    func appendAfterEnd() throws {
        let x = try ExportRing(policy: .block, sizeLog2: 12, ringID: 3)
        let t = try #require(RingTap(export: x))
        x.endOfStream()
        for _ in 0..<100 {
            let b = [UInt8](repeating: 1, count: 1000)
            let r = b.withUnsafeBytes { x.append($0, classValue: 1, wireLength: 1000, linkType: 1, timestampNanoseconds: 0) }
            #expect(!r.contains(.stored) && !r.contains(.congested))
        }
        let got = readAll(t, max: 1 << 20)
        #expect(got.bytes.isEmpty && got.ended)
        try x.reopen()
        let late = try #require(RingTap(export: x))
        append(x, 10, 7)
        #expect(readAll(late, max: 100).bytes == [UInt8](repeating: 7, count: 10), "a reader after a reopen reads on")
        #expect(readAll(t, max: 100).ended, "an old reader keeps its end of stream")
    }

    @Test("a policy change moves readers to a new ring without losing what was written there before they follow")
    func policyChange() throws {
        let x = try ExportRing(policy: .block, sizeLog2: 16, ringID: 5)
        let t = try #require(RingTap(export: x))
        let idle = try #require(RingTap(export: x))
        for _ in 0..<3 { append(x, 100, 0xA1) }
        try x.setPolicy(.drop)
        for _ in 0..<3 { append(x, 100, 0xB1) }
        let got = readAll(t, max: 65536).bytes
        #expect(got == [UInt8](repeating: 0xA1, count: 300) + [UInt8](repeating: 0xB1, count: 300))
        #expect(x.currentRing().policy == .drop)
        // A reader that closes without following gives back the slot the new ring kept for it.
        let held = (0..<x.maxReaders).filter { x.currentRing().slotState($0) == 1 }.count
        idle.close()
        #expect((0..<x.maxReaders).filter { x.currentRing().slotState($0) == 1 }.count == held - 1)
        t.close()
    }

    @Test("all.pcap skips blocks of another link type and counts them")
    func linkTypeSkip() throws {
        let x = try ExportRing(policy: .block, sizeLog2: 16, ringID: 4)
        let t = try #require(RingTap(export: x, pcapLinkType: 1, fileHeader: [UInt8](repeating: 0, count: 24)))
        append(x, 50, 1, linkType: 1)
        append(x, 50, 2, linkType: 147)
        append(x, 50, 3, linkType: 1)
        let r = records(readAll(t, max: 65536).bytes)
        #expect(r.lengths == [50, 50] && r.uniform)
        #expect(t.dropped == 1)
    }
}
