#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

/// Passes every block on (class 1): a filter with implementations in deeper spaces, to plan with.
final class PassOn: Filter {
    func process(_ block: inout Block) -> UInt32 { 1 }
}

/// `kpass`: implemented in kernel and user spaces; `nicpass`: in device spaces only.
let kernelPass = FilterDescriptor(name: "kpass", summary: "passes all (kernel and user)", usage: "kpass", structuralClass: .passThrough,
                                  implementations: [.kernel, .user]) { _ throws(FilterError) in PassOn() }
let devicePass = FilterDescriptor(name: "nicpass", summary: "passes all (device only)", usage: "nicpass", structuralClass: .passThrough,
                                  implementations: [.device]) { _ throws(FilterError) in PassOn() }

/// The filter library with `kpass` and `nicpass`.
let deepLibrary: [String: FilterDescriptor] = {
    var l = FilterLibrary.byName
    l["kpass"] = kernelPass
    l["nicpass"] = devicePass
    return l
}()

/// The placements of a plan selected in `catalog` (sources in space 0), by node name (last one wins).
func placements(_ text: String, _ catalog: SpaceCatalog) throws(ControlError) -> [String: RequestPlan.Placement] {
    var plan: RequestPlan
    do { plan = try RequestPlan(text, sources: ["j"], library: deepLibrary) } catch { throw ControlError(EINVAL, error.message) }
    try plan.select(in: catalog, candidates: try plan.discover(in: catalog))
    return Dictionary(plan.nodes.map { ($0.name, $0.placement!) }, uniquingKeysWith: { _, b in b })
}

func controlError(_ body: () throws(ControlError) -> Void) -> ControlError? {
    do { try body() } catch { return error }
    return nil
}

@Suite("request control (§7.1): discovery")
struct DiscoveryTests {
    @Test("every node's candidates are the spaces of a kind that implements it; a source is bound to its thread's space")
    func candidates() throws {
        let plan = try RequestPlan("j | kpass | ip | count", sources: ["j"], library: deepLibrary)
        let catalog = SpaceCatalog([.kernel, .user, .user])
        let c = try plan.discover(in: catalog)
        let byName = Dictionary(uniqueKeysWithValues: plan.nodes.map { ($0.name, c[$0.id]!.map(\.name)) })
        #expect(byName["j"] == ["kernel0"])
        #expect(byName["kpass"] == ["kernel0", "user1", "user2"])
        #expect(byName["ip"] == ["user1", "user2"])
        #expect(byName["count"] == ["user1", "user2"])
        #expect(try plan.discover(in: catalog, sourceSpaces: [0: 2])[0]!.map(\.name) == ["user2"])
    }

    @Test("a filter no available space implements fails the request with ENOSYS naming it, before anything is made")
    func missingImplementation() throws {
        let c = Controller(library: deepLibrary)
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let before = snapshot(c)
        let plan = try RequestPlan("j | ip | tcp | nicpass | count", sources: ["j"], library: deepLibrary)
        let e = controlError { () throws(ControlError) in _ = try c.build(plan, sources: [0: j]) }
        #expect(e?.errno == ENOSYS)
        #expect(e?.message.contains("no implementation of 'nicpass'") == true, "\(e?.message ?? "built")")
        #expect(e?.message.contains("user0") == true && e?.message.contains("device") == true)
        #expect(snapshot(c) == before)
        #expect(c.errors.text.contains("nicpass"), "the refusal is in .errors")
    }
}

