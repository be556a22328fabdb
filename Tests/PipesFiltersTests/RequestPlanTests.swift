#if canImport(Glibc)
import Glibc
#endif
import PipesControl
import PipesFilters
import PipesRuntime
import PipesSRL
import PipesTestSupport
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
        ("rx | ip | mpeg", "1:11", "unknown filter 'mpeg'"),
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

@Suite("building requests")
struct RequestBuildTests {
    /// A controller with a junction `j` (ethernet) to start requests from.
    func junction() throws -> (Controller, Node) {
        let c = Controller()
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        return (c, j)
    }

    func build(_ c: Controller, _ j: Node, _ text: String) throws -> Controller.BuiltRequest {
        let plan = try RequestPlan(text, sources: ["j"])
        let src = try #require(plan.nodes.first { $0.name == "j" })
        return try c.build(plan, sources: [src.id: j])
    }

    /// Every path below `n`, with the symlinks (`name -> target`).
    func tree(_ c: Controller, _ n: Node) -> [String] {
        c.space.lock.withLock {
            var out: [String] = []
            func walk(_ x: Node) {
                out.append(x.path)
                for l in x.links { out.append("\(x.path)/\(l.name) -> \(l.target.path)") }
                for ch in x.children { walk(ch) }
            }
            walk(n)
            return out
        }
    }

    @Test("a request builds what mkdir builds: a filter per stage, class directories for selectors, links for joins")
    func buildsTree() throws {
        let (c, j) = try junction()
        defer { c.shutdown() }
        _ = try build(c, j, "j | ip | tcp | dport |80 count + match GET")
        #expect(tree(c, j) == ["/j=ethernet", "/j=ethernet/ip", "/j=ethernet/ip/tcp", "/j=ethernet/ip/tcp/dport",
                               "/j=ethernet/ip/tcp/dport/80", "/j=ethernet/ip/tcp/dport/80/count", "/j=ethernet/ip/tcp/dport/80/match=GET"])
        // Split-join: both branches feed one node, the second through a symlink.
        _ = try build(c, j, "j | (ip + ip6) | tcp | count")
        let t = tree(c, j)
        #expect(t.contains("/j=ethernet/ip/tcp.2"))
        #expect(t.contains("/j=ethernet/ip6/to-tcp.2 -> /j=ethernet/ip/tcp.2"))
    }

    @Test("prefix sharing: a second request reuses the stateless prefix of the first, not its counters")
    func prefixSharing() throws {
        let (c, j) = try junction()
        defer { c.shutdown() }
        let a = try build(c, j, "j | ip | tcp | dport |80 count")
        let b = try build(c, j, "j | ip | tcp | dport |22 count")
        let names = ["ip", "tcp", "dport"]
        for (i, name) in names.enumerated() {
            let pa = try #require(a.nodes.first { $0.value.name == name }?.value)
            let pb = try #require(b.nodes.first { $0.value.name == name }?.value)
            #expect(pa === pb, "\(name) (\(i)) is not shared")
        }
        #expect(b.created.map(\.name) == ["22", "count"], "only the new class directory and count are made")
        // Blocks written into j reach both counts through the one shared prefix.
        let frame = Pkt.ethTCP4(dport: 80)
        _ = frame.withUnsafeBytes { c.space.inject(j, bytes: $0) }
        c.space.lock.withLock {
            let dport = a.nodes.values.first { $0.name == "dport" }!
            #expect(dport.stats.packetsIn == 1, "the shared dport ran once")
        }
    }

    @Test("a step that fails undoes the ones before it: the tree is as it was", arguments: [
        "j | ip | tcp | bpf \"not (valid\"",
        "j | ip | tcp | pcapout /nonexistent/dir/x.pcap",
        "j | ip | tcp ++ udp | dport |80 count | bpf \"((\"",
    ])
    func undo(_ text: String) throws {
        let (c, j) = try junction()
        defer { c.shutdown() }
        _ = try build(c, j, "j | ip | udp")
        let before = tree(c, j)
        do {
            _ = try build(c, j, text)
            Issue.record("built: \(text)")
        } catch {
            #expect(tree(c, j) == before, "\(error)")
        }
    }
}

@Suite("Boolean selection (++, +*, !) on classified synthetic traffic")
struct BooleanRequestTests {
    /// 5 HTTP (tcp/80), 3 SSH (tcp/22), 4 DNS (udp/53) and 2 ICMP frames, interleaved, written into `j`.
    static let mix: [[UInt8]] = {
        var out: [[UInt8]] = []
        for i in 0..<5 {
            out.append(Pkt.ethTCP4(dport: 80))
            if i < 3 { out.append(Pkt.ethTCP4(dport: 22)) }
            if i < 4 { out.append(Pkt.ethUDP4(dport: 53)) }
            if i < 2 { out.append(Pkt.ethICMP4()) }
        }
        return out
    }()

    /// Builds `text` on a fresh junction, writes the mix, returns the packets counted by the last `count`.
    func counted(_ text: String) throws -> UInt64 {
        let c = Controller()
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let plan = try RequestPlan(text, sources: ["j"])
        let src = try #require(plan.nodes.first { $0.name == "j" })
        let built = try c.build(plan, sources: [src.id: j])
        for f in BooleanRequestTests.mix {
            let rc = f.withUnsafeBytes { c.space.inject(j, bytes: $0) }
            #expect(rc == .done)
        }
        let tail = try #require(plan.nodes.last { $0.name == "count" })
        let node = try #require(built.nodes[tail.id])
        return c.space.lock.withLock { (node.filter as! Count).packets }
    }

