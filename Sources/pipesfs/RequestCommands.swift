#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesControl
import PipesFilters
import PipesBuffering
import PipesRuntime
import PipesSRL

/// A request resolved against the filter library, or its error (line:column, the line, a caret) on standard
/// error and exit status 2.
func resolvedPlan(_ text: String, sources: Set<String>) throws -> RequestPlan {
    do { return try RequestPlan(text, sources: sources) } catch {
        printError("pipesfs: \(error.description)")
        throw ExitCode(2)
    }
}

/// `pipesfs explain 'SRL'`: parses a request (paper §4.2), resolves its filters and class selectors against the
/// filter library, and prints the graph it describes. Errors show the line, the column and a caret.
struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the graph a request describes (the request language: man 7 pipesfs-srl).",
        discussion: """
        Example: pipesfs explain 'rx | ip | tcp | dport |80 count'. Sources: rx, tx (or --source-name), \
        pcapin FILE, gen SPEC. Exit status 2 when the request is refused.
        """)

    @Argument(help: "The request, e.g. 'rx | ip | tcp | dport |80 count'.") var request: String
    @Option(name: .customLong("source-name"), help: "A source name the request may start from (besides rx and tx); repeatable.")
    var sourceNames: [String] = []
    @Option(help: "Place for a mount of N execution spaces (pipesfs mount --spaces N); default: as many as the request's --space=K options name.")
    var spaces: Int?

    func run() throws {
        var plan = try resolvedPlan(request, sources: RequestPlan.defaultSources.union(sourceNames))
        if let n = spaces {
            guard (1...64).contains(n) else { throw ValidationError("--spaces: 1 to 64") }
            let catalog = SpaceCatalog.user(n)
            do { try plan.select(in: catalog, candidates: try plan.discover(in: catalog)) } catch {
                printError("pipesfs: \(error.message)")
                throw ExitCode(2)
            }
        }
        print(plan.explanation, terminator: "")
    }
}

/// `pipesfs exec 'SRL'`: runs a request without a mount until its sources end — batch processing of capture
/// files, like `tcpdump -r FILE -w OUT EXPR`. Sources: `pcapin FILE`, `gen SPEC` (with count=N).
struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a request on capture files without a mount, until its sources end.",
        discussion: """
        Example: pipesfs exec 'pcapin in.pcap | bpf "tcp dst port 80" | pcapout out.pcap'. Relative file names are \
        relative to the current directory. At the end the statistics of the last filters are printed on standard \
        error, with what went wrong (a damaged capture: the records before the damage are processed, as tcpdump \
        does). Exit status 2 when the request is refused, 1 when it cannot run or something went wrong (a file \
        that cannot be read, a damaged capture, a failed write).
        """)

    @Argument(help: "The request, e.g. 'pcapin in.pcap | ip | tcp | dport |80 pcapout out.pcap'.") var request: String
    @Option(help: "Execution spaces to run it in (see pipesfs mount --spaces); place filters with --space=K.") var spaces = 1
    @Flag(help: "Print nothing at the end.") var quiet = false

    func run() throws {
        let plan = try resolvedPlan(request, sources: [])
        // Writing a capture into the file being read would empty it under the reader (tcpdump -r F -w F reads
        // nothing): refused.
        let inputs = plan.nodes.compactMap { n -> stat? in
            if case .source(let spec) = n.role, spec.hasPrefix("pcap:") { return fileStatus(String(spec.dropFirst(5))) }
            return nil
        }
        for n in plan.nodes {
            guard case .filter(let d) = n.role, d.name == "pcapout", let o = fileStatus(n.arguments),
                  inputs.contains(where: { $0.st_dev == o.st_dev && $0.st_ino == o.st_ino }) else { continue }
            printError("pipesfs exec: pcapout '\(n.arguments)' is a capture file this request reads: it would be emptied before it is read")
            throw ExitCode(1)
        }
        if spaces == 1, getenv("PIPESFS_EXEC_GRAPH") == nil, let batch = BatchRequest(plan), try batch.run(quiet: quiet) { return }
        let c = Controller(space: Space(spaces: max(1, min(64, spaces)), cpus: []))
        do {
            var sources: [Int: Node] = [:]
            for n in plan.nodes {
                guard case .source(let spec) = n.role else { continue }
                // Paused, and started once everything downstream is in place (activation from the sinks back).
                let paused = spec.hasPrefix("pcap:") || spec.hasPrefix("gen:") ? ",paused" : ""
                sources[n.id] = try c.addSource("s\(n.id)=\(spec)\(paused)")
            }
            let built = try c.build(plan, sources: sources)  // each filter made in the space selection chose (§7.1)
            for s in sources.values where s.filter is PcapFileSource || s.filter is GeneratorSource { try c.control(s, "start") }
            // Until every source finished and every stream ended (what crosses between spaces included). The
            // sources first, through their own state: polling the space lock while they run would make each batch
            // end wake this thread (the lock's unlock finds it waiting), a system call and a switch per poll.
            let all = Array(built.nodes.values)
            let feeding = sources.values.compactMap { $0.filter as? any SourceFilter }
            while !feeding.allSatisfy({ $0.finished }) { usleep(1000) }
            while !c.space.lock.withLock({ all.allSatisfy { $0.ended } }) { usleep(200) }
            let tails = plan.nodes.filter { n in !plan.arcs.contains { $0.from == n.id } }.compactMap { built.nodes[$0.id] }
            c.shutdown()  // (first: it waits until the file sinks wrote what is queued, so the figures are final)
            let report: [String] = c.space.lock.withLock {
                tails.map { n in "\(n.path): " + n.filter.statistics().map { "\($0.0)=\($0.1)" }.joined(separator: " ") }
            }
            if !quiet { for line in report { printError("pipesfs exec: \(line)") } }
            // What went wrong on the way (a damaged capture, a failed write, a shutdown that timed out) is printed
            // whatever --quiet says, and makes the exit status 1, as tcpdump's is on a truncated file; notes (a
            // fallback from io_uring) are printed only.
            var failed = false
            for line in c.errors.text.split(separator: "\n") {
                let message = line.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? String(line)
                printError("pipesfs exec: \(message)")
                if !message.contains("io_uring unavailable") { failed = true }
            }
            if failed { throw ExitCode(1) }
        } catch let e as ControlError {
            c.shutdown()
            printError("pipesfs exec: \(e.message) (\(errnoName(e.errno)))")
            throw ExitCode(1)
        }
    }
}

