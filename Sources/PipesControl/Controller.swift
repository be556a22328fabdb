#if canImport(Glibc)
import Glibc
#endif
import PipesFilters
import PipesRuntime

/// A directory entry as the control plane sees it.
public enum Entry {
    case node(Node)
    case link(dir: Node, id: UInt64, name: String, text: String, target: Node)
}

/// The control plane (§7): every change to the graph, validated and applied atomically under the space lock,
/// undone on failure. The filesystem (mkdir, rmdir, rename, symlink, ctl files) and, later, the request language
/// are front ends of this one API, so both produce the same graphs and the same errors.
public final class Controller: @unchecked Sendable {
    public let space: Space
    public let errors = ErrorLog()
    /// Requests built with `run` (`/.ctl`), by id.
    public let requests = RequestTable()
    /// Where the tree is mounted (for absolute symlink targets), e.g. `/pipes`.
    public var mountPoint: String
    private let library: [String: FilterDescriptor]
    /// Tests: asked before each step of a request's allocation and activation (`mkdir /j/ip`, `link ...`,
    /// `activate A -> B`); an error returned fails that step, as a refused operation would.
    public var injectFault: (@Sendable (_ step: String) -> ControlError?)?

    /// Class directories made because their filter reported the class (`ClassReporting`), by node id and name: each
    /// is made once, so one the user removes stays removed. Lock held.
    private var offeredClasses: Set<String> = []

    /// Makes a class directory below `dir` for each class its filter reports having seen (`http/` shows `get/` once a
    /// GET went by), owned as `dir` is. Takes the lock.
    public func offerSeenClasses(in dir: Node) {
        let names: [String] = (try? withLock { () throws(ControlError) -> [String] in
            guard !dir.removed, let r = dir.filter as? any ClassReporting else { return [] }
            var out: [String] = []
            for n in r.seenClassNames() where offeredClasses.insert("\(dir.id)/\(n)").inserted {
                if child(of: dir, named: n) == nil { out.append(n) }
            }
            return out
        }) ?? []
        for n in names { _ = try? makeDirectory(in: dir, named: n, uid: dir.uid, gid: dir.gid) }
    }

    /// Names every filter directory holds as files.
    public static let fileNames: Set<String> = ["all", "all.pcap", "stats", "ctl"]
    /// Names the root holds as files.
    public static let rootFileNames: Set<String> = [".errors", ".ctl", ".spaces", ".requests"]

    public init(space: Space = Space(), mountPoint: String = "/pipes", library: [String: FilterDescriptor] = FilterLibrary.byName) {
        self.space = space
        self.mountPoint = mountPoint
        self.library = library
        let log = errors
        space.errorHandler = { log.append($0) }
    }

    /// Runs `body` with the space lock held.
    public func withLock<R>(_ body: () throws(ControlError) -> R) throws(ControlError) -> R {
        space.lock.lock()
        defer { space.lock.unlock() }
        return try body()
    }

    /// Records a refused operation in `.errors` and returns the error to throw.
    public func fail(_ op: String, _ e: ControlError) -> ControlError {
        errors.append("\(op): \(e.message) (\(errnoName(e.errno)))")
        return e
    }

    // MARK: lookup (lock held)

    public func child(of parent: Node?, named name: String) -> Entry? {
        if let p = parent {
            if let c = p.children.first(where: { $0.name == name }) { return .node(c) }
            if let l = p.links.first(where: { $0.name == name }) {
                return .link(dir: p, id: l.id, name: l.name, text: l.text, target: l.target)
            }
            return nil
        }
        return space.roots.first(where: { $0.name == name }).map { .node($0) }
    }

    /// Resolves a path (absolute within the mount, or relative to `base`), following symlinks.
    public func resolve(_ text: String, from base: Node?) -> Node? {
        var path = text
        var current: Node? = base
        if path.hasPrefix("/") {
            let mp = mountPoint.hasSuffix("/") ? String(mountPoint.dropLast()) : mountPoint
            if path == mp { return nil }
            guard path.hasPrefix(mp + "/") else { return nil }
            path = String(path.dropFirst(mp.count))
            current = nil
        }
        for part in path.split(separator: "/") {
            switch part {
            case ".": continue
            case "..": current = current?.parent
            default:
                switch child(of: current, named: String(part)) {
                case .node(let n): current = n
                case .link(_, _, _, _, let t): current = t
                case nil: return nil
                }
            }
        }
        return current
    }

    // MARK: sources

