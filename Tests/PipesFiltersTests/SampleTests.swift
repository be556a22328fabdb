import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("sample")
struct SampleTests {
    /// The indices of the blocks (of `count`) the filter passes.
    static func passed(_ f: any Filter, _ count: Int) -> [Int] {
        let packet = Pkt.ethUDP4()
        return (0..<count).filter { _ in classify(f, packet) != 0 }
    }

    @Test("sample=N passes the first block of every N")
    func deterministic() throws {
        #expect(SampleTests.passed(try make("sample", "3"), 10) == [0, 3, 6, 9])
        #expect(SampleTests.passed(try make("sample", "1"), 5) == [0, 1, 2, 3, 4])
        #expect(SampleTests.passed(try make("sample", "100"), 250) == [0, 100, 200])
        let f = try #require(try make("sample", "4") as? Sample)
        _ = SampleTests.passed(f, 10)
        #expect(f.seen == 10)
        #expect(f.passed == 3)
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["sample_seen"] == "10")
        #expect(stats["sample_passed"] == "3")
        #expect(stats["sample_seed"] == nil)
    }

    @Test("random sampling: a seed repeats the selection, another seed changes it, the rate is about 1/N")
    func random() throws {
        let a = SampleTests.passed(try make("sample", "10,random,seed=42"), 100_000)
        let b = SampleTests.passed(try make("sample", "10,random,seed=42"), 100_000)
        let c = SampleTests.passed(try make("sample", "10,random,seed=43"), 100_000)
        #expect(a == b)
        #expect(a != c)
        // 10 000 expected; the standard deviation is 95, and the seed makes it the same number every run.
        #expect((9_500...10_500).contains(a.count), "\(a.count)")
        #expect(Array(a.prefix(20)) != Array(stride(from: 0, to: 200, by: 10)), "not every 10th")
        #expect(SampleTests.passed(try make("sample", "1,random"), 1000).count == 1000, "1 in 1 passes everything")
        let f = try #require(try make("sample", "7,random,seed=18446744073709551615") as? Sample)
        #expect(Dictionary(uniqueKeysWithValues: f.statistics())["sample_seed"] == "18446744073709551615")
        let unseeded = try #require(try make("sample", "2,random") as? Sample)
        #expect(Dictionary(uniqueKeysWithValues: unseeded.statistics())["sample_seed"] == "\(unseeded.seed)",
                "a seed drawn at random is shown, so the run can be repeated")
    }

    @Test("keeps the class it received")
    func classPassThrough() throws {
        let f = try make("sample", "1")
        #expect(classify(f, [1], .user, classValue: 80) == 80)
    }

    @Test("bad arguments are refused with the reason", arguments: [
        ("", "sample: needs N, as in sample=100 (one block in 100) or sample=100,random"),
        ("0", "sample: N must be a whole number from 1 to 4294967295 (got '0')"),
        ("4294967296", "sample: N must be a whole number from 1 to 4294967295 (got '4294967296')"),
        ("ten", "sample: N must be a whole number from 1 to 4294967295 (got 'ten')"),
        ("-1", "sample: N must be a whole number from 1 to 4294967295 (got '-1')"),
        ("+3", "sample: N must be a whole number from 1 to 4294967295 (got '+3')"),
        ("3.5", "sample: N must be a whole number from 1 to 4294967295 (got '3.5')"),
        (",random", "sample: needs N, as in sample=100 (one block in 100) or sample=100,random"),
        ("3,", "sample: unknown option '' (after N: random, seed=S)"),
        ("3,randm", "sample: unknown option 'randm' (after N: random, seed=S)"),
        ("3,random,random", "sample: 'random' is given twice"),
        ("3,random,seed=1,seed=2", "sample: seed is given twice"),
        ("3,random,seed=", "sample: seed must be a whole number from 0 to 18446744073709551615 (got '')"),
        ("3,random,seed=x1", "sample: seed must be a whole number from 0 to 18446744073709551615 (got 'x1')"),
        ("3,random,seed=18446744073709551616",
         "sample: seed must be a whole number from 0 to 18446744073709551615 (got '18446744073709551616')"),
        ("3,seed=5", "sample: seed=S applies to random sampling only (sample=3,random,seed=S)"),
    ])
    func errors(args: String, message: String) {
        let e = makeError("sample", args)
        #expect(e?.message == message, "'\(args)'")
        #expect(e?.errno == 22)
    }

    @Test("arguments: what it shows makes the same filter again")
    func arguments() throws {
        let f = try make("sample", "5,random,seed=9")
        #expect(f.arguments == "5,random,seed=9")
        let again = try make("sample", f.arguments)
        #expect(SampleTests.passed(f, 1000) == SampleTests.passed(again, 1000))
        #expect(try make("sample", "2,seed=1,random").arguments == "2,seed=1,random", "options in any order")
    }
}