    @Test("union removes duplicates; split-join keeps them")
    func union() throws {
        #expect(try counted("j | ip | tcp ++ udp | count") == 5 + 3 + 4)
        #expect(try counted("j | ip | tcp ++ (dport |80 count) | count") == 5 + 3, "tcp/80 arrives by both paths, once out")
        #expect(try counted("j | ip | tcp + (dport |80 count) | count") == 5 + 3 + 5, "split-join passes both copies")
    }

    @Test("intersection passes what every branch passes")
    func intersect() throws {
        #expect(try counted("j | ip | tcp +* (dport |80 count) | count") == 5)
        #expect(try counted("j | ip | tcp +* udp | count") == 0)
        #expect(try counted("j | ip | tcp +* (dport |22 count) +* (ipproto |tcp count) | count") == 3)
    }

    @Test("negation passes what the negated branch does not")
    func negation() throws {
        #expect(try counted("j | ip | !tcp | count") == 4 + 2)
        #expect(try counted("j | ip | tcp +* !(dport |22 count) | count") == 5)
        #expect(try counted("j | ip | !(tcp ++ udp) | count") == 2)
        #expect(try counted("j | ip | !!icmp | count") == 2, "double negation")
    }

    @Test("the paper's shape: rx ++ tx | ip | mpeg +* !http, as j ++ k | ip | tcp +* !(dport |80 count)")
    func paperShape() throws {
        let c = Controller()
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let k = try c.makeDirectory(in: nil, named: "k=ethernet")
        let plan = try RequestPlan("j ++ k | ip | tcp +* !(dport |80 count) | count", sources: ["j", "k"])
        let built = try c.build(plan, sources: [plan.nodes.first { $0.name == "j" }!.id: j, plan.nodes.first { $0.name == "k" }!.id: k])
        for f in BooleanRequestTests.mix { _ = f.withUnsafeBytes { c.space.inject(j, bytes: $0) } }
        for f in BooleanRequestTests.mix.prefix(7) { _ = f.withUnsafeBytes { c.space.inject(k, bytes: $0) } }
        let tail = try #require(built.nodes[plan.nodes.last { $0.name == "count" }!.id])
        // j: 3 ssh; k's first 7 frames hold 2 ssh (80, 22, 53, icmp, 80, 22, 53).
        #expect(c.space.lock.withLock { (tail.filter as! Count).packets } == 3 + 2)
    }
}

/// A filter whose construction fails (a missing implementation, a refused initialisation).
let failingDescriptor = FilterDescriptor(name: "broken", summary: "fails to start", usage: "broken", structuralClass: .filtering) { _ throws(FilterError) in
    throw FilterError("cannot initialise (injected failure)", errno: 5)
}

@Suite("request transactions")
struct RequestTransactionTests {
    /// Every node of the graph and every edge, as text: the runtime's view, not the tree's.
    func runtime(_ c: Controller) -> [String] {
        c.space.lock.withLock {
            c.space.nodes.values.flatMap { n in
                [n.path] + n.outputs.map { "\(n.path) -> \($0.node.path) [\($0.selector.text)]" }
            }.sorted()
        }
    }

    @Test("a failure injected at each step of a request leaves the graph exactly as before", arguments: 0..<6)
    func failAtEachStep(_ step: Int) throws {
        var library = FilterLibrary.byName
        library["broken"] = failingDescriptor
        let c = Controller(library: library)
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        // Something already there, partly shared with the request.
        let plan0 = try RequestPlan("j | ip | tcp | dport |22 count", sources: ["j"], library: library)
        _ = try c.build(plan0, sources: [plan0.nodes.first { $0.name == "j" }!.id: j])
        let before = runtime(c)
        var stages = ["ip", "tcp", "dport |80 count", "match GET", "bpf tcp", "count"]
        stages[step] = step == 2 ? "dport |80 broken" : "broken"
        let text = "j | " + stages.joined(separator: " | ")
        let plan = try RequestPlan(text, sources: ["j"], library: library)
        do {
            _ = try c.build(plan, sources: [plan.nodes.first { $0.name == "j" }!.id: j])
            Issue.record("built: \(text)")
        } catch {
            #expect(error.errno == 5, "\(error.message)")
            #expect(error.message.contains("injected failure"))
        }
        #expect(runtime(c) == before, "after '\(text)'")
        // And the graph still works: a frame written into j reaches the first request's count.
        let frame = Pkt.ethTCP4(dport: 22)
        #expect(frame.withUnsafeBytes { c.space.inject(j, bytes: $0) } == .done)
        let count = try #require(c.space.lock.withLock { c.space.nodes.values.first { $0.descriptor.name == "count" } })
        #expect(c.space.lock.withLock { (count.filter as! Count).packets } == 1)
    }
}

@Suite("request transactions: permission")
struct RequestPermissionTests {
    @Test("a step refused for permission (exec for a user other than the daemon's) undoes the steps before it")
    func permissionDenied() throws {
        let me = geteuid()
        let other: UInt32 = me == 4242 ? 4243 : 4242
        let c = Controller()
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let before: [String] = c.space.lock.withLock { c.space.nodes.values.map(\.path).sorted() }
        let plan = try RequestPlan("j | ip | tcp | count | exec cat", sources: ["j"])
        do {
            _ = try c.build(plan, sources: [plan.nodes.first { $0.name == "j" }!.id: j], uid: other, gid: other)
            Issue.record("built as uid \(other)")
        } catch {
            #expect(error.errno == EPERM, "\(error.message)")
        }
        #expect(c.space.lock.withLock { c.space.nodes.values.map(\.path).sorted() } == before)
    }
}
