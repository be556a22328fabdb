#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesFilters
import PipesRuntime
import PipesSRL

/// Building a request (§4.2, §7.1) in the paper's three phases, each complete for the whole request before the
/// next: discovery (which execution spaces implement each filter), selection (push processing down: one space
/// per node) and allocation, out of the same operations as the filesystem: each filter becomes a directory below
/// its first input (through a class directory when the arc has a selector), further inputs become symlinks.
/// Every edge into a new node is made dormant (it forwards nothing); once the whole path is in place it is
/// activated from the sinks back towards the sources, the edges from the live graph last and together, so the
/// new path starts at once: no filter of it sees a block its successors miss. Each step is one atomic control
/// operation with an inverse; if one fails, the steps done so far are undone in reverse order, so the graph is
/// left as it was.
extension Controller {
    /// What building a request made, in order.
    public struct BuiltRequest: Sendable {
        /// The plan's node ids to the graph's nodes.
        public var nodes: [Int: Node]
        /// Directories made (filters and class directories), in creation order.
        public var created: [Node]
        /// Symlinks made: (directory, name).
        public var links: [(Node, String)]
        /// Every directory the request uses (made or shared), parents before children.
        public var used: [Node] = []
        /// The edges made dormant, in creation order (each into a node the request made).
        public var dormant: [(from: Node, to: Node)] = []
        /// The edges activated so far, in activation order: sinks first, the edges from the live graph last.
        public var activated: [(from: Node, to: Node)] = []
        /// The plan as selected: each node's space and the reason (`RequestPlan.Node.placement`).
        public var plan: RequestPlan?
    }

    /// Builds `plan`. `sources` gives the graph node of each source of the plan (made or found by the caller).
    /// Stateless prefixes already in the tree are shared: a filter of the same kind and arguments, or a class
    /// directory with the same selector, below the same parent (and in the space selection chose) is used instead
    /// of a new one (§7.1).
    public func build(_ plan: RequestPlan, sources: [Int: Node], uid: UInt32 = 0, gid: UInt32 = 0) throws(ControlError) -> BuiltRequest {
        let op = "request '\(plan.text)'"
        // Discovery and selection: nothing is allocated until every node has its space.
        let selected: RequestPlan
        do { selected = try select(plan, sources: sources) } catch { throw fail(op, error) }
        var built = BuiltRequest(nodes: sources, created: [], links: [], used: [], plan: selected)
        do throws(ControlError) {
            try allocate(selected, &built, uid: uid, gid: gid, op: op)
            try activate(&built, op: op)
        } catch {
            undo(built)
            throw error
        }
        return built
    }

    /// Discovery and selection (§7.1) of `plan` against this graph's spaces: every node's candidate spaces, then
    /// one space per node, pushing processing down; prefix sharing is looked up in the live graph so that a shared
    /// node keeps its space and its successors follow it. Returns the plan with each node's `placement`.
    public func select(_ plan: RequestPlan, sources: [Int: Node]) throws(ControlError) -> RequestPlan {
        var plan = plan
        try withLock { () throws(ControlError) in
            let sourceSpaces = sources.mapValues { $0.home.index }
            let catalog = space.catalog
            let candidates = try plan.discover(in: catalog, sourceSpaces: sourceSpaces)
            // What each plan node maps onto in the live graph so far (its sources, then shared nodes).
            var live = sources
            let resolved = plan
            try plan.select(in: catalog, candidates: candidates, sourceSpaces: sourceSpaces) { n, arc, want in
                guard let from = live[arc.from] else { return nil }
                let dir = arc.selector.isAny ? from : from.children.first { $0.isClassSelection && $0.selector == arc.selector }
                guard let dir, let d = resolved.descriptor(of: n),
                      let x = shareable(d, arguments: n.arguments, below: dir, inSpace: want) else { return nil }
                live[n.id] = x
                return (x.path, x.home.index)
            }
        }
        return plan
    }

