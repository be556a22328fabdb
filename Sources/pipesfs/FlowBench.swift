import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// Runs a command like `timeCommand` and also returns the CPU time (user + system) it and its children used.
func timeCommandCPU(_ args: [String]) -> (status: Int32, wall: Double, cpu: Double) {
    var before = rusage()
    getrusage(RUSAGE_CHILDREN.rawValue, &before)
    let (s, t) = timeCommand(args)
    var after = rusage()
    getrusage(RUSAGE_CHILDREN.rawValue, &after)
    func seconds(_ r: rusage) -> Double {
        Double(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + Double(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6
    }
    return (s, t, seconds(after) - seconds(before))
}

struct FlowBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flows",
        abstract: "TCP reassembly (untcp | files) vs tcpflow and tshark's follow; the webtap path in packets/s.")
    @Argument(help: "A capture file (pipesfs mkpcap --megabytes 100 FILE).") var file: String
    @Option(help: "Runs of each; the best is reported.") var runs = 3
    @Flag(help: "Skip tshark (slow on large captures).") var noTshark = false

    func run() throws {
        guard let st = fileStatus(file) else { fail("cannot open \(file)") }
        _ = timeCommand(["cat", file])  // warm the page cache
        let me = CommandLine.arguments[0].hasPrefix("/") ? CommandLine.arguments[0] : currentDirectory() + "/" + CommandLine.arguments[0]
        // Outputs go to a tmpfs where there is one: on a disk file system, creating tens of thousands of files (and
        // the deletions of the last run) swing the times of both tools by several times.
        let base = fileStatus("/dev/shm") != nil ? "/dev/shm" : "/tmp"
        let dir = "\(base)/pipesfs-bench-flows-\(getpid())"
        defer { _ = timeCommand(["rm", "-rf", dir]) }
        var files = (wall: Double.infinity, cpu: Double.infinity)
        var alone = files, webtap = files, tcpflow = files, tshark = files
        func best(_ a: inout (wall: Double, cpu: Double), _ r: (status: Int32, wall: Double, cpu: Double), _ what: String) {
            if r.status != 0 { fail("\(what) failed (status \(r.status))") }
            a = (min(a.wall, r.wall), min(a.cpu, r.cpu))
        }
        for _ in 0..<max(1, runs) {
            _ = timeCommand(["rm", "-rf", dir + "/ours", dir + "/tcpflow"])
            _ = timeCommand(["mkdir", "-p", dir])
            best(&alone, timeCommandCPU([me, "exec", "--quiet", "pcapin \(file) | untcp | count"]), "pipesfs exec untcp")
            best(&files, timeCommandCPU([me, "exec", "--quiet", "pcapin \(file) | untcp | files \(dir)/ours"]), "pipesfs exec untcp | files")
            best(&webtap, timeCommandCPU([me, "exec", "--quiet", "pcapin \(file) | tcp | dport |80 untcp | http | get | count"]), "the webtap path")
            best(&tcpflow, timeCommandCPU(["tcpflow", "-r", file, "-o", dir + "/tcpflow"]), "tcpflow (is it installed?)")
            if !noTshark {
                best(&tshark, timeCommandCPU(["tshark", "-n", "-r", file, "-q", "-z", "follow,tcp,raw,0"]), "tshark (is it installed?)")
            }
        }
        // Same files as tcpflow (tcpflow leaves out IP-fragmented and length-0 datagrams; see follow-check).
        let (d, _) = timeCommand(["diff", "-rq", "-x", "report.xml", dir + "/ours", dir + "/tcpflow"])
        let mb = Double(st.st_size) / 1e6
        let packets = countRecords(file)
        func line(_ name: String, _ t: (wall: Double, cpu: Double)) {
            print("\(name) \(format2(t.wall)) s, \(format2(mb / t.wall)) MB/s; CPU \(format2(t.cpu)) s, \(format2(mb / t.cpu / 1000)) GB/s per core")
        }
        print("capture: \(file) (\(format2(mb)) MB, \(packets) packets); files in \(dir)")
        line("pipesfs exec 'pcapin | untcp | count':        ", alone)
        line("pipesfs exec 'pcapin | untcp | files DIR':    ", files)
        line("tcpflow -r -o DIR:                            ", tcpflow)
        if !noTshark {
            line("tshark -z follow,tcp,raw,0 (one stream only): ", tshark)
        }
        print("webtap 'tcp | dport |80 untcp | http | get | count': \(format2(webtap.wall)) s, \(format2(Double(packets) / webtap.wall / 1e6)) M packets/s")
        print("ratio untcp | files vs tcpflow: \(format2(tcpflow.wall / files.wall))x (CPU \(format2(tcpflow.cpu / files.cpu))x); files \(d == 0 ? "identical" : "DIFFER (diff -rq; IP fragments and TSO frames differ by design)")")
        if !noTshark {
            print("ratio untcp (reassembly alone) vs tshark following one stream: \(format2(tshark.wall / alone.wall))x (CPU \(format2(tshark.cpu / alone.cpu))x)")
            print("ratio untcp | files vs tshark following one stream (a lower bound for all): \(format2(tshark.wall / files.wall))x (CPU \(format2(tshark.cpu / files.cpu))x)")
        }
    }

    /// Records in a classic pcap file (for packets/s).
    func countRecords(_ path: String) -> Int {
        guard let f = fopen(path, "r") else { return 0 }
        defer { fclose(f) }
        var hdr = [UInt8](repeating: 0, count: 24)
        guard fread(&hdr, 1, 24, f) == 24 else { return 0 }
        let swapped = hdr[0] == 0xA1 || hdr[0] == 0xA0
        var n = 0
        var rec = [UInt8](repeating: 0, count: 16)
        while fread(&rec, 1, 16, f) == 16 {
            var cap = UInt32(rec[8]) | UInt32(rec[9]) << 8 | UInt32(rec[10]) << 16 | UInt32(rec[11]) << 24
            if swapped { cap = cap.byteSwapped }
            if fseek(f, Int(cap), SEEK_CUR) != 0 { break }
            n += 1
        }
        return n
    }
}