    /// Adds a top-level source from `NAME=SCHEME:SPEC` (`pcap:`, `live:`, `inject:`).
    @discardableResult
    public func addSource(_ definition: String, uid: UInt32 = 0, gid: UInt32 = 0) throws(ControlError) -> Node {
        guard let eq = definition.firstIndex(of: "=") else {
            throw fail("source '\(definition)'", ControlError(EINVAL, "want NAME=SCHEME:SPEC, e.g. web=pcap:/tmp/web.pcap,loop"))
        }
        let name = String(definition[..<eq])
        let rest = String(definition[definition.index(after: eq)...])
        let scheme = rest.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
        let spec = rest.contains(":") ? String(rest[rest.index(after: rest.firstIndex(of: ":")!)...]) : ""
        let op = "source \(name)"
        try checkName(name, root: true, op: op)
        guard let d = FilterLibrary.sources[scheme] else {
            throw fail(op, ControlError(EINVAL, "unknown source scheme '\(scheme)' (pcap:PATH, live:IFACE, inject:IFACE, gen:size=BYTES)"))
        }
        if (try withLock { () throws(ControlError) -> Bool in child(of: nil, named: name) != nil }) {
            throw fail(op, ControlError(EEXIST, "'\(name)' exists"))
        }
        let filter: any Filter
        do { filter = try d.make(spec) } catch { throw fail(op, ControlError(error.errno, error.message)) }
        return try withLock { () throws(ControlError) -> Node in
            if child(of: nil, named: name) != nil {
                filter.shutdown()
                throw fail(op, ControlError(EEXIST, "'\(name)' exists"))
            }
            let node = Node(id: space.allocateID(), name: name, descriptor: d, filter: filter, uid: uid, gid: gid)
            space.attach(node, under: nil)
            if let s = filter as? any SourceFilter {
                do { try s.attach(space: space, node: node) } catch {
                    space.remove(node)
                    let e = error as? FilterError ?? FilterError("\(error)")
                    throw fail(op, ControlError(e.errno, e.message))
                }
            }
            space.refresh()
            return node
        }
    }

    // MARK: directories

    private func checkName(_ name: String, root: Bool, op: String) throws(ControlError) {
        if name.isEmpty || name == "." || name == ".." { throw fail(op, ControlError(EINVAL, "empty or reserved name")) }
        if name.utf8.count > 255 { throw fail(op, ControlError(ENAMETOOLONG, "name longer than 255 bytes")) }
        if Controller.fileNames.contains(name) || (root && Controller.rootFileNames.contains(name)) {
            throw fail(op, ControlError(EEXIST, "'\(name)' is a file every filter directory holds"))
        }
    }

    /// Splits `FILTER=ARGS`.
    public static func splitName(_ name: String) -> (filter: String, arguments: String) {
        guard let eq = name.firstIndex(of: "=") else { return (name, "") }
        return (String(name[..<eq]), String(name[name.index(after: eq)...]))
    }

    /// Instantiates what a directory name asks for below `parent`: a class selection or a filter.
    private func instantiate(_ name: String, below parent: Node?, op: String) throws(ControlError)
        -> (FilterDescriptor, any Filter, ClassSelector, Bool)
    {
        guard let parent else {
            let (_, args) = Controller.splitName(name)
            do { return (FilterLibrary.junction, try FilterLibrary.junction.make(args), .any, false) } catch {
                throw fail(op, ControlError(error.errno, error.message))
            }
        }
        let (fname, args) = Controller.splitName(name)
        if parent.descriptor.classifying {
            // Below a classifying filter a name is a class selector unless it names a filter.
            do {
                let sel = try ClassSelector.parse(name, names: parent.descriptor.classNames)
                return (ClassSelection.descriptor, ClassSelection(), sel, true)
            } catch {
                if library[fname] == nil {
                    throw fail(op, ControlError(EINVAL, "'\(name)' is neither a class of \(parent.descriptor.name) (\(error.message)) nor a filter"))
                }
            }
        }
        guard let d = library[fname] else {
            var hint = ""
            if parent.descriptor.classifying { hint = "; below \(parent.descriptor.name) a class is a number, LO:HI, !N or a name" }
            throw fail(op, ControlError(EINVAL, "unknown filter '\(fname)' (filters: \(library.keys.sorted().joined(separator: " "))\(hint))"))
        }
        do { return (d, try d.make(args), .any, false) } catch {
            throw fail(op, ControlError(error.errno, prefixed(fname, error.message)))
        }
    }

