#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesTestSupport
import Testing

// MARK: helpers

/// What one delivery handed the reader, copied out of the ring (the pointers die with the call).
enum Got: Equatable, CustomStringConvertible, DeliveryCopy {
    case data([UInt8], firstSegment: Int, secondSegment: Int)
    case end
    case error(Int32)

    init(_ o: ReadOutcome) {
        switch o {
        case .data(let a, let b): self = .data(Array(a) + Array(b), firstSegment: a.count, secondSegment: b.count)
        case .segments: self = .data(o.bytes, firstSegment: o.bytes.count, secondSegment: 0)
        case .endOfStream: self = .end
        case .error(let e): self = .error(e)
        }
    }

    var bytes: [UInt8]? {
        if case .data(let b, _, _) = self { return b }
        return nil
    }

    var description: String {
        switch self {
        case .data(let b, let f, let s): "data(\(b.count) bytes, segments \(f)+\(s))"
        case .end: "end"
        case .error(let e): "error(\(e))"
        }
    }
}

/// Collects deliveries (possibly from another thread).
typealias Deliveries = DeliveryLog<Got>

/// Appends a body (and optional header) given as byte arrays.
@discardableResult
func append(_ ring: TapRing, header: [UInt8]? = nil, _ body: [UInt8]) -> AppendResult {
    body.withUnsafeBytes { b in
        if let header {
            return header.withUnsafeBytes { h in ring.append(header: h, body: b) }
        }
        return ring.append(header: nil, body: b)
    }
}

/// Reads at once (asserts that the read did not park) and returns what was delivered.
func readNow(_ ring: TapRing, max: Int, nonBlocking: Bool = false, interrupted: @escaping () -> Bool = { false },
             sourceLocation: SourceLocation = #_sourceLocation) -> Got? {
    let d = Deliveries()
    let atOnce = ring.read(max: max, id: 999_999, nonBlocking: nonBlocking, interrupted: interrupted) { d.add($0) }
    #expect(atOnce, "read should have been answered at once", sourceLocation: sourceLocation)
    #expect(d.count == 1, "exactly one delivery expected", sourceLocation: sourceLocation)
    return d.all.first
}

/// Starts a read that must park (nothing to read yet) and returns where its delivery lands.
func parkedRead(_ ring: TapRing, max: Int, id: UInt64, sourceLocation: SourceLocation = #_sourceLocation) -> Deliveries {
    let d = Deliveries()
    let atOnce = ring.read(max: max, id: id) { d.add($0) }
    #expect(!atOnce, "the read should have parked", sourceLocation: sourceLocation)
    return d
}

func pattern(_ n: Int, seed: Int = 0) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: ($0 &* 31 &+ seed) % 251) } }

// MARK: tests

@Suite("TapRing")
struct TapRingTests {
    @Test("capacity is rounded up to a power of two, at least 4096; high water is half")
    func capacityRounding() {
        #expect(TapRing(capacity: 1, policy: .drop).capacity == 4096)
        #expect(TapRing(capacity: 4096, policy: .drop).capacity == 4096)
        #expect(TapRing(capacity: 4097, policy: .drop).capacity == 8192)
        #expect(TapRing(capacity: 5000, policy: .block).highWater == 4096)
    }

    @Test("records appended (header + body) read back as one byte stream, in pieces of at most max")
    func appendAndReadByteStream() throws {
        let ring = TapRing(capacity: 4096, policy: .drop)
        let r1 = append(ring, header: Array("AB".utf8), Array("CDE".utf8))
        #expect(r1.contains(.stored))
        #expect(!r1.contains(.congested), "drop rings never ask for backpressure")
        #expect(append(ring, Array("FG".utf8)).contains(.stored))
        #expect(ring.available == 7)
        #expect(ring.isReadable)

        #expect(readNow(ring, max: 4)?.bytes == Array("ABCD".utf8))
        #expect(ring.available == 3)
        #expect(readNow(ring, max: 100)?.bytes == Array("EFG".utf8))
        #expect(ring.available == 0)
        #expect(ring.bytesDelivered == 7)
        #expect(ring.dropped == 0)
        #expect(!ring.isReadable)

        // Empty and non-blocking: EAGAIN, nothing parked.
        #expect(readNow(ring, max: 10, nonBlocking: true) == .error(EAGAIN))
    }