/// `pcapin FILE | stateless filters | pcapout OUT`, with no class selector and no placement: the shape
/// `CaptureBatch` runs without the graph (§7.1: another implementation of the same request). Anything else, and
/// this too with `PIPESFS_EXEC_GRAPH=1` (tests compare the two), goes through the graph.
struct BatchRequest {
    let input: String
    let filters: [(descriptor: FilterDescriptor, arguments: String)]
    let output: String
    let sourceID: Int

    init?(_ plan: RequestPlan) {
        let sources = plan.nodes.filter { if case .source = $0.role { true } else { false } }
        guard sources.count == 1, let src = sources.first, case .source(let spec) = src.role,
              spec.hasPrefix("pcap:"), !spec.dropFirst(5).contains(","),
              plan.arcs.count == plan.nodes.count - 1,
              plan.arcs.allSatisfy({ $0.selector.isAny && !$0.veto }),
              plan.nodes.allSatisfy({ $0.explicitSpace == nil })
        else { return nil }
        var chain: [(FilterDescriptor, String)] = []
        var at = src.id
        var seen: Set<Int> = [at]
        while let a = plan.arcs.first(where: { $0.from == at }) {
            guard plan.arcs.filter({ $0.from == at }).count == 1, plan.arcs.filter({ $0.to == a.to }).count == 1,
                  seen.insert(a.to).inserted, let n = plan.nodes.first(where: { $0.id == a.to }),
                  case .filter(let d) = n.role else { return nil }
            chain.append((d, n.arguments))
            at = a.to
        }
        guard seen.count == plan.nodes.count, let last = chain.last, last.0.name == "pcapout",
              chain.dropLast().allSatisfy({ $0.0.name != "veto" && Controller.stateless.contains($0.0.name) })
        else { return nil }
        input = String(spec.dropFirst(5))
        filters = chain.dropLast().map { ($0.0, $0.1) }
        output = last.1
        sourceID = src.id
    }