    /// `mkdir PARENT/NAME`: a filter on PARENT's output, a class selection, or (at the top) a junction. A
    /// `dormant` edge from PARENT forwards nothing until activated (a request's new path, §7.1).
    @discardableResult
    public func makeDirectory(in parent: Node?, named name: String, uid: UInt32 = 0, gid: UInt32 = 0,
                              dormant: Bool = false) throws(ControlError) -> Node {
        let op = "mkdir \(pathOf(parent, name))"
        try checkName(name, root: parent == nil, op: op)
        if (try withLock { () throws(ControlError) -> Bool in child(of: parent, named: name) != nil }) {
            throw fail(op, ControlError(EEXIST, "'\(name)' exists"))
        }
        // Instantiate without the lock: a filter may open files (pcapout), and a path inside this very mount
        // would need a FUSE worker that waits for the lock.
        let (d, filter, selector, isClass) = try instantiate(name, below: parent, op: op)
        return try place(filter, d, selector: selector, isClass: isClass, in: parent, named: name, uid: uid, gid: gid,
                         home: nil, dormant: dormant, op: op)
    }

    /// `mkdir` with the filter given apart from the directory's name: the request language's way to make a filter
    /// whose arguments a name cannot carry (a path with '/'). `arguments` go to the filter as after `=`. It runs
    /// in execution space `inSpace` (default: its parent's); a `dormant` edge from the parent forwards nothing
    /// until activated.
    @discardableResult
    public func makeFilter(_ d: FilterDescriptor, arguments: String, in parent: Node, named name: String,
                           uid: UInt32 = 0, gid: UInt32 = 0, inSpace: Int? = nil, dormant: Bool = false) throws(ControlError) -> Node {
        let op = "mkdir \(pathOf(parent, name))"
        try checkName(name, root: false, op: op)
        if let k = inSpace, !space.spaces.indices.contains(k) {
            throw fail(op, ControlError(EINVAL, "no space \(k) (this mount has \(space.spaces.count): 0 to \(space.spaces.count - 1); see --spaces)"))
        }
        let filter: any Filter
        do { filter = try d.make(arguments) } catch { throw fail(op, ControlError(error.errno, prefixed(d.name, error.message))) }
        return try place(filter, d, selector: .any, isClass: false, in: parent, named: name, uid: uid, gid: gid,
                         home: inSpace.map { space.spaces[$0] }, dormant: dormant, op: op)
    }

    /// Puts a made filter into the graph below `parent` (the lock taken here): checks, attach (in `home`, default
    /// its parent's space), bind, refresh.
    private func place(_ filter: any Filter, _ d: FilterDescriptor, selector: ClassSelector, isClass: Bool, in parent: Node?,
                       named name: String, uid: UInt32, gid: UInt32, home: ExecutionSpace?, dormant: Bool,
                       op: String) throws(ControlError) -> Node {
        space.lock.lock()
        defer { space.lock.unlock() }
        if let p = parent, p.removed { filter.shutdown(); throw fail(op, ControlError(ENOENT, "parent was removed")) }
        if child(of: parent, named: name) != nil { filter.shutdown(); throw fail(op, ControlError(EEXIST, "'\(name)' exists")) }
        do {
            try filter.attach(streamLinkType: parent.flatMap { space.streamLinkType($0) })
        } catch {
            filter.shutdown()
            throw fail(op, ControlError(error.errno, prefixed(d.name, error.message)))
        }
        let node = Node(id: space.allocateID(), name: name, descriptor: d, filter: filter, selector: selector,
                        isClassSelection: isClass, uid: uid, gid: gid)
        space.attach(node, under: parent, home: parent == nil ? nil : home, dormant: dormant)
        if let p = parent, node.home !== p.home, !space.spacesAcyclic() {
            space.remove(node)  // undo
            space.refresh()
            throw fail(op, ControlError(EDEADLK, "'\(name)' in space \(node.home.index) below '\(p.name)' (space \(p.home.index)) would make execution spaces feed each other in a cycle"))
        }
        do { try bindProducer(filter, to: node, op: op) } catch {
            space.remove(node)
            space.refresh()
            throw error
        }
        space.refresh()
        return node
    }

    /// Binds a filter to its node once placed there: one below a parent that produces its output from a thread of
    /// its own (`exec`: a process's stdout) starts it; one that queues through the space (`pcapout`) gets it.
    /// Lock held.
    private func bindProducer(_ filter: any Filter, to node: Node, op: String) throws(ControlError) {
        do {
            if let s = filter as? any SourceFilter { try s.attach(space: space, node: node) }
            if let b = filter as? any SpaceBoundFilter { try b.bind(space: space, node: node) }
        } catch {
            throw fail(op, ControlError(error.errno, prefixed(node.descriptor.name, error.message)))
        }
    }

