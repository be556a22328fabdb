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

    func run() throws {
        let counts = readers.split(separator: ",").compactMap { Int($0) }
        guard !counts.isEmpty, counts.allSatisfy({ (1...60).contains($0) }) else { throw ValidationError("--readers: 1 to 60, comma-separated") }
        guard block >= 64 && block <= 1 << 20 else { throw ValidationError("--block: 64 bytes to 1 MiB") }
        let exe = try executablePath()
        let blocks = max(1, megabytes * 1_000_000 / block)
        let total = blocks * block
        print("mode     readers  MB/s/reader  cpu_s(daemon+readers)  cpu_vs_\(counts[0])   (\(total / 1_000_000) MB of \(block)-byte blocks)")
        for mode in modes.split(separator: ",").map(String.init) {
            guard mode == "mapped" || mode == "fuse" else { throw ValidationError("--modes: mapped, fuse") }
            var base = 0.0
            for (i, n) in counts.enumerated() {
                let (rate, cpu, daemonCPU, switches) = try runCase(exe, mode: mode, readers: n, blocks: blocks, total: total)
                if i == 0 { base = cpu }
                let name = mode + String(repeating: " ", count: max(0, 9 - mode.count))
                let cols: String = format6(n, 7) + format6(Int(rate.rounded()), 13)
                let figures: String = fixed(cpu, width: 23) + fixed(cpu / base, width: 10) + "x"
                let parts: String = fixed(daemonCPU, width: 11) + fixed(cpu - daemonCPU, width: 11) + format6(switches, 17)
                print(name + cols + figures + parts)
                fflush(nil)
            }
        }
    }

    /// MB/s per reader, CPU seconds of daemon plus readers, of the daemon alone, and the readers' voluntary
    /// context switches (their sleeps).
    func runCase(_ exe: String, mode: String, readers n: Int, blocks: Int, total: Int) throws -> (Double, Double, Double, Int) {
        try withGenMount(exe, block: block, blocks: blocks) { dir, daemon in
            try readers(exe, dir, daemon, mode: mode, n: n, total: total)
        }
    }

    func readers(_ exe: String, _ dir: String, _ daemon: pid_t, mode: String, n: Int, total: Int) throws -> (Double, Double, Double, Int) {
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
        let cpu0 = processCPUSeconds(daemon)
        let t0 = monotonicNanoseconds()
        let c = open(ctl, O_WRONLY)
        _ = "start\n".withCString { write(c, $0, 6) }
        close(c)
        var readerCPU = 0.0
        var switches = 0
        for _ in 0..<n {
            guard let l = lines.next(), l.hasPrefix("done ") else { throw ValidationError("a reader failed") }
            let f = l.split(separator: " ")
            guard f.count >= 2, Int(f[1]) == total else { throw ValidationError("a reader got \(l.dropFirst(5)) bytes, want \(total)") }
        }
        let t = monotonicNanoseconds() - t0
        let cpu1 = processCPUSeconds(daemon)
        for p in pids {
            var status: Int32 = 0
            var ru = rusage()
            wait4(p, &status, 0, &ru)
            readerCPU += Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6
                + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
            switches += ru.ru_nvcsw
        }
        return (Double(total) / (Double(t) / 1e9) / 1e6, cpu1 - cpu0 + readerCPU, cpu1 - cpu0, switches)
    }
}

/// `v` with two decimals, right-aligned in `width` columns.
func fixed(_ v: Double, width: Int) -> String {
    let c = Int((v * 100).rounded())
    let frac = abs(c % 100)
    let s = "\(c / 100).\(frac < 10 ? "0" : "")\(frac)"
    return String(repeating: " ", count: max(0, width - s.count)) + s
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
/// tap is open, reads to the end, then says "done BYTES BLOCKS DROPPED".
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
        let line = "done \(bytes) \(tap.delivered) \(tap.dropped)\n"
        _ = line.withCString { write(3, $0, strlen($0)) }
    }
}
