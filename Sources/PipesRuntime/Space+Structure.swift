/// Structural primitives the control plane composes into transactions. All require the space lock.
/// They do no validation (names, cycles, arguments): that is the control plane's job.
extension Space {
    /// Makes `child` a directory child of `parent` (nil: top level) and registers it.
    public func attach(_ child: Node, under parent: Node?) {
        register(child)
        child.parent = parent
        // A new filter runs where its parent runs; top-level nodes (sources, junctions) in space 0.
        child.home = parent?.home ?? main
        if let p = parent {
            p.children.append(child)
            edgesChanged(p)
        } else {
            addRoot(child)
        }
    }

    /// Cuts `child` from its directory parent (it stays registered).
    public func detach(_ child: Node) {
        if let p = child.parent {
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

    /// Adds a symlink edge `dir → target` named `name` showing `text`.
    @discardableResult
    public func addLink(in dir: Node, name: String, text: String, to target: Node) -> UInt64 {
        let id = allocateID()
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
}