    /// Runs it; false when the input is not one the batch path reads, or when something refuses to start (the
    /// graph path then runs the request and says why, in its words).
    func run(quiet: Bool) throws -> Bool {
        let made: [any Filter]
        do { made = try filters.map { f throws(FilterError) in try f.descriptor.make(f.arguments) } } catch { return false }
        let result: CaptureBatch.Result
        do {
            guard let r = try CaptureBatch.run(input: input, filters: made, output: output) else { return false }
            result = r
        } catch {
            return false
        }
        // The graph path's figures and messages, in its words.
        var path = "/s\(sourceID)"
        for f in filters { path += "/" + Controller.directoryName(f.descriptor, arguments: f.arguments) }
        if !quiet {
            printError("pipesfs exec: \(path)/pcapout: file=\(output) records_written=\(result.written) "
                       + "records_skipped_linktype=\(result.skipped) records_dropped=0 bytes_on_file=\(result.bytesOnFile) "
                       + "bytes_queued=0 io=\(result.io) run=batch")
        }
        if let why = result.readFallback {
            printError("pipesfs exec: source s\(sourceID): io_uring unavailable (\(why)); capture files are read with pread")
        }
        var failed = false
        if let damage = result.damage {
            printError("pipesfs exec: " + PcapFileSource.damageMessage(source: "s\(sourceID)", path: input, packets: result.packetsRead, why: damage))
            failed = true
        }
        if result.writeError != 0 {
            printError("pipesfs exec: " + FileWriter.writeFailedMessage(path: output, errno: result.writeError))
            failed = true
        }
        if failed { throw ExitCode(1) }
        return true
    }
}

/// `pipesfs run [--mount M] 'SRL'`: builds a request in a mounted tree (it appears as directories) and prints its
/// id; `pipesfs stop ID` removes it.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build a request in a mounted PipesFS; prints its id (see /pipes/.requests).",
        discussion: """
        Example: pipesfs run 'rx | ip | tcp | dport |80 count'. The request starts at top-level directories of the \
        mount. It is the line 'run REQUEST' written to MOUNT/.ctl. Exit status 2 when the request is refused \
        before it is sent (with a caret), 1 when the daemon refuses it (its reason, from MOUNT/.errors).
        """)

    @Option(help: "Where PipesFS is mounted.") var mount = "/pipes"
    @Argument(help: "The request.") var request: String

    func run() throws {
        let text = request.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: " ")
        _ = try resolvedPlan(text, sources: Set(topLevelNames(mount)))
        try writeControl(mount, "run \(text)")
        let mine = readText(mount + "/.requests").split(separator: "\n").last { $0.split(separator: " ", maxSplits: 2).last.map(String.init) == text }
        if let id = mine?.split(separator: " ").first { print(id) }
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a request built with pipesfs run (what other requests share stays).")
    @Option(help: "Where PipesFS is mounted.") var mount = "/pipes"
    @Argument(help: "The request's id (pipesfs run printed it; see MOUNT/.requests).") var id: Int

    func run() throws { try writeControl(mount, "stop \(id)") }
}

/// Writes one line to MOUNT/.ctl; on a refusal prints the daemon's reason (the last line of .errors).
func writeControl(_ mount: String, _ line: String) throws {
    let fd = open(mount + "/.ctl", O_WRONLY)
    if fd < 0 {
        printError("pipesfs: cannot open \(mount)/.ctl: \(String(cString: strerror(errno))) (is PipesFS mounted there?)")
        throw ExitCode(1)
    }
    defer { close(fd) }
    let bytes = Array((line + "\n").utf8)
    let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    if n < 0 {
        let e = errno
        var last = readText(mount + "/.errors").split(separator: "\n").last.map(String.init) ?? ""
        // Without the time stamp that .errors puts first.
        if let sp = last.firstIndex(of: " "), last[..<sp].hasSuffix("Z"), last[..<sp].contains("T") { last = String(last[last.index(after: sp)...]) }
        printError("pipesfs: \(last.isEmpty ? String(cString: strerror(e)) : last)")
        throw ExitCode(1)
    }
}

func readText(_ path: String) -> String {
    let fd = open(path, O_RDONLY)
    if fd < 0 { return "" }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

func topLevelNames(_ mount: String) -> [String] {
    guard let d = opendir(mount) else { return [] }
    defer { closedir(d) }
    var names: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if !name.hasPrefix(".") { names.append(name) }
    }
    return names
}

