import ArgumentParser
import PipesControl
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
