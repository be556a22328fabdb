#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime

// The PipesFS tree (§4.1). Directories are filters; nesting is data flow.
//
//     /pipes/
//       .errors                 recent errors, newest last (read-only)
//       .ctl                    write `source NAME=SCHEME:SPEC` to add a source
//       .spaces                 execution spaces: CPU, thread, nodes, channels, records consumed (read-only)
//       .requests               requests built with `run` (.ctl): ID UID REQUEST (read-only)
//       SOURCE/                 rx, tx, capture-file sources, junctions (any other top-level name)
//         all                   live copy of the output from the moment of opening; writes inject
//         all.pcap              the same stream as a pcap file (header, then records)
//         stats                 counters (text)
//         ctl                   control: `args TEXT`, `start`, `stop`, `rewind`, `reset`... (text)
//         FILTER[=ARGS]/        a filter on SOURCE's output
//           CLASS/              a class selection below a classifying filter (80, 22:23, !80, tcp)
//           LINK -> ../../X     a symlink: this directory is an extra parent of X (fan-in)
//
// Inode numbers: 1 is the root; a node with id N has directory inode N<<4 and file inodes N<<4 | kind;
// symlinks have their own id. Ids are never reused, so a handle to a removed node fails with ENOENT.
// Nothing here knows about FUSE: the wire layer (PipesFUSE) calls these methods and sends their replies.

/// The errno and reason of a refused file operation.
public typealias FSError = ControlError

/// What a file operation sees of an inode.
public struct Attributes: Equatable, Sendable {
    public enum Kind: Sendable { case directory, file, symlink }
    public var inode: UInt64
    public var kind: Kind
    public var mode: UInt32  // permission bits only
    public var links: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
}

/// The kinds of files a directory holds, packed into the low 4 bits of an inode number.
public enum FileKind: UInt64, CaseIterable, Sendable {
    case directory = 0, all = 1, pcap = 2, stats = 3, ctl = 4, symlink = 5
    public var name: String {
        switch self {
        case .directory: ""
        case .all: "all"
        case .pcap: "all.pcap"
        case .stats: "stats"
        case .ctl: "ctl"
        case .symlink: ""
        }
    }
    static let files: [FileKind] = [.all, .pcap, .stats, .ctl]
}

public let rootInode: UInt64 = 1
let errorsInode: UInt64 = 2
let rootCtlInode: UInt64 = 3
let spacesInode: UInt64 = 4
let requestsInode: UInt64 = 5

/// Who asks: for ownership of new directories.
public struct Caller: Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public init(uid: UInt32, gid: UInt32) { self.uid = uid; self.gid = gid }
    public static let root = Caller(uid: 0, gid: 0)
}

/// The graph as a node tree: lookups, directory operations and open files, each returning an errno on failure.
public final class Tree: @unchecked Sendable {
    public let controller: Controller
    public var space: Space { controller.space }
    /// Owner of the root directory and of nodes created at mount time.
    public let owner: Caller
    /// Half the size of the shared rings made from now on (rounded up to a power of two): a reader of a lossless
    /// stream may lag by half of this before the producer waits.
    public var tapCapacity = 8 << 20
    var sharedRingLog2: Int { Swift.max(13, Swift.min(30, Int.bitWidth - (tapCapacity - 1).leadingZeroBitCount + 1)) }
    /// Open taps (readers of `all` / `all.pcap`) one user may hold; each costs a ring. Root is not limited.
    public var maxTapsPerUser = 256
    /// Open taps by uid. Space lock held.
    private var tapsByUser: [UInt32: Int] = [:]

    public init(controller: Controller, owner: Caller = .root) {
        self.controller = controller
        self.owner = owner
    }

    // MARK: inode <-> node

    enum Resolved {
        case root, errors, rootCtl, spaces, requests
        case file(Node, FileKind)
        case link(dir: Node, id: UInt64, text: String, target: Node)
    }

    /// Resolves an inode. Lock held.
    func resolve(_ ino: UInt64) -> Resolved? {
        switch ino {
        case rootInode: return .root
        case errorsInode: return .errors
        case rootCtlInode: return .rootCtl
        case spacesInode: return .spaces
        case requestsInode: return .requests
        default: break
        }
        let id = ino >> 4
        guard let kind = FileKind(rawValue: ino & 0xF) else { return nil }
        if kind == .symlink {
            for n in space.nodes.values {
                if let l = n.links.first(where: { $0.id == id }) { return .link(dir: n, id: id, text: l.text, target: l.target) }
            }
            return nil
        }
        guard let n = space.nodes[id] else { return nil }
        return .file(n, kind)
    }

