#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesControl
import PipesFilters
import PipesRuntime
import PipesSRL

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

    func run() throws {
        do {
            let plan = try RequestPlan(request, sources: RequestPlan.defaultSources.union(sourceNames))
            print(plan.explanation, terminator: "")
        } catch {
            printError("pipesfs: \(error.description)")
            throw ExitCode(2)
        }
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
        error. Exit status 2 when the request is refused, 1 when it cannot run (a file that cannot be read).
        """)

    @Argument(help: "The request, e.g. 'pcapin in.pcap | ip | tcp | dport |80 pcapout out.pcap'.") var request: String
    @Option(help: "Execution spaces to run it in (see pipesfs mount --spaces); place filters with --space=K.") var spaces = 1
    @Flag(help: "Print nothing at the end.") var quiet = false

    func run() throws {
        let plan: RequestPlan
        do { plan = try RequestPlan(request, sources: []) } catch {
            printError("pipesfs: \(error.description)")
            throw ExitCode(2)
        }
        let c = Controller(space: Space(spaces: max(1, min(64, spaces)), cpus: []))
        do {
            var sources: [Int: Node] = [:]
            for n in plan.nodes {
                guard case .source(let spec) = n.role else { continue }
                // Paused, and started once everything downstream is in place (activation from the sinks back).
                let paused = spec.hasPrefix("pcap:") || spec.hasPrefix("gen:") ? ",paused" : ""
                sources[n.id] = try c.addSource("s\(n.id)=\(spec)\(paused)")
            }
            let built = try c.build(plan, sources: sources)
            for n in plan.nodes where n.space != 0 {
                if let node = built.nodes[n.id], !node.isSource { try c.control(node, "space \(n.space)") }
            }
            for s in sources.values where s.filter is PcapFileSource || s.filter is GeneratorSource { try c.control(s, "start") }
            // Until every source finished and every stream ended (what crosses between spaces included).
            let all = Array(built.nodes.values)
            while !c.space.lock.withLock({ all.allSatisfy { $0.ended } }) { usleep(1000) }
            let tails = plan.nodes.filter { n in !plan.arcs.contains { $0.from == n.id } }.compactMap { built.nodes[$0.id] }
            let report: [String] = c.space.lock.withLock {
                tails.map { n in "\(n.path): " + n.filter.statistics().map { "\($0.0)=\($0.1)" }.joined(separator: " ") }
            }
            c.shutdown()
            if !quiet { for line in report { printError("pipesfs exec: \(line)") } }
            let errs = c.errors.text
            if !errs.isEmpty && errs.contains("shutdown:") { printError(errs); throw ExitCode(1) }
        } catch let e as ControlError {
            c.shutdown()
            printError("pipesfs exec: \(e.message) (\(errnoName(e.errno)))")
            throw ExitCode(1)
        }
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
        let roots = Set(topLevelNames(mount))
        do { _ = try RequestPlan(text, sources: roots) } catch {
            printError("pipesfs: \(error.description)")
            throw ExitCode(2)
        }
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
