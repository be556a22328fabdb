#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CIPCBaseline
import PipesBuffering
import PipesRingABI

/// `pipesfs bench ipc`: moving blocks between two processes through a Beltway ring (read and peek), against a
/// Linux pipe and a minimal shared-memory SPSC ring measured in the same run (paper §5.1, Fig. 3).
struct IPCBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ipc",
        abstract: "Two-process throughput: Beltway ring (read, peek) vs a Linux pipe vs a minimal SPSC ring.")

    @Option(help: "Megabytes moved per case at 4 KiB blocks and up (an eighth below).") var megabytes = 2000
    @Option(help: "Block sizes, comma-separated.") var sizes = "64,512,4096,65536"
    @Option(help: "Ring size as a power of two (bytes).") var ringLog2 = 20
    @Option(help: "Runs per case; the best is reported (two cores make single runs noisy).") var runs = 3
    @Option(help: "Cases to run, comma-separated (pipe, spsc, read, peek; to profile one alone). Ratios need all four.")
    var cases = "pipe,spsc,read,peek"

    func run() throws {
        let blockSizes = sizes.split(separator: ",").compactMap { Int($0) }
        guard !blockSizes.isEmpty, blockSizes.allSatisfy({ $0 >= 8 && $0 <= 1 << 20 }) else {
            throw ValidationError("--sizes: block sizes of 8 bytes to 1 MiB, comma-separated")
        }
        guard (12...30).contains(ringLog2) else { throw ValidationError("--ring-log2: 12 to 30") }
        if let big = blockSizes.first(where: { $0 > (1 << ringLog2) / 2 - 64 }) {
            throw ValidationError("--sizes: a \(big)-byte block does not fit a 2^\(ringLog2)-byte ring twice; raise --ring-log2")
        }
        let self_ = try selfPath()
        let run = Set(cases.split(separator: ",").map(String.init))
        print("""
            producer: copies a prepared block into the channel per block (ring: reserve, copy, commit: one record each).
            consumers: pipe: read(2) of block bytes; spsc: memcpy of each block out; ring_read: DBufReader.read, a copy
            of each record out; ring_peek: DBufReader.peekRun, then per record its length and first payload byte read
            in place, one tail store per run (at most an eighth of the ring).
            """)
        print("block    pipe_MB/s  spsc_MB/s  ring_read_MB/s  ring_peek_MB/s  read/pipe  read/spsc  peek/spsc  peek/read")
        for bs in blockSizes {
            let total = (bs < 4096 ? megabytes * 1_000_000 / 8 : megabytes * 1_000_000) / bs * bs
            var pipe = 0.0, spsc = 0.0, read = 0.0, peek = 0.0
            for _ in 0..<max(1, runs) {  // interleaved, so a disturbance hits every case alike
                if run.contains("pipe") { pipe = max(pipe, try pipeCase(self_, bs, total)) }
                if run.contains("spsc") { spsc = max(spsc, try spscCase(self_, bs, total)) }
                if run.contains("read") { read = max(read, try ringCase(self_, bs, total, peek: false)) }
                if run.contains("peek") { peek = max(peek, try ringCase(self_, bs, total, peek: true)) }
            }
            print(String(format6(bs, 8)) + col(pipe, 11) + col(spsc, 11) + col(read, 16) + col(peek, 16)
                  + ratio(read / pipe, 11) + ratio(read / spsc, 11) + ratio(peek / spsc, 11) + ratio(peek / read, 11))
            fflush(nil)
        }
        if run.contains("read") && run.contains("peek") { try consumerOnly(blockSizes) }
    }

    /// The consumer's side alone: another thread fills the ring (on the other core, as the producer process
    /// does), stops, and the consumer drains it, timed, with `read` (a copy of each record out) or `peekRun` (in
    /// place); over and over until the case's bytes moved. Only the drains are timed, so no producer sets the
    /// pace: two processes sharing a ring at a block per publication run at the producer's pace at small blocks,
    /// whichever way the consumer reads, and this is where peek's saving shows. Best of `runs`.
    func consumerOnly(_ blockSizes: [Int]) throws {
        print("consumer alone (a ring of 2^\(ringLog2) bytes filled by another thread, then drained; only the drains timed):")
        print("block    drain_read_MB/s  drain_peek_MB/s  peek/read")
        for bs in blockSizes {
            let total = (bs < 4096 ? megabytes * 1_000_000 / 8 : megabytes * 1_000_000) / bs * bs
            var read = 0.0, peek = 0.0
            for _ in 0..<max(1, runs) {
                read = max(read, try drain(bs, total, peek: false))
                peek = max(peek, try drain(bs, total, peek: true))
            }
            print(String(format6(bs, 8)) + col(read, 17) + col(peek, 17) + ratio(peek / read, 11))
            fflush(nil)
        }
    }

    func drain(_ bs: Int, _ total: Int, peek: Bool) throws -> Double {
        let ring = try ringOrFail(DBuf(sizeLog2: ringLog2, policy: .block, maxReaders: 1))
        guard let reader = ring.attach() else { throw ValidationError("no reader slot") }
        // Records per fill: seven eighths of the ring, headers included.
        let perFill = max(1, (1 << ringLog2) / 8 * 7 / Int(pipes_rec_span(UInt32(bs))))
        let fills = max(1, total / (perFill * bs))
        final class Turn: @unchecked Sendable { var filled = 0; var drained = 0 }
        let turn = Turn()
        let l = ConditionLock()
        let filler = JoinableThread()
        filler.start(name: "filler") {
            let source = UnsafeMutableRawPointer.allocate(byteCount: bs, alignment: 64)
            defer { source.deallocate() }
            for k in 0..<bs { source.storeBytes(of: UInt8(truncatingIfNeeded: k &* 131 &+ 1), toByteOffset: k, as: UInt8.self) }
            for f in 0..<fills {
                l.withLock { _ = l.wait(until: { turn.drained == f }, timeoutNanoseconds: 10_000_000_000) }
                for _ in 0..<perFill { ring.write(UnsafeRawBufferPointer(start: source, count: bs)) }
                l.withLock { turn.filled = f + 1; l.broadcast() }
            }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 64)
        defer { buffer.deallocate() }
        var got = 0
        var sum: UInt64 = 0
        var timed: Int64 = 0
        for f in 0..<fills {
            let ok = l.withLock { l.wait(until: { turn.filled == f + 1 }, timeoutNanoseconds: 10_000_000_000) }
            guard ok else { throw ValidationError("the filler thread stalled") }
            let want = got + perFill * bs
            let t0 = monotonicNanoseconds()
            if peek {
                while got < want, var run = reader.peekRun() {
                    while let rec = run.next() {
                        sum &+= UInt64(rec.bytes.load(as: UInt8.self))  // touch the block, as in the two-process case
                        got += rec.bytes.count
                    }
                    reader.consume(run)
                }
            } else {
                while got < want, let (k, _) = reader.read(into: buffer) { got += k }
            }
            timed += monotonicNanoseconds() - t0
            l.withLock { turn.drained = f + 1; l.broadcast() }
        }
        _ = filler.join(timeoutNanoseconds: 10_000_000_000)
        guard got == fills * perFill * bs else { throw ValidationError("drain moved \(got) of \(fills * perFill * bs) bytes (sum \(sum))") }
        return rate(got, timed)
    }

    func col(_ v: Double, _ w: Int) -> String { format6(Int(v.rounded()), w) }
    func ratio(_ v: Double, _ w: Int) -> String {
        let s = "\((v * 100).rounded() / 100)x"
        return String(repeating: " ", count: max(1, w - s.count)) + s
    }

    /// MB/s of `total` bytes in `seconds`.
    func rate(_ total: Int, _ ns: Int64) -> Double { Double(total) / (Double(ns) / 1e9) / 1e6 }

    func pipeCase(_ exe: String, _ bs: Int, _ total: Int) throws -> Double {
        try pipeThroughput(exe, block: bs, readSize: bs, total: total)
    }

    func spscCase(_ exe: String, _ bs: Int, _ total: Int) throws -> Double {
        let ringSize = 1 << ringLog2
        let size = ipcb_spsc_region_size(ringSize)
        let fd = pipes_ring_memfd("ipcb", UInt64(size))
        guard fd >= 0,
              let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED
        else { throw ValidationError("shared memory: \(String(cString: strerror(errno)))") }
        defer { munmap(p, size); close(fd) }
        let pid = try spawn(exe, ["bench", "ipc-peer", "spsc", "\(bs)", "\(total)", "\(ringSize)"], fd: fd)
        // The clock starts when the first block is there, as for the ring and the pipe: starting the peer (a
        // Swift process: ~10 ms of loading) is not the channel's cost, and at small blocks it was most of it.
        let headWord = p.assumingMemoryBound(to: UInt64.self)  // `head`, the region's first word
        while pipes_load_acquire64(headWord) == 0 { sched_yield() }
        let t0 = monotonicNanoseconds()
        let got = ipcb_spsc_consume(p, ringSize, bs, total)
        let t = monotonicNanoseconds() - t0
        try reap(pid)
        guard got == total else { throw ValidationError("spsc moved \(got) of \(total) bytes") }
        return rate(total, t)
    }

    func ringCase(_ exe: String, _ bs: Int, _ total: Int, peek: Bool) throws -> Double {
        let ring = try ringOrFail(DBuf(sizeLog2: ringLog2, policy: .block, maxReaders: 1))
        guard let reader = ring.attach() else { throw ValidationError("no reader slot") }
        let pid = try spawn(exe, ["bench", "ipc-peer", "ring", "\(bs)", "\(total)"], fd: ring.fd)
        while reader.peek() == nil && !reader.isAtEnd { sched_yield() }  // the clock starts at the first block
        let t0 = monotonicNanoseconds()
        var got = 0
        var sum: UInt64 = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            if peek {
                if var run = reader.peekRun() {
                    while let rec = run.next() {
                        sum &+= UInt64(rec.bytes.load(as: UInt8.self))  // touch the block: a peek that looks at it
                        got += rec.bytes.count
                    }
                    reader.consume(run)
                    continue
                }
            } else if let (n, _) = reader.read(into: buffer) {
                got += n
                continue
            }
            if reader.isAtEnd { break }
            reader.wait(timeoutNanoseconds: 1_000_000)
            // Whether the producer died: only when the wait brought nothing (a system call per wait-up would be
            // the harness's cost, not the ring's; the SPSC consumer makes none).
            if reader.peek() != nil || reader.isAtEnd { continue }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid && !reader.isAtEnd && reader.peek() == nil {
                throw ValidationError("the producing process ended early (status \(status)) after \(got) of \(total) bytes")
            }
        }
        let t = monotonicNanoseconds() - t0
        try reap(pid)
        guard got == total else { throw ValidationError("ring moved \(got) of \(total) bytes (sum \(sum))") }
        return rate(total, t)
    }

    func ringOrFail(_ make: @autoclosure () throws(RingError) -> DBuf) throws -> DBuf {
        do { return try make() } catch { throw ValidationError("ring: \(error.message)") }
    }

    func spawn(_ exe: String, _ args: [String], fd: Int32) throws -> pid_t { try spawnProcess(exe, args, fd: fd) }
    func reap(_ pid: pid_t) throws { try reapProcess(pid) }
    func selfPath() throws -> String { try executablePath() }
}