    func directory(_ ino: UInt64) throws(FSError) -> Node? {
        guard let r = resolve(ino) else { throw FSError(ENOENT, "stale inode") }
        switch r {
        case .root: return nil
        case .file(let n, .directory): return n
        default: throw FSError(ENOTDIR, "not a directory")
        }
    }

    func attributes(_ r: Resolved, _ ino: UInt64) -> Attributes {
        switch r {
        case .root:
            return Attributes(inode: rootInode, kind: .directory, mode: 0o755, links: 2 + UInt32(space.roots.count),
                              uid: owner.uid, gid: owner.gid, size: 0)
        case .errors, .spaces, .requests:
            return Attributes(inode: ino, kind: .file, mode: 0o444, links: 1, uid: owner.uid, gid: owner.gid, size: 0)
        case .rootCtl:
            return Attributes(inode: ino, kind: .file, mode: 0o200, links: 1, uid: owner.uid, gid: owner.gid, size: 0)
        case .link(_, let id, let text, _):
            return Attributes(inode: id << 4 | FileKind.symlink.rawValue, kind: .symlink, mode: 0o777, links: 1,
                              uid: owner.uid, gid: owner.gid, size: UInt64(text.utf8.count))
        case .file(let n, let k):
            let ino = n.id << 4 | k.rawValue
            switch k {
            case .directory:
                return Attributes(inode: ino, kind: .directory, mode: 0o755, links: 2 + UInt32(n.children.count),
                                  uid: n.uid, gid: n.gid, size: 0)
            case .all, .pcap:
                let writable = !(n.filter is any SourceFilter) || n.filter is LiveSource
                // Live traffic is readable by the owner only (as capturing needs privilege); the rest by all.
                let others: UInt32 = space.isFedByLiveSource(n) ? 0 : 0o044
                let mode: UInt32 = (k == .all && writable ? 0o600 : 0o400) | others
                return Attributes(inode: ino, kind: .file, mode: mode, links: 1, uid: n.uid, gid: n.gid, size: 0)
            case .stats:
                return Attributes(inode: ino, kind: .file, mode: 0o444, links: 1, uid: n.uid, gid: n.gid, size: 0)
            case .ctl:
                return Attributes(inode: ino, kind: .file, mode: 0o644, links: 1, uid: n.uid, gid: n.gid, size: 0)
            case .symlink:
                fatalError("unreachable")
            }
        }
    }

    // MARK: queries

    public func getattr(_ ino: UInt64) throws(FSError) -> Attributes {
        try controller.withLock { () throws(FSError) -> Attributes in
            guard let r = resolve(ino) else { throw FSError(ENOENT, "stale inode") }
            return attributes(r, ino)
        }
    }

    /// A filter that reports the classes it has seen gets their directories before its directory is read or looked
    /// in (`ClassReporting`).
    private func offerClasses(_ ino: UInt64) {
        guard ino != rootInode, let d = try? controller.withLock({ () throws(FSError) -> Node? in
            guard let d = try directory(ino), d.filter is any ClassReporting else { return nil }
            return d
        }) else { return }
        controller.offerSeenClasses(in: d)
    }

    public func lookup(_ parent: UInt64, _ name: String) throws(FSError) -> Attributes {
        do {
            return try lookupOnce(parent, name)
        } catch where error.errno == ENOENT {
            // A class directory the filter has reported but nobody listed yet (`cd http/get` before `ls http`).
            offerClasses(parent)
            return try lookupOnce(parent, name)
        }
    }

    private func lookupOnce(_ parent: UInt64, _ name: String) throws(FSError) -> Attributes {
        try controller.withLock { () throws(FSError) -> Attributes in
            let dir = try directory(parent)
            if dir == nil {
                if name == ".errors" { return attributes(.errors, errorsInode) }
                if name == ".ctl" { return attributes(.rootCtl, rootCtlInode) }
                if name == ".spaces" { return attributes(.spaces, spacesInode) }
                if name == ".requests" { return attributes(.requests, requestsInode) }
            } else if let d = dir, let k = FileKind.files.first(where: { $0.name == name }) {
                return attributes(.file(d, k), 0)
            }
            switch controller.child(of: dir, named: name) {
            case .node(let n)?: return attributes(.file(n, .directory), 0)
            case .link(let d, let id, _, let text, let t)?: return attributes(.link(dir: d, id: id, text: text, target: t), 0)
            case nil: throw FSError(ENOENT, "no such entry")
            }
        }
    }

