import PipesControl
@testable import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("histogram")
struct HistogramTests {
    /// Runs one block of `wire` bytes on the wire, stamped `seconds.nanoseconds`, through the filter.
    @discardableResult
    static func push(_ f: any Filter, wire: Int, _ seconds: Int64, _ nanoseconds: Int32,
                     classValue: UInt32 = 0) -> UInt32 {
        let bytes = [UInt8](repeating: 0xAB, count: min(wire, 64))
        return bytes.withUnsafeBytes { raw in
            var b = Block(bytes: raw, wireLength: wire, seconds: seconds, nanoseconds: nanoseconds, linkType: .ethernet)
            b.classValue = classValue
            return f.process(&b)
        }
    }

    static func lines(_ f: any Filter) -> [String] { f.statistics().map { "\($0.0): \($0.1)" } }

    @Test("sizes and gaps in power-of-two buckets, with count, minimum, maximum and mean")
    func buckets() throws {
        let f = try make("histogram")
        HistogramTests.push(f, wire: 60, 100, 0)
        HistogramTests.push(f, wire: 1514, 100, 1500)  // 1.5 µs later
        HistogramTests.push(f, wire: 0, 100, 1500)  // at the same time
        HistogramTests.push(f, wire: 64, 100, 1_001_500)  // 1 ms later
        HistogramTests.push(f, wire: 127, 100, 0)  // earlier: only counted
        HistogramTests.push(f, wire: 128, 101, 0)  // 1 s after the one before
        #expect(HistogramTests.lines(f) == [
            "histogram_blocks: 6",
            "histogram_size_min: 0",
            "histogram_size_max: 1514",
            "histogram_size_mean: 315.5",
            "histogram_size_0: 1",
            "histogram_size_32-63: 1",
            "histogram_size_64-127: 2",
            "histogram_size_128-255: 1",
            "histogram_size_1024-2047: 1",
            "histogram_gaps: 4",
            "histogram_gaps_negative: 1",
            "histogram_gap_min_us: 0.000",
            "histogram_gap_max_us: 1000000.000",
            "histogram_gap_mean_us: 250250.375",
            "histogram_gap_us_0: 1",
            "histogram_gap_us_1: 1",
            "histogram_gap_us_512-1023: 1",
            "histogram_gap_us_524288-1048575: 1",
        ])
    }

    @Test("forwards everything, keeping the class (1 when none)")
    func passThrough() throws {
        let f = try make("histogram")
        #expect(HistogramTests.push(f, wire: 10, 0, 0) == 1)
        #expect(HistogramTests.push(f, wire: 10, 0, 0, classValue: 443) == 443)
        #expect(classify(f, Array("text".utf8), .user) == 1)
        #expect((f as? Histogram)?.blocks == 3)
    }

    @Test("'reset' in ctl clears everything, the last timestamp too; other commands are unknown")
    func reset() throws {
        let f = try make("histogram")
        HistogramTests.push(f, wire: 100, 5, 0)
        HistogramTests.push(f, wire: 200, 6, 0)
        guard case .success? = f.control("reset", "") else {
            Issue.record("reset should succeed")
            return
        }
        #expect(HistogramTests.lines(f) == ["histogram_blocks: 0", "histogram_gaps: 0", "histogram_gaps_negative: 0"])
        HistogramTests.push(f, wire: 300, 1, 0)
        #expect(HistogramTests.lines(f).contains("histogram_gaps: 0"), "the first block after a reset has no gap")
        #expect(HistogramTests.lines(f).contains("histogram_size_256-511: 1"))
        guard case .failure(let e)? = f.control("reset", "now") else {
            Issue.record("reset with an argument should fail")
            return
        }
        #expect(e.message == "histogram: reset takes no argument (got 'now')")
        #expect(f.control("bogus", "") == nil)
    }

    @Test("damaged timestamps and lengths do not trap")
    func extremes() throws {
        let f = try make("histogram")
        HistogramTests.push(f, wire: Int.max, .max, 999_999_999)
        HistogramTests.push(f, wire: 1, .min, -5)
        HistogramTests.push(f, wire: 2, .max, .max)
        HistogramTests.push(f, wire: 3, 0, .min)
        let lines = HistogramTests.lines(f)
        #expect(lines.contains("histogram_blocks: 4"))
        #expect(lines.contains("histogram_size_4611686018427387904-9223372036854775807: 1"))
        #expect(Histogram.label(64) == "9223372036854775808-18446744073709551615")
    }

    @Test("means: rounded, exact for large sums")
    func decimals() {
        #expect(Histogram.decimal(2, 3, places: 1) == "0.7")
        #expect(Histogram.decimal(5, 2, places: 1) == "2.5")
        #expect(Histogram.decimal(1999, 1000, places: 2) == "2.00", "rounding carries into the whole part")
        #expect(Histogram.decimal(7, 1000, places: 3) == "0.007")
        #expect(Histogram.decimal(.max, 1, places: 3) == "18446744073709551615.000")
        #expect(Histogram.decimal(.max, .max - 1, places: 3) == "1.000")
    }

    @Test("in a graph: ctl lists reset and runs it, stats show the histogram")
    func inGraph() throws {
        let c = Controller()
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let h = try c.makeDirectory(in: j, named: "histogram")
        for n in [10, 100, 1000] {
            let rc = [UInt8](repeating: 1, count: n).withUnsafeBytes { c.space.inject(j, bytes: $0) }
            #expect(rc == .done)
        }
        #expect(c.controlText(h).contains("commands: args TEXT, reset"))
        let stats = c.statsText(h)
        #expect(stats.contains("histogram_blocks: 3\n"))
        #expect(stats.contains("histogram_size_8-15: 1\nhistogram_size_64-127: 1\nhistogram_size_512-1023: 1\n"))
        try c.control(h, "reset")
        #expect(c.statsText(h).contains("histogram_blocks: 0\n"))
    }

    @Test("takes no arguments")
    func noArguments() throws {
        #expect(makeError("histogram", "5")?.message == "takes no arguments (got '5')")
        #expect(try make("histogram").arguments == "")
    }
}
