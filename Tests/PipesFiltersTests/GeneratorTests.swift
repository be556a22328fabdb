#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("gen source")
struct GeneratorTests {
    @Test("bad options are explained", arguments: [
        ("", "needs size=BYTES"),
        ("size=4", "bad option 'size=4'"),
        ("size=2000000", "bad option 'size=2000000'"),
        ("size=64,rate=-1", "bad option 'rate=-1'"),
        ("size=64,count=x", "bad option 'count=x'"),
        ("size=64,fast", "bad option 'fast'"),
    ])
    func badOptions(spec: String, fragment: String) {
        let e = filterError { _ = try GeneratorSource(spec: spec) }
        #expect(e?.message.contains(fragment) == true, "\(spec): \(e?.message ?? "accepted")")
    }

    @Test("count=N: N numbered blocks through a small lossless tap (the source waits), then end of stream")
    func numberedBlocksThenEnd() throws {
        let c = Controller()
        let node = try c.addSource("g=gen:size=1000,count=300,paused")
        let ring = openTap(c, node, capacity: 4096)
        try c.control(node, "start")
        let got = drainUntilEnded(ring, within: 20, pollingEvery: 200_000)
        defer { c.shutdown() }
        #expect(ring.isEnded)
        #expect(ring.dropped == 0)
        #expect(got.count == 300 * 1000)
        var ok = true
        for i in 0..<300 where got.count == 300 * 1000 {
            let seq = got.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 1000, as: UInt64.self) }
            if UInt64(littleEndian: seq) != UInt64(i) || got[i * 1000 + 8] != UInt8(truncatingIfNeeded: 8 * 7 + 1) { ok = false }
        }
        #expect(ok, "each block starts with its sequence number, then the pattern")
        #expect(c.statsText(node).contains("blocks_produced: 300"))
    }

    @Test("pacing survives more than 9.2 GB (bytes × 10^9 once overflowed 64 bits and killed the daemon)")
    func pacingPastNineGigabytes() throws {
        let c = Controller()
        defer { c.shutdown() }
        // 1 TB/s: paced, but never waiting; 160 000 blocks of 64 KiB are 10.5 GB.
        let node = try c.addSource("g=gen:size=65536,rate=1000000000000,count=160000,paused")
        let count = try c.makeDirectory(in: node, named: "count")
        try c.control(node, "start")
        #expect(eventually(within: 120, pollingEvery: 10_000) { c.space.lock.withLock { count.ended } })
        #expect(c.space.lock.withLock { (count.filter as! Count).packets } == 160_000)
    }
}