    public struct DirectoryEntry: Equatable, Sendable {
        public var name: String
        public var inode: UInt64
        public var kind: Attributes.Kind
    }

    public func readdir(_ ino: UInt64) throws(FSError) -> [DirectoryEntry] {
        offerClasses(ino)
        return try controller.withLock { () throws(FSError) -> [DirectoryEntry] in
            let dir = try directory(ino)
            var out: [DirectoryEntry] = [
                DirectoryEntry(name: ".", inode: ino, kind: .directory),
                DirectoryEntry(name: "..", inode: dir?.parent.map { $0.id << 4 } ?? rootInode, kind: .directory),
            ]
            if let d = dir {
                for k in FileKind.files { out.append(DirectoryEntry(name: k.name, inode: d.id << 4 | k.rawValue, kind: .file)) }
                for c in d.children { out.append(DirectoryEntry(name: c.name, inode: c.id << 4, kind: .directory)) }
                for l in d.links { out.append(DirectoryEntry(name: l.name, inode: l.id << 4 | FileKind.symlink.rawValue, kind: .symlink)) }
            } else {
                out.append(DirectoryEntry(name: ".errors", inode: errorsInode, kind: .file))
                out.append(DirectoryEntry(name: ".ctl", inode: rootCtlInode, kind: .file))
                out.append(DirectoryEntry(name: ".spaces", inode: spacesInode, kind: .file))
                out.append(DirectoryEntry(name: ".requests", inode: requestsInode, kind: .file))
                for c in space.roots { out.append(DirectoryEntry(name: c.name, inode: c.id << 4, kind: .directory)) }
            }
            return out
        }
    }

    public func readlink(_ ino: UInt64) throws(FSError) -> String {
        try controller.withLock { () throws(FSError) -> String in
            guard let r = resolve(ino) else { throw FSError(ENOENT, "stale inode") }
            guard case .link(_, _, let text, _) = r else { throw FSError(EINVAL, "not a symlink") }
            return text
        }
    }

    // MARK: changes

    private func dirNode(_ ino: UInt64, _ op: String) throws(FSError) -> Node? {
        do {
            return try controller.withLock { () throws(FSError) -> Node? in try directory(ino) }
        } catch {
            throw controller.fail(op, error)
        }
    }

    public func mkdir(_ parent: UInt64, _ name: String, caller: Caller) throws(FSError) -> Attributes {
        let p = try dirNode(parent, "mkdir \(name)")
        if p == nil, Controller.rootFileNames.contains(name) {
            throw controller.fail("mkdir /\(name)", FSError(EEXIST, "'\(name)' is a file of the root"))
        }
        let n = try controller.makeDirectory(in: p, named: name, uid: caller.uid, gid: caller.gid)
        return try controller.withLock { () throws(FSError) -> Attributes in attributes(.file(n, .directory), 0) }
    }

    public func rmdir(_ parent: UInt64, _ name: String) throws(FSError) {
        let p = try dirNode(parent, "rmdir \(name)")
        if let p, FileKind.files.contains(where: { $0.name == name }) {
            throw controller.fail("rmdir \(p.path)/\(name)", FSError(ENOTDIR, "'\(name)' is a file"))
        }
        try controller.removeDirectory(in: p, named: name)
    }

    public func rename(_ parent: UInt64, _ name: String, _ newParent: UInt64, _ newName: String, flags: UInt32 = 0) throws(FSError) {
        if flags & 2 != 0 { throw controller.fail("rename \(name)", FSError(EINVAL, "RENAME_EXCHANGE is not supported")) }
        let p = try dirNode(parent, "rename \(name)")
        let np = try dirNode(newParent, "rename \(name)")
        if let p, FileKind.files.contains(where: { $0.name == name }) {
            throw controller.fail("rename \(p.path)/\(name)", FSError(EPERM, "'\(name)' is part of the filter directory"))
        }
        try controller.rename(in: p, named: name, to: np, as: newName, noReplace: flags & 1 != 0)
    }

    public func symlink(_ text: String, _ parent: UInt64, _ name: String) throws(FSError) -> Attributes {
        let p = try dirNode(parent, "symlink \(name)")
        let id = try controller.link(text, in: p, named: name)
        return try controller.withLock { () throws(FSError) -> Attributes in
            guard let r = resolve(id << 4 | FileKind.symlink.rawValue) else { throw FSError(ENOENT, "link vanished") }
            return attributes(r, 0)
        }
    }

