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
