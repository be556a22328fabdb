#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesTestSupport
import Testing

/// Batched peek (`DBufReader.peekRun`): runs of records handed out in place, one head load and one tail store each.
@Suite("DBuf runs")
struct DBufRunTests {
    @Test("a run hands out the published records in order, in place; consume moves past exactly those")
    func basics() throws {
        let ring = try DBuf(sizeLog2: 12, policy: .block)
        let r = try #require(ring.attach())
        #expect(r.peekRun() == nil)
        for i in 0..<10 { put(ring, pattern(10 + i, seed: i), classValue: UInt32(i + 1)) }
        var run = try #require(r.peekRun(maxRecords: 4))
        var got: [Int] = []
        while let rec = run.next() {
            #expect(Array(rec.bytes) == pattern(rec.bytes.count, seed: rec.bytes.count - 10))
            #expect(rec.classValue == UInt32(rec.bytes.count - 9))
            #expect(rec.sequence == UInt64(got.count))
            got.append(rec.bytes.count - 10)
        }
        #expect(got == [0, 1, 2, 3], "at most maxRecords")
        #expect(run.count == 4)
        #expect(run.next() == nil, "an ended run stays ended")
        r.consume(run)
        #expect(r.delivered == 4)
        #expect(r.peek()?.sequence == 4, "the records not handed out are still there")
        // A run that hands out only part of what it covers: the rest stays unread.
        var partial = try #require(r.peekRun())
        #expect(partial.next()?.sequence == 4)
        r.consume(partial)
        #expect(r.peek()?.sequence == 5)
        var rest = try #require(r.peekRun())
        var n = 0
        while rest.next() != nil { n += 1 }
        r.consume(rest)
        #expect(n == 5)
        #expect(r.delivered == 10)
        #expect(r.peekRun() == nil)
        // The slot's tail was published: the producer has the whole ring again.
        #expect(ring.unreadBytes == 0)
    }

    @Test("runs across pads and laps: odd sizes through a small ring, every record whole and in order")
    func wrapAround() throws {
        let ring = try DBuf(sizeLog2: 12, policy: .block)
        let r = try #require(ring.attach())
        var next: UInt64 = 0, produced: UInt64 = 0
        var ok = true
        var runs = 0
        while next < 20_000 {
            // Fill what fits without waiting, then read it back in runs of varying length.
            while produced < 20_000 && produceStreamRecord(ring, produced, maxLength: 700, wait: false) { produced += 1 }
            guard var run = r.peekRun(maxRecords: 1 + runs % 9) else { continue }
            while let rec = run.next() {
                if intactStreamRecord(rec.bytes, maxLength: 700) != next { ok = false }
                next += 1
            }
            r.consume(run)
            runs += 1
        }
        #expect(ok)
        #expect(r.delivered == 20_000)
        #expect(runs < 20_000, "runs hand out several records")
    }

    @Test("deck-cut: a run follows the pads past the cut while the cut moves")
    func deckCut() throws {
        let ring = try DBuf(sizeLog2: 16, policy: .block, cutLog2: 12)
        let r = try #require(ring.attach())
        var next: UInt64 = 0, produced: UInt64 = 0
        var ok = true
        for round in 0..<400 {
            if round % 50 == 25 { try ring.setCut(log2: 12 + (round / 50) % 4) }
            for _ in 0..<5 where produceStreamRecord(ring, produced, maxLength: 900, wait: false) { produced += 1 }
            guard var run = r.peekRun() else { continue }
            while let rec = run.next() {
                if intactStreamRecord(rec.bytes, maxLength: 900) != next { ok = false }
                next += 1
            }
            r.consume(run)
        }
        #expect(ok)
        #expect(next == produced)
        #expect(ring.grows + ring.shrinks > 0)
    }

    @Test("a run holds at most an eighth of the ring by default: a .block producer gets room back run by run")
    func boundedRun() throws {
        let ring = try DBuf(sizeLog2: 16, policy: .block)
        let r = try #require(ring.attach())
        for i in 0..<400 { put(ring, pattern(100, seed: i)) }
        var run = try #require(r.peekRun())
        while run.next() != nil {}
        #expect(run.count > 1)
        #expect(run.count * 136 <= (1 << 16) / 8 + 136)
        r.consume(run)
        var run2 = try #require(r.peekRun(maxBytes: 1 << 20))
        while run2.next() != nil {}
        #expect(run.count + run2.count == 400, "a larger maxBytes takes the rest")
        r.consume(run2)
    }