    @Test("an empty body with no header appends nothing readable")
    func emptyRecord() {
        let ring = TapRing(capacity: 4096, policy: .drop)
        #expect(append(ring, []).contains(.stored))
        #expect(ring.available == 0)
    }

    @Test("data that wraps the end of the ring is handed over as two segments")
    func wrapAroundTwoSegments() throws {
        let ring = TapRing(capacity: 4096, policy: .drop)
        let first = pattern(3000)
        #expect(append(ring, first).contains(.stored))
        #expect(readNow(ring, max: 4096)?.bytes == first)

        // Head and tail are at 3000: 2000 more bytes occupy 3000..<4096 and 0..<904.
        let second = pattern(2000, seed: 7)
        #expect(append(ring, second).contains(.stored))
        let got = try #require(readNow(ring, max: 4096))
        #expect(got == .data(second, firstSegment: 1096, secondSegment: 904))
    }

    @Test("a record whose header straddles the end of the ring is copied in two pieces")
    func headerWraps() throws {
        let ring = TapRing(capacity: 4096, policy: .drop)
        append(ring, pattern(4094))
        _ = readNow(ring, max: 4096)
        // The header occupies 4094, 4095, 0, 1; the body 2, 3.
        append(ring, header: [1, 2, 3, 4], [5, 6])
        let got = try #require(readNow(ring, max: 64))
        #expect(got == .data([1, 2, 3, 4, 5, 6], firstSegment: 2, secondSegment: 4))
    }

    @Test("a record that does not fit is dropped whole and counted; the rest of the stream is intact")
    func recordAtomicDrop() throws {
        let ring = TapRing(capacity: 4096, policy: .drop)
        let a = pattern(3000)
        #expect(append(ring, a).contains(.stored))

        // 2000 bytes do not fit into the 1096 left: nothing of it is stored.
        let r = append(ring, header: [0xEE, 0xEE], pattern(1998, seed: 3))
        #expect(!r.contains(.stored))
        #expect(ring.dropped == 1)
        #expect(ring.available == 3000)

        // Exactly the space left fits.
        let b = pattern(1096, seed: 5)
        #expect(append(ring, b).contains(.stored))
        #expect(ring.available == 4096)

        // A full ring drops even one byte; a record bigger than the ring is always dropped.
        #expect(!append(ring, [1]).contains(.stored))
        #expect(ring.dropped == 2)
        let huge = TapRing(capacity: 4096, policy: .drop)
        #expect(!append(huge, pattern(5000)).contains(.stored))
        #expect(huge.dropped == 1)
        #expect(huge.available == 0)

        let stream = try #require(readNow(ring, max: 8192)?.bytes)
        #expect(stream == a + b, "the dropped record must leave no partial bytes behind")
    }

    @Test(".block rings report .congested past high water; waitUntilDrained returns once a read drains it")
    func blockPolicyBackpressure() throws {
        let ring = TapRing(capacity: 4096, policy: .block)
        #expect(ring.highWater == 2048)
        let r1 = append(ring, pattern(1000))
        #expect(r1 == [.stored], "below high water: stored, not congested")
        #expect(!ring.isCongested)
        let r2 = append(ring, pattern(1048))
        #expect(r2.contains(.stored))
        #expect(r2.contains(.congested), "2048 bytes reach the high-water mark")
        #expect(ring.isCongested)

        // Nobody reads: the wait times out.
        let t0 = monotonicNanoseconds()
        #expect(ring.waitUntilDrained(timeoutNanoseconds: 20_000_000) == false)
        #expect(monotonicNanoseconds() - t0 >= 15_000_000, "the wait should have lasted about its timeout")

        // A producer thread waits; a read below high water releases it.
        let started = Locked(false)
        let result = Locked<Bool?>(nil)
        startThread(name: "waiter") {
            started.value = true
            result.value = ring.waitUntilDrained(timeoutNanoseconds: 10_000_000_000)
        }
        #expect(eventually { started.value })
        // Give the waiter a moment to block (the outcome is the same if it has not yet).
        pause(nanoseconds: 5_000_000)
        #expect(result.value == nil, "the producer must still be waiting")
        #expect(readNow(ring, max: 100)?.bytes?.count == 100)
        #expect(eventually { result.value != nil })
        #expect(result.value == true)
        #expect(!ring.isCongested)
    }

