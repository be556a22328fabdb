#if canImport(Glibc)
import Glibc
#endif
import PipesFilters
import PipesRuntime
import PipesSRL

/// A request (§4.2) resolved against the filter library: every filter name known, every pipe's class selector
/// resolved with the class names of the filter before it. What `pipesfs explain` prints and, later, what the
/// control plane allocates (§7.1).
public struct RequestPlan: Sendable {
    public enum Role: Sendable, Equatable {
        /// A source: `rx`, `tx`, a mounted source by name, or `pcapin FILE` / `gen SPEC`.
        case source(String)
        case filter(FilterDescriptor)
        /// A join node of a Boolean composition (union, intersect, difference).
        case join(String)

        public static func == (a: Role, b: Role) -> Bool {
            switch (a, b) {
            case (.source(let x), .source(let y)): x == y
            case (.filter(let x), .filter(let y)): x.name == y.name
            case (.join(let x), .join(let y)): x == y
            default: false
            }
        }
    }

    public struct Node: Sendable {
        public var id: Int
        public var name: String
        public var arguments: String
        public var role: Role
        /// The space `--space=K` names, 0 when the request names none (see `explicitSpace`, `placement`).
        public var space: Int
        /// `--space=K` as written; nil: the control plane chooses.
        public var explicitSpace: Int?
        /// Where selection put it and why (nil until `select`).
        public var placement: Placement?
    }

    /// A node's execution space as selection chose it (§7.1), and the reason `pipesfs explain` prints.
    public struct Placement: Sendable, Equatable {
        public var space: SpaceCatalog.Entry
        /// e.g. `deepest of {user0,user1}: same space as its input`.
        public var reason: String
        /// The path of the node already in the graph it maps onto (prefix sharing), if any.
        public var shares: String?
    }

    public struct Arc: Sendable {
        public var from: Int
        public var to: Int
        public var selector: ClassSelector
        public var veto: Bool
    }

    public var text: String
    public var nodes: [Node] = []
    public var arcs: [Arc] = []

    /// Source names a request may start from without a scheme (a mount's top-level sources).
    public static let defaultSources: Set<String> = ["rx", "tx"]
    /// Source filters a request may name with a specification argument.
    public static let sourceSchemes: [String: String] = ["pcapin": "pcap", "gen": "gen", "live": "live"]

    /// Resolves `text`. `sources` are the names of sources that exist (a mount's top-level sources).
    public init(_ text: String, sources: Set<String> = RequestPlan.defaultSources,
                library: [String: FilterDescriptor] = FilterLibrary.byName) throws(SRLError) {
        self.text = text
        let request = try SRL.parse(text)
        let g = try RequestGraph(request)
        for n in g.nodes {
            switch n.kind {
            case .filter(let f):
                let role: Role
                if f.written != f.name && sources.contains(f.written) {
                    role = .source(f.written)  // a top-level directory named NAME=ARGS (a junction)
                } else if let d = library[f.name] {
                    role = .filter(d)
                } else if sources.contains(f.name) {
                    if !f.arguments.isEmpty {
                        throw SRLError("'\(f.name)' is a source of the mount: it takes no arguments", at: f.arguments[0].range, in: text)
                    }
                    role = .source(f.name)
                } else if let scheme = RequestPlan.sourceSchemes[f.name] {
                    if f.arguments.isEmpty {
                        throw SRLError("'\(f.name)' needs its specification (e.g. \(f.name == "pcapin" ? "pcapin /var/tmp/cap.pcap" : f.name == "gen" ? "gen size=512" : "live eth0"))",
                                       at: f.range, in: text)
                    }
                    role = .source("\(scheme):\(f.argumentText)")
                } else {
                    let known = (library.keys.sorted() + sources.sorted() + RequestPlan.sourceSchemes.keys.sorted()).joined(separator: " ")
                    throw SRLError("unknown filter '\(f.name)' (known: \(known))", at: f.range, in: text)
                }
                if case .source = role, g.edges.contains(where: { $0.to == n.id }) {
                    throw SRLError("'\(f.name)' is a source: nothing can feed it", at: f.range, in: text)
                }
                let isNamedSource: Bool = { if case .source(let x) = role { x == f.written && f.written != f.name } else { false } }()
                nodes.append(Node(id: n.id, name: isNamedSource ? f.written : f.name, arguments: isNamedSource ? "" : f.argumentText,
                                  role: role, space: f.space ?? 0, explicitSpace: f.space))
            case .union, .intersect, .difference:
                nodes.append(Node(id: n.id, name: n.name, arguments: "", role: .join(n.name), space: 0, explicitSpace: nil))
            }
        }
        for e in g.edges {
            let sel: ClassSelector
            if e.selector.isEmpty {
                sel = .any
            } else {
                let from = nodes[e.from]
                guard case .filter(let d) = from.role, d.classifying else {
                    throw SRLError("'\(from.name)' does not classify: a class selector after it selects nothing (classifying filters: \(library.values.filter(\.classifying).map(\.name).sorted().joined(separator: " ")))",
                                   at: e.selectorRange ?? g.nodes[e.from].range, in: text)
                }
                do { sel = try ClassSelector.parse(e.selector, names: d.classNames) } catch {
                    throw SRLError("\(error.message) (after \(d.name))", at: e.selectorRange ?? g.nodes[e.from].range, in: text)
                }
            }
            arcs.append(Arc(from: e.from, to: e.to, selector: sel, veto: e.role == .veto))
        }
    }