/// `pipesfs graph [--mount M] [--svg FILE]`: the live graph as Graphviz dot, from the mounted tree (directories,
/// class directories, symlinks) with each filter's counters.
struct Graph: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the live graph of a mounted PipesFS as Graphviz dot (or write SVG with --svg).")
    @Option(help: "Where PipesFS is mounted.") var mount = "/pipes"
    @Option(help: "Write SVG to this file through Graphviz's dot instead of printing dot.") var svg: String?

    func run() throws {
        guard access(mount + "/.errors", R_OK) == 0 else {
            printError("pipesfs: \(mount) is not a mounted PipesFS")
            throw ExitCode(1)
        }
        let text = Graph.dot(mount)
        guard let svg else { print(text, terminator: ""); return }
        let tmp = "/tmp/pipesfs-graph-\(getpid()).dot"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { printError("pipesfs: cannot write \(tmp)"); throw ExitCode(1) }
        _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        defer { unlink(tmp) }
        let (status, _) = timeCommand(["dot", "-Tsvg", "-o", svg, tmp])
        if status != 0 {
            printError("pipesfs: Graphviz dot failed or is not installed (apt-get install graphviz); the dot text is what 'pipesfs graph' prints")
            throw ExitCode(1)
        }
    }

    /// The dot text: one node per directory (labelled with its name, filter and packets out), an arc per
    /// subdirectory (dashed into class directories' labels) and per symlink.
    static func dot(_ mount: String) -> String {
        var lines = ["digraph pipes {", "  rankdir=LR;", "  node [shape=box, fontname=\"monospace\", fontsize=10];"]
        func q(_ s: String) -> String { "\"" + s.replacingAll("\\", "\\\\").replacingAll("\"", "\\\"").replacingAll("\n", "\\n") + "\"" }
        func walk(_ rel: String) {
            for name in entries(mount + rel).sorted() where !name.hasPrefix(".") && !["all", "all.pcap", "stats", "ctl"].contains(name) {
                let path = rel + "/" + name
                let full = mount + path
                var st = stat()
                guard lstat(full, &st) == 0 else { continue }
                if (st.st_mode & S_IFMT) == S_IFLNK {
                    var buf = [Int8](repeating: 0, count: 4096)
                    let n = readlink(full, &buf, buf.count - 1)
                    guard n > 0 else { continue }
                    let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                    let resolved = target.hasPrefix("/") ? String(target.dropFirst(mount.count)) : normalize(rel + "/" + target)
                    lines.append("  \(q(rel)) -> \(q(resolved)) [style=dashed, label=\(q(name))];")
                    continue
                }
                guard (st.st_mode & S_IFMT) == S_IFDIR else { continue }
                let stats = readText(full + "/stats")
                func field(_ k: String) -> String? {
                    stats.split(separator: "\n").first { $0.hasPrefix(k + ": ") }.map { String($0.dropFirst(k.count + 2)) }
                }
                let filter = field("filter") ?? "?"
                let out = field("packets_out") ?? "0"
                let space = field("space").map { $0 == "0" ? "" : " space \($0)" } ?? ""
                let shape = filter == "class" ? ", shape=ellipse" : rel.isEmpty ? ", style=bold" : ""
                lines.append("  \(q(path)) [label=\(q("\(name)\n\(filter)\(space)\n\(out) out"))\(shape)];")
                if !rel.isEmpty { lines.append("  \(q(rel)) -> \(q(path));") }
                walk(path)
            }
        }
        walk("")
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    static func entries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Resolves `.` and `..` in a path below the mount.
    static func normalize(_ p: String) -> String {
        var parts: [Substring] = []
        for c in p.split(separator: "/") {
            if c == "." { continue }
            if c == ".." { _ = parts.popLast(); continue }
            parts.append(c)
        }
        return "/" + parts.joined(separator: "/")
    }
}

extension String {
    /// Every occurrence of the one-character string `a` replaced by `b`.
    func replacingAll(_ a: Character, _ b: String) -> String {
        var out = ""
        for ch in self { if ch == a { out += b } else { out.append(ch) } }
        return out
    }
}