    @Test(".block rings grow instead of dropping a record that overshoots, keep order across the wrap, and shrink back")
    func blockRingGrowsAndShrinks() throws {
        let ring = TapRing(capacity: 4096, policy: .block, maxCapacity: 16384)
        // Wrap the indices first, so growth has to re-lay a wrapped stream.
        #expect(append(ring, pattern(3000)).contains(.stored))
        #expect(readNow(ring, max: 3000)?.bytes?.count == 3000)
        var expected: [UInt8] = []
        for i in 0..<5 {  // 5 x 2000 bytes: past high water and past the capacity
            let rec = pattern(2000, seed: i)
            expected += rec
            #expect(append(ring, rec).contains(.stored), "record \(i) must be kept on a lossless ring")
        }
        #expect(ring.dropped == 0)
        #expect(ring.capacity == 16384, "4096 doubled until 10000 bytes fit")
        #expect(ring.grown == 2)
        #expect(ring.highWater == 2048, "growth absorbs overshoot; the high-water mark stays")
        #expect(ring.isCongested)
        // Past the hard limit a lossless ring drops too (and counts it) rather than grow without bound.
        #expect(!append(ring, pattern(7000)).contains(.stored))
        #expect(ring.dropped == 1)
        var got: [UInt8] = []
        while ring.available > 0 { got += readNow(ring, max: 3333)?.bytes ?? [] }
        #expect(got == expected)
        #expect(ring.capacity == 4096, "an emptied ring shrinks back to its initial size")
        #expect(append(ring, pattern(100)).contains(.stored))
        #expect(readNow(ring, max: 4096)?.bytes == pattern(100))
    }