    /// A readable account: the nodes with their role and space (and why selection put them there), then the
    /// arcs. A plan not yet selected is placed for a mount of user spaces, as many as the request names (at least
    /// one), its sources in space 0: what `pipesfs explain` shows without a mount.
    public var explanation: String {
        var plan = self
        if nodes.contains(where: { $0.placement == nil && $0.role.isSource == false }) {
            let catalog = SpaceCatalog.user((nodes.compactMap(\.explicitSpace).max() ?? 0) + 1)
            do throws(ControlError) { try plan.select(in: catalog, candidates: try plan.discover(in: catalog)) } catch {
                plan.unplaced = error.message
            }
        }
        return plan.explained
    }

    /// Why selection failed, for `explanation`.
    private var unplaced: String?

    private var explained: String {
        var s = "request: \(text)\nnodes:\n"
        for n in nodes {
            let what: String
            switch n.role {
            case .source(let spec): what = "source \(spec)"
            case .filter(let d): what = "\(d.structuralClass.rawValue): \(d.summary)"
            case .join(let j): what = "join (\(j)): " + (j == "union" ? "passes a block once if any branch passed it"
                : j == "intersect" ? "passes a block that every branch passed" : "passes what the vetoing branch did not")
            }
            let label = n.arguments.isEmpty ? n.name : "\(n.name) \(n.arguments)"
            s += "  #\(n.id) \(label)  [space \(n.placement?.space.index ?? n.space)]  \(what)\n"
            if let p = n.placement { s += "      placed in \(p.space.name): \(p.reason)\n" }
        }
        if let unplaced { s += "  (not placed: \(unplaced))\n" }
        s += "arcs:\n"
        for a in arcs {
            let sel = a.selector.isAny ? "" : " [\(a.selector.text)]"
            s += "  #\(a.from) \(nodes[a.from].name) -> #\(a.to) \(nodes[a.to].name)\(sel)\(a.veto ? " (veto)" : "")\n"
        }
        return s
    }
}

extension RequestPlan.Role {
    var isSource: Bool { if case .source = self { true } else { false } }
}

// MARK: - discovery and selection (§7.1)

extension RequestPlan {
    /// The filter a node instantiates (nil for a source). Joins are filters of their own.
    public func descriptor(of n: Node) -> FilterDescriptor? {
        switch n.role {
        case .source: nil
        case .filter(let d): d
        case .join("union"): Union.descriptor
        case .join("intersect"): Intersect.descriptor
        case .join(_): Difference.descriptor
        }
    }

    /// Discovery (§7.1): for every node, the spaces of `catalog` that implement it, in index order. A source is
    /// bound to the space its thread feeds (`sourceSpaces[id]`, default 0), whatever the catalog offers.
    /// Refused (ENOSYS) when a filter has no implementation in any of the spaces, naming the filter: nothing is
    /// allocated before every node has a candidate.
    public func discover(in catalog: SpaceCatalog, sourceSpaces: [Int: Int] = [:]) throws(ControlError) -> [Int: [SpaceCatalog.Entry]] {
        var out: [Int: [SpaceCatalog.Entry]] = [:]
        for n in nodes {
            guard let d = descriptor(of: n) else {
                let k = sourceSpaces[n.id] ?? 0
                out[n.id] = catalog.entries.indices.contains(k) ? [catalog.entries[k]] : []
                continue
            }
            let found = catalog.implementations(of: d)
            if found.isEmpty {
                let kinds = d.implementations.sorted().map(\.description).joined(separator: ", ")
                throw ControlError(ENOSYS, "no implementation of '\(n.name)' in the execution spaces here (\(catalog.names)): it is implemented in \(kinds.isEmpty ? "no" : kinds) spaces")
            }
            out[n.id] = found
        }
        return out
    }

