#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRingABI
import PipesRuntime

/// `pipesfs bench control`: control-plane latency (§7), in-process, with a `gen` source streaming all along.
/// * mkdir → first packet: `Controller.makeDirectory` of a probe filter below the source, until the probe has
///   seen a block;
/// * a 20-filter request → active: `Controller.build` of `gen | count | ... | probe` (20 filters), until the
///   probe at its end has seen a block.
/// Each run removes what it made. Prints p50, p99 and max over the runs; the baseline is the stream's own
/// inter-block gap (a block every ~1/rate s), which bounds how soon any new filter can see one.
struct ControlBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "control",
        abstract: "Control latency: mkdir -> first packet, and a 20-filter request -> active (p50/p99 over N runs).")

    @Option(help: "Runs of each case.") var runs = 1000
    @Option(help: "Filters in the long request.") var filters = 20
    @Option(help: "The source's blocks per second (gen, 256-byte blocks).") var rate = 1_000_000

    func run() throws {
        var library = FilterLibrary.byName
        library["probe"] = Probe.descriptor
        let c = Controller(library: library)
        defer { c.shutdown() }
        let src = try c.addSource("g=gen:size=256,rate=\(rate * 256)")
        // Something below the source keeps it producing (sources produce on demand).
        _ = try c.makeDirectory(in: src, named: "count")
        usleep(100_000)

        var mk: [Int64] = []
        for _ in 0..<runs {
            Probe.reset()
            let t0 = monotonicNanoseconds()
            let n = try c.makeDirectory(in: src, named: "probe")
            let seen = Probe.wait(since: t0)
            mk.append(seen)
            try c.removeDirectory(in: src, named: n.name)
        }
        var req: [Int64] = []
        let text = "g | " + [String](repeating: "count", count: filters - 1).joined(separator: " | ") + " | probe"
        for _ in 0..<runs {
            Probe.reset()
            let t0 = monotonicNanoseconds()
            let plan = try RequestPlan(text, sources: ["g"], library: library)
            let built = try c.build(plan, sources: [plan.nodes.first { $0.name == "g" }!.id: src])
            let seen = Probe.wait(since: t0)
            req.append(seen)
            c.undo(built)
        }
        print("control latency, \(runs) runs each, gen source at \(rate) blocks/s (a block every \(1_000_000_000 / max(1, rate)) ns)")
        print("case                              p50_us    p99_us    max_us")
        for (name, xs) in [("mkdir -> first packet", mk), ("\(filters)-filter request -> active", req)] {
            let s = xs.sorted()
            func us(_ q: Double) -> String { format2(Double(s[min(s.count - 1, Int(Double(s.count) * q))]) / 1000) }
            print(pad(name, 32) + pad(us(0.5), 10) + pad(us(0.99), 10) + pad(format2(Double(s.last!) / 1000), 10))
        }
        fflush(nil)
    }

    func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }
}

/// The benchmark's probe: records when it first saw a block (one word, read by the measuring thread).
final class Probe: Filter, @unchecked Sendable {
    nonisolated(unsafe) static let firstSeen: UnsafeMutablePointer<UInt64> = {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        p.initialize(to: 0)
        return p
    }()

    static func reset() { pipes_store_release64(firstSeen, 0) }

    /// Waits (spinning) until a probe saw a block; returns the nanoseconds since `t0`.
    static func wait(since t0: Int64) -> Int64 {
        while true {
            let t = pipes_load_acquire64(firstSeen)
            if t != 0 { return Int64(t) - t0 }
            if monotonicNanoseconds() - t0 > 10_000_000_000 { return 10_000_000_000 }
        }
    }

    func process(_ block: inout Block) -> UInt32 {
        if pipes_load_relaxed64(Probe.firstSeen) == 0 { pipes_store_release64(Probe.firstSeen, UInt64(monotonicNanoseconds())) }
        return 1
    }

    static let descriptor = FilterDescriptor(name: "probe", summary: "benchmark probe", usage: "(bench only)",
                                             structuralClass: .passThrough) { _ throws(FilterError) in Probe() }
}