    public func unlink(_ parent: UInt64, _ name: String) throws(FSError) {
        let p = try dirNode(parent, "unlink \(name)")
        try controller.unlink(in: p, named: name)
    }

    // MARK: files

    /// Opens an inode. `flags` are open(2) flags.
    public func open(_ ino: UInt64, flags: Int32, caller: Caller) throws(FSError) -> OpenFile {
        let acc = flags & O_ACCMODE
        let reading = acc == O_RDONLY || acc == O_RDWR
        let writing = acc == O_WRONLY || acc == O_RDWR
        space.lock.lock()
        guard let r = resolve(ino) else { space.lock.unlock(); throw FSError(ENOENT, "stale inode") }
        switch r {
        case .root, .link:
            space.lock.unlock()
            throw FSError(EISDIR, "not a file")
        case .errors:
            space.lock.unlock()
            if writing { throw FSError(EACCES, ".errors is read-only") }
            return SnapshotFile(controller.errors.text)
        case .spaces:
            let text = space.spacesText()
            space.lock.unlock()
            if writing { throw FSError(EACCES, ".spaces is read-only") }
            return SnapshotFile(text)
        case .requests:
            space.lock.unlock()
            if writing { throw FSError(EACCES, ".requests is read-only") }
            return SnapshotFile(controller.requests.text)
        case .rootCtl:
            space.lock.unlock()
            if reading { throw FSError(EACCES, ".ctl is write-only") }
            return ControlFile(tree: self, node: nil, caller: caller)
        case .file(let n, let k):
            switch k {
            case .directory, .symlink:
                space.lock.unlock()
                throw FSError(EISDIR, "is a directory")
            case .stats:
                space.lock.unlock()
                if writing { throw FSError(EACCES, "stats is read-only") }
                return SnapshotFile(controller.statsText(n))
            case .ctl:
                space.lock.unlock()
                return ControlFile(tree: self, node: n, caller: caller, text: reading ? controller.controlText(n) : "")
            case .all, .pcap:
                defer { space.lock.unlock() }
                if writing {
                    if k == .pcap {
                        throw controller.fail("open \(n.path)/all.pcap", FSError(EACCES, "all.pcap is read-only; write raw blocks to all"))
                    }
                    if n.filter is any SourceFilter && !(n.filter is LiveSource) {
                        let what = n.filter is PcapFileSource ? "a capture-file source; its stream comes from the file"
                            : n.descriptor.name == "exec" ? "a process (exec); its stream is what the process writes"
                            : "a \(n.descriptor.name) source; its stream comes from the source"
                        throw controller.fail("open \(n.path)/all", FSError(EACCES, "'\(n.name)' is \(what)"))
                    }
                }
                var tap: RingTap?
                if reading {
                    let file = "\(n.path)/\(k == .pcap ? "all.pcap" : "all")"
                    let held = tapsByUser[caller.uid, default: 0]
                    if caller.uid != 0 && held >= maxTapsPerUser {
                        throw controller.fail("open \(file)", FSError(EMFILE, "uid \(caller.uid) holds \(held) open taps (limit \(maxTapsPerUser))"))
                    }
                    // Readers share the node's ring (one copy of the stream however many read it); half of it
                    // is how far a reader of a lossless stream may lag before the producer waits.
                    space.sharedRingLog2 = sharedRingLog2
                    let x: ExportRing
                    do throws(RingError) { x = try space.exportRing(n) } catch {
                        throw controller.fail("open \(file)", FSError(error.errno, "shared ring: \(error.message)"))
                    }
                    var header: [UInt8] = []
                    var dlt: Int32 = -1
                    if k == .pcap {
                        let lt = space.streamLinkType(n) ?? .ethernet
                        dlt = lt.dltValue
                        header = lt.pcapFileHeader
                    }
                    guard let t = RingTap(export: x, pcapLinkType: dlt, fileHeader: header) else {
                        throw controller.fail("open \(file)", FSError(EMFILE, "the stream has \(x.maxReaders) readers already"))
                    }
                    tapsByUser[caller.uid] = held + 1
                    n.ringTaps.append(t)
                    space.refresh()
                    tap = t
                }
                return TapFile(tree: self, node: n, tap: tap, writable: writing, uid: caller.uid)
            }
        }
    }

    // MARK: shared rings (the client library)

    /// The abstract socket of the `RingService` serving this tree, if one runs. Space lock held.
    private var _ringServiceName: String?
    public internal(set) var ringServiceName: String? {
        get { space.lock.withLock { _ringServiceName } }
        set { space.lock.withLock { _ringServiceName = newValue } }
    }