@Suite("request control (§7.1): selection")
struct SelectionTests {
    @Test("push processing down: the deepest candidate not below the inputs; among equals, the input's space")
    func deepestFirst() throws {
        let p = try placements("j | kpass | ip | kpass | count", SpaceCatalog([.kernel, .user, .user]))
        // The first kpass stays in the kernel with its source; ip is user-only: the first user space.
        #expect(p["ip"]?.space.name == "user1")
        #expect(p["ip"]?.reason == "deepest of {user1,user2}: the first user space (its input runs in kernel0)")
        // The second kpass could run in the kernel, but the path never goes back down.
        #expect(p["kpass"]?.space.name == "user1")
        #expect(p["kpass"]?.reason.contains("kernel0 left out") == true, "\(p["kpass"]!.reason)")
        #expect(p["count"]?.space.name == "user1")
        #expect(p["count"]?.reason == "deepest of {user1,user2}: same space as its input")
        let first = try placements("j | kpass | count", SpaceCatalog([.kernel, .user]))
        #expect(first["kpass"]?.space.name == "kernel0")
        #expect(first["kpass"]?.reason == "deepest of {kernel0,user1}: same space as its input")
        // All user spaces, as a mount runs: everything stays with its source.
        let flat = try placements("j | ip | tcp | count", .user(2))
        #expect(flat.values.allSatisfy { $0.space.index == 0 })
        #expect(flat["tcp"]?.reason == "deepest of {user0,user1}: same space as its input")
    }

    @Test("--space=K is honoured, and its successors follow it")
    func explicitHonoured() throws {
        let p = try placements("j | ip --space=2 | tcp | count", SpaceCatalog([.kernel, .user, .user]))
        #expect(p["ip"]?.space.name == "user2")
        #expect(p["ip"]?.reason == "--space=2")
        #expect(p["tcp"]?.space.name == "user2")
        #expect(p["count"]?.space.name == "user2")
    }

    @Test("--space=K is checked: K exists, implements the filter, and does not lie below the inputs", arguments: [
        ("j | ip --space=5 | count", EINVAL, "'ip' --space=5: no space 5 (there are 3: 0 to 2; see --spaces)"),
        ("j | ip --space=0", ENOSYS, "no implementation of 'ip' in kernel0"),
        ("j | ip | kpass --space=0", EINVAL, "kernel0 lies below its input's space user1"),
        ("j | ip | nicpass", ENOSYS, "no implementation of 'nicpass'"),
        ("j --space=1 | ip", EINVAL, "a source runs in the space its thread feeds"),
    ])
    func explicitChecked(_ text: String, _ errno: Int32, _ says: String) {
        let e = controlError { () throws(ControlError) in _ = try placements(text, SpaceCatalog([.kernel, .user, .user])) }
        #expect(e?.errno == errno, "\(e?.description ?? "accepted")")
        #expect(e?.message.contains(says) == true, "\(e?.message ?? "accepted")")
    }

    @Test("a built request runs where selection put it: a kernel-labelled space 0, user spaces above; blocks cross")
    func builtWhereSelected() throws {
        let c = Controller(space: Space(spaces: 3, kinds: [.kernel, .user, .user]), library: deepLibrary)
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let plan = try RequestPlan("j | kpass | ip | kpass | count", sources: ["j"], library: deepLibrary)
        let built = try c.build(plan, sources: [0: j])
        let homes = c.space.lock.withLock { plan.nodes.map { built.nodes[$0.id]!.home.name } }
        #expect(homes == ["kernel0", "kernel0", "user1", "user1", "user1"])
        #expect(built.plan?.nodes.map { $0.placement?.space.name } == homes)
        let frame = Pkt.ethTCP4(dport: 80)
        #expect(frame.withUnsafeBytes { c.space.inject(j, bytes: $0) } == .done)
        let count = built.nodes[4]!
        #expect(eventually(within: 10, pollingEvery: 1_000) { c.space.lock.withLock { (count.filter as! Count).packets } == 1 })
    }

    @Test("`--space` in a mounted tree's `run` and an out-of-range one: placed, or refused with nothing made")
    func runPlaces() throws {
        let c = Controller(space: Space(spaces: 2))
        defer { c.shutdown() }
        _ = try c.makeDirectory(in: nil, named: "j=ethernet")
        let before = snapshot(c)
        let e = controlError { () throws(ControlError) in try c.run("j=ethernet | ip | tcp --space=2 | count") }
        #expect(e?.errno == EINVAL)
        #expect(e?.message.contains("no space 2 (there are 2: 0 to 1") == true, "\(e?.message ?? "built")")
        #expect(snapshot(c) == before)
        let id = try c.run("j=ethernet | ip | tcp --space=1 | count")
        let tcp = try #require(c.resolve("/pipes/j=ethernet/ip/tcp", from: nil))
        let count = try #require(c.resolve("/pipes/j=ethernet/ip/tcp/count", from: nil))
        #expect(c.space.lock.withLock { [tcp.homeIndex, count.homeIndex] } == [1, 1])
        try c.stop(id)
        #expect(snapshot(c) == before)
    }