    /// Allocation: the nodes in an order where every node's first input comes before it (the plan's arcs follow
    /// the text), each in its selected space, its edges dormant; then the symlinks of further inputs.
    private func allocate(_ plan: RequestPlan, _ built: inout BuiltRequest, uid: UInt32, gid: UInt32, op: String) throws(ControlError) {
        var placed = Set(built.nodes.keys)
        var progress = true
        while progress {
            progress = false
            for n in plan.nodes where !placed.contains(n.id) {
                let ins = plan.arcs.filter { $0.to == n.id }
                // A difference hangs below its direct input, after the vetoing branch is in place: that
                // branch then comes first among the input's outputs, so its verdict arrives first.
                if ins.contains(where: { $0.veto && !placed.contains($0.from) }) { continue }
                guard let first = ins.first(where: { !$0.veto && placed.contains($0.from) }) else { continue }
                guard let d = plan.descriptor(of: n) else { continue }
                let arguments = n.role == .join("intersect") ? "\(ins.count)" : n.arguments
                let parent = try selectionDirectory(for: first, built: &built, uid: uid, gid: gid)
                // Shared only when it would get exactly the input the existing one has: its parent.
                let node = try shareOrMake(d, arguments: arguments, below: parent, mayShare: ins.count == 1,
                                           inSpace: n.placement?.space.index, built: &built, uid: uid, gid: gid)
                built.nodes[n.id] = node
                placed.insert(n.id)
                progress = true
            }
        }
        if let missing = plan.nodes.first(where: { !placed.contains($0.id) }) {
            throw fail(op, ControlError(EINVAL, "'\(missing.name)' is fed by nothing that starts at a source: a request starts at a source (rx, tx, pcapin FILE, gen SPEC)"))
        }
        // Every further input arc: a symlink from the input (or its class directory) to the node.
        for n in plan.nodes {
            let ins = plan.arcs.filter { $0.to == n.id }
            guard let target = built.nodes[n.id], ins.count > 1 else { continue }
            for a in ins {
                var dir = try selectionDirectory(for: a, built: &built, uid: uid, gid: gid)
                if a.veto {
                    // What the negated branch passes goes through a `veto` filter, which marks it.
                    dir = try shareOrMake(Veto.descriptor, arguments: "", below: dir, mayShare: true, inSpace: nil,
                                          built: &built, uid: uid, gid: gid)
                }
                if target.parent === dir { continue }  // the directory parent: the first input
                if (try withLock { () throws(ControlError) -> Bool in dir.links.contains { $0.target === target } }) { continue }
                let name = try freeName("to-\(target.name)", in: dir)
                try step("link \(dir.path)/\(name) -> \(target.path)")
                try link(Controller.relativePath(from: dir.path, to: target.path), in: dir, named: name, dormant: true)
                built.links.append((dir, name))
                built.dormant.append((dir, target))
            }
        }
    }

    /// Activation (§7.1): the dormant edges between new nodes from the sinks back towards the sources, one step
    /// each (no block enters the new path yet, so their order is free of races), then the edges from the live
    /// graph into the new path, in one step under the graph lock: the whole path starts with the same block.
    private func activate(_ built: inout BuiltRequest, op: String) throws(ControlError) {
        let made = Set(built.created.map(ObjectIdentifier.init))
        let inner = built.dormant.filter { made.contains(ObjectIdentifier($0.from)) }
        let frontier = built.dormant.filter { !made.contains(ObjectIdentifier($0.from)) }
        for e in inner.reversed() {
            try step("activate \(e.from.path) -> \(e.to.path)")
            try withLock { () throws(ControlError) in
                if e.to.removed { throw fail(op, ControlError(ENOENT, "'\(e.to.name)' was removed while the request was built")) }
                space.activate(from: e.from, to: e.to)
            }
            built.activated.append(e)
        }
        if frontier.isEmpty { return }
        try step("activate \(frontier.map { "\($0.from.path) -> \($0.to.path)" }.joined(separator: ", "))")
        try withLock { () throws(ControlError) in
            if let gone = frontier.first(where: { $0.from.removed || $0.to.removed }) {
                throw fail(op, ControlError(ENOENT, "'\(gone.from.removed ? gone.from.name : gone.to.name)' was removed while the request was built"))
            }
            for e in frontier.reversed() { space.activate(from: e.from, to: e.to) }
            space.refresh()
        }
        built.activated += frontier.reversed()
    }

    /// Consults `injectFault` before a step of a request's allocation (tests).
    private func step(_ what: String) throws(ControlError) {
        if let e = injectFault?(what) { throw fail("request step '\(what)'", e) }
    }