    /// The extended attribute that tells the client library where a stream file's ring comes from.
    public static let ringAttribute = "user.pipes.ring"

    /// Extended attributes: `user.pipes.ring` on `all` (`@SOCKET NODE`) while the ring service runs.
    public func getxattr(_ ino: UInt64, _ name: String) throws(FSError) -> String {
        space.lock.lock()
        defer { space.lock.unlock() }
        guard let r = resolve(ino) else { throw FSError(ENOENT, "stale inode") }
        guard name == Tree.ringAttribute, case .file(let n, .all) = r, let s = _ringServiceName else {
            throw FSError(ENODATA, "no attribute \(name)")
        }
        return "@\(s) \(n.id)"
    }

    public func listxattr(_ ino: UInt64) throws(FSError) -> [String] {
        space.lock.lock()
        defer { space.lock.unlock() }
        guard let r = resolve(ino) else { throw FSError(ENOENT, "stale inode") }
        if case .file(_, .all) = r, _ringServiceName != nil { return [Tree.ringAttribute] }
        return []
    }

    /// A duplicate of the memfd of `node`'s shared ring (made on first use), for a reader with `caller`'s
    /// credentials, and a reader slot claimed in it for process `pid` (the stream is held for that reader from
    /// now on). The same permission check as opening its `all` for reading. The caller closes the descriptor.
    public func sharedRing(node id: UInt64, caller: Caller, groups: [UInt32] = [], pid: UInt32 = 0) throws(FSError)
        -> (fd: Int32, slot: Int, sequence: UInt64) {
        space.lock.lock()
        defer { space.lock.unlock() }
        guard let n = space.nodes[id] else { throw FSError(ENOENT, "no node \(id)") }
        // A mapping is writable memory shared with the daemon and its other readers (reader slots; the data
        // is mapped read-only only by the client's choice), so only the daemon's own user and root get one;
        // everybody else reads through the filesystem, where the kernel applies the mount's permissions
        // (libpipes falls back to that on EACCES).
        if caller.uid != 0 && caller.uid != owner.uid {
            throw FSError(EACCES, "rings are mapped for uid \(owner.uid) and root only; uid \(caller.uid) reads through the filesystem")
        }
        let a = attributes(.file(n, .all), 0)
        let bit: UInt32 = caller.uid == a.uid ? 0o400 : (caller.gid == a.gid || groups.contains(a.gid)) ? 0o040 : 0o004
        if caller.uid != 0 && a.mode & bit == 0 {
            throw controller.fail("map \(n.path)/all", FSError(EACCES, "uid \(caller.uid) may not read \(n.path)/all"))
        }
        let x: ExportRing
        space.sharedRingLog2 = sharedRingLog2
        do throws(RingError) { x = try space.exportRing(n) } catch {
            throw controller.fail("map \(n.path)/all", FSError(error.errno, "shared ring: \(error.message)"))
        }
        guard let claim = x.claimSlot(pid: pid) else {
            throw controller.fail("map \(n.path)/all", FSError(EMFILE, "the stream has \(x.maxReaders) readers already"))
        }
        let fd = fcntl(x.ring.fd, F_DUPFD_CLOEXEC, 0)
        if fd < 0 {
            let e = errno
            x.releaseSlot(claim.slot)
            throw FSError(e, "dup: \(String(cString: strerror(e)))")
        }
        x.clients += 1
        if x.clients == 1 { space.refresh() }  // demand from here on: the slot above already holds the stream
        
        return (fd, claim.slot, claim.sequence)
    }

    /// A client of the ring service left (its lease closed): when it was the node's last, the stream is no
    /// longer published for clients (nor its source demanded for them).
    /// `pid`, when given, held its last lease on the node: slots of that process in the node's ring are freed.
    public func clientLeft(node id: UInt64, pid: UInt32? = nil) {
        space.lock.withLock {
            guard let x = space.nodes[id]?.exportRing, x.clients > 0 else { return }
            if let pid, pid != UInt32(getpid()) { x.releaseSlots(of: pid) }
            x.clients -= 1
            if x.clients == 0 { space.refresh() }
        }
    }

    func closeTap(_ node: Node, _ tap: RingTap, uid: UInt32) {
        tap.close()
        space.lock.withLock {
            let held = tapsByUser[uid, default: 1] - 1
            tapsByUser[uid] = held > 0 ? held : nil
            node.ringTaps.removeAll { $0 === tap }
            node.countTapDrops(tap.dropped)
            space.refresh()
        }
    }
}