    /// `rmdir PARENT/NAME`.
    public func removeDirectory(in parent: Node?, named name: String) throws(ControlError) {
        let op = "rmdir \(pathOf(parent, name))"
        try withLock { () throws(ControlError) in
            switch child(of: parent, named: name) {
            case nil: throw fail(op, ControlError(ENOENT, "no such filter"))
            case .link: throw fail(op, ControlError(ENOTDIR, "'\(name)' is a symlink (use rm)"))
            case .node(let n):
                if !n.children.isEmpty || !n.links.isEmpty {
                    let names = (n.children.map(\.name) + n.links.map(\.name)).joined(separator: ", ")
                    throw fail(op, ControlError(ENOTEMPTY, "filter has children: \(names)"))
                }
                space.remove(n)
                space.refresh()
            }
        }
    }

    /// `mv PARENT/NAME NEWPARENT/NEWNAME`: re-parents a filter live (readers keep their files), renames it (a
    /// different `=ARGS` gives it a fresh instance with those arguments), or moves a symlink to another directory.
    public func rename(in parent: Node?, named name: String, to newParent: Node?, as newName: String,
                       noReplace: Bool = false) throws(ControlError) {
        let op = "rename \(pathOf(parent, name)) -> \(pathOf(newParent, newName))"
        try checkName(newName, root: newParent == nil, op: op)
        // New arguments mean a new filter instance, made without the lock (it may open files).
        let wanted: (Node, FilterDescriptor, String)? = try withLock { () throws(ControlError) -> (Node, FilterDescriptor, String)? in
            // Anything the locked pass below refuses first (a missing entry, an existing target) is left to it.
            guard case .node(let n)? = child(of: parent, named: name), child(of: newParent, named: newName) == nil else { return nil }
            return try argumentChange(n, newName, op: op).map { (n, n.descriptor, $0) }
        }
        var fresh: (any Filter)?
        if let (_, d, args) = wanted {
            do { fresh = try d.make(args) } catch { throw fail(op, ControlError(EINVAL, prefixed(d.name, error.message))) }
        }
        var old: (any Filter)?
        defer { old?.shutdown() }
        do throws(ControlError) {
            try withLock { () throws(ControlError) in
                if let np = newParent, np.removed { throw fail(op, ControlError(ENOENT, "target directory was removed")) }
                guard let entry = child(of: parent, named: name) else { throw fail(op, ControlError(ENOENT, "no such entry")) }
                if let existing = child(of: newParent, named: newName) {
                    if case .node(let a) = entry, case .node(let b) = existing, a === b { return }
                    throw fail(op, ControlError(EEXIST, "'\(newName)' exists in the target directory"))
                }
                switch entry {
                case .link(let dir, _, _, let text, let target):
                    guard let np = newParent else { throw fail(op, ControlError(EPERM, "symlinks live inside filter directories")) }
                    if target === np || target.reaches(np) { throw fail(op, ControlError(ELOOP, "the link would make a loop")) }
                    if np !== dir && (np.links.contains(where: { $0.target === target }) || target.parent === np) {
                        throw fail(op, ControlError(EEXIST, "'\(np.name)' already feeds '\(target.name)'"))
                    }
                    // Relative text would point elsewhere from the new directory: keep it absolute.
                    let newText = np === dir || text.hasPrefix("/") ? text : mountPoint + target.path
                    space.removeLink(in: dir, name: name)
                    space.addLink(in: np, name: newName, text: newText, to: target)
                    space.refresh()
                case .node(let n):
                    let change = try argumentChange(n, newName, op: op)
                    if change != wanted?.2 || (change != nil && wanted?.0 !== n) {
                        throw fail(op, ControlError(EAGAIN, "the filter changed during the rename; try again"))
                    }
                    old = try moveNode(n, to: newParent, as: newName, fresh: fresh, op: op)
                    fresh = nil
                }
            }
        } catch {
            fresh?.shutdown()
            throw error
        }
        fresh?.shutdown()
    }

    /// The new argument text a rename to `newName` asks of `n`'s filter, or nil if it keeps its instance.
    /// Lock held.
    private func argumentChange(_ n: Node, _ newName: String, op: String) throws(ControlError) -> String? {
        if n.isClassSelection || n.isSource || n.filter is any InputInjectable || newName == n.name { return nil }
        let (oldF, oldA) = Controller.splitName(n.name)
        let (newF, newA) = Controller.splitName(newName)
        let isJunction = n.descriptor.name == FilterLibrary.junction.name
        if !isJunction && newF != oldF {
            throw fail(op, ControlError(EINVAL, "a rename cannot change the filter kind ('\(oldF)' to '\(newF)')"))
        }
        return newA != oldA || (isJunction && newA != n.filter.arguments) ? newA : nil
    }