    @Test("prefix sharing keeps the shared node's space; what follows it selects from there")
    func sharingKeepsSpace() throws {
        let c = Controller(space: Space(spaces: 2))
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let plan0 = try RequestPlan("j | ip | tcp --space=1 | count", sources: ["j"])
        let a = try c.build(plan0, sources: [0: j])
        let plan = try RequestPlan("j | ip | tcp | dport |80 count", sources: ["j"])
        let b = try c.build(plan, sources: [0: j])
        #expect(b.nodes[2] === a.nodes[2], "tcp is shared")
        #expect(b.created.map(\.name) == ["dport", "80", "count"])
        let p = try #require(b.plan)
        #expect(p.nodes[2].placement?.reason == "shares /j=ethernet/ip/tcp, which runs there")
        #expect(p.nodes[3].placement?.space.index == 1)
        #expect(p.nodes[3].placement?.reason == "deepest of {user0,user1}: same space as its input")
        #expect(c.space.lock.withLock { b.nodes[3]!.homeIndex } == 1)
        // --space=0 for tcp cannot share the one in space 1: a second tcp is made.
        let plan2 = try RequestPlan("j | ip | tcp --space=0 | count", sources: ["j"])
        let d = try c.build(plan2, sources: [0: j])
        #expect(d.nodes[2] !== a.nodes[2])
        #expect(d.nodes[1] === a.nodes[1], "ip is still shared")
    }

    @Test("explain prints each node's space and the reason")
    func explained() throws {
        let text = try RequestPlan("rx | ip | tcp --space=1 | count").explanation
        #expect(text.contains("  #1 ip  [space 0]  filtering: IPv4 packets\n      placed in user0: deepest of {user0,user1}: same space as its input\n"), "\(text)")
        #expect(text.contains("placed in user1: --space=1"))
        #expect(text.contains("  #3 count  [space 1]"))
        #expect(text.contains("placed in user0: a source: the space its thread feeds"))
    }
}

/// Every node of the graph with its space, and every edge with its selector and whether it is dormant: the
/// runtime's view.
func snapshot(_ c: Controller) -> [String] {
    c.space.lock.withLock {
        c.space.nodes.values.flatMap { n in
            ["\(n.path) @\(n.homeIndex)"] + n.outputs.map {
                "\(n.path) -> \($0.node.path) [\($0.selector.text)]\(c.space.isDormant(from: n, to: $0.node) ? " dormant" : "")"
            }
        }.sorted()
    }
}

@Suite("request control (§7.1): activation back to front", .serialized)
struct ActivationTests {
    @Test("g | count | count built while g streams: both counts see the same blocks (the path starts at once)")
    func pathStartsAtOnce() throws {
        let c = Controller()
        defer { c.shutdown() }
        let g = try c.addSource("g=gen:size=64,rate=\(64 * 1_000_000)")
        // Something below the source keeps it producing before and between the requests.
        _ = try c.makeDirectory(in: g, named: "count")
        #expect(eventually(within: 10, pollingEvery: 1_000) { c.statsText(g).contains("running") || c.space.lock.withLock { g.stats.packetsOut > 0 } })
        let plan = try RequestPlan("g | count | count", sources: ["g"])
        for run in 0..<100 {
            try c.control(g, "start")
            let built = try c.build(plan, sources: [0: g])
            let (first, second) = (built.nodes[1]!, built.nodes[2]!)
            #expect(eventually(within: 10, pollingEvery: 200) { c.space.lock.withLock { (second.filter as! Count).packets } > 0 })
            try c.control(g, "stop")
            usleep(2_000)  // the source's last batch
            let (a, b) = c.space.lock.withLock { ((first.filter as! Count).packets, (second.filter as! Count).packets) }
            #expect(a == b, "run \(run): the first count saw \(a) blocks, the second \(b)")
            c.undo(built)
        }
    }

