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
        public var space: Int
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
                                  role: role, space: f.space ?? 0))
            case .union, .intersect, .difference:
                nodes.append(Node(id: n.id, name: n.name, arguments: "", role: .join(n.name), space: 0))
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

    /// A readable account: the nodes with their role and space, then the arcs.
    public var explanation: String {
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
            s += "  #\(n.id) \(label)  [space \(n.space)]  \(what)\n"
        }
        s += "arcs:\n"
        for a in arcs {
            let sel = a.selector.isAny ? "" : " [\(a.selector.text)]"
            s += "  #\(a.from) \(nodes[a.from].name) -> #\(a.to) \(nodes[a.to].name)\(sel)\(a.veto ? " (veto)" : "")\n"
        }
        return s
    }
}