    /// Moves (and renames) a node; with `fresh`, swaps in that filter instance. Returns the instance it
    /// replaced, to shut down after the lock is released. Lock held.
    private func moveNode(_ n: Node, to newParent: Node?, as newName: String, fresh: (any Filter)?,
                          op: String) throws(ControlError) -> (any Filter)? {
        if (n.isSource || n.filter is any InputInjectable) && newParent != nil {
            throw fail(op, ControlError(EINVAL, "'\(n.name)' stays at the top level (feed it with ln -s)"))
        }
        if let np = newParent, n.reaches(np) { throw fail(op, ControlError(EINVAL, "cannot move a filter below itself or its own output")) }
        if let np = newParent, np.links.contains(where: { $0.target === n }) {
            throw fail(op, ControlError(EEXIST, "'\(np.name)' already feeds '\(n.name)' through a symlink"))
        }
        var selector = n.selector
        if n.isClassSelection {
            guard let np = newParent, np.descriptor.classifying else {
                let names = library.values.filter(\.classifying).map(\.name).sorted().joined(separator: ", ")
                throw fail(op, ControlError(EINVAL, "a class selection belongs below a classifying filter (\(names))"))
            }
            do { selector = try ClassSelector.parse(newName, names: np.descriptor.classNames) } catch {
                throw fail(op, ControlError(EINVAL, error.message))
            }
        }
        let oldParent = n.parent
        let oldName = n.name
        let oldSelector = n.selector
        space.move(n, under: newParent, name: newName, selector: selector)
        if !space.spacesAcyclic() {
            space.move(n, under: oldParent, name: oldName, selector: oldSelector)  // undo
            throw fail(op, ControlError(EDEADLK, "'\(n.name)' runs in space \(n.home.index): below '\(newParent?.name ?? "/")' it would make execution spaces feed each other in a cycle (move it with ctl 'space K' first)"))
        }
        let filter = fresh ?? n.filter
        do {
            try filter.attach(streamLinkType: newParent.flatMap { space.streamLinkType($0) } ?? space.streamLinkType(n))
        } catch {
            space.move(n, under: oldParent, name: oldName, selector: oldSelector)  // undo
            throw fail(op, ControlError(error.errno, prefixed(n.descriptor.name, error.message)))
        }
        if let f = fresh {
            do { try bindProducer(f, to: n, op: op) } catch {
                space.move(n, under: oldParent, name: oldName, selector: oldSelector)  // undo
                throw error
            }
        }
        let old = fresh.map { n.replaceFilter($0) }
        space.refresh()
        return old
    }

    /// `ln -s TEXT DIR/NAME`: DIR becomes an additional parent of the target (fan-in). A `dormant` edge forwards
    /// nothing until activated (a request's new path, §7.1).
    @discardableResult
    public func link(_ text: String, in dir: Node?, named name: String, dormant: Bool = false) throws(ControlError) -> UInt64 {
        let op = "symlink \(pathOf(dir, name)) -> \(text)"
        try checkName(name, root: dir == nil, op: op)
        return try withLock { () throws(ControlError) -> UInt64 in
            guard let dir else { throw fail(op, ControlError(EPERM, "symlinks go inside a filter directory")) }
            if dir.removed { throw fail(op, ControlError(ENOENT, "directory was removed")) }
            if child(of: dir, named: name) != nil { throw fail(op, ControlError(EEXIST, "'\(name)' exists")) }
            guard let target = resolve(text, from: dir) else {
                throw fail(op, ControlError(ENOENT, "target '\(text)' is not a filter directory in this tree"))
            }
            if target.isSource { throw fail(op, ControlError(EINVAL, "'\(target.name)' is a source: it has no input")) }
            if target === dir || target.reaches(dir) { throw fail(op, ControlError(ELOOP, "the link would make a loop")) }
            if dir.links.contains(where: { $0.target === target }) || target.parent === dir {
                throw fail(op, ControlError(EEXIST, "'\(dir.name)' already feeds '\(target.name)'"))
            }
            let id = space.addLink(in: dir, name: name, text: text, to: target, dormant: dormant)
            if !space.spacesAcyclic() {
                space.removeLink(in: dir, name: name)  // undo
                throw fail(op, ControlError(EDEADLK, "'\(dir.name)' (space \(dir.home.index)) feeding '\(target.name)' (space \(target.home.index)) would make execution spaces feed each other in a cycle"))
            }
            space.refresh()
            return id
        }
    }

