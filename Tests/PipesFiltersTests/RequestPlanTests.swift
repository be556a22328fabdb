import PipesControl
import PipesFilters
import PipesRuntime
import PipesSRL
import Testing

@Suite("request plans (SRL resolved against the filter library)")
struct RequestPlanTests {
    @Test("filters, sources and selectors resolve; class names are the upstream filter's")
    func resolves() throws {
        let p = try RequestPlan("rx | ip | tcp | dport |http:443 count")
        #expect(p.nodes.map(\.name) == ["rx", "ip", "tcp", "dport", "count"])
        #expect(p.nodes[0].role == .source("rx"))
        let last = try #require(p.arcs.last)
        #expect(last.selector.ranges == [80...443])
        #expect(!last.selector.negated)
        #expect(p.explanation.contains("#3 dport -> #4 count [http:443]"))
        let f = try RequestPlan("pcapin /var/tmp/cap.pcap | bpf \"tcp dst port 80\" | pcapout out.pcap")
        #expect(f.nodes[0].role == .source("pcap:/var/tmp/cap.pcap"))
        #expect(f.nodes[1].arguments == "tcp dst port 80")
        #expect(try RequestPlan("web | ip", sources: ["web"]).nodes[0].role == .source("web"))
    }

    @Test("joins of Boolean compositions are planned as join nodes")
    func joins() throws {
        let p = try RequestPlan("rx ++ tx | ip | match GET +* !(tcp | dport |22 count)")
        #expect(Set(p.nodes.compactMap { if case .join(let j) = $0.role { j } else { nil } }) == ["union", "intersect", "difference"])
        #expect(p.arcs.filter(\.veto).count == 1)
    }

    @Test("refusals carry the position of the offending name or selector", arguments: [
        ("rx | ip | http", "1:11", "unknown filter 'http'"),
        ("rx | ip | tcp | dport |htp count", "1:24", "unknown class name 'htp' in 'htp' (after dport)"),
        ("rx | ip |80 tcp", "1:10", "'ip' does not classify"),
        ("rx | ip | rx", "1:11", "'rx' is a source: nothing can feed it"),
        ("rx eth0 | ip", "1:4", "'rx' is a source of the mount: it takes no arguments"),
        ("pcapin | ip", "1:1", "'pcapin' needs its specification"),
        ("rx | ip | dport |9:8 count", "1:18", "empty class range '9:8'"),
    ])
    func refused(_ text: String, _ at: String, _ says: String) {
        do {
            _ = try RequestPlan(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.location.description == at, "\(error.description)")
            #expect(error.message.contains(says), "\(error.description)")
        }
    }
}
