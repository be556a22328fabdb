/// The graph a request describes (§4.2): filter instances and the arcs between them, with the class selector
/// of each arc. Boolean compositions become join nodes:
///
/// * `a ++ b` (union): both branches feed a `union` node, which passes a block once however many branches
///   passed it;
/// * `a +* b` (intersection): both feed an `intersect` node, which passes a block that every branch passed;
/// * `!e` (negation): a `difference` node fed by the negation's input (`.pass` arcs) and by `e`'s output
///   (`.veto` arcs): it passes what `e` did not pass. Veto arcs come first among its parent's arcs, so the
///   verdict is known when the block itself arrives.
///
/// `a + b` (split-join) needs no node: both branches feed what follows. Mentions with one `--name` tag are one
/// node, which is how cycles are written (`a --name=X | b | a --name=X`).
public struct RequestGraph: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case filter(FilterCall)
        case union
        case intersect
        case difference
    }

    public struct Node: Equatable, Sendable {
        public var id: Int
        public var kind: Kind
        /// Where the node comes from in the request.
        public var range: SourceRange
        /// The filter's name, or `union`, `intersect`, `difference`.
        public var name: String {
            switch kind {
            case .filter(let f): f.name
            case .union: "union"
            case .intersect: "intersect"
            case .difference: "difference"
            }
        }
    }

    public enum Role: String, Equatable, Sendable {
        /// An ordinary arc.
        case data
        /// Into a `difference` node: what the negated expression passed.
        case veto
    }

    public struct Edge: Equatable, Sendable {
        public var from: Int
        public var to: Int
        /// The pipe's selector ("" for a plain pipe) and where it is written.
        public var selector: String
        public var role: Role
        public var selectorRange: SourceRange?

        public static func == (a: Edge, b: Edge) -> Bool {
            a.from == b.from && a.to == b.to && a.selector == b.selector && a.role == b.role
        }
    }

    public var nodes: [Node] = []
    public var edges: [Edge] = []
    /// The nodes that produce the request's output (the last stage).
    public var outputs: [Int] = []

    /// Nodes without inputs: where data enters (sources, or filters to attach below a source).
    public var heads: [Int] { nodes.map(\.id).filter { id in !edges.contains { $0.to == id } } }

    /// Builds the graph of a parsed request.
    public init(_ request: Request) throws(SRLError) {
        var b = Builder(text: request.text)
        outputs = try b.build(request.expression, inputs: [])
        nodes = b.nodes
        edges = b.edges
    }

    /// The arcs into `id`, in order.
    public func inputs(of id: Int) -> [Edge] { edges.filter { $0.to == id } }
    /// The arcs out of `id`, in order.
    public func outputs(of id: Int) -> [Edge] { edges.filter { $0.from == id } }
}

private struct Builder {
    let text: String
    var nodes: [RequestGraph.Node] = []
    var edges: [RequestGraph.Edge] = []
    var tagged: [String: Int] = [:]

    /// An input arc still to be made: from `node` with `selector` (written at `range`).
    typealias Input = (node: Int, selector: String, range: SourceRange?)

    mutating func add(_ kind: RequestGraph.Kind, _ range: SourceRange) -> Int {
        nodes.append(RequestGraph.Node(id: nodes.count, kind: kind, range: range))
        return nodes.count - 1
    }

    mutating func connect(_ inputs: [Input], to id: Int, role: RequestGraph.Role = .data) {
        for i in inputs {
            let e = RequestGraph.Edge(from: i.node, to: id, selector: i.selector, role: role, selectorRange: i.range)
            if !edges.contains(e) { edges.append(e) }
        }
    }

    /// Adds `e` fed by `inputs`; returns the nodes that produce its output.
    mutating func build(_ e: Expression, inputs: [Input]) throws(SRLError) -> [Int] {
        switch e {
        case .filter(let f):
            let id: Int
            if let t = f.tag, let existing = tagged[t] {
                id = existing
                // A later mention may carry the arguments the first left out.
                if case .filter(let first) = nodes[id].kind, first.arguments.isEmpty, !f.arguments.isEmpty {
                    nodes[id].kind = .filter(f)
                }
            } else {
                id = add(.filter(f), f.range)
                if let t = f.tag { tagged[t] = id }
            }
            connect(inputs, to: id)
            return [id]
        case .sequence(let stages, let pipes):
            var outs = try build(stages[0], inputs: inputs)
            for (i, stage) in stages.dropFirst().enumerated() {
                let p = pipes[i]
                outs = try build(stage, inputs: outs.map { ($0, p.isAll ? "" : p.text, p.isAll ? nil : p.selectorRange) })
            }
            return outs
        case .parallel(let kind, let branches, let range):
            var outs: [Int] = []
            for b in branches { outs += try build(b, inputs: inputs) }
            switch kind {
            case .split:
                return outs
            case .union, .intersect:
                let join = add(kind == .union ? .union : .intersect, range)
                connect(outs.map { ($0, "", nil) }, to: join)
                return [join]
            }
        case .negation(let inner, let range):
            if inputs.isEmpty {
                throw SRLError("a negation needs an input: '!' keeps what the filter does not pass of a stream, so put it after a '|' (e.g. ip | !http)",
                               at: range, in: text)
            }
            let diff = add(.difference, range)
            let vetoes = try build(inner, inputs: inputs)
            connect(vetoes.map { ($0, "", nil) }, to: diff, role: .veto)
            connect(inputs, to: diff)
            return [diff]
        }
    }
}

extension RequestGraph: CustomStringConvertible {
    /// One line per arc, `from -> to`, with `[selector]` and `(veto)` when set; nodes by name and id.
    public var description: String {
        func n(_ id: Int) -> String {
            let node = nodes[id]
            if case .filter(let f) = node.kind {
                let args = f.argumentText
                return args.isEmpty ? "\(f.name)#\(id)" : "\(f.name)(\(args))#\(id)"
            }
            return "\(node.name)#\(id)"
        }
        var lines = edges.map { e in
            "\(n(e.from)) -> \(n(e.to))" + (e.selector.isEmpty ? "" : " [\(e.selector)]") + (e.role == .veto ? " (veto)" : "")
        }
        for id in nodes.indices where !edges.contains(where: { $0.from == id || $0.to == id }) { lines.append(n(id)) }
        return lines.joined(separator: "\n")
    }
}