    /// `rm DIR/NAME` of a symlink: removes that edge.
    public func unlink(in dir: Node?, named name: String) throws(ControlError) {
        let op = "unlink \(pathOf(dir, name))"
        try withLock { () throws(ControlError) in
            if Controller.fileNames.contains(name) || (dir == nil && Controller.rootFileNames.contains(name)) {
                throw fail(op, ControlError(EPERM, "'\(name)' is part of the filter directory"))
            }
            switch child(of: dir, named: name) {
            case nil: throw fail(op, ControlError(ENOENT, "no such entry"))
            case .node: throw fail(op, ControlError(EISDIR, "'\(name)' is a filter (use rmdir)"))
            case .link(let d, _, _, _, _):
                space.removeLink(in: d, name: name)
                space.refresh()
            }
        }
    }

    // MARK: control files

    /// One line written to a filter's `ctl`: `args TEXT`, or a command the filter knows (`start`, `reset`...).
    public func control(_ node: Node, _ line: String) throws(ControlError) {
        let trimmed = line.trimmingWhitespace()
        if trimmed.isEmpty { return }
        let op = "ctl \(node.path): '\(trimmed)'"
        let cmd = String(trimmed.prefix { $0 != " " && $0 != "\t" })
        let arg = String(trimmed.dropFirst(cmd.count)).trimmingWhitespace()
        if cmd == "args" { return try replaceArguments(node, arg, op: op) }
        if cmd == "space" { return try placeNode(node, arg, op: op) }
        if cmd == "moderation" { return try moderate(node, arg, op: op) }
        try withLock { () throws(ControlError) in
            if node.removed { throw fail(op, ControlError(ENOENT, "filter was removed")) }
            switch node.filter.control(cmd, arg) {
            case .success?: space.refresh()
            case .failure(let e)?: throw fail(op, ControlError(e.errno, prefixed(node.descriptor.name, e.message)))
            case nil:
                throw fail(op, ControlError(EINVAL, "unknown command '\(cmd)' for \(node.descriptor.name) (see: cat ctl)"))
            }
        }
    }

    /// `space K`: runs the node, and what below it ran with it, in execution space K (§6.2).
    private func placeNode(_ node: Node, _ arg: String, op: String) throws(ControlError) {
        guard let k = Int(arg) else {
            throw fail(op, ControlError(EINVAL, "space wants a number, 0 to \(space.spaces.count - 1)"))
        }
        try withLock { () throws(ControlError) in
            if node.removed { throw fail(op, ControlError(ENOENT, "filter was removed")) }
            do throws(PlacementError) { try space.place(node, inSpace: k) } catch { throw fail(op, ControlError(error.errno, error.message)) }
        }
    }

    /// `moderation THRESHOLD DELAY_US`: how blocks crossing into this node's space are signalled (§6.2).
    private func moderate(_ node: Node, _ arg: String, op: String) throws(ControlError) {
        let parts = arg.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2, let t = Int(parts[0]), let us = Int(parts[1]) else {
            throw fail(op, ControlError(EINVAL, "moderation wants THRESHOLD (blocks) and DELAY (microseconds), e.g. 'moderation 32 200'"))
        }
        try withLock { () throws(ControlError) in
            if node.removed { throw fail(op, ControlError(ENOENT, "filter was removed")) }
            do throws(PlacementError) {
                try space.setModeration(node, threshold: t, delayNanoseconds: us.multipliedReportingOverflow(by: 1000).overflow ? -1 : us * 1000)
            } catch {
                throw fail(op, ControlError(error.errno, error.message))
            }
        }
    }

    /// `args TEXT`: a fresh instance of the node's filter with new arguments, made without the lock (it may
    /// open files, even inside this mount), swapped in atomically; the old one keeps running until then.
    private func replaceArguments(_ node: Node, _ arg: String, op: String) throws(ControlError) {
        let d = try withLock { () throws(ControlError) -> FilterDescriptor in
            if node.removed { throw fail(op, ControlError(ENOENT, "filter was removed")) }
            if node.isSource || node.isClassSelection || node.filter is any InputInjectable {
                throw fail(op, ControlError(EINVAL, "\(node.descriptor.name) takes no arguments here"))
            }
            return node.descriptor
        }
        let fresh: any Filter
        do { fresh = try d.make(arg) } catch { throw fail(op, ControlError(EINVAL, prefixed(d.name, error.message))) }
        var old: (any Filter)?
        do throws(ControlError) {
            try withLock { () throws(ControlError) in
                if node.removed { throw fail(op, ControlError(ENOENT, "filter was removed")) }
                do throws(FilterError) {
                    try fresh.attach(streamLinkType: node.parent.flatMap { space.streamLinkType($0) } ?? space.streamLinkType(node))
                } catch {
                    throw fail(op, ControlError(EINVAL, prefixed(d.name, error.message)))
                }
                try bindProducer(fresh, to: node, op: op)
                old = node.replaceFilter(fresh)
                space.refresh()
            }
        } catch {
            fresh.shutdown()
            throw error
        }
        old?.shutdown()
    }