/// `pipesfs top`: live per-filter rates, drops and readers of a mounted PipesFS, refreshed like top(1).
struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show live packet and byte rates, drops and readers of every filter in a mounted PipesFS.")
    @Option(help: "Where PipesFS is mounted.") var mount = "/pipes"
    @Option(name: .shortAndLong, help: "Seconds between updates.") var delay = 1.0
    @Option(name: .short, help: "Stop after this many updates (default: until interrupted).") var n: Int?
    @Flag(name: .shortAndLong, help: "Plain lines, no screen clearing (for scripts and logs).") var batch = false

    struct Sample { var packetsIn: UInt64; var packetsOut: UInt64; var bytesOut: UInt64; var dropped: UInt64; var readers: Int; var space: String; var stream: String }

    func run() throws {
        guard access(mount + "/.errors", R_OK) == 0 else {
            printError("pipesfs: \(mount) is not a mounted PipesFS")
            throw ExitCode(1)
        }
        guard delay > 0 && delay <= 3600 else { throw ValidationError("--delay: more than 0, at most 3600 seconds") }
        var previous: [String: Sample] = [:]
        var last = monotonicSeconds()
        var round = 0
        while n.map({ round < $0 }) ?? true {
            if round > 0 { usleep(UInt32(delay * 1e6)) }
            let now = monotonicSeconds()
            let dt = max(1e-6, now - last)
            last = now
            let samples = Top.sample(mount)
            var out = batch ? "" : "\u{1B}[H\u{1B}[2J"
            out += "pipesfs top — \(mount) — every \(delay) s\n"
            out += pad("FILTER", 44) + lpad("PKT/S IN", 12) + lpad("PKT/S OUT", 12) + lpad("MB/S OUT", 10)
                + lpad("DROPPED", 10) + lpad("READERS", 8) + lpad("SPACE", 6) + "  STREAM\n"
            for path in samples.keys.sorted() {
                let s = samples[path]!
                let p = previous[path]
                let rin = p.map { Double(s.packetsIn &- $0.packetsIn) / dt } ?? 0
                let rout = p.map { Double(s.packetsOut &- $0.packetsOut) / dt } ?? 0
                let bout = p.map { Double(s.bytesOut &- $0.bytesOut) / dt / 1e6 } ?? 0
                out += pad(path, 44) + lpad(String(Int(rin)), 12) + lpad(String(Int(rout)), 12) + lpad(format2(bout), 10)
                    + lpad(String(s.dropped), 10) + lpad(String(s.readers), 8) + lpad(s.space, 6) + "  \(s.stream)\n"
            }
            print(out, terminator: batch ? "\n" : "")
            fflush(nil)
            previous = samples
            round += 1
        }
    }

    static func sample(_ mount: String) -> [String: Sample] {
        var out: [String: Sample] = [:]
        func walk(_ rel: String) {
            for name in Graph.entries(mount + rel) where !name.hasPrefix(".") && !["all", "all.pcap", "stats", "ctl"].contains(name) {
                let path = rel + "/" + name
                var st = stat()
                guard lstat(mount + path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { continue }
                var f: [String: String] = [:]
                for line in readText(mount + path + "/stats").split(separator: "\n") {
                    guard let c = line.firstIndex(of: ":") else { continue }
                    let start = line.index(c, offsetBy: 2, limitedBy: line.endIndex) ?? line.endIndex
                    f[String(line[..<c])] = String(line[start...])
                }
                out[path] = Sample(packetsIn: UInt64(f["packets_in"] ?? "") ?? 0, packetsOut: UInt64(f["packets_out"] ?? "") ?? 0,
                                   bytesOut: UInt64(f["bytes_out"] ?? "") ?? 0, dropped: UInt64(f["dropped"] ?? "") ?? 0,
                                   readers: Int(f["readers"] ?? "") ?? 0, space: f["space"] ?? "-", stream: f["stream"] ?? "?")
                walk(path)
            }
        }
        walk("")
        return out
    }

    func pad(_ s: String, _ w: Int) -> String { s.count >= w ? String(s.prefix(w - 1)) + " " : s + String(repeating: " ", count: w - s.count) }
    func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? " " + s : String(repeating: " ", count: w - s.count) + s }
    func monotonicSeconds() -> Double { Double(monotonicNanoseconds()) / 1e9 }
}

