#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesControl
import PipesFilters
import PipesFS
import PipesFUSE
import PipesRuntime
import PipesRingABI

@main
struct PipesFSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipesfs",
        abstract: "A stream filesystem: directories are live filters, nesting is data flow.",
        subcommands: [Mount.self, Umount.self, Filters.self, Explain.self, Exec.self, Run.self, Stop.self, Graph.self, Top.self, Save.self, MakePcap.self, Bench.self, ClientRead.self]
    )
}

/// Writes a line to standard error.
func printError(_ line: String) {
    var s = line + "\n"
    s.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
}

func fail(_ message: String) -> Never {
    printError("pipesfs: \(message)")
    exit(1)
}

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount PipesFS (daemonizes unless -f).",
        discussion: """
        Sources are top-level directories. By default `rx` captures live on all interfaces (only while \
        something is attached below it) and `tx` sends frames with pcap_inject. Capture files: \
        --source NAME=pcap:PATH[,loop][,paused][,rate=PPS].
        """
    )

    @Argument(help: "Where to mount (e.g. /pipes).") var mountPoint: String
    @Flag(name: .short, help: "Stay in the foreground.") var foreground = false
    @Option(name: .short, help: "FUSE mount options, comma separated (e.g. -o allow_other).") var options: [String] = []
    @Option(name: .long, help: "Add a source NAME=SCHEME:SPEC (pcap:PATH[,loop][,paused][,rate=PPS], live:IFACE, inject:IFACE).")
    var source: [String] = []
    @Option(name: .long, help: "Interface rx captures on.") var rx: String = "any"
    @Flag(name: .customLong("no-rx"), help: "No live capture source.") var noRx = false
    @Option(name: .long, help: "Interface tx sends on.") var tx: String = "lo"
    @Flag(name: .customLong("no-tx"), help: "No injection sink.") var noTx = false
    @Option(name: .long, help: "Directory for relative file names (pcapout=NAME); default: the current directory.")
    var spool: String?
    @Flag(name: .long, help: "Add the demo source `demo` (a generated capture played in a loop) and a demo graph.")
    var demo = false
    @Option(name: .long, help: "Execution spaces: threads, each pinned to a CPU, the graph can be spread over (echo 'space K' > DIR/ctl). 1 runs everything on the sources' threads.")
    var spaces = 1
    @Option(help: "A script written by 'pipesfs save' (or by hand: .ctl lines) to run once the sources are there.")
    var restore: String?
    @Option(name: .customLong("space-cpus"), help: "CPUs of spaces 0, 1, ... (comma separated), or 'none' for unpinned threads. Default: space i on CPU i modulo the usable CPUs.")
    var spaceCPUs: String?

    func run() throws {
        let cpus: [Int32?]
        do { cpus = try parseSpaceCPUs(spaces: spaces, spaceCPUs) } catch { fail(error.message) }
        var restoreLines: [String] = []
        if let restore {
            guard access(restore, R_OK) == 0 else { fail("--restore \(restore): \(String(cString: strerror(errno)))") }
            restoreLines = readText(restore).split(separator: "\n").map(String.init)
                .filter { !$0.allSatisfy { $0 == " " || $0 == "\t" } && !$0.hasPrefix("#") }
        }
        var sources = source
        if !noRx { sources.insert("rx=live:\(rx)", at: 0) }
        if !noTx { sources.insert("tx=inject:\(tx)", at: min(1, sources.count)) }
        if demo {
            let path = "/tmp/pipesfs-demo-\(getuid()).pcap"
            do { try SyntheticCapture.write(to: path, flows: 400, seed: 7) } catch { fail("demo capture: \(error)") }
            sources.append("demo=pcap:\(path),loop,rate=200")
        }
        // Validate before mounting (and before the fork): bad sources fail here, on the terminal.
        for s in sources {
            do { try Controller.validateSource(s) } catch { fail("--source \(s): \(error.message) (\(errnoName(error.errno)))") }
        }
        guard let st = fileStatus(mountPoint), (st.st_mode & Glibc.S_IFMT) == Glibc.S_IFDIR else {
            fail("mount point \(mountPoint) is not a directory")
        }
        var fuseOptions = ["fsname=pipesfs", "subtype=pipesfs", "default_permissions"]
        let userOptions = options.flatMap { $0.split(separator: ",").map(String.init) }
        if geteuid() == 0 && !userOptions.contains("noallow_other") { fuseOptions.append("allow_other") }
        fuseOptions += userOptions.filter { $0 != "noallow_other" }

        // Absolute, since the daemon changes to / before it changes to the spool.
        let spoolGiven = spool ?? currentDirectory()
        guard let sp = fileStatus(spoolGiven), (sp.st_mode & Glibc.S_IFMT) == Glibc.S_IFDIR,
              let spoolReal = realpath(spoolGiven, nil)
        else {
            fail("spool directory \(spoolGiven) is not a directory")
        }
        let spoolDirectory = String(cString: spoolReal)
        free(spoolReal)
        let real = realpath(mountPoint, nil)
        let mp = real.map { String(cString: $0) } ?? mountPoint
        free(real)
        let controller = Controller(space: Space(spaces: spaces, cpus: cpus), mountPoint: mp)
        let tree = Tree(controller: controller, owner: Caller(uid: getuid(), gid: getgid()))
        let fg = foreground
        openlog("pipesfs", LOG_PID, LOG_DAEMON)
        controller.errors.sink = { line in
            if fg { printError("pipesfs: \(line)") } else { syslogLine(line) }
        }
        let demo = self.demo
        // Every client of the ring service holds a connection (its lease) and every reader a file: use the
        // whole descriptor allowance, not the default soft limit of 1024.
        var nofile = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max {
            nofile.rlim_cur = nofile.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile)
        }
        let rings = RingService(tree: tree)
        let rc = try FUSEServer.serve(tree: tree, mountPoint: mountPoint, options: fuseOptions, foreground: foreground) {
            // fuse_daemonize changed to /; relative names written by filters (pcapout=NAME) go to the spool.
            _ = chdir(spoolDirectory)
            // The client library maps rings through this socket; without it, clients read through FUSE.
            do throws(FSError) { try rings.start() } catch { controller.errors.append(error.message) }
            for s in sources {
                _ = try? controller.addSource(s, uid: getuid(), gid: getgid())  // a failure is in .errors already
            }
            if demo { buildDemoGraph(controller, Caller(uid: getuid(), gid: getgid())) }
            // A saved graph: each line as if written to /.ctl (a refusal is in .errors; the rest goes on).
            for line in restoreLines { _ = try? controller.rootControl(line, uid: getuid(), gid: getgid()) }
        } stopping: {
            // Streams end first (mapped readers see their end), then the leases close.
            controller.shutdown()
            rings.stop()
        }
        // The loop returns the number of the signal that ended it (SIGINT, SIGTERM, SIGHUP): a clean exit.
        if rc != 0 && rc != SIGINT && rc != SIGTERM && rc != SIGHUP { throw ExitCode(rc) }
    }
}

