#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CIPCBaseline
import PipesBuffering

/// `pipesfs bench tap`: reading a `gen` source's `all` through a real FUSE mount, as `dd` would, against the same
/// bytes through a Linux pipe, measured in the same run.
struct TapBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap",
        abstract: "FUSE tap throughput (read(2) of a gen source's all) vs the same bytes through a Linux pipe. Needs root and /dev/fuse.")

    @Option(help: "Megabytes read per case.") var megabytes = 2000
    @Option(help: "Block size of the gen source and of the pipe writer.") var block = 65536
    @Option(help: "read(2) sizes, comma-separated.") var readSizes = "1048576,131072"
    @Option(help: "Runs per case; the best is reported.") var runs = 3

    func run() throws {
        let sizes = readSizes.split(separator: ",").compactMap { Int($0) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 4096 && $0 <= 1 << 24 }) else {
            throw ValidationError("--read-sizes: sizes of 4096 bytes to 16 MiB, comma-separated")
        }
        guard block >= 8 && block <= 1 << 20 else { throw ValidationError("--block: 8 bytes to 1 MiB") }
        let exe = try executablePath()
        let blocks = megabytes * 1_000_000 / block
        let total = blocks * block
        print("read_size   tap_MB/s  pipe_MB/s  tap/pipe   (gen blocks of \(block) bytes, \(total / 1_000_000) MB per case)")
        for rs in sizes {
            var tap = 0.0, pipe = 0.0
            for _ in 0..<max(1, runs) {
                tap = max(tap, try tapCase(exe, rs, blocks, total))
                pipe = max(pipe, try pipeCase(exe, rs, total))
            }
            print(format6(rs, 9) + format6(Int(tap.rounded()), 11) + format6(Int(pipe.rounded()), 11)
                  + "   \((tap / pipe * 100).rounded() / 100)x")
            fflush(nil)
        }
    }

    func tapCase(_ exe: String, _ readSize: Int, _ blocks: Int, _ total: Int) throws -> Double {
        try withGenMount(exe, block: block, blocks: blocks) { dir, _ in try tapRead(dir, readSize, total) }
    }

    func tapRead(_ dir: String, _ readSize: Int, _ total: Int) throws -> Double {
        let ctl = dir + "/g/ctl"
        let fd = open(dir + "/g/all", O_RDONLY)
        guard fd >= 0 else { throw ValidationError("open \(dir)/g/all: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let c = open(ctl, O_WRONLY)
        let t0 = monotonicNanoseconds()
        _ = "start\n".withCString { write(c, $0, 6) }
        close(c)
        let got = ipcb_pipe_read(fd, readSize)
        let t = monotonicNanoseconds() - t0
        guard got == total else { throw ValidationError("the tap delivered \(got) of \(total) bytes") }
        return Double(total) / (Double(t) / 1e9) / 1e6
    }

    func pipeCase(_ exe: String, _ readSize: Int, _ total: Int) throws -> Double {
        try pipeThroughput(exe, block: block, readSize: readSize, total: total)
    }
}

/// Mounts a PipesFS of this executable's on a temporary directory with a paused source `g` of `blocks` gen
/// blocks of `block` bytes, runs `body` with the directory and the daemon's pid, then unmounts.
func withGenMount<R>(_ exe: String, block: Int, blocks: Int, _ body: (String, pid_t) throws -> R) throws -> R {
    var template = Array("/tmp/pipesfs-bench-XXXXXX".utf8CString)
    guard let dirp = mkdtemp(&template) else { throw ValidationError("mkdtemp: \(String(cString: strerror(errno)))") }
    let dir = String(cString: dirp)
    defer { rmdir(dir) }
    let daemon = try spawnProcess(exe, ["mount", dir, "-f", "--no-rx", "--no-tx",
                                        "--source", "g=gen:size=\(block),count=\(blocks),paused"], fd: -1)
    defer {
        _ = spawnAndWait(["/usr/bin/fusermount3", "-u", dir])
        var status: Int32 = 0
        waitpid(daemon, &status, 0)
    }
    let deadline = monotonicNanoseconds() + 10_000_000_000
    while access(dir + "/g/ctl", F_OK) != 0 {
        if monotonicNanoseconds() > deadline { throw ValidationError("the mount at \(dir) did not appear (root and /dev/fuse are needed)") }
        usleep(10_000)
    }
    return try body(dir, daemon)
}

/// Runs a command and waits for it; its exit status, or -1.
func spawnAndWait(_ argv: [String]) -> Int32 {
    guard let pid = try? spawnProcess(argv[0], Array(argv.dropFirst()), fd: -1) else { return -1 }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return status
}