/// Starts `exe args` with `fd` (if not -1) as its descriptor 3.
func spawnProcess(_ exe: String, _ args: [String], fd: Int32) throws -> pid_t {
    var fa = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&fa)
    defer { posix_spawn_file_actions_destroy(&fa) }
    if fd >= 0 { posix_spawn_file_actions_adddup2(&fa, fd, 3) }
    let argv = ([exe] + args).map { strdup($0) }
    defer { argv.forEach { free($0) } }
    var cargv = argv + [nil]
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, exe, &fa, nil, &cargv, environ)
    guard rc == 0 else { throw ValidationError("posix_spawn: \(String(cString: strerror(rc)))") }
    return pid
}

/// MB/s of `total` bytes written in `block`-byte writes into a Linux pipe by another process (`bench ipc-peer
/// pipe`) and read here in `readSize`-byte reads: the baseline of `bench ipc` and `bench tap`.
func pipeThroughput(_ exe: String, block: Int, readSize: Int, total: Int) throws -> Double {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw ValidationError("pipe: \(String(cString: strerror(errno)))") }
    let pid = try spawnProcess(exe, ["bench", "ipc-peer", "pipe", "\(block)", "\(total)"], fd: fds[1])
    close(fds[1])
    // The clock starts at the first read (the peer's start-up is not the pipe's cost); its bytes are not counted.
    let first = UnsafeMutableRawPointer.allocate(byteCount: readSize, alignment: 64)
    defer { first.deallocate() }
    let pre = max(0, read(fds[0], first, readSize))
    let t0 = monotonicNanoseconds()
    let got = ipcb_pipe_read(fds[0], readSize) + Int64(pre)
    let t = monotonicNanoseconds() - t0
    close(fds[0])
    try reapProcess(pid)
    guard got == total else { throw ValidationError("the pipe moved \(got) of \(total) bytes") }
    return Double(total - pre) / (Double(t) / 1e9) / 1e6
}