    /// Removes what `build` made, newest first: the activated edges go dormant again (the live graph's edges
    /// first: no block enters the path from then on), then the links, then the directories that are still
    /// childless.
    public func undo(_ built: BuiltRequest) {
        space.lock.withLock {
            for e in built.activated.reversed() where !e.from.removed && !e.to.removed { space.deactivate(from: e.from, to: e.to) }
        }
        for (dir, name) in built.links.reversed() { try? unlink(in: dir, named: name) }
        for n in built.created.reversed() { try? removeDirectory(in: n.parent, named: n.name) }
    }

    /// The directory an arc's target hangs below: the input itself, or its class directory for the selector.
    private func selectionDirectory(for a: RequestPlan.Arc, built: inout BuiltRequest, uid: UInt32, gid: UInt32) throws(ControlError) -> Node {
        guard let from = built.nodes[a.from] else { throw ControlError(EINVAL, "an input of the request is not built") }
        if a.selector.isAny { return from }
        let existing: Node? = try withLock { () throws(ControlError) -> Node? in
            from.children.first { $0.isClassSelection && $0.selector == a.selector }
        }
        if let existing {
            if !built.used.contains(where: { $0 === existing }) { built.used.append(existing) }
            return existing
        }
        try step("mkdir \(from.path)/\(a.selector.text)")
        let dir = try makeDirectory(in: from, named: a.selector.text, uid: uid, gid: gid, dormant: true)
        built.created.append(dir)
        built.used.append(dir)
        built.dormant.append((from, dir))
        return dir
    }

    /// A stateless filter of the same kind and arguments below `parent` (in space `inSpace`, if given) is shared;
    /// otherwise a new one, in `inSpace` (default: its parent's), its edge from `parent` dormant.
    private func shareOrMake(_ d: FilterDescriptor, arguments: String, below parent: Node, mayShare: Bool, inSpace: Int?,
                             built: inout BuiltRequest, uid: UInt32, gid: UInt32) throws(ControlError) -> Node {
        let shared: Node? = try withLock { () throws(ControlError) -> Node? in
            mayShare ? shareable(d, arguments: arguments, below: parent, inSpace: inSpace) : nil
        }
        if let shared {
            built.used.append(shared)
            return shared
        }
        let name = try freeName(Controller.directoryName(d, arguments: arguments), in: parent)
        try step("mkdir \(parent.path)/\(name)")
        let node = try makeFilter(d, arguments: arguments, in: parent, named: name, uid: uid, gid: gid, inSpace: inSpace, dormant: true)
        built.created.append(node)
        built.used.append(node)
        built.dormant.append((parent, node))
        return node
    }

    /// The directory name a request gives a filter: `NAME=ARGS`, or `NAME` alone when the arguments hold a `/` or
    /// the whole would be too long for a name (before `freeName` makes it unique).
    public static func directoryName(_ d: FilterDescriptor, arguments: String) -> String {
        let plain = arguments.isEmpty ? d.name : "\(d.name)=\(arguments)"
        return plain.contains("/") || plain.utf8.count > 200 ? d.name : plain
    }

    /// A node below `parent` a request may share for `d` with `arguments` (§7.1, prefix sharing): stateless, the
    /// same kind and arguments, fed by `parent` alone, live (not a request's dormant node), in space `inSpace` if
    /// given. Lock held.
    func shareable(_ d: FilterDescriptor, arguments: String, below parent: Node, inSpace: Int?) -> Node? {
        guard Controller.stateless.contains(d.name) else { return nil }
        return parent.children.first {
            $0.descriptor.name == d.name && !$0.isClassSelection && $0.filter.arguments == arguments && $0.linkParents.isEmpty
                && $0.dormantInputs.isEmpty && (inSpace == nil || $0.home.index == inSpace)
        }
    }

    /// The symlink text in directory `dir` that leads to `target` (both paths from the root): `../tcp/union`.
    static func relativePath(from dir: String, to target: String) -> String {
        let a = dir.split(separator: "/")
        let b = target.split(separator: "/")
        var k = 0
        while k < a.count && k < b.count && a[k] == b[k] { k += 1 }
        let up = [String](repeating: "..", count: a.count - k)
        return (up + b[k...].map(String.init)).joined(separator: "/")
    }