    /// Selection (§7.1), "push processing down": greedy, from the sources towards the sinks, each node takes the
    /// deepest of its candidates that is not deeper than the spaces of its inputs (a path only climbs, so there
    /// is no ping-pong between levels); among equally deep ones, its input's space (no channel to cross), else the
    /// first. `--space=K` overrides, checked: K must exist, implement the filter and not lie below its inputs.
    /// A node with one input that can map onto a node already in the graph (prefix sharing) is asked of
    /// `existing` (its plan node, the arc from its input, the space it must be in or nil for any) and takes that
    /// node's space. Records each choice and its reason in `placement`.
    public mutating func select(in catalog: SpaceCatalog, candidates: [Int: [SpaceCatalog.Entry]], sourceSpaces: [Int: Int] = [:],
                                existing: (_ node: Node, _ input: Arc, _ space: Int?) -> (path: String, space: Int)? = { _, _, _ in nil })
        throws(ControlError)
    {
        var chosen: [Int: SpaceCatalog.Entry] = [:]
        var left = nodes.map(\.id)
        while !left.isEmpty {
            // Nodes whose inputs are all placed; if none (a cycle through a tagged filter), the first node with a
            // placed input, judged by those alone (building refuses the loop later, with its own reason).
            var next = left.firstIndex { id in arcs.allSatisfy { $0.to != id || chosen[$0.from] != nil } }
            if next == nil { next = left.firstIndex { id in arcs.contains { $0.to == id && chosen[$0.from] != nil } } }
            guard let i = next else { break }  // fed by nothing that starts at a source: building says so
            let id = left.remove(at: i)
            let p = try place(nodes[id], in: catalog, candidates: candidates[id] ?? [], sourceSpaces: sourceSpaces,
                              inputs: arcs.filter { $0.to == id && chosen[$0.from] != nil }, chosen: chosen, existing: existing)
            chosen[id] = p.space
            nodes[id].placement = p
        }
    }

    private func place(_ n: Node, in catalog: SpaceCatalog, candidates: [SpaceCatalog.Entry], sourceSpaces: [Int: Int],
                       inputs: [Arc], chosen: [Int: SpaceCatalog.Entry],
                       existing: (_ node: Node, _ input: Arc, _ space: Int?) -> (path: String, space: Int)?) throws(ControlError) -> Placement {
        func entry(_ k: Int, _ what: String) throws(ControlError) -> SpaceCatalog.Entry {
            guard catalog.entries.indices.contains(k) else {
                throw ControlError(EINVAL, "'\(n.name)' \(what): no space \(k) (there \(catalog.count == 1 ? "is 1: 0" : "are \(catalog.count): 0 to \(catalog.count - 1)"); see --spaces)")
            }
            return catalog.entries[k]
        }
        if case .source = n.role {
            let home = try entry(sourceSpaces[n.id] ?? 0, "is a source")
            if let k = n.explicitSpace, k != home.index {
                throw ControlError(EINVAL, "'\(n.name)' --space=\(k): a source runs in the space its thread feeds (space \(home.index), \(home.name))")
            }
            return Placement(space: home, reason: "a source: the space its thread feeds")
        }
        let ins = inputs.compactMap { chosen[$0.from] }
        // The input that decides how deep the node may go: the highest one (paths only grow upwards).
        let top = ins.max { $0.kind.level < $1.kind.level }
        let floor = top?.kind.level ?? SpaceKind.device.level
        let mayShare = inputs.count == 1 && arcs.filter { $0.to == n.id }.count == 1
        if let k = n.explicitSpace {
            let e = try entry(k, "--space=\(k)")
            guard candidates.contains(e) else {
                throw ControlError(ENOSYS, "'\(n.name)' --space=\(k): no implementation of '\(n.name)' in \(e.name) (it runs in \(descriptor(of: n).map { $0.implementations.sorted().map(\.description).joined(separator: ", ") } ?? "no") spaces)")
            }
            if let top, e.kind.level < floor {
                throw ControlError(EINVAL, "'\(n.name)' --space=\(k): \(e.name) lies below its input's space \(top.name); a path only grows from its sources towards its sinks")
            }
            if mayShare, let x = existing(n, inputs[0], k) {
                return Placement(space: e, reason: "--space=\(k); shares \(x.path)", shares: x.path)
            }
            return Placement(space: e, reason: "--space=\(k)")
        }
        if mayShare, let x = existing(n, inputs[0], nil), catalog.entries.indices.contains(x.space) {
            return Placement(space: catalog.entries[x.space], reason: "shares \(x.path), which runs there", shares: x.path)
        }
        let eligible = candidates.filter { $0.kind.level >= floor }
        let below = candidates.filter { $0.kind.level < floor }
        guard let deepest = eligible.map(\.kind.level).min() else {
            throw ControlError(ENOSYS, "'\(n.name)' has no implementation at or above its input's space \(top?.name ?? "?") (it runs in \(candidates.map(\.name).joined(separator: " "))); a path only grows from its sources towards its sinks")
        }
        let tier = eligible.filter { $0.kind.level == deepest }
        var s = "deepest of {\(eligible.map(\.name).joined(separator: ","))}"
        if !below.isEmpty { s += " (not below its input: \(below.map(\.name).joined(separator: ",")) left out)" }
        if let e = ins.first(where: { tier.contains($0) }) {
            return Placement(space: e, reason: s + ": same space as its input")
        }
        let e = tier[0]
        let why = top.map { "its input runs in \($0.name)" } ?? "no input placed"
        return Placement(space: e, reason: s + ": the first \(e.kind) space (\(why))")
    }
}