    @Test("copyOut copies outside the lock while the producer appends, grows and wraps the ring: the stream arrives whole and in order")
    func copyOutRacesGrowth() {
        let ring = TapRing(capacity: 4096, policy: .block, maxCapacity: 1 << 20)
        final class Result: @unchecked Sendable { var bytes: [UInt8] = []; var done = false }
        let r = Result()
        let l = ConditionLock()
        let records = 20_000
        func record(_ i: Int) -> [UInt8] { pattern(1 + (i &* 7919) % 1500, seed: i) }
        startThread(name: "copier") {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: 3000, alignment: 1)
            defer { buffer.deallocate() }
            var got: [UInt8] = []
            while true {
                let n = ring.copyOut(into: buffer, max: 1 + got.count % 3000)  // odd sizes: pieces end mid-record
                if n > 0 {
                    got += UnsafeRawBufferPointer(start: buffer, count: n)
                } else if ring.isEnded && ring.available == 0 {
                    break
                } else {
                    sched_yield()
                }
            }
            l.withLock { r.bytes = got; r.done = true; l.broadcast() }
        }
        var expected: [UInt8] = []
        var grownBefore = ring.grown
        var grewWhileCopying = 0
        for i in 0..<records {
            let rec = record(i)
            expected += rec
            let res = rec.withUnsafeBytes { ring.append(header: nil, body: $0) }
            #expect(res.contains(.stored), "record \(i) must be kept")
            if ring.grown != grownBefore { grewWhileCopying += 1; grownBefore = ring.grown }
        }
        ring.endOfStream()
        let finished = l.withLock { l.wait(until: { r.done }, timeoutNanoseconds: 30_000_000_000) }
        #expect(finished)
        #expect(r.bytes.count == expected.count)
        #expect(r.bytes == expected)
        #expect(ring.dropped == 0)
        #expect(grewWhileCopying > 0, "the producer should have outrun the copier and grown the ring at least once")
    }

    @Test("whenDrained runs once when a read takes the ring below high water, and refuses when not congested")
    func whenDrainedFiresOnce() {
        let ring = TapRing(capacity: 4096, policy: .block)
        let fired = Locked(0)
        #expect(!ring.whenDrained { fired.update { $0 += 1 } }, "not congested: nothing to wait for")
        append(ring, pattern(3000))
        #expect(ring.whenDrained { fired.update { $0 += 1 } })
        #expect(readNow(ring, max: 500)?.bytes?.count == 500)
        #expect(fired.value == 0, "2500 bytes: still congested")
        #expect(readNow(ring, max: 1000)?.bytes?.count == 1000)
        #expect(fired.value == 1)
        append(ring, pattern(3000))
        #expect(readNow(ring, max: 8000)?.bytes?.count == 1500 + 3000)
        #expect(fired.value == 1, "a callback runs once")
    }

    @Test("whenDrained callbacks run when the reader goes, the stream ends or the ring turns lossy")
    func whenDrainedOtherReasons() {
        for how in ["close", "end", "policy"] {
            let ring = TapRing(capacity: 4096, policy: .block)
            let fired = Locked(false)
            append(ring, pattern(2500))
            #expect(ring.whenDrained { fired.value = true })
            switch how {
            case "close": ring.closeReader()
            case "end": ring.endOfStream()
            default: ring.setPolicy(.drop)
            }
            #expect(fired.value, "\(how) must release a parked writer")
            #expect(!ring.isCongested)
        }
    }

    @Test("setPolicy(.drop) releases a producer blocked in waitUntilDrained")
    func policyChangeReleasesProducer() {
        let ring = TapRing(capacity: 4096, policy: .block)
        append(ring, pattern(2500))
        let result = Locked<Bool?>(nil)
        startThread(name: "waiter") { result.value = ring.waitUntilDrained(timeoutNanoseconds: 10_000_000_000) }
        pause(nanoseconds: 5_000_000)
        #expect(result.value == nil)
        ring.setPolicy(.drop)
        #expect(eventually { result.value == true })
        #expect(ring.policy == .drop)
        #expect(!append(ring, pattern(2000)).contains(.stored), "lossy now: a record that does not fit is dropped")
    }

    @Test("a read on an empty ring parks and is delivered by serviceWaiters, not by append")
    func parkedReadDeliveredByServiceWaiters() throws {
        let ring = TapRing(capacity: 4096, policy: .drop)
        let d = parkedRead(ring, max: 3, id: 1)
        #expect(d.count == 0)

        let r = append(ring, Array("hello".utf8))
        #expect(r.contains(.stored))
        #expect(r.contains(.becameReadable), "a parked reader makes the first append signal readability")
        #expect(d.count == 0, "append itself must not call into the reader")

        // A second append to a non-empty ring does not signal again.
        #expect(!append(ring, Array("!".utf8)).contains(.becameReadable))

        ring.serviceWaiters()
        #expect(d.all == [.data(Array("hel".utf8), firstSegment: 3, secondSegment: 0)])
        #expect(ring.available == 3)
        ring.serviceWaiters()
        #expect(d.count == 1, "a delivered read is not delivered twice")
    }

    @Test("without a waiter or notifier, append does not report becameReadable")
    func noWaiterNoSignal() {
        let ring = TapRing(capacity: 4096, policy: .drop)
        #expect(append(ring, [1, 2, 3]) == [.stored])
    }

    @Test("the readable notifier is called by serviceWaiters when data is there")
    func readableNotifier() {
        let ring = TapRing(capacity: 4096, policy: .drop)
        let notified = Locked(0)
        ring.setReadableNotifier { notified.update { $0 += 1 } }
        ring.serviceWaiters()
        #expect(notified.value == 0, "nothing to read: no notification")
        #expect(append(ring, [1]).contains(.becameReadable))
        ring.serviceWaiters()
        #expect(notified.value == 1)
        ring.setReadableNotifier(nil)
        ring.serviceWaiters()
        #expect(notified.value == 1)
    }

    @Test("cancel(id:) answers that parked read with EINTR and leaves others parked")
    func cancelGivesEINTR() {
        let ring = TapRing(capacity: 4096, policy: .drop)
        let d7 = parkedRead(ring, max: 10, id: 7)
        let d8 = parkedRead(ring, max: 10, id: 8)
        ring.cancel(id: 42)  // unknown: no-op
        #expect(d7.count == 0 && d8.count == 0)
        ring.cancel(id: 7)
        #expect(d7.all == [.error(EINTR)])
        #expect(d8.count == 0)
        ring.cancel(id: 7)  // already answered: no-op
        #expect(d7.count == 1)

        append(ring, [9, 9])
        ring.serviceWaiters()
        #expect(d7.count == 1, "a cancelled read gets no data")
        #expect(d8.all == [.data([9, 9], firstSegment: 2, secondSegment: 0)])
    }

    @Test("an interrupted read on an empty ring ends with EINTR instead of parking")
    func interruptedClause() {
        let ring = TapRing(capacity: 4096, policy: .drop)
        #expect(readNow(ring, max: 10, interrupted: { true }) == .error(EINTR))
        // Nothing was parked: data arriving later is not delivered to it.
        append(ring, [1])
        ring.serviceWaiters()
        #expect(ring.available == 1)
        // With data there, the interrupt flag does not matter.
        #expect(readNow(ring, max: 10, interrupted: { true }) == .data([1], firstSegment: 1, secondSegment: 0))
    }

    @Test("closeReader ends parked reads; the producer stops writing and stops waiting")
    func closeReaderEndsParkedReads() {
        let ring = TapRing(capacity: 4096, policy: .block)
        let a = parkedRead(ring, max: 10, id: 1)
        let b = parkedRead(ring, max: 10, id: 2)
        ring.closeReader()
        #expect(a.all == [.end])
        #expect(b.all == [.end])

        #expect(append(ring, pattern(3000)) == [], "no reader: nothing stored")
        #expect(ring.dropped == 0, "records for a closed reader are not counted as drops")
        #expect(ring.available == 0)
        #expect(!ring.isCongested)
        #expect(ring.waitUntilDrained(timeoutNanoseconds: 1_000_000_000), "no reader: nothing to wait for")
        #expect(readNow(ring, max: 10) == .end)
    }

    @Test("closeReader releases a producer blocked in waitUntilDrained")
    func closeReaderReleasesProducer() {
        let ring = TapRing(capacity: 4096, policy: .block)
        #expect(append(ring, pattern(2500)).contains(.congested))
        let result = Locked<Bool?>(nil)
        startThread(name: "waiter") {
            result.value = ring.waitUntilDrained(timeoutNanoseconds: 10_000_000_000)
        }
        ring.closeReader()
        #expect(eventually { result.value != nil })
        #expect(result.value == true)
    }

    @Test("endOfStream: buffered data first, then end; parked reads get end")
    func endOfStreamAfterData() {
        let ring = TapRing(capacity: 4096, policy: .block)
        append(ring, Array("abc".utf8))
        ring.endOfStream()
        #expect(ring.isEnded)
        #expect(ring.isReadable)
        #expect(append(ring, [1]) == [], "nothing is stored after the end")
        #expect(readNow(ring, max: 2)?.bytes == Array("ab".utf8))
        #expect(readNow(ring, max: 2)?.bytes == Array("c".utf8))
        #expect(readNow(ring, max: 2) == .end)
        #expect(readNow(ring, max: 2) == .end)

        let other = TapRing(capacity: 4096, policy: .drop)
        let d = parkedRead(other, max: 5, id: 3)
        other.endOfStream()
        #expect(d.all == [.end], "endOfStream services parked readers")
    }
}

@Suite("ConditionLock")
struct ConditionLockTests {
    @Test("a timed wait without a signal times out and returns false")
    func timedWaitTimesOut() {
        let l = ConditionLock()
        let t0 = monotonicNanoseconds()
        let signalled = l.withLock { l.wait(timeoutNanoseconds: 10_000_000) }
        #expect(!signalled)
        #expect(monotonicNanoseconds() - t0 >= 9_000_000)
    }

    @Test("a timed wait longer than one second computes its deadline correctly")
    func timedWaitNanosecondCarry() {
        // 1.5 s would carry nanoseconds into seconds; it must be woken by a broadcast well before.
        let l = ConditionLock()
        final class Flag: @unchecked Sendable { var set = false }
        let flag = Flag()
        startThread(name: "signaller") {
            pause(nanoseconds: 2_000_000)
            l.withLock { flag.set = true; l.broadcast() }
        }
        let ok = l.withLock { () -> Bool in
            while !flag.set { if !l.wait(timeoutNanoseconds: 1_500_000_000) { return false } }
            return true
        }
        #expect(ok)
    }
}