/// `pipesfs save [--mount M] [-o FILE]`: the live graph of a mounted PipesFS as a script of `.ctl` lines (junctions,
/// then one request per top-level directory with a `--name` tag on every filter, so the tree — class
/// directories, symlinks — comes back exactly with `pipesfs mount --restore FILE`). Sources are not saved: they
/// come from the mount's options.
struct Save: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the live graph of a mounted PipesFS as a request script (restore with mount --restore FILE).")
    @Option(help: "Where PipesFS is mounted.") var mount = "/pipes"
    @Option(name: .shortAndLong, help: "Write to this file instead of standard output.") var output: String?

    func run() throws {
        guard access(mount + "/.errors", R_OK) == 0 else {
            printError("pipesfs: \(mount) is not a mounted PipesFS")
            throw ExitCode(1)
        }
        let text = try Save.script(mount)
        guard let output else { print(text, terminator: ""); return }
        let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { printError("pipesfs: cannot write \(output): \(String(cString: strerror(errno)))"); throw ExitCode(1) }
        defer { close(fd) }
        _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    struct Dir {
        var path: String
        var filter: String
        var args: String
        var classText: String?
    }

    static func read(_ mount: String, _ path: String) -> Dir {
        var f: [String: String] = [:]
        for line in readText(mount + path + "/ctl").split(separator: "\n") {
            guard let c = line.firstIndex(of: ":") else { continue }
            let start = line.index(c, offsetBy: 2, limitedBy: line.endIndex) ?? line.endIndex
            f[String(line[..<c])] = String(line[start...])
        }
        return Dir(path: path, filter: f["filter"] ?? "?", args: f["args"] ?? "", classText: f["class"])
    }

    /// An argument as the request language reads it back: bare when it is a plain word, else double-quoted.
    static func quote(_ s: String) -> String {
        let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { c in
            c.value > 0x20 && c.value < 0x7F && !"|+!()\"';#\\".unicodeScalars.contains(c)
        } && !s.hasPrefix("--")
        if plain { return s }
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if c.value < 0x20 || c.value == 0x7F {
                    let h = String(c.value, radix: 16)
                    out += "\\x" + (h.count < 2 ? "0" + h : h)
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out + "\""
    }

    static func script(_ mount: String) throws -> String {
        var lines = ["# pipesfs save of \(mount): junctions, then one request per top-level directory (pipesfs mount --restore FILE)"]
        var tags: [String: String] = [:]
        func tag(_ path: String) -> String {
            if let t = tags[path] { return t }
            let t = "n\(tags.count + 1)"
            tags[path] = t
            return t
        }
        func mention(_ d: Dir) -> String {
            let args = d.args.isEmpty ? "" : " " + quote(d.args)
            return "\(d.filter == "?" ? "?" : d.filter)\(args) --name=\(tag(d.path))"
        }
        var leaves: [String] = []
        for top in Graph.entries(mount).sorted() where !top.hasPrefix(".") {
            let root = read(mount, "/" + top)
            let isJunction = root.filter == "junction"
            if isJunction { lines.append("junction \(top)") }
            var chains: [String] = []
            // The top-level directory is named by its directory name (a source or junction of the tree).
            func head(_ d: Dir) -> String { d.path == "/" + top ? "\(top) --name=\(tag(d.path))" : mention(d) }
            func walk(_ d: Dir, via selector: String?, from parent: Dir?) {
                // readdir lists children in creation order, the order data reaches siblings: keep it.
                for name in Graph.entries(mount + d.path) where !["all", "all.pcap", "stats", "ctl"].contains(name) {
                    let path = d.path + "/" + name
                    var st = stat()
                    guard lstat(mount + path, &st) == 0 else { continue }
                    if (st.st_mode & S_IFMT) == S_IFLNK {
                        var buf = [Int8](repeating: 0, count: 4096)
                        let n = readlink(mount + path, &buf, buf.count - 1)
                        guard n > 0 else { continue }
                        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                        let resolved = target.hasPrefix("/") ? String(target.dropFirst(mount.count)) : Graph.normalize(d.path + "/" + target)
                        // Symlinks keep their names: a line of their own, after the requests.
                        _ = resolved
                        leaves.append("link \(path) -> \(target)")
                        continue
                    }
                    guard (st.st_mode & S_IFMT) == S_IFDIR else { continue }
                    let child = read(mount, path)
                    if let sel = child.classText {
                        // A class directory with nothing below it: a plain mkdir (a pipe needs a filter after it).
                        let below = Graph.entries(mount + path).filter { !["all", "all.pcap", "stats", "ctl"].contains($0) }
                        if below.isEmpty { leaves.append("mkdir \(path)") }
                        walk(child, via: sel, from: d)
                    } else if let sel = d.classText, let p = parent {
                        chains.append("\(head(p)) |\(sel) \(mention(child))")
                        walk(child, via: nil, from: d)
                    } else {
                        chains.append("\(head(d)) | \(mention(child))")
                        walk(child, via: nil, from: d)
                    }
                }
                _ = selector
            }
            walk(root, via: nil, from: nil)
            let all = chains
            if !all.isEmpty { lines.append("run " + all.map { "(\($0))" }.joined(separator: " + ")) }
        }
        return (lines + leaves).joined(separator: "\n") + "\n"
    }

}