    @Test("until activation the edges into the new path are dormant: a block written then reaches none of it")
    func dormantUntilActivated() throws {
        let c = Controller()
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let plan = try RequestPlan("j | ip | tcp | count", sources: ["j"])
        let seen = Locked<[String]>([])
        c.injectFault = { step in
            // Before the last step (the edge from j) the whole path exists; a block stops at j.
            guard step.hasPrefix("activate /j=ethernet ->") else { return nil }
            let n = c.space.lock.withLock { c.space.nodes.values.first { $0.descriptor.name == "count" } }
            _ = Pkt.ethTCP4(dport: 80).withUnsafeBytes { c.space.inject(j, bytes: $0) }
            seen.update { $0.append("\(c.space.lock.withLock { n.map { ($0.filter as! Count).packets } ?? 99 })") }
            return nil
        }
        let built = try c.build(plan, sources: [0: j])
        #expect(seen.value == ["0"])
        #expect(built.activated.map { "\($0.from.name)->\($0.to.name)" } == ["tcp->count", "ip->tcp", "j=ethernet->ip"])
        _ = Pkt.ethTCP4(dport: 80).withUnsafeBytes { c.space.inject(j, bytes: $0) }
        #expect(c.space.lock.withLock { (built.nodes[3]!.filter as! Count).packets } == 1)
    }

    @Test("a failure injected at every step (mkdir, link, each activation) leaves the graph exactly as before")
    func failAtEveryStep() throws {
        let c = Controller(space: Space(spaces: 2))
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let plan0 = try RequestPlan("j | ip | tcp | dport |22 count", sources: ["j"])
        let first = try c.build(plan0, sources: [0: j])
        // A class directory below a shared node, a node in another space, a split-join (a link), a shared prefix.
        let text = "j | ip | tcp | dport |80 count --space=1 | match GET + bpf tcp | count"
        let plan = try RequestPlan(text, sources: ["j"])
        // A dry run lists the steps.
        let steps = Locked<[String]>([])
        c.injectFault = { s in steps.update { $0.append(s) }; return nil }
        let dry = try c.build(plan, sources: [0: j])
        c.undo(dry)
        c.injectFault = nil
        let all = steps.value
        #expect(all.count == 12, "\(all)")
        #expect(all.filter { $0.hasPrefix("mkdir") }.count == 5)
        #expect(all.filter { $0.hasPrefix("link") }.count == 1)
        #expect(all.last == "activate /j=ethernet/ip/tcp/dport -> /j=ethernet/ip/tcp/dport/80")
        let before = snapshot(c)
        for (k, s) in all.enumerated() {
            c.injectFault = { step in step == s ? ControlError(EIO, "injected failure at step \(k)") : nil }
            let e = controlError { () throws(ControlError) in _ = try c.build(plan, sources: [0: j]) }
            c.injectFault = nil
            #expect(e?.message == "injected failure at step \(k)", "step \(k) \(s): \(e?.message ?? "built")")
            #expect(snapshot(c) == before, "step \(k): \(s)")
        }
        // The graph still works: a frame written into j reaches the first request's count.
        let frame = Pkt.ethTCP4(dport: 22)
        #expect(frame.withUnsafeBytes { c.space.inject(j, bytes: $0) } == .done)
        #expect(c.space.lock.withLock { (first.nodes[4]!.filter as! Count).packets } == 1)
        // And the request builds, runs across the two spaces, and counts.
        let built = try c.build(plan, sources: [0: j])
        #expect(frame.withUnsafeBytes { c.space.inject(j, bytes: $0) } == .done)
        let http = Pkt.ethTCP4(dport: 80, Array("GET / HTTP/1.0\r\n".utf8))
        #expect(http.withUnsafeBytes { c.space.inject(j, bytes: $0) } == .done)
        let tail = try #require(built.nodes[plan.nodes.last!.id])
        #expect(eventually(within: 10, pollingEvery: 1_000) { c.space.lock.withLock { (tail.filter as! Count).packets } == 2 },
                "both branches pass the GET: the split-join passes two copies")
    }
}
