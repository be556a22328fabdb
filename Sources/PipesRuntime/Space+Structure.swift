/// Structural primitives the control plane composes into transactions. All require the space lock.
/// They do no validation (names, cycles, arguments): that is the control plane's job.
extension Space {
    /// Makes `child` a directory child of `parent` (nil: top level) and registers it. It runs in `home` (default:
    /// where its parent runs; top-level nodes, sources and junctions, in space 0). A `dormant` edge from the
    /// parent forwards nothing until `activate`.
    public func attach(_ child: Node, under parent: Node?, home: ExecutionSpace? = nil, dormant: Bool = false) {
        register(child)
        child.parent = parent
        child.home = home ?? parent?.home ?? main
        if let p = parent {
            if dormant { child.dormantInputs.insert(ObjectIdentifier(p)) }
            p.children.append(child)
            edgesChanged(p)
        } else {
            addRoot(child)
        }
    }

    /// Cuts `child` from its directory parent (it stays registered).
    public func detach(_ child: Node) {
        if let p = child.parent {
            child.dormantInputs.remove(ObjectIdentifier(p))
            p.children.removeAll { $0 === child }
            edgesChanged(p)
        } else {
            removeRoot(child)
        }
        child.parent = nil
    }

    /// Moves `child` under `parent` (nil: top level) with a new name and edge selector.
    public func move(_ child: Node, under parent: Node?, name: String, selector: ClassSelector) {
        detach(child)
        child.name = name
        child.selector = selector
        child.parent = parent
        if let p = parent {
            p.children.append(child)
            edgesChanged(p)
        } else {
            roots.append(child)
        }
    }

    public func rename(_ node: Node, to name: String) { node.name = name }

    /// Adds a symlink edge `dir → target` named `name` showing `text`; a `dormant` one forwards nothing until
    /// `activate`.
    @discardableResult
    public func addLink(in dir: Node, name: String, text: String, to target: Node, dormant: Bool = false) -> UInt64 {
        let id = allocateID()
        if dormant { target.dormantInputs.insert(ObjectIdentifier(dir)) }
        dir.links.append((id, name, text, target))
        target.linkParents.append(dir)
        edgesChanged(dir)
        return id
    }

    /// Removes the symlink named `name` from `dir`.
    public func removeLink(in dir: Node, name: String) {
        guard let i = dir.links.firstIndex(where: { $0.name == name }) else { return }
        let target = dir.links[i].target
        dir.links.remove(at: i)
        if let j = target.linkParents.firstIndex(where: { $0 === dir }) { target.linkParents.remove(at: j) }
        target.dormantInputs.remove(ObjectIdentifier(dir))
        edgesChanged(dir)
    }

    /// Removes a childless node from the graph: its symlink parents lose their links to it, its taps end,
    /// its filter shuts down.
    public func remove(_ node: Node) {
        for lp in node.linkParents {
            for l in lp.links where l.target === node { removeLink(in: lp, name: l.name) }
        }
        for l in node.links { removeLink(in: node, name: l.name) }
        detach(node)
        unregister(node)
        for t in node.taps { t.ring.endOfStream() }
        node.filter.shutdown()
    }

    /// Opens the dormant edge `parent → child` (its directory parent or a symlink parent): blocks flow from the
    /// next one on. One step of a request's activation; `deactivate` is its inverse.
    public func activate(from parent: Node, to child: Node) {
        guard child.dormantInputs.remove(ObjectIdentifier(parent)) != nil else { return }
        parent.rebuildHotEdges()
    }

    /// Makes the edge `parent → child` dormant again (a request's activation undone).
    public func deactivate(from parent: Node, to child: Node) {
        guard child.inputs.contains(where: { $0 === parent }), child.dormantInputs.insert(ObjectIdentifier(parent)).inserted else { return }
        parent.rebuildHotEdges()
    }

    /// True when the edge `parent → child` forwards nothing yet.
    public func isDormant(from parent: Node, to child: Node) -> Bool { child.dormantInputs.contains(ObjectIdentifier(parent)) }
}