    @Test(".drop: a run overtaken while in use counts exactly (delivered + dropped = produced), no torn record delivered")
    func dropOverrunDuringRun() throws {
        let ring = try DBuf(sizeLog2: 12, policy: .drop)
        let r = try #require(ring.attach())
        var produced: UInt64 = 0
        func produce(_ n: Int) { for _ in 0..<n { #expect(produceStreamRecord(ring, produced, maxLength: 200, wait: false)); produced += 1 } }
        produce(10)
        var run = try #require(r.peekRun())
        let first = run.next()
        let a = try #require(first)
        #expect(intactStreamRecord(a.bytes, maxLength: 200) == 0)
        #expect(r.isStillValid(a))
        // The producer laps the reader while it is inside the run.
        produce(200)
        #expect(!r.isStillValid(a), "overwritten")
        #expect(run.next() == nil, "the run ends: its records are gone")
        #expect(run.torn == 1, "the record in use was overtaken: dropped, not delivered")
        r.consume(run)
        #expect(r.delivered == 0)
        // The reader resyncs to the oldest record kept and counts what it lost.
        var last: UInt64 = 0
        while var more = r.peekRun() {
            while let rec = more.next() {
                let i = intactStreamRecord(rec.bytes, maxLength: 200)
                #expect(i != nil && i! >= last)
                last = i ?? last
            }
            r.consume(more)
        }
        #expect(last == produced - 1, "the newest records are delivered")
        #expect(r.delivered + r.dropped == produced, "delivered \(r.delivered) + dropped \(r.dropped) = \(produced)")
        #expect(r.dropped > 100)
        // An overrun between the last next() and consume is caught by consume.
        produce(3)
        var run3 = try #require(r.peekRun())
        #expect(run3.next() != nil)
        produce(200)
        r.consume(run3)
        while var more = r.peekRun() {
            while more.next() != nil {}
            r.consume(more)
        }
        #expect(r.delivered + r.dropped == produced, "delivered \(r.delivered) + dropped \(r.dropped) = \(produced)")
    }

    @Test(".drop, two threads: a lagging reader taking runs gets only whole records; delivered + dropped = produced",
          .enabled(if: getenv("PIPESFS_TSAN") == nil, "a deliberate seqlock race; runs in the normal pass"))
    func concurrentDropRuns() throws {
        let ring = try DBuf(sizeLog2: 13, policy: .drop)
        let r = try #require(ring.attach())
        let total: UInt64 = 200_000
        startThread(name: "producer") {
            for i in 0..<total { produceStreamRecord(ring, i, maxLength: 200) }
            ring.close()
        }
        var copy = [UInt8](repeating: 0, count: 256)
        var whole = true, ordered = true
        var last: Int64 = -1
        var handed = 0
        while true {
            guard var run = r.peekRun(maxRecords: 16) else {
                if r.isAtEnd { break }
                r.wait(timeoutNanoseconds: 1_000_000)
                continue
            }
            while let rec = run.next() {
                let n = rec.bytes.count
                copy.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: rec.bytes.baseAddress!, byteCount: min(n, 256)) }
                guard r.isStillValid(rec) else { continue }  // torn while copied: next() counts it as dropped
                let i = copy.withUnsafeBytes { intactStreamRecord(UnsafeRawBufferPointer(rebasing: $0[0..<min(n, 256)]), maxLength: 200) }
                guard let i else { whole = false; continue }
                if Int64(i) <= last { ordered = false }
                last = Int64(i)
                handed += 1
                if handed % 64 == 0 { pause(nanoseconds: 20_000) }  // lag behind
            }
            r.consume(run)
        }
        #expect(whole, "no torn record is ever delivered")
        #expect(ordered)
        #expect(r.delivered + r.dropped == total, "delivered \(r.delivered) + dropped \(r.dropped)")
        #expect(r.dropped > 0, "the reader did lag")
        #expect(last == Int64(total - 1))
    }

    @Test(".block, two threads: a fast producer and a reader taking runs: nothing lost, in order")
    func concurrentBlockRuns() throws {
        let ring = try DBuf(sizeLog2: 12, policy: .block)
        let r = try #require(ring.attach())
        let total: UInt64 = 100_000
        startThread(name: "producer") {
            for i in 0..<total { produceStreamRecord(ring, i, maxLength: 300) }
            ring.close()
        }
        var next: UInt64 = 0
        var ok = true
        while true {
            guard var run = r.peekRun() else {
                if r.isAtEnd { break }
                r.wait(timeoutNanoseconds: 1_000_000)
                continue
            }
            while let rec = run.next() {
                if intactStreamRecord(rec.bytes, maxLength: 300) != next { ok = false }
                next += 1
            }
            r.consume(run)
            if next % 4096 < 16 { pause(nanoseconds: 50_000) }  // lag behind now and then: the producer waits for room
        }
        #expect(ok)
        #expect(next == total)
        #expect(r.delivered == total)
    }
}
