#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesTestSupport
import Testing

/// Reads one block of an IBuf (copy), or nil.
func take(_ r: IBufReader, max: Int = 1 << 16) -> (bytes: [UInt8], classValue: UInt32, flowTag: UInt32)? {
    var buf = [UInt8](repeating: 0, count: max)
    guard let (n, c, f) = buf.withUnsafeMutableBytes({ r.read(into: $0) }) else { return nil }
    return (Array(buf.prefix(min(n, max))), c, f)
}

/// A registered data ring (rich pointers can name it).
func dataRing(_ sizeLog2: Int, _ policy: DBuf.Policy, maxReaders: Int = 16) throws -> DBuf {
    try DBufRegistry.shared.makeRing(sizeLog2: sizeLog2, policy: policy, maxReaders: maxReaders)
}

@Suite("IBuf splicing")
struct IBufSpliceTests {
    @Test("a block inside a registered ring is spliced (no copy); one outside any ring, or in an unregistered ring, is copied")
    func spliceOrCopy() throws {
        let ring = try dataRing(13, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        #expect(ibuf.addSource(ring))
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        put(ring, pattern(300, seed: 1), classValue: 5)
        put(ring, pattern(200, seed: 2), classValue: 6)
        let a = try #require(src.peek())
        #expect(ibuf.write(a.bytes, classValue: 5) == .spliced)
        // A region of the record (a trimmed header): still a splice, as offset + length.
        #expect(ibuf.write(UnsafeRawBufferPointer(rebasing: a.bytes[14..<100]), classValue: 7, flowTag: 3) == .spliced)
        // A block that runs past the record's end (into the next one) is not one record's region: copied.
        let straddling = UnsafeRawBufferPointer(start: a.bytes.baseAddress! + 250, count: 100)
        let expectedStraddle = Array(straddling)
        #expect(ibuf.write(straddling) == .copied)
        src.consume(a)
        let b = try #require(src.peek())
        #expect(ibuf.forward(b, from: src) == .spliced)
        src.consume(b)
        // Bytes in ordinary memory are copied.
        let outside = pattern(77, seed: 9)
        #expect(outside.withUnsafeBytes { ibuf.write($0, classValue: 8) } == .copied)
        // A ring without a registered id cannot be named: copied.
        let anonymous = try DBuf(sizeLog2: 12, policy: .block)
        let ar = try #require(anonymous.attach())
        put(anonymous, pattern(40, seed: 4))
        let c = try #require(ar.peek())
        #expect(ibuf.write(c.bytes) == .copied)
        #expect(ibuf.forward(c, from: ar) == .copied)
        ar.consume(c)
        #expect(ibuf.spliced == 3)
        #expect(ibuf.copied == 4)

        let got = (0..<7).compactMap { _ in take(out) }
        #expect(got.count == 7)
        #expect(got.map(\.bytes) == [pattern(300, seed: 1), Array(pattern(300, seed: 1)[14..<100]), expectedStraddle,
                                     pattern(200, seed: 2), outside, pattern(40, seed: 4), pattern(40, seed: 4)])
        #expect(got.map(\.classValue) == [5, 7, 1, 6, 8, 1, 1])
        #expect(got[1].flowTag == 3)
        #expect(take(out) == nil)
    }

    @Test("records already in a ring when the IBuf first meets it are copied; later ones are spliced")
    func firstContactCopies() throws {
        let ring = try dataRing(12, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        put(ring, pattern(100, seed: 1))
        put(ring, pattern(100, seed: 2))
        var outcomes: [IBuf.Outcome] = []
        for _ in 0..<2 {
            let r = try #require(src.peek())
            outcomes.append(ibuf.write(r.bytes))
            src.consume(r)
        }
        put(ring, pattern(100, seed: 3))
        let r = try #require(src.peek())
        outcomes.append(ibuf.write(r.bytes))
        src.consume(r)
        #expect(outcomes == [.copied, .copied, .spliced], "the hold starts at the head when the ring is first met")
        #expect((0..<3).compactMap { _ in take(out)?.bytes } == [pattern(100, seed: 1), pattern(100, seed: 2), pattern(100, seed: 3)])
    }

    @Test("a rich pointer resolves to its region with the record's metadata; wire length follows the region")
    func resolution() throws {
        let ring = try dataRing(13, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        let frame = pattern(100, seed: 11)
        // A frame captured with a 100-byte snap length of a 1500-byte packet.
        frame.withUnsafeBytes { _ = ring.write($0, classValue: 2, wireLength: 1500, linkType: 1, timestampNanoseconds: 1_234_567_890) }
        let rec = try #require(src.peek())
        #expect(ibuf.forward(rec, from: src, classValue: 9, flowTag: 41) == .spliced)
        #expect(ibuf.forward(rec, from: src, offset: 14, length: 20, flowTag: 42) == .spliced)  // an IP header
        #expect(ibuf.forward(rec, from: src, offset: 34, flowTag: 43) == .spliced)  // the rest, to the end
        #expect(ibuf.forward(rec, from: src, offset: 90, length: 20) == .refused, "a region beyond the record")
        src.consume(rec)

        let whole = try #require(out.peek())
        #expect(Array(whole.bytes) == frame)
        #expect(whole.classValue == 9)
        #expect(whole.flowTag == 41)
        #expect(whole.wireLength == 1500)
        #expect(whole.linkType == 1)
        #expect(whole.timestampNanoseconds == 1_234_567_890)
        #expect(whole.pointer.ringID == DBufRegistry.id(of: ring))
        #expect(whole.pointer.offset == 0 && whole.pointer.length == 100)
        out.consume(whole)
        let header = try #require(out.peek())
        #expect(Array(header.bytes) == Array(frame[14..<34]))
        #expect(header.classValue == 2, "the record's class unless given")
        #expect(header.flowTag == 42)
        #expect(header.wireLength == 20, "a region that ends inside the record is whole")
        #expect(header.pointer.position == whole.pointer.position)
        out.consume(header)
        let rest = try #require(out.peek())
        #expect(Array(rest.bytes) == Array(frame[34...]))
        #expect(rest.wireLength == 1500 - 34, "a region to the record's end keeps what the snap length cut")
        out.consume(rest)
        #expect(out.peek() == nil)
        #expect(out.delivered == 3)
    }

    @Test("a filter that reorders produces pointers, not copies, and readers see its order")
    func reordering() throws {
        let ring = try dataRing(13, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        for i in 0..<5 { put(ring, pattern(200 + i, seed: i), classValue: UInt32(i + 1)) }
        // The filter takes all five (consuming them from its own reader), then writes them in another order.
        var held: [DBufReader.Record] = []
        while let r = src.peek() {
            held.append(r)
            src.consume(r)
        }
        #expect(held.count == 5)
        let order = [4, 2, 0, 1, 3]
        for i in order { #expect(ibuf.write(held[i].bytes, classValue: held[i].classValue) == .spliced) }
        #expect(ibuf.copied == 0)
        // The filter's reader let go of them; the IBuf's hold keeps them while the producer runs on.
        var more = 0
        while put(ring, pattern(500, seed: 99), wait: false) { more += 1; _ = src.peek().map { src.consume($0) } }
        #expect(more < 16, "the producer stops where the hold is")
        let got = (0..<5).compactMap { _ in take(out) }
        #expect(got.map(\.bytes) == order.map { pattern(200 + $0, seed: $0) })
        #expect(got.map(\.classValue) == order.map { UInt32($0 + 1) })
    }

    @Test("a resolved block written to a second IBuf is spliced into the original ring (IBuf to IBuf)")
    func chained() throws {
        let ring = try dataRing(13, .block)
        let first = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        let second = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        first.addSource(ring)
        second.addSource(ring)
        second.addSource(first.backing)
        let src = try #require(ring.attach())
        let mid = try #require(first.attach())
        let out = try #require(second.attach())
        put(ring, pattern(300, seed: 5))
        let r = try #require(src.peek())
        #expect(first.write(r.bytes) == .spliced)
        src.consume(r)
        let m = try #require(mid.peek())
        #expect(second.write(UnsafeRawBufferPointer(rebasing: m.bytes[100..<200]), flowTag: 8) == .spliced)
        // A copy in the first IBuf's backing ring is spliced too: the backing ring is registered.
        #expect(pattern(64, seed: 6).withUnsafeBytes { first.write($0) } == .copied)
        mid.consume(m)
        let copy = try #require(mid.peek())
        #expect(second.write(copy.bytes) == .spliced)
        mid.consume(copy)
        #expect(second.copied == 0)
        let a = try #require(out.peek())
        #expect(Array(a.bytes) == Array(pattern(300, seed: 5)[100..<200]))
        #expect(a.pointer.ringID == DBufRegistry.id(of: ring))
        out.consume(a)
        let b = try #require(out.peek())
        #expect(Array(b.bytes) == pattern(64, seed: 6))
        #expect(b.pointer.ringID == DBufRegistry.id(of: first.backing))
        out.consume(b)
    }
}

@Suite("IBuf readers")
struct IBufReaderTests {
    @Test("several readers each see every block; a reader that attaches later sees what comes after")
    func multiway() throws {
        let ring = try dataRing(13, .block)
        let ibuf = try IBuf(sizeLog2: 12, maxReaders: 3, backingSizeLog2: 13)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let a = try #require(ibuf.attach()), b = try #require(ibuf.attach())
        for i in 0..<10 {
            put(ring, [UInt8(i), UInt8(i)])
            let r = try #require(src.peek())
            #expect(ibuf.write(UnsafeRawBufferPointer(rebasing: r.bytes[1..<2])) == .spliced)
            src.consume(r)
        }
        let late = try #require(ibuf.attach())
        #expect(ibuf.attach() == nil, "all slots are taken")
        #expect([UInt8](repeating: 7, count: 3).withUnsafeBytes { ibuf.write($0) } == .copied)
        for r in [a, b] {
            var got: [UInt8] = []
            while let x = take(r) { got += x.bytes }
            #expect(got == Array(0..<10) + [7, 7, 7])
        }
        #expect(take(late)?.bytes == [7, 7, 7])
        #expect(take(late) == nil)
    }

    @Test("a reader thread gets every block of a writer thread, spliced from a producer thread's ring, intact and in order")
    func threeThreads() throws {
        let ring = try dataRing(14, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        let total = 20000
        let producer = JoinableThread(), forwarder = JoinableThread()
        producer.start(name: "producer") {
            for i in 0..<total { _ = pattern(8 + i % 300, seed: i).withUnsafeBytes { ring.write($0) } }
            ring.close()
        }
        let outcomes = Locked((spliced: UInt64(0), copied: UInt64(0)))
        forwarder.start(name: "forwarder") {
            var i = 0
            while !src.isAtEnd {
                guard let r = src.peek() else {
                    ibuf.flush()
                    src.wait(timeoutNanoseconds: 1_000_000)
                    continue
                }
                // Every third block trimmed (its first byte cut off).
                let bytes = i % 3 == 0 ? UnsafeRawBufferPointer(rebasing: r.bytes[1...]) : r.bytes
                _ = ibuf.write(bytes, flowTag: UInt32(i))
                src.consume(r)
                i += 1
            }
            ibuf.close()
            outcomes.value = (ibuf.spliced, ibuf.copied)
        }
        var n = 0
        var ok = true
        while !out.isAtEnd {
            guard let r = out.peek() else { out.wait(timeoutNanoseconds: 1_000_000); continue }
            let full = pattern(8 + n % 300, seed: n)
            let want = n % 3 == 0 ? Array(full[1...]) : full
            if Array(r.bytes) != want || r.flowTag != UInt32(n) { ok = false }
            out.consume(r)
            n += 1
            if n % 500 == 0 { pause(nanoseconds: 200_000) }  // lag behind, so the producer meets the hold
        }
        #expect(producer.join(timeoutNanoseconds: 10_000_000_000))
        #expect(forwarder.join(timeoutNanoseconds: 10_000_000_000))
        #expect(ok, "every block resolves to the bytes that were written")
        #expect(n == total)
        #expect(outcomes.value.spliced + outcomes.value.copied == UInt64(total))
        #expect(outcomes.value.spliced > UInt64(total / 2), "most blocks are spliced (\(outcomes.value))")
    }
}

@Suite("IBuf keep-alive")
struct IBufKeepAliveTests {
    @Test(".block: the producer cannot overwrite a record an unread index points at, even after the filter let go of it")
    func holdBlocksProducer() throws {
        let ring = try dataRing(12, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        // The filter forwards and consumes every record at once; the IBuf's reader reads nothing yet.
        var written = 0
        while put(ring, pattern(500, seed: written), wait: false) {
            let r = try #require(src.peek())
            #expect(ibuf.forward(r, from: src) == .spliced)
            src.consume(r)
            written += 1
            if written > 100 { break }
        }
        #expect(written < 10, "the producer stops at one ring's worth: the IBuf holds the records (wrote \(written))")
        ibuf.flush()  // moving the holds now frees nothing: no index was read
        #expect(!put(ring, pattern(500, seed: 1000), wait: false))
        // Every index still resolves to its original record.
        for i in 0..<written { #expect(take(out)?.bytes == pattern(500, seed: i)) }
        // Once they are read, the producer goes on.
        ibuf.flush()
        #expect(put(ring, pattern(500, seed: written), wait: false))
    }

    @Test(".block: with two readers, the hold follows the slower one")
    func holdFollowsSlowestReader() throws {
        let ring = try dataRing(12, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let fast = try #require(ibuf.attach()), slow = try #require(ibuf.attach())
        var written = 0
        while put(ring, pattern(500, seed: written), wait: false) {
            let r = try #require(src.peek())
            ibuf.forward(r, from: src)
            src.consume(r)
            written += 1
            while take(fast) != nil {}  // the fast reader keeps up
            ibuf.flush()
            if written > 100 { break }
        }
        #expect(written < 10, "the slow reader holds the ring")
        for i in 0..<written { #expect(take(slow)?.bytes == pattern(500, seed: i)) }
        ibuf.flush()
        #expect(put(ring, pattern(500, seed: 1), wait: false), "free once both have read")
    }

    @Test("copies live in the IBuf's own ring, held the same way: a full backing ring refuses, and takes more once read")
    func backingHeld() throws {
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 12)
        let out = try #require(ibuf.attach())
        var n = 0
        while pattern(500, seed: n).withUnsafeBytes({ ibuf.write($0, wait: false) }) == .copied {
            n += 1
            if n > 100 { break }
        }
        #expect(n < 10)
        for i in 0..<n { #expect(take(out)?.bytes == pattern(500, seed: i)) }
        #expect(pattern(500, seed: 0).withUnsafeBytes { ibuf.write($0, wait: false) } == .copied)
        // Without readers nothing is held.
        out.detach()
        for i in 0..<100 { #expect(pattern(500, seed: i).withUnsafeBytes { ibuf.write($0, wait: false) } == .copied) }
    }

    @Test(".drop: an index whose record was overwritten is counted as lost, never delivered; delivered + lost = produced")
    func dropTargetsAreValidated() throws {
        let ring = try dataRing(12, .drop)
        let ibuf = try IBuf(sizeLog2: 16, backingSizeLog2: 13)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        for i in 0..<1000 {
            #expect(put(ring, pattern(100, seed: i), wait: false))
            let r = try #require(src.peek())
            #expect(ibuf.write(r.bytes, flowTag: UInt32(i)) == .spliced, "a drop ring needs no hold")
            src.consume(r)
        }
        var seen: [Int] = []
        while let r = out.peek() {
            let i = Int(r.flowTag)
            #expect(Array(r.bytes) == pattern(100, seed: i))
            #expect(out.isStillValid(r))
            out.consume(r)
            seen.append(i)
        }
        #expect(out.delivered + out.lost == 1000)
        #expect(out.lost > 900, "a 4 KiB ring keeps only the last few dozen records")
        #expect(seen == Array((1000 - seen.count)..<1000), "the newest survive, in order")
    }

    @Test(".drop: read validates after copying: a block overwritten between peek and copy is lost, not torn")
    func dropReadValidatesAfterCopy() throws {
        let ring = try dataRing(12, .drop)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        put(ring, pattern(100, seed: 1))
        let r = try #require(src.peek())
        ibuf.forward(r, from: src, flowTag: 1)
        src.consume(r)
        let peeked = try #require(out.peek())
        #expect(out.isStillValid(peeked))
        for i in 0..<100 { put(ring, pattern(100, seed: 100 + i)) }  // the producer laps the ring
        #expect(!out.isStillValid(peeked), "the record the index named is gone")
        #expect(take(out) == nil, "read does not deliver it")
        #expect(out.lost == 1)
        #expect(out.delivered == 0)
    }

    @Test("a ring that reallocates: indices into its old region stay valid, the hold lets the producer go, later blocks are copied")
    func sourceReallocates() throws {
        let ring = try dataRing(12, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 14)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        for i in 0..<3 {
            put(ring, pattern(300, seed: i))
            let r = try #require(src.peek())
            #expect(ibuf.forward(r, from: src) == .spliced)
            src.consume(r)
        }
        try ring.reallocate(sizeLog2: 13)  // the hold's slot is copied to the new region with its tail
        for i in 3..<6 {
            put(ring, pattern(300, seed: i))
            let r = try #require(src.peek())  // the reader follows the ring into its new region
            #expect(ibuf.forward(r, from: src) == .copied, "the IBuf does not know the new region")
            src.consume(r)
        }
        ibuf.flush()
        var n = 0
        while n < 100 && put(ring, pattern(500, seed: n), wait: false) {
            n += 1
            _ = src.peek().map { src.consume($0) }
        }
        #expect(n == 100, "the old hold no longer holds the producer in the new region")
        #expect((0..<6).compactMap { _ in take(out)?.bytes } == (0..<6).map { pattern(300, seed: $0) })
    }

    static let underTSan = getenv("PIPESFS_TSAN") != nil

    @Test(".drop under load: a fast producer, a forwarder and a slow reader in three threads; every delivered block whole",
          .enabled(if: !underTSan, "a deliberate seqlock race (readers copy what the producer may be overwriting); runs in the normal pass"))
    func concurrentDrop() throws {
        let ring = try dataRing(13, .drop)
        let ibuf = try IBuf(sizeLog2: 20, backingSizeLog2: 13)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        let total = 100_000
        let producer = JoinableThread(), forwarder = JoinableThread()
        producer.start(name: "producer") {
            var buf = [UInt8](repeating: 0, count: 256)
            for i in 0..<total {
                let n = 16 + (i * 13) % 200
                buf.withUnsafeMutableBytes { b in
                    b.storeBytes(of: UInt64(i), as: UInt64.self)
                    for k in 8..<n { b[k] = UInt8(truncatingIfNeeded: i) }
                }
                _ = buf.withUnsafeBytes { ring.write(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
            ring.close()
        }
        let forwarded = Locked((spliced: 0, lost: 0, other: 0))
        forwarder.start(name: "forwarder") {
            var n = (spliced: 0, lost: 0, other: 0)
            while true {
                guard let r = src.peek() else {
                    if src.isAtEnd { break }
                    ibuf.flush()
                    src.wait(timeoutNanoseconds: 1_000_000)
                    continue
                }
                switch ibuf.forward(r, from: src) {
                case .spliced: n.spliced += 1
                case .lost: n.lost += 1
                default: n.other += 1
                }
                src.consume(r)
            }
            ibuf.close()
            forwarded.value = n
        }
        var buffer = [UInt8](repeating: 0, count: 256)
        var whole = true, ordered = true
        var last: Int64 = -1
        var count = 0
        while true {
            guard let (n, _, _) = buffer.withUnsafeMutableBytes({ out.read(into: $0) }) else {
                if out.isAtEnd { break }
                out.wait(timeoutNanoseconds: 1_000_000)
                continue
            }
            let seq = buffer.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
            if Int64(seq) <= last { ordered = false }
            last = Int64(seq)
            if n != 16 + (Int(seq) * 13) % 200 || buffer[8..<n].contains(where: { $0 != UInt8(truncatingIfNeeded: seq) }) { whole = false }
            count += 1
            if count % 64 == 0 { pause(nanoseconds: 20_000) }  // lag behind
        }
        #expect(producer.join(timeoutNanoseconds: 10_000_000_000))
        #expect(forwarder.join(timeoutNanoseconds: 10_000_000_000))
        #expect(whole, "no torn block is ever delivered")
        #expect(ordered)
        let f = forwarded.value
        #expect(f.other == 0, "a drop ring's records are spliced or lost, never copied")
        #expect(out.delivered + out.lost == UInt64(f.spliced), "delivered \(out.delivered) + lost \(out.lost)")
        #expect(UInt64(f.spliced + f.lost) + src.dropped == UInt64(total), "what the forwarder did not get, its reader counted")
        #expect(out.lost > 0, "the reader did lag")
    }
}

@Suite("IBuf indices")
struct IBufIndexTests {
    @Test("rich pointers past 2^32 and across many laps of the ring they name resolve intact")
    func indicesPast4GiB() throws {
        let ring = try dataRing(16, .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 16)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        let size = 30_000
        let laps = (1 << 32) / size + 100
        var ok = true
        var lastPosition: UInt64 = 0
        var copies = 0
        for i in 0..<laps {
            guard let p = ring.reserve(size, wait: false) else { ok = false; break }
            p.storeBytes(of: UInt64(i), as: UInt64.self)
            (p + size - 8).storeBytes(of: UInt64(i), as: UInt64.self)
            ring.commit(size, wireLength: size)
            guard let r = src.peek() else { ok = false; break }
            // Mostly the tail of the record (a trim), every 1000th a copy through the backing ring.
            if i % 1000 == 0 {
                var local = [UInt8](repeating: 0, count: 16)
                local.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(i), as: UInt64.self) }
                if local.withUnsafeBytes({ ibuf.write($0) }) != .copied { ok = false; break }
                copies += 1
            } else if ibuf.write(UnsafeRawBufferPointer(rebasing: r.bytes[(size - 8)...])) != .spliced {
                ok = false
                break
            }
            src.consume(r)
            guard let x = out.peek(), x.bytes.loadUnaligned(as: UInt64.self) == UInt64(i) else { ok = false; break }
            if i % 1000 != 0 { lastPosition = x.pointer.position }
            out.consume(x)
            ibuf.flush()  // the end of a batch: the hold moves to what the reader has read
        }
        #expect(ok)
        #expect(out.delivered == UInt64(laps))
        #expect(ibuf.copied == UInt64(copies))
        #expect(lastPosition > UInt64(1) << 32, "the pointers' positions went past 2^32")
    }
}

@Suite("DBuf registry")
struct DBufRegistryTests {
    @Test("ids are unique and never 0; a ring is found by its id; ids 0 and taken ids are refused")
    func registry() throws {
        let reg = DBufRegistry()
        let a = try reg.makeRing(sizeLog2: 12, policy: .block)
        let b = try reg.makeRing(sizeLog2: 12, policy: .drop)
        #expect(DBufRegistry.id(of: a) != 0)
        #expect(DBufRegistry.id(of: a) != DBufRegistry.id(of: b))
        #expect(reg.ring(id: DBufRegistry.id(of: b)) === b)
        #expect(throws: RingError.self) { try reg.register(DBuf(sizeLog2: 12, policy: .block)) }
        #expect(throws: RingError.self) { try reg.register(DBuf(sizeLog2: 12, policy: .block, ringID: DBufRegistry.id(of: a))) }
        try reg.register(a)  // the same ring again is fine
        reg.unregister(a)
        #expect(reg.ring(id: DBufRegistry.id(of: a)) == nil)
        let view = try DBuf(mapping: b.fd)
        #expect(DBufRegistry.id(of: view) == DBufRegistry.id(of: b), "the id travels with the ring")
    }

    @Test("an unregistered ring stays readable through the indices already written into it")
    func unregisterKeepsIndices() throws {
        let reg = DBufRegistry()
        let ring = try reg.makeRing(sizeLog2: 12, policy: .block)
        let ibuf = try IBuf(sizeLog2: 12, backingSizeLog2: 13, registry: reg)
        ibuf.addSource(ring)
        let src = try #require(ring.attach())
        let out = try #require(ibuf.attach())
        put(ring, pattern(64, seed: 3))
        let r = try #require(src.peek())
        #expect(ibuf.write(r.bytes) == .spliced)
        src.consume(r)
        reg.unregister(ring)
        #expect(take(out)?.bytes == pattern(64, seed: 3))
    }
}
