#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime

struct MakePcap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mkpcap",
        abstract: "Write a deterministic synthetic capture (HTTP/TLS/SSH/DNS mix, reordering, retransmits).")
    @Argument(help: "Output file.") var output: String
    @Option(help: "Number of flows.") var flows = 20000
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Target size in MB (overrides --flows; grows flows until reached).") var megabytes: Int?
    @Option(help: "Reordering: a connection swaps two segments with 10x this chance; from 0.1 on, each later pair of segments also swaps with this chance.")
    var reorder = 0.02
    @Option(help: "Duplication: a connection repeats a segment with 10x this chance; from 0.1 on, each later segment also comes twice, and data segments are partly re-sent (overlaps), with this chance.")
    var dup = 0.01

    func validate() throws {
        guard (0...1).contains(reorder), (0...1).contains(dup) else {
            throw ValidationError("--reorder and --dup are chances between 0 and 1")
        }
    }

    func run() throws {
        var n = flows
        if let mb = megabytes { n = max(1, mb * 1_000_000 / 2_100) }
        let s = try SyntheticCapture.write(to: output, flows: n, seed: seed, reorder: reorder, duplicate: dup)
        print(s)
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks that print a ratio against a baseline measured in the same run.",
        subcommands: [PipelineBench.self, IPCBench.self, TapBench.self, ScaleBench.self, FanoutBench.self, SpliceBench.self, SpacesBench.self, ControlBench.self, ExecBench.self, FlowBench.self, ACBench.self, IPCPeer.self])
}

/// Runs a spawned command, returns (exit status, seconds).
func timeCommand(_ args: [String], stdoutPath: String = "/dev/null") -> (Int32, Double) {
    var fa = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&fa)
    posix_spawn_file_actions_addopen(&fa, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0)
    var argv = args.map { strdup($0) } + [nil]
    defer { for p in argv { free(p) }; posix_spawn_file_actions_destroy(&fa) }
    var pid = pid_t()
    let t0 = monotonicNanoseconds()
    if posix_spawnp(&pid, args[0], &fa, nil, &argv, environ) != 0 { return (-1, 0) }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return (status, Double(monotonicNanoseconds() - t0) / 1e9)
}

struct PipelineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "Capture file through a filter chain in-process vs tcpdump -r FILE -w /dev/null EXPR.")
    @Argument(help: "A capture file (make one with: pipesfs mkpcap --megabytes 300 FILE).") var file: String
    @Option(help: "The chain, as directories below the source.") var chain = "ip/tcp/dport/80/count"
    @Option(help: "The equivalent tcpdump expression (baseline).") var expression = "ip and tcp dst port 80"
    @Option(help: "Runs of each; the best is reported.") var runs = 3
    @Flag(help: "Only run the pipeline (for profiling).") var noBaseline = false
    @Option(name: .customLong("cross-at"), help: "Run the chain from its Nth directory on (1 = the first) in a second execution space, fed through a channel.")
    var crossAt: Int?

    func run() throws {
        guard let st = fileStatus(file) else { fail("cannot open \(file)") }
        // Warm the page cache.
        _ = timeCommand(["cat", file])
        var best = Double.infinity
        var packets: UInt64 = 0
        var selected: UInt64 = 0
        for _ in 0..<runs {
            let (t, total, sel) = try runChain()
            best = min(best, t)
            packets = total
            selected = sel
        }
        if noBaseline {
            print("pipesfs: \(rate(packets, best)) packets/s, \(format2(best)) s, selected \(selected) of \(packets)")
            return
        }
        var baseline = Double.infinity
        for _ in 0..<runs {
            let (status, t) = timeCommand(["tcpdump", "-r", file, "-w", "/dev/null", expression])
            if status != 0 { fail("tcpdump failed (is it installed?)") }
            baseline = min(baseline, t)
        }
        // tcpdump's selection, written to a file and counted record by record (not timed).
        let selection = "/tmp/pipesfs-bench-\(getpid()).pcap"
        _ = timeCommand(["tcpdump", "-r", file, "-w", selection, expression])
        let tcpdumpCount = countRecords(selection)
        unlink(selection)
        let mb = Double(st.st_size) / 1e6
        print("capture: \(file) (\(String(format2(mb))) MB, \(packets) packets)")
        print("pipesfs  source -> \(chain.split(separator: "/").joined(separator: " -> ")): \(rate(packets, best)) packets/s, \(String(format2(best))) s, selected \(selected)")
        print("tcpdump  -r FILE -w /dev/null '\(expression)': \(rate(packets, baseline)) packets/s, \(String(format2(baseline))) s, selected \(tcpdumpCount)")
        print("ratio (pipesfs/tcpdump packets/s): \(String(format2(baseline / best)))x")
        if selected != tcpdumpCount { print("WARNING: selected counts differ"); throw ExitCode(1) }
    }

    func rate(_ n: UInt64, _ t: Double) -> String { String(Int(Double(n) / t)) }

    func runChain() throws -> (Double, UInt64, UInt64) {
        let c = Controller(space: Space(spaces: crossAt == nil ? 1 : 2))
        let src = try c.addSource("bench=pcap:\(file),paused")
        var parent = src
        for (i, part) in chain.split(separator: "/").enumerated() {
            parent = try c.makeDirectory(in: parent, named: String(part))
            if let k = crossAt, k == i + 1 { try c.control(parent, "space 1") }
        }
        let t0 = monotonicNanoseconds()
        try c.control(src, "start")
        // Wait on the source's own state (woken when it finishes), not the space lock.
        guard let s = src.filter as? PcapFileSource, s.waitUntilFinished(timeoutNanoseconds: 600_000_000_000) else {
            throw ValidationError("the capture did not finish playing within 10 minutes")
        }
        if crossAt != nil {
            // The last blocks may still be crossing into the second space: the stream ends when they arrived.
            let last = parent
            while !c.space.lock.withLock({ last.ended }) { usleep(100) }
        }
        let t = Double(monotonicNanoseconds() - t0) / 1e9
        let (total, sel) = c.space.lock.withLock { (src.stats.packetsIn, parent.stats.packetsIn) }
        c.shutdown()
        return (t, total, sel)
    }
}

/// Counts the records of a classic pcap file written by this machine (native byte order).
func countRecords(_ path: String) -> UInt64 {
    guard let f = fopen(path, "r") else { return 0 }
    defer { fclose(f) }
    var header = [UInt8](repeating: 0, count: 24)
    guard fread(&header, 1, 24, f) == 24 else { return 0 }
    var n: UInt64 = 0
    var rec = (UInt32(0), UInt32(0), UInt32(0), UInt32(0))
    while withUnsafeMutableBytes(of: &rec, { fread($0.baseAddress, 1, 16, f) }) == 16 {
        if fseek(f, Int(rec.2), SEEK_CUR) != 0 { break }
        n += 1
    }
    return n
}

func format2(_ v: Double) -> String {
    let r = (v * 100).rounded() / 100
    return "\(r)"
}
