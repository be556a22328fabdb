import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("count")
struct CountTests {
    @Test("counts packets and wire bytes, forwarding everything with its class")
    func counts() throws {
        let f = try make("count")
        let c = try #require(f as? Count)
        #expect(classify(f, Pkt.ethTCP4()) == 1)
        #expect(classify(f, Pkt.ethARP(), classValue: 0x0806) == 0x0806)
        #expect(classify(f, [1, 2, 3], .user, wireLength: 1000) == 1)
        #expect(c.packets == 3)
        #expect(c.bytes == UInt64(Pkt.ethTCP4().count + Pkt.ethARP().count + 1000), "wire length, not captured length")
        let stats = Dictionary(uniqueKeysWithValues: c.statistics())
        #expect(stats["count_packets"] == "3")
        #expect(stats["count_bytes"] == "\(c.bytes)")
    }

    @Test("'reset' zeroes the counters; other commands are unknown")
    func reset() throws {
        let f = try make("count")
        let c = try #require(f as? Count)
        classify(f, [1, 2, 3], .user)
        guard case .success? = f.control("reset", "") else {
            Issue.record("reset should succeed")
            return
        }
        #expect(c.packets == 0)
        #expect(c.bytes == 0)
        #expect(f.control("bogus", "") == nil)
    }

    @Test("takes no arguments")
    func noArguments() throws {
        #expect(makeError("count", "5") != nil)
        #expect(try make("count").arguments == "")
    }
}
