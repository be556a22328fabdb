#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesBuffering
import PipesClient

/// `pipesfs bench fanout`: N concurrent readers of one stream (a `gen` source in a temporary mount), through the
/// client library (the ring mapped, blocks peeked in place) and through FUSE (read(2) of `all`, as cat does).
/// Reports the CPU time of the whole system (the daemon plus every reader) for N readers against one reader,
/// measured in the same run: the paper's multiway pipe (§5.1) makes extra readers nearly free.
struct FanoutBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanout",
        abstract: "CPU cost of N readers of one stream vs one reader, client library and FUSE. Needs root and /dev/fuse.")

    @Option(help: "Megabytes of stream per case.") var megabytes = 1000
    @Option(help: "Block size of the gen source.") var block = 65536
    @Option(help: "Reader counts, comma-separated; the first is the baseline.") var readers = "1,10"
    @Option(help: "Modes, comma-separated: mapped (client library), fuse (read(2) of all).") var modes = "mapped,fuse"
    @Option(help: "Runs per reader count, interleaved; the run with the least CPU is reported (two shared cores make single runs noisy).")
    var runs = 3

    func run() throws {
        let counts = readers.split(separator: ",").compactMap { Int($0) }
        guard !counts.isEmpty, counts.allSatisfy({ (1...60).contains($0) }) else { throw ValidationError("--readers: 1 to 60, comma-separated") }
        guard block >= 64 && block <= 1 << 20 else { throw ValidationError("--block: 64 bytes to 1 MiB") }
        let exe = try executablePath()
        let blocks = max(1, megabytes * 1_000_000 / block)
        let total = blocks * block
        print("""
            \(total / 1_000_000) MB of \(block)-byte blocks per case. CPU seconds over the same window for the daemon and
            every reader: from the start of the stream to the last reader's end (daemon: all its threads, from
            /proc/PID/task/*/schedstat; readers: getrusage in each reader from its "ready" to its end). `cpu` is daemon
            + readers; `cpu_vs_\(counts[0])` compares it with the first count. `readers_whole` is the readers' CPU over
            their whole lives (process start-up, runtime loading, opening the tap), for reference: not the stream's.
            Each count runs \(max(1, runs)) times, interleaved with the others; the run with the least `cpu` is shown,
            `cpu_max` is the most of those runs.
            """)
        print("mode     readers  MB/s/reader       cpu  cpu_vs_\(counts[0])     daemon    readers  readers_whole  sleeps   cpu_max")
        for mode in modes.split(separator: ",").map(String.init) {
            guard mode == "mapped" || mode == "fuse" else { throw ValidationError("--modes: mapped, fuse") }
            var best = [Case?](repeating: nil, count: counts.count)
            var worst = [Double](repeating: 0, count: counts.count)
            for _ in 0..<max(1, runs) {
                for (i, n) in counts.enumerated() {
                    let c = try runCase(exe, mode: mode, readers: n, blocks: blocks, total: total)
                    let cpu = c.daemonCPU + c.readerCPU
                    worst[i] = max(worst[i], cpu)
                    if let b = best[i], b.daemonCPU + b.readerCPU <= cpu { continue }
                    best[i] = c
                }
            }
            let base = best[0].map { $0.daemonCPU + $0.readerCPU } ?? 1
            for (i, n) in counts.enumerated() {
                guard let c = best[i] else { continue }
                let cpu = c.daemonCPU + c.readerCPU
                let name = mode + String(repeating: " ", count: max(0, 9 - mode.count))
                let cols: String = format6(n, 7) + format6(Int(c.rate.rounded()), 13)
                let figures: String = fixed3(cpu, width: 10) + fixed(cpu / base, width: 10) + "x"
                let parts: String = fixed3(c.daemonCPU, width: 11) + fixed3(c.readerCPU, width: 11) + fixed3(c.readerWholeCPU, width: 15)
                print(name + cols + figures + parts + format6(c.switches, 8) + fixed3(worst[i], width: 10))
                fflush(nil)
            }
        }
    }

    struct Case {
        /// MB/s per reader.
        var rate = 0.0
        /// CPU seconds from the start of the stream to the last reader's end: the daemon's, the readers' together.
        var daemonCPU = 0.0, readerCPU = 0.0
        /// The readers' CPU seconds over their whole lives.
        var readerWholeCPU = 0.0
        /// The readers' voluntary context switches while streaming (their sleeps).
        var switches = 0
    }

    func runCase(_ exe: String, mode: String, readers n: Int, blocks: Int, total: Int) throws -> Case {
        try withGenMount(exe, block: block, blocks: blocks) { dir, daemon in
            try readers(exe, dir, daemon, mode: mode, n: n, total: total)
        }
    }

    func readers(_ exe: String, _ dir: String, _ daemon: pid_t, mode: String, n: Int, total: Int) throws -> Case {
        let ctl = dir + "/g/ctl"
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw ValidationError("pipe: \(String(cString: strerror(errno)))") }
        var pids: [pid_t] = []
        for _ in 0..<n {
            pids.append(try spawnProcess(exe, ["client-read", dir + "/g/all"] + (mode == "fuse" ? ["--no-map"] : ["--peek"]), fd: fds[1]))
        }
        close(fds[1])
        let lines = LineReader(fd: fds[0])
        defer { close(fds[0]) }
        for _ in 0..<n {
            guard let l = lines.next(), l == "ready" else { throw ValidationError("a reader did not start") }
        }
        let cpu0 = processThreadsCPUSeconds(daemon)
        let t0 = monotonicNanoseconds()
        let c = open(ctl, O_WRONLY)
        _ = "start\n".withCString { write(c, $0, 6) }
        close(c)
        var result = Case()
        for _ in 0..<n {
            guard let l = lines.next(), l.hasPrefix("done ") else { throw ValidationError("a reader failed") }
            let f = l.split(separator: " ")
            guard f.count >= 6, Int(f[1]) == total, let cpuUS = Int(f[4]), let nvcsw = Int(f[5]) else {
                throw ValidationError("a reader got \(l.dropFirst(5)) bytes, want \(total)")
            }
            result.readerCPU += Double(cpuUS) / 1e6
            result.switches += nvcsw
        }
        let t = monotonicNanoseconds() - t0
        let cpu1 = processThreadsCPUSeconds(daemon)
        for p in pids {
            var status: Int32 = 0
            var ru = rusage()
            wait4(p, &status, 0, &ru)
            result.readerWholeCPU += cpuSeconds(ru)
        }
        result.rate = Double(total) / (Double(t) / 1e9) / 1e6
        result.daemonCPU = cpu1 - cpu0
        return result
    }
}