/// `--spaces N --space-cpus LIST`: the CPU of each space (nil: unpinned).
func parseSpaceCPUs(spaces: Int, _ text: String?) throws(SpaceOptionError) -> [Int32?] {
    guard (1...64).contains(spaces) else { throw SpaceOptionError(message: "--spaces \(spaces): want 1 to 64") }
    guard let text else {
        let n = Int(pipes_usable_cpus())
        return (0..<spaces).map { Int32($0 % n) }
    }
    if text == "none" { return [Int32?](repeating: nil, count: spaces) }
    let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { String($0.filter { $0 != " " }) }
    var out: [Int32?] = []
    for p in parts {
        guard let c = Int32(p), c >= 0, c < 1024 else {
            throw SpaceOptionError(message: "--space-cpus \(text): '\(p)' is not a CPU number (0 to 1023)")
        }
        out.append(c)
    }
    guard out.count == spaces else {
        throw SpaceOptionError(message: "--space-cpus \(text): \(out.count) CPUs for \(spaces) spaces (give one per space)")
    }
    return out
}

struct SpaceOptionError: Error { var message: String }

func syslogLine(_ line: String) {
    withVaList([]) { _ in }
    line.withCString { c in
        withVaList([c]) { vsyslog(LOG_WARNING, "%s", $0) }
    }
}

/// The demo graph: web traffic by port, DNS, and a count.
func buildDemoGraph(_ c: Controller, _ who: Caller) {
    guard let demo = try? c.withLock({ () -> Node? in c.space.roots.first { $0.name == "demo" } }) else { return }
    do {
        let ip = try c.makeDirectory(in: demo, named: "ip", uid: who.uid, gid: who.gid)
        let tcp = try c.makeDirectory(in: ip, named: "tcp", uid: who.uid, gid: who.gid)
        let dport = try c.makeDirectory(in: tcp, named: "dport", uid: who.uid, gid: who.gid)
        let web = try c.makeDirectory(in: dport, named: "80", uid: who.uid, gid: who.gid)
        try c.makeDirectory(in: web, named: "count", uid: who.uid, gid: who.gid)
        try c.makeDirectory(in: web, named: "match=GET", uid: who.uid, gid: who.gid)
        try c.makeDirectory(in: dport, named: "ssh", uid: who.uid, gid: who.gid)
        let udp = try c.makeDirectory(in: ip, named: "udp", uid: who.uid, gid: who.gid)
        try c.makeDirectory(in: udp, named: "dport", uid: who.uid, gid: who.gid)
    } catch {
        c.errors.append("demo graph: \(error.message)")
    }
}

struct Umount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount PipesFS (fusermount3 -u).")
    @Argument(help: "The mount point.") var mountPoint: String

    func run() throws {
        let args = ["fusermount3", "-u", mountPoint]
        var argv = args.map { strdup($0) } + [nil]
        var pid = pid_t()
        let rc = posix_spawnp(&pid, "fusermount3", nil, nil, &argv, environ)
        for p in argv { free(p) }
        if rc != 0 { fail("cannot run fusermount3: \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        if status != 0 { throw ExitCode(1) }
    }
}

struct Filters: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the filters mkdir can create.")
    func run() {
        for d in FilterLibrary.filters + FilterLibrary.processes {
            print("\(d.name.padding(9)) \(d.summary)\n          usage: \(d.usage)")
        }
        print("\nsources (--source NAME=SCHEME:SPEC):")
        for (k, d) in FilterLibrary.sources.sorted(by: { $0.key < $1.key }) {
            print("\(k.padding(9)) \(d.summary)\n          usage: \(d.usage)")
        }
    }
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}

func currentDirectory() -> String {
    guard let p = getcwd(nil, 0) else { return "/" }
    defer { free(p) }
    return String(cString: p)
}

/// stat(2) through open + fstat (the Swift name `stat` is both the struct and the function).
func fileStatus(_ path: String) -> stat? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var st = Glibc.stat()
    return fstat(fd, &st) == 0 ? st : nil
}
