#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CIPCBaseline
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

/// `pipesfs bench exec FILE`: `pipesfs exec 'pcapin FILE | bpf "EXPR" | pcapout OUT'` against
/// `tcpdump -r FILE -w OUT2 EXPR`, both as processes on a cached capture; the outputs must be the same bytes.
/// Two more lines are floors: a minimal C loop (`ipcb_filter_floor`: read, bpf_filter, writev, none of a tool's
/// checks) run in this process, on one thread and with a second thread reading ahead, which bound what a program
/// doing this work with libpcap's interpreter can reach on this machine.
struct ExecBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "pipesfs exec 'pcapin F | bpf EXPR | pcapout O' vs tcpdump -r F -w O2 EXPR (same output, time ratio).")
    @Argument(help: "A capture file (pipesfs mkpcap --megabytes 300 FILE).") var file: String
    @Option(help: "The filter expression.") var expression = "tcp dst port 80"
    @Option(help: "Runs of each; the best is reported.") var runs = 3

    func run() throws {
        guard let st = fileStatus(file) else { fail("cannot open \(file)") }
        _ = timeCommand(["cat", file])  // warm the page cache
        let me = CommandLine.arguments[0].hasPrefix("/") ? CommandLine.arguments[0] : currentDirectory() + "/" + CommandLine.arguments[0]
        let out1 = "/tmp/pipesfs-bench-exec-\(getpid()).pcap", out2 = "/tmp/pipesfs-bench-tcpdump-\(getpid()).pcap"
        defer { unlink(out1); unlink(out2) }
        let out3 = "/tmp/pipesfs-bench-floor-\(getpid()).pcap", out4 = "/tmp/pipesfs-bench-floor2-\(getpid()).pcap"
        defer { unlink(out3); unlink(out4) }
        var ours = Double.infinity, theirs = Double.infinity, floor = Double.infinity, floor2 = Double.infinity
        for _ in 0..<max(1, runs) {
            for (threads, out) in [(1, out3), (2, out4)] {
                let t0 = monotonicNanoseconds()
                if ipcb_filter_floor(file, out, expression, Int32(threads)) < 0 { fail("the C floor loop failed on \(file)") }
                let t = Double(monotonicNanoseconds() - t0) / 1e9
                if threads == 1 { floor = min(floor, t) } else { floor2 = min(floor2, t) }
            }
            let (s1, t1) = timeCommand([me, "exec", "--quiet", "pcapin \(file) | bpf \"\(expression)\" | pcapout \(out1)"])
            if s1 != 0 { fail("pipesfs exec failed (status \(s1))") }
            ours = min(ours, t1)
            let (s2, t2) = timeCommand(["tcpdump", "-r", file, "-w", out2, expression])
            if s2 != 0 { fail("tcpdump failed (is it installed?)") }
            theirs = min(theirs, t2)
        }
        let same = fileBytes(out1) == fileBytes(out2)
        let reference = fileBytes(out2).dropFirst(24)  // (the floors' header is the input's)
        let floorSame = fileBytes(out3).dropFirst(24) == reference && fileBytes(out4).dropFirst(24) == reference
        let mb = Double(st.st_size) / 1e6
        print("capture: \(file) (\(format2(mb)) MB), expression '\(expression)'")
        print("pipesfs exec 'pcapin | bpf | pcapout': \(format2(ours)) s (\(format2(mb / ours)) MB/s)")
        print("tcpdump -r -w:                        \(format2(theirs)) s (\(format2(mb / theirs)) MB/s)")
        print("floor: minimal C loop, one thread:    \(format2(floor)) s (\(format2(mb / floor)) MB/s)")
        print("floor: minimal C loop, two threads:   \(format2(floor2)) s (\(format2(mb / floor2)) MB/s); floors' records \(floorSame ? "identical" : "DIFFER")")
        print("ratio (tcpdump time / pipesfs time): \(format2(theirs / ours))x; outputs \(same ? "identical" : "DIFFER")")
        print("ratio (tcpdump time / floor times):  \(format2(theirs / floor))x one thread, \(format2(theirs / floor2))x two (the most a program doing only this work reaches here)")
        if !same { throw ExitCode(1) }
    }

    func fileBytes(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        if fd < 0 { return [] }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }
}