    /// One line written to `/.ctl`: `source NAME=SCHEME:SPEC`.
    public func rootControl(_ line: String, uid: UInt32, gid: UInt32) throws(ControlError) {
        let trimmed = line.trimmingWhitespace()
        if trimmed.isEmpty { return }
        if trimmed.hasPrefix("source ") {
            try addSource(String(trimmed.dropFirst(7)).trimmingWhitespace(), uid: uid, gid: gid)
        } else if trimmed.hasPrefix("mkdir ") {
            // mkdir /A/B/C: C below the existing /A/B (what `pipesfs save` writes for class directories with
            // nothing below them).
            let (parent, last) = try rootPath(String(trimmed.dropFirst(6)).trimmingWhitespace(), op: ".ctl: '\(trimmed)'")
            try makeDirectory(in: parent, named: last, uid: uid, gid: gid)
        } else if trimmed.hasPrefix("link ") {
            // link /A/B/NAME -> TARGET: the symlink NAME in /A/B (as ln -s TARGET /A/B/NAME; `pipesfs save`).
            let body = String(trimmed.dropFirst(5))
            guard let arrow = body.indices.first(where: { body[$0...].hasPrefix(" -> ") }) else {
                throw fail(".ctl: '\(trimmed)'", ControlError(EINVAL, "link wants PATH -> TARGET"))
            }
            let (dir, name) = try rootPath(String(body[..<arrow]).trimmingWhitespace(), op: ".ctl: '\(trimmed)'")
            try link(String(body[body.index(arrow, offsetBy: 4)...]).trimmingWhitespace(), in: dir, named: name)
        } else if trimmed.hasPrefix("junction ") {
            try makeDirectory(in: nil, named: String(trimmed.dropFirst(9)).trimmingWhitespace(), uid: uid, gid: gid)
        } else if trimmed.hasPrefix("run ") {
            try run(String(trimmed.dropFirst(4)).trimmingWhitespace(), uid: uid, gid: gid)
        } else if trimmed.hasPrefix("stop ") {
            let arg = String(trimmed.dropFirst(5)).trimmingWhitespace()
            guard let id = Int(arg) else { throw fail(".ctl: '\(trimmed)'", ControlError(EINVAL, "stop wants a request id (see /.requests)")) }
            try stop(id, uid: uid)
        } else {
            throw fail(".ctl: '\(trimmed)'", ControlError(EINVAL, "unknown command (source NAME=SCHEME:SPEC, junction NAME, mkdir PATH, link PATH -> TARGET, run REQUEST, stop ID)"))
        }
    }

    /// The directory holding the last component of `/A/B/C` (nil: the root) and that component.
    private func rootPath(_ path: String, op: String) throws(ControlError) -> (Node?, String) {
        let parts = path.split(separator: "/").map(String.init)
        guard let last = parts.last else { throw fail(op, ControlError(EINVAL, "want a path below the root")) }
        let parent: Node? = try withLock { () throws(ControlError) -> Node? in
            var n: Node?
            for p in parts.dropLast() {
                guard case .node(let c)? = child(of: n, named: p) else {
                    throw fail(op, ControlError(ENOENT, "no directory '\(p)' on the way"))
                }
                n = c
            }
            return n
        }
        return (parent, last)
    }

    /// The text of a node's `ctl` when read.
    public func controlText(_ node: Node) -> String {
        space.lock.withLock {
            var s = "filter: \(node.descriptor.name)\n"
            s += "summary: \(node.descriptor.summary)\n"
            s += "usage: \(node.descriptor.usage)\n"
            if node.isClassSelection { s += "class: \(node.selector.text)\n" } else { s += "args: \(node.filter.arguments)\n" }
            var cmds = node.isSource || node.isClassSelection || node.filter is any InputInjectable ? [] : ["args TEXT"]
            if node.filter is PcapFileSource { cmds += ["start", "stop", "rewind", "rate PPS"] }
            if node.filter is GeneratorSource { cmds += ["start", "stop", "rate BPS"] }
            if node.filter is Count || node.filter is Histogram { cmds += ["reset"] }
            if node.filter is PcapOut { cmds += ["sync"] }
            if node.filter is PortClassifier { cmds += ["seen [on|off]"] }
            if !node.isSource && space.spaces.count > 1 { cmds += ["space 0..\(space.spaces.count - 1)", "moderation THRESHOLD DELAY_US"] }
            s += "commands: \(cmds.joined(separator: ", "))\n"
            return s
        }
    }