/// `v` with two decimals, right-aligned in `width` columns.
func fixed(_ v: Double, width: Int) -> String {
    let c = Int((v * 100).rounded())
    let frac = abs(c % 100)
    let s = "\(c / 100).\(frac < 10 ? "0" : "")\(frac)"
    return String(repeating: " ", count: max(0, width - s.count)) + s
}

/// `v` with three decimals, right-aligned in `width` columns.
func fixed3(_ v: Double, width: Int) -> String {
    let c = Int((v * 1000).rounded())
    let frac = abs(c % 1000)
    let s = "\(c / 1000).\(frac < 10 ? "00" : frac < 100 ? "0" : "")\(frac)"
    return String(repeating: " ", count: max(0, width - s.count)) + s
}

/// User plus system CPU seconds in `ru`.
func cpuSeconds(_ ru: rusage) -> Double {
    Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6 + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
}

/// CPU seconds all threads of a process used so far, to the nanosecond (/proc/PID/task/*/schedstat; the
/// clock-tick figures of /proc/PID/stat are 10 ms coarse). Threads that ended are not counted: take both
/// readings while the process's threads live (the daemon's do).
func processThreadsCPUSeconds(_ pid: pid_t) -> Double {
    guard let d = opendir("/proc/\(pid)/task") else { return processCPUSeconds(pid) }
    defer { closedir(d) }
    var ns: UInt64 = 0
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        guard name.first?.isNumber == true, let f = fopen("/proc/\(pid)/task/\(name)/schedstat", "r") else { continue }
        var buf = [CChar](repeating: 0, count: 128)
        if fgets(&buf, 127, f) != nil,
           let v = UInt64(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: " ").first ?? "") {
            ns += v
        }
        fclose(f)
    }
    return Double(ns) / 1e9
}

/// User plus system CPU seconds a process used so far (/proc/PID/stat).
func processCPUSeconds(_ pid: pid_t) -> Double {
    guard let f = fopen("/proc/\(pid)/stat", "r") else { return 0 }
    defer { fclose(f) }
    var buf = [UInt8](repeating: 0, count: 1024)
    let n = fread(&buf, 1, buf.count - 1, f)
    let s = String(decoding: buf[..<n], as: UTF8.self)
    guard let close = s.lastIndex(of: ")") else { return 0 }
    let fields = s[s.index(after: close)...].split(separator: " ")
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    guard fields.count > 13, let u = Double(fields[11]), let k = Double(fields[12]) else { return 0 }
    return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Lines from a descriptor.
final class LineReader {
    let fd: Int32
    var pending: [UInt8] = []
    init(fd: Int32) { self.fd = fd }
    func next() -> String? {
        while true {
            if let i = pending.firstIndex(of: 10) {
                let l = String(decoding: pending[..<i], as: UTF8.self)
                pending.removeFirst(i + 1)
                return l
            }
            var b = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &b, b.count)
            if n <= 0 { return nil }
            pending += b[..<n]
        }
    }
}

/// `pipesfs client-read PATH`: one reader for `bench fanout` (hidden). Says "ready" on descriptor 3 once the
/// tap is open, reads to the end, then says "done BYTES BLOCKS DROPPED CPU_MICROSECONDS SLEEPS" (CPU time and
/// voluntary context switches since "ready").
struct ClientRead: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "client-read", shouldDisplay: false)
    @Argument var path: String
    @Flag(help: "Read through the filesystem.") var noMap = false
    @Flag(help: "Peek at blocks in place (no copy).") var peek = false

    func run() throws {
        let tap: Tap
        do { tap = try Tap(path: path, map: !noMap) } catch {
            printError("client-read: \(error)")
            throw ExitCode(1)
        }
        var ru0 = rusage()
        getrusage(RUSAGE_SELF.rawValue, &ru0)
        _ = "ready\n".withCString { write(3, $0, 6) }
        var bytes = 0
        if peek {
            loop: while true {
                switch try tap.peek() {
                case .block(let b):
                    bytes += Int(b.length)
                    tap.consume()
                case .endOfStream: break loop
                case .timedOut: continue
                }
            }
        } else {
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
            defer { buf.deallocate() }
            while true {
                let n = try tap.read(into: buf)
                if n == 0 { break }
                bytes += n
            }
        }
        var ru1 = rusage()
        getrusage(RUSAGE_SELF.rawValue, &ru1)
        let cpuUS = Int(((cpuSeconds(ru1) - cpuSeconds(ru0)) * 1e6).rounded())
        let line = "done \(bytes) \(tap.delivered) \(tap.dropped) \(cpuUS) \(ru1.ru_nvcsw - ru0.ru_nvcsw)\n"
        _ = line.withCString { write(3, $0, strlen($0)) }
    }
}