/// Waits for a spawned process; throws unless it exited 0.
func reapProcess(_ pid: pid_t) throws {
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    guard status == 0 else { throw ValidationError("the peer process failed (status \(status))") }
}

/// This executable's path.
func executablePath() throws -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, 4095)
    guard n > 0 else { throw ValidationError("cannot find this executable") }
    return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The producing side of `bench ipc`, started by it with the pipe, region or ring as descriptor 3.
struct IPCPeer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ipc-peer", abstract: "(internal) producer for bench ipc.",
                                                    shouldDisplay: false)
    @Argument var kind: String
    @Argument var block: Int
    @Argument var total: Int
    @Argument var ringSize: Int = 0

    func run() throws {
        // Read the arguments once: a property wrapper's getter in the loop would cost more than the ring.
        let block = self.block, total = self.total, ringSize = self.ringSize
        switch kind {
        case "pipe":
            if ipcb_pipe_write(3, block, total) != total { throw ExitCode(1) }
        case "spsc":
            let size = ipcb_spsc_region_size(ringSize)
            guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0), p != MAP_FAILED else { throw ExitCode(1) }
            ipcb_spsc_produce(p, ringSize, block, total)
        case "ring":
            let ring: DBuf
            do { ring = try DBuf(mapping: 3) } catch { throw ExitCode(1) }
            let n = total / block
            // Like the SPSC baseline's producer: copy a prepared block in (zero-copy production via reserve).
            // Not a uniform fill: the optimizer turns a copy from a memset buffer into a memset of the ring (a
            // `rep stosb` of 64 KiB leaves the lines elsewhere than a copy does), and the baseline copies.
            let source = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 64)
            for k in 0..<block { source.storeBytes(of: UInt8(truncatingIfNeeded: k &* 131 &+ 1), toByteOffset: k, as: UInt8.self) }
            for _ in 0..<n {
                guard let p = ring.reserve(block) else { throw ExitCode(1) }
                p.copyMemory(from: source, byteCount: block)
                ring.commit(block, wireLength: block)
            }
            ring.close()
        default:
            throw ExitCode(2)
        }
    }
}

func format6(_ v: Int, _ width: Int) -> String {
    let s = "\(v)"
    return String(repeating: " ", count: max(1, width - s.count)) + s
}