    /// The text of a node's `stats`.
    public func statsText(_ node: Node) -> String {
        space.lock.withLock {
            let st = node.stats
            var lines: [(String, String)] = [
                ("filter", node.descriptor.name), ("path", node.path),
                ("packets_in", "\(st.packetsIn)"), ("bytes_in", "\(st.bytesIn)"),
                ("packets_out", "\(st.packetsOut)"), ("bytes_out", "\(st.bytesOut)"),
                ("dropped", "\(node.ringTaps.reduce(st.tapDrops) { $0 &+ $1.dropped })"),
                ("readers", "\(node.taps.count + node.ringTaps.count)"),
                ("writers_waiting", "\(space.pendingWriteCount(node))"),
                ("stream", node.ended ? "ended" : "open"),
                ("space", "\(node.home.index)"),
            ]
            let chans = space.inputChannels(node)
            if !chans.isEmpty {
                // Records that crossed into this node's space: appended by the producers, delivered here, lost
                // (overtaken on a lossy channel), refused (a lossless channel overshot by its maximum).
                let sum = { (f: (SpaceChannel) -> UInt64) in chans.reduce(UInt64(0)) { $0 &+ f($1) } }
                let r = chans[0].ring
                lines.append(("channel_in", "produced=\(sum { $0.produced }) delivered=\(sum { $0.delivered }) dropped=\(sum { $0.dropped }) refused=\(sum { $0.refused }) policy=\(chans[0].policy.rawValue) threshold=\(r.threshold) delay_us=\(r.delayNanoseconds / 1000)"))
            }
            if node.isClassSelection { lines.insert(("class", node.selector.text), at: 1) }
            lines += node.filter.statistics()
            return lines.map { "\($0.0): \($0.1)\n" }.joined()
        }
    }

    /// Prefixes a filter's message with its name unless it already starts with it.
    func prefixed(_ name: String, _ message: String) -> String {
        message.hasPrefix(name + ":") ? message : "\(name): \(message)"
    }

    func pathOf(_ parent: Node?, _ name: String) -> String {
        (parent?.path ?? "") + "/" + name
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}

extension Controller {
    /// Checks a source definition without adding it (opens and closes its file or interface).
    public static func validateSource(_ definition: String) throws(ControlError) {
        let c = Controller()
        _ = try c.addSource(definition)
        // Stop its thread and wait for it: the daemon forks (fuse_daemonize) right after validating, and a
        // thread caught inside the Swift runtime's metadata lock at the fork deadlocks the child.
        c.shutdown()
    }

    /// Unmount: stops every source and waits for its thread, answers parked writes (ENOTCONN) and parked reads
    /// (end of file), closes every filter. Afterwards nothing touches the FUSE session any more.
    public func shutdown() {
        let sources: [any SourceFilter] = space.lock.withLock {
            let ss = space.nodes.values.compactMap { $0.filter as? any SourceFilter }
            for s in ss { s.shutdown() }
            return ss
        }
        for s in sources where !s.waitUntilStopped(timeoutNanoseconds: 5_000_000_000) {
            errors.append("shutdown: a source thread did not stop within 5 s")
        }
        // What is in flight between execution spaces goes on to its readers and writers; then their threads stop.
        space.stopSpaces()
        space.failPendingWrites(ENOTCONN)
        space.lock.withLock {
            for n in space.nodes.values {
                for t in n.taps { t.ring.endOfStream() }
                n.exportRing?.endOfStream()
                if !(n.filter is any SourceFilter) { n.filter.shutdown() }
            }
        }
        // Writers (pcapout) finish their queued bytes after shutdown(): wait for them without the lock.
        let draining: [any DrainingFilter] = space.lock.withLock { space.nodes.values.compactMap { $0.filter as? any DrainingFilter } }
        for d in draining where !d.waitUntilStopped(timeoutNanoseconds: 10_000_000_000) {
            errors.append("shutdown: \(type(of: d)) did not finish writing within 10 s")
        }
        errors.flush()
    }
}