    /// `base`, or `base.2`, `base.3`... if taken below `dir`.
    private func freeName(_ base: String, in dir: Node) throws(ControlError) -> String {
        try withLock { () throws(ControlError) -> String in
            var name = base
            var k = 2
            while child(of: dir, named: name) != nil {
                name = "\(base).\(k)"
                k += 1
            }
            return name
        }
    }

    /// Filters whose output depends only on each block (no counters users read, no files): two requests may share
    /// one instance (§7.1, prefix sharing).
    public static let stateless: Set<String> = ["eth", "ip", "ip6", "ipproto", "tcp", "udp", "icmp", "sport", "dport", "bpf", "match", "payload", "veto"]
}

/// Requests running in a mounted tree (`run REQUEST` in `/.ctl`, `pipesfs run`), by id.
public final class RequestTable: @unchecked Sendable {
    public struct Entry: Sendable {
        public var id: Int
        public var text: String
        public var uid: UInt32
        public var built: Controller.BuiltRequest
    }

    private let lock = ConditionLock()
    private var entries: [Int: Entry] = [:]
    private var next = 1

    public init() {}

    func add(_ text: String, uid: UInt32, _ built: Controller.BuiltRequest) -> Int {
        lock.withLock {
            let id = next
            next += 1
            entries[id] = Entry(id: id, text: text, uid: uid, built: built)
            return id
        }
    }

    func remove(_ id: Int) -> Entry? { lock.withLock { entries.removeValue(forKey: id) } }
    var all: [Entry] { lock.withLock { Array(entries.values) } }
    func get(_ id: Int) -> Entry? { lock.withLock { entries[id] } }

    /// `ID UID REQUEST` per line, by id.
    public var text: String {
        lock.withLock { entries.keys.sorted().map { "\($0) \(entries[$0]!.uid) \(entries[$0]!.text)\n" }.joined() }
    }
}

extension Controller {
    /// `run REQUEST`: builds a request below the tree's top-level directories (its sources are their names) and
    /// remembers it; returns its id. A refused request is reported as `LINE:COLUMN: MESSAGE in: REQUEST`.
    @discardableResult
    public func run(_ text: String, uid: UInt32 = 0, gid: UInt32 = 0) throws(ControlError) -> Int {
        let op = "run '\(text)'"
        let roots: [String: Node] = space.lock.withLock { Dictionary(space.roots.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }) }
        let plan: RequestPlan
        do { plan = try RequestPlan(text, sources: Set(roots.keys)) } catch {
            throw fail(op, ControlError(EINVAL, error.summary))
        }
        var sources: [Int: Node] = [:]
        for n in plan.nodes {
            guard case .source(let s) = n.role else { continue }
            guard let node = roots[s] else {
                throw fail(op, ControlError(EINVAL, "'\(n.name)': in a mounted tree a request starts at a top-level directory (\(roots.keys.sorted().joined(separator: " "))); add capture files with .ctl 'source NAME=pcap:FILE'"))
            }
            sources[n.id] = node
        }
        // Each node is placed in the space selection chose (`--space=K` honoured) as it is made.
        let built = try build(plan, sources: sources, uid: uid, gid: gid)
        return requests.add(text, uid: uid, built)
    }

    /// `stop ID`: removes the directories request ID uses that no other request uses (a shared prefix goes with
    /// its last user), children first; a directory that holds something made outside the requests stays. Only its
    /// owner or root may stop it.
    public func stop(_ id: Int, uid: UInt32 = 0) throws(ControlError) {
        let op = "stop \(id)"
        guard let e = requests.get(id) else { throw fail(op, ControlError(ENOENT, "no request \(id) (see /.requests)")) }
        if uid != 0 && uid != e.uid { throw fail(op, ControlError(EPERM, "request \(id) belongs to uid \(e.uid)")) }
        _ = requests.remove(id)
        let others = Set(requests.all.flatMap { $0.built.used.map(ObjectIdentifier.init) })
        for (dir, name) in e.built.links.reversed() { try? unlink(in: dir, named: name) }
        for n in e.built.used.reversed() where !others.contains(ObjectIdentifier(n)) {
            let gone: Bool = space.lock.withLock { n.removed || !n.children.isEmpty || !n.links.isEmpty }
            if gone { continue }
            try? removeDirectory(in: n.parent, named: n.name)
        }
    }
}
