#if canImport(Glibc)
import Glibc
#endif
import Foundation
import PipesBuffering
import PipesControl
import PipesFS
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

// MARK: helpers

/// What one read delivered, copied out.
enum Got: Equatable, CustomStringConvertible, DeliveryCopy {
    case data([UInt8])
    case end
    case error(Int32)

    init(_ o: ReadOutcome) {
        switch o {
        case .data, .segments: self = .data(o.bytes)
        case .endOfStream: self = .end
        case .error(let e): self = .error(e)
        }
    }

    static func text(_ s: String) -> Got { .data(Array(s.utf8)) }

    var bytes: [UInt8] {
        if case .data(let b) = self { return b }
        return []
    }

    var string: String { String(decoding: bytes, as: UTF8.self) }

    var description: String {
        switch self {
        case .data(let b): "data(\(String(decoding: b, as: UTF8.self).debugDescription))"
        case .end: "end"
        case .error(let e): "error(\(errnoName(e)))"
        }
    }
}

/// Collects deliveries, possibly made later from another thread.
typealias Deliveries = DeliveryLog<Got>

/// A tree with no mount, driven like the FUSE layer drives it.
final class FS {
    let controller: Controller
    let tree: Tree
    private var nextRequest: UInt64 = 100
    /// Capture files written for this tree, removed with it.
    private var files: [String] = []

    /// A tree over a graph of `spaces` execution spaces (unpinned).
    init(spaces: Int = 1) {
        controller = Controller(space: Space(spaces: spaces))
        tree = Tree(controller: controller)
    }
    deinit {
        controller.shutdown()
        for f in files { unlink(f) }
    }

    @discardableResult
    func mkdir(_ parent: UInt64, _ name: String) throws -> UInt64 {
        try tree.mkdir(parent, name, caller: .root).inode
    }

    func open(_ dir: UInt64, _ kind: FileKind, _ flags: Int32) throws -> OpenFile {
        try tree.open(dir | kind.rawValue, flags: flags, caller: .root)
    }

    /// Reads without blocking: the outcome, or EAGAIN.
    func read(_ f: OpenFile, size: Int = 1 << 20, offset: Int = 0) -> Got {
        let d = Deliveries()
        nextRequest += 1
        f.read(size: size, offset: offset, requestID: nextRequest, nonBlocking: true) { d.add($0) }
        return d.all.first ?? .error(-1)
    }

    /// Starts a read that may park; returns its request id and where its delivery lands.
    func parkedRead(_ f: OpenFile, size: Int = 1 << 20) -> (UInt64, Deliveries) {
        let d = Deliveries()
        nextRequest += 1
        f.read(size: size, offset: 0, requestID: nextRequest, nonBlocking: false) { d.add($0) }
        return (nextRequest, d)
    }

    @discardableResult
    func write(_ f: OpenFile, _ s: String) throws -> Int { try write(f, Array(s.utf8)) }

    /// Writes and expects an answer at once (not parked behind a lagging reader).
    @discardableResult
    func write(_ f: OpenFile, _ bytes: [UInt8], nonBlocking: Bool = false) throws -> Int {
        let (_, result) = startWrite(f, bytes, nonBlocking: nonBlocking)
        guard let r = result.value else { throw FSError(EINPROGRESS, "the write was parked") }
        return try r.get()
    }

    /// Starts a write that may park; returns its request id and where its answer lands.
    func startWrite(_ f: OpenFile, _ bytes: [UInt8], nonBlocking: Bool = false) -> (UInt64, Locked<Result<Int, FSError>?>) {
        let box = Locked<Result<Int, FSError>?>(nil)
        nextRequest += 1
        let id = nextRequest
        bytes.withUnsafeBytes { raw in
            f.write(raw, offset: 0, requestID: id, nonBlocking: nonBlocking, interrupted: { false }) { box.value = $0 }
        }
        return (id, box)
    }

    /// Directory entries as comparable values.
    func entries(_ dir: UInt64) throws -> [Entry] { try tree.readdir(dir).map { Entry($0.name, $0.inode, $0.kind) } }

    func names(_ dir: UInt64) throws -> [String] { try tree.readdir(dir).map(\.name) }

    func node(_ path: String) -> Node? { controller.space.lock.withLock { controller.resolve(path, from: nil) } }

    /// Writes to a directory's all (injection).
    func inject(_ dir: UInt64, _ s: String) throws { try inject(dir, Array(s.utf8)) }

    func inject(_ dir: UInt64, _ bytes: [UInt8]) throws { try write(try open(dir, .all, O_WRONLY), bytes) }

    /// A directory's ctl or stats text, read at once.
    func text(_ dir: UInt64, _ kind: FileKind) throws -> String { read(try open(dir, kind, O_RDONLY)).string }

    /// Junctions a and b at the top, and a count below a: where most link and move tests start.
    func abCount() throws -> (a: UInt64, b: UInt64, count: UInt64) {
        let a = try mkdir(rootInode, "a")
        let b = try mkdir(rootInode, "b")
        return (a, b, try mkdir(a, "count"))
    }

    /// An Ethernet junction e=ethernet, eth below it, and eth's class directory arp.
    func ethernetARP() throws -> (e: UInt64, eth: UInt64, arp: UInt64) {
        let e = try mkdir(rootInode, "e=ethernet")
        let eth = try mkdir(e, "eth")
        return (e, eth, try mkdir(eth, "arp"))
    }

    /// A classic pcap file of Ethernet frames, one a second from 1_700_000_000; removed with this tree.
    func captureFile(_ frames: [[UInt8]] = []) throws -> String {
        var file = HandPcap()
        for (i, f) in frames.enumerated() { file.record(seconds: UInt32(1_700_000_000 + i), fraction: 0, data: f) }
        let path = try file.write("tree.pcap")
        files.append(path)
        return path
    }

    /// A paused capture-file source 'cap' of those frames; its inode.
    func captureSource(_ frames: [[UInt8]] = []) throws -> UInt64 {
        try controller.addSource("cap=pcap:\(captureFile(frames)),paused").id << 4
    }
}

/// A directory entry (Tree.DirectoryEntry has no public initializer).
struct Entry: Equatable, CustomStringConvertible {
    var name: String
    var inode: UInt64
    var kind: Attributes.Kind
    init(_ name: String, _ inode: UInt64, _ kind: Attributes.Kind) {
        self.name = name
        self.inode = inode
        self.kind = kind
    }
    var description: String { "\(name)@\(inode)(\(kind))" }
}

/// The errno a file operation fails with, or nil if it succeeds.
func errnoOf(_ body: () throws -> Void) -> Int32? {
    do {
        try body()
        return nil
    } catch let e as FSError {
        return e.errno
    } catch {
        return -1
    }
}

// MARK: tests

@Suite("Tree")
struct TreeTests {
    @Test("mkdir makes filters below filters, junctions at the top and class directories below classifiers")
    func mkdirFiltersAndClasses() throws {
        let fs = FS()
        let (e, eth, arp) = try fs.ethernetARP()
        #expect(try fs.tree.lookup(rootInode, "e=ethernet").inode == e)
        #expect(try fs.tree.getattr(e).kind == .directory)
        let v4 = try fs.mkdir(eth, "0x0800")
        try fs.mkdir(eth, "ipv4")
        try fs.mkdir(arp, "count")
        #expect(try fs.tree.getattr(eth).links == 2 + 3, "a directory's link count includes its children")

        let arpNode = try #require(fs.node("/pipes/e=ethernet/eth/arp"))
        #expect(arpNode.isClassSelection)
        #expect(arpNode.selector.matches(0x0806))
        #expect(!arpNode.selector.matches(0x0800))
        let v4Node = try #require(fs.node("/pipes/e=ethernet/eth/0x0800"))
        #expect(v4Node.id << 4 == v4)
        #expect(v4Node.selector.matches(0x0800))
        #expect(fs.node("/pipes/e=ethernet/eth/arp/count")?.descriptor.name == "count")
        #expect(fs.node("/pipes/e=ethernet")?.descriptor.name == "junction")

        // Data written to the junction is classified: only ARP reaches eth/arp.
        let reader = try fs.open(arp, .all, O_RDONLY)
        let writer = try fs.open(e, .all, O_WRONLY)
        try fs.write(writer, Pkt.ethernet(type: 0x0800, [1, 2, 3, 4]))
        let arpFrame = Pkt.ethernet(type: 0x0806, Array("who-has".utf8))
        try fs.write(writer, arpFrame)
        #expect(fs.read(reader) == .data(arpFrame))
    }

    @Test("mkdir refuses reserved names, unknown filters, bad arguments and stale parents")
    func mkdirErrors() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        for name in ["all", "all.pcap", "stats", "ctl"] {
            #expect(errnoOf { try fs.mkdir(j, name) } == EEXIST, "\(name)")
            #expect(errnoOf { try fs.mkdir(rootInode, name) } == EEXIST, "/\(name)")
        }
        #expect(errnoOf { try fs.mkdir(rootInode, ".errors") } == EEXIST)
        #expect(errnoOf { try fs.mkdir(rootInode, ".ctl") } == EEXIST)
        #expect(errnoOf { try fs.mkdir(rootInode, "j") } == EEXIST)
        #expect(errnoOf { try fs.mkdir(j, ".") } == EINVAL)
        #expect(errnoOf { try fs.mkdir(j, String(repeating: "x", count: 256)) } == ENAMETOOLONG)

        #expect(errnoOf { try fs.mkdir(j, "nosuchfilter") } == EINVAL)
        #expect(fs.controller.errors.text.contains("unknown filter 'nosuchfilter'"))
        #expect(errnoOf { try fs.mkdir(j, "count=3") } == EINVAL)
        #expect(fs.controller.errors.text.contains("count: takes no arguments"))

        // The bpf compiler's own message reaches .errors.
        let bpfMessage: String
        do {
            _ = try FilterLibrary.byName["bpf"]!.make("tcp dst port")
            Issue.record("the expression should not compile")
            return
        } catch {
            bpfMessage = error.message
        }
        #expect(bpfMessage.contains("syntax error"))
        #expect(errnoOf { try fs.mkdir(j, "bpf=tcp dst port") } == EINVAL)
        #expect(fs.controller.errors.text.contains(bpfMessage))
        #expect(fs.controller.errors.text.contains("mkdir /j/bpf=tcp dst port"))
        #expect(try fs.names(j).filter { !["." , "..", "all", "all.pcap", "stats", "ctl"].contains($0) }.isEmpty,
                "nothing was created by the failures")

        // A parent inode that does not exist (never did, or was removed).
        #expect(errnoOf { try fs.mkdir(0xFFFF_0000, "x") } == ENOENT)
        #expect(fs.controller.errors.text.contains("stale inode"))
        let gone = try fs.mkdir(j, "count")
        try fs.tree.rmdir(j, "count")
        #expect(errnoOf { try fs.mkdir(gone, "x") } == ENOENT)
        // A file is not a directory.
        #expect(errnoOf { try fs.mkdir(j | FileKind.all.rawValue, "x") } == ENOTDIR)

        // Below a classifier, a malformed class is explained as such.
        let eth = try fs.mkdir(j, "eth")
        #expect(errnoOf { try fs.mkdir(eth, "5:3") } == EINVAL)
        #expect(fs.controller.errors.text.contains("'5:3' is neither a class of eth (empty class range"))
    }

    @Test("rmdir removes leaves and refuses directories with children")
    func rmdir() throws {
        let fs = FS()
        let a = try fs.mkdir(rootInode, "a")
        let count = try fs.mkdir(a, "count")
        try fs.mkdir(count, "match=x")
        #expect(errnoOf { try fs.tree.rmdir(a, "count") } == ENOTEMPTY)
        #expect(fs.controller.errors.text.contains("filter has children: match=x"))
        #expect(errnoOf { try fs.tree.rmdir(a, "nothere") } == ENOENT)
        #expect(errnoOf { try fs.tree.rmdir(a, "stats") } == ENOTDIR)
        try fs.tree.rmdir(count, "match=x")
        try fs.tree.rmdir(a, "count")
        #expect(errnoOf { _ = try fs.tree.getattr(count) } == ENOENT, "the inode of a removed filter is stale")
        try fs.tree.rmdir(rootInode, "a")
        #expect(try fs.names(rootInode) == [".", "..", ".errors", ".ctl", ".spaces", ".requests"])
    }

    @Test("rename re-parents a filter live; readers keep their files")
    func renameReparents() throws {
        let fs = FS()
        let (a, b, count) = try fs.abCount()
        let reader = try fs.open(count, .all, O_RDONLY)
        let wa = try fs.open(a, .all, O_WRONLY)
        let wb = try fs.open(b, .all, O_WRONLY)
        try fs.write(wa, "before")
        try fs.tree.rename(a, "count", b, "count")
        #expect(try fs.names(a).contains("count") == false)
        #expect(try fs.names(b).contains("count"))
        #expect(fs.node("/pipes/b/count").map { $0.id << 4 } == count, "the same filter, the same inode")
        try fs.write(wa, "lost")
        try fs.write(wb, "after")
        #expect(fs.read(reader) == .text("beforeafter"))

        // Renaming with new arguments reconfigures; the kind cannot change.
        let m = try fs.mkdir(b, "match=foo")
        try fs.tree.rename(b, "match=foo", b, "match=bar")
        #expect(fs.node("/pipes/b/match=bar")?.filter.arguments == "bar")
        #expect(fs.node("/pipes/b/match=bar").map { $0.id << 4 } == m)
        #expect(errnoOf { try fs.tree.rename(b, "match=bar", b, "count2") } == EINVAL)
        #expect(errnoOf { try fs.tree.rename(b, "match=bar", b, "match=\\q") } == EINVAL)
        #expect(fs.node("/pipes/b/match=bar")?.filter.arguments == "bar", "a refused rename changes nothing")
        #expect(errnoOf { try fs.tree.rename(b, "match=bar", b, "count") } == EEXIST)
        #expect(errnoOf { try fs.tree.rename(b, "nothere", a, "x") } == ENOENT)
        #expect(errnoOf { try fs.tree.rename(b, "all", a, "x") } == EPERM)
        #expect(errnoOf { try fs.tree.rename(b, "count", a, "count", flags: 2) } == EINVAL, "RENAME_EXCHANGE")
    }

    @Test("rename refuses to make a cycle")
    func renameRefusesCycles() throws {
        let fs = FS()
        let a = try fs.mkdir(rootInode, "a")
        let count = try fs.mkdir(a, "count")
        let deep = try fs.mkdir(count, "match=x")
        #expect(errnoOf { try fs.tree.rename(rootInode, "a", count, "a") } == EINVAL)
        #expect(errnoOf { try fs.tree.rename(a, "count", deep, "count") } == EINVAL)
        #expect(errnoOf { try fs.tree.rename(a, "count", count, "count") } == EINVAL)
        #expect(fs.controller.errors.text.contains("cannot move a filter below itself"))
        // A cycle through a symlink is refused too.
        let b = try fs.mkdir(rootInode, "b")
        _ = try fs.tree.symlink("/pipes/b", deep, "tob")
        #expect(errnoOf { try fs.tree.rename(rootInode, "a", b, "a") } == EINVAL, "b is downstream of a through the link")
        #expect(fs.node("/pipes/a/count/match=x") != nil)
    }

    @Test("class directories take a new selector when renamed")
    func renameClass() throws {
        let fs = FS()
        let (_, eth, _) = try fs.ethernetARP()
        try fs.tree.rename(eth, "arp", eth, "0x86dd")
        let n = try #require(fs.node("/pipes/e=ethernet/eth/0x86dd"))
        #expect(n.selector.matches(0x86DD))
        #expect(!n.selector.matches(0x0806))
        #expect(errnoOf { try fs.tree.rename(eth, "0x86dd", eth, "9:1") } == EINVAL)
    }

    @Test("symlinks add a parent (fan-in); readlink shows the text; cycles are ELOOP")
    func symlinks() throws {
        let fs = FS()
        let (a, b, count) = try fs.abCount()
        let attrs = try fs.tree.symlink("../a/count", b, "l")
        #expect(attrs.kind == .symlink)
        #expect(attrs.size == UInt64("../a/count".utf8.count))
        #expect(try fs.tree.readlink(attrs.inode) == "../a/count")
        #expect(try fs.tree.lookup(b, "l").inode == attrs.inode)
        #expect(try fs.entries(b).last == Entry("l", attrs.inode, .symlink))
        #expect(errnoOf { _ = try fs.tree.readlink(count) } == EINVAL, "a directory is not a link")

        let reader = try fs.open(count, .all, O_RDONLY)
        try fs.inject(a, "from-a;")
        try fs.inject(b, "from-b;")
        #expect(fs.read(reader) == .text("from-a;from-b;"))

        // Loops, duplicates and bad targets.
        #expect(errnoOf { _ = try fs.tree.symlink("/pipes/a", count, "up") } == ELOOP)
        #expect(errnoOf { _ = try fs.tree.symlink(".", count, "self") } == ELOOP)
        #expect(errnoOf { _ = try fs.tree.symlink("../../b", count, "tob") } == ELOOP, "b -> count -> b")
        #expect(fs.controller.errors.text.contains("the link would make a loop"))
        #expect(errnoOf { _ = try fs.tree.symlink("count", a, "again") } == EEXIST, "a already feeds count")
        #expect(errnoOf { _ = try fs.tree.symlink("/pipes/nothere", b, "x") } == ENOENT)
        #expect(errnoOf { _ = try fs.tree.symlink("/elsewhere/a", b, "x") } == ENOENT)
        #expect(errnoOf { _ = try fs.tree.symlink("/pipes/a", rootInode, "x") } == EPERM)
        #expect(errnoOf { _ = try fs.tree.symlink("../a/count", b, "l") } == EEXIST)
    }

    @Test("unlink removes a symlink edge; files and directories are refused")
    func unlinkLink() throws {
        let fs = FS()
        let (a, b, count) = try fs.abCount()
        let link = try fs.tree.symlink("/pipes/a/count", b, "l").inode
        let reader = try fs.open(count, .all, O_RDONLY)
        let wb = try fs.open(b, .all, O_WRONLY)
        try fs.write(wb, "one")
        try fs.tree.unlink(b, "l")
        try fs.write(wb, "two")
        #expect(fs.read(reader) == .text("one"))
        #expect(try fs.names(b).contains("l") == false)
        #expect(errnoOf { _ = try fs.tree.readlink(link) } == ENOENT)
        #expect(fs.node("/pipes/a/count")?.linkParents.isEmpty == true)

        #expect(errnoOf { try fs.tree.unlink(b, "l") } == ENOENT)
        #expect(errnoOf { try fs.tree.unlink(b, "all") } == EPERM)
        #expect(errnoOf { try fs.tree.unlink(a, "count") } == EISDIR)
        #expect(errnoOf { try fs.tree.unlink(rootInode, ".errors") } == EPERM)
    }

    @Test("removing a link target removes the links to it")
    func rmdirTargetOfLink() throws {
        let fs = FS()
        let (a, b, _) = try fs.abCount()
        _ = try fs.tree.symlink("../a/count", b, "l")
        try fs.tree.rmdir(a, "count")
        #expect(try fs.names(b) == [".", "..", "all", "all.pcap", "stats", "ctl"])
        try fs.tree.rmdir(rootInode, "b")
    }

    @Test("moving a symlink keeps its text and target")
    func renameLink() throws {
        let fs = FS()
        let (_, b, count) = try fs.abCount()
        let c = try fs.mkdir(rootInode, "c")
        _ = try fs.tree.symlink("/pipes/a/count", b, "l")
        try fs.tree.rename(b, "l", c, "l2")
        #expect(try fs.names(b).contains("l") == false)
        let l2 = try fs.tree.lookup(c, "l2")
        #expect(try fs.tree.readlink(l2.inode) == "/pipes/a/count")
        let reader = try fs.open(count, .all, O_RDONLY)
        try fs.inject(c, "via-c")
        #expect(fs.read(reader) == .text("via-c"))
        #expect(errnoOf { try fs.tree.rename(c, "l2", rootInode, "l2") } == EPERM)
        #expect(errnoOf { try fs.tree.rename(c, "l2", count, "l2") } == ELOOP)
    }

    /// A rename next to an edge that already exists, with a link b/l -> a/count in place.
    struct EdgeMove: Sendable, CustomTestStringConvertible {
        /// The entry moved, from one top directory to the other (keeping its name).
        var entry: String
        var from: String
        var to: String
        /// The errno the rename must fail with; nil where only the delivery is checked.
        var refusal: Int32?
        var testDescription: String { "\(from)/\(entry) -> \(to)/\(entry)" }
    }

    @Test("no edge is made twice: moving a link or a filter next to an existing edge delivers each write once",
          .bug(id: "duplicate edges", "Controller.rename checks neither 'already feeds' for links nor existing links for moved filters"),
          .bug(id: "duplicate edges", "Controller.moveNode does not check the new parent's links to the node"),
          arguments: [
              // Moving b's link into a: a already feeds count (as its parent). link() says EEXIST for this.
              EdgeMove(entry: "l", from: "b", to: "a", refusal: EEXIST),
              // Moving count below b, which already links to it.
              EdgeMove(entry: "count", from: "a", to: "b", refusal: nil),
          ])
    func noDuplicateEdges(_ move: EdgeMove) throws {
        let fs = FS()
        let (a, b, count) = try fs.abCount()
        _ = try fs.tree.symlink("/pipes/a/count", b, "l")
        let reader = try fs.open(count, .all, O_RDONLY)
        let dirs = ["a": a, "b": b]
        let (from, to) = (try #require(dirs[move.from]), try #require(dirs[move.to]))
        let result = errnoOf { try fs.tree.rename(from, move.entry, to, move.entry) }
        try fs.inject(to, "x")
        #expect(fs.read(reader) == .text("x"), "one write, one delivery (the rename gave \(result.map(errnoName) ?? "success"))")
        if let refusal = move.refusal { #expect(result == refusal) }
    }

    @Test("readdir lists the four files, then children, then links; the root lists .errors, .ctl and the tops")
    func readdir() throws {
        let fs = FS()
        let (a, b, count) = try fs.abCount()
        let match = try fs.mkdir(a, "match=GET")
        let link = try fs.tree.symlink("../b", a, "tob").inode
        #expect(try fs.entries(a) == [
            Entry(".", a, .directory),
            Entry("..", rootInode, .directory),
            Entry("all", a | FileKind.all.rawValue, .file),
            Entry("all.pcap", a | FileKind.pcap.rawValue, .file),
            Entry("stats", a | FileKind.stats.rawValue, .file),
            Entry("ctl", a | FileKind.ctl.rawValue, .file),
            Entry("count", count, .directory),
            Entry("match=GET", match, .directory),
            Entry("tob", link, .symlink),
        ])
        #expect(try fs.entries(count)[1] == Entry("..", a, .directory))
        #expect(try fs.names(rootInode) == [".", "..", ".errors", ".ctl", ".spaces", ".requests", "a", "b"])
        #expect(errnoOf { _ = try fs.tree.readdir(a | FileKind.stats.rawValue) } == ENOTDIR)
        #expect(errnoOf { _ = try fs.tree.readdir(0x7777_0000) } == ENOENT)
        for (name, ino) in [("all", FileKind.all), ("all.pcap", .pcap), ("stats", .stats), ("ctl", .ctl)] {
            #expect(try fs.tree.lookup(a, name).inode == a | ino.rawValue)
        }
        #expect(errnoOf { _ = try fs.tree.lookup(a, "nothere") } == ENOENT)
        _ = b
    }

    @Test("file modes: all is writable except on capture-file sources; all.pcap and stats are read-only")
    func modes() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        #expect(try fs.tree.getattr(j | FileKind.all.rawValue).mode == 0o644)
        #expect(try fs.tree.getattr(j | FileKind.pcap.rawValue).mode == 0o444)
        #expect(try fs.tree.getattr(j | FileKind.stats.rawValue).mode == 0o444)
        #expect(try fs.tree.getattr(j | FileKind.ctl.rawValue).mode == 0o644)
        let cap = try fs.captureSource()
        #expect(try fs.tree.getattr(cap | FileKind.all.rawValue).mode == 0o444)
    }

    @Test("open: a capture-file source's all is read-only (EACCES); so are all.pcap, stats and .errors")
    func openPermissions() throws {
        let fs = FS()
        let cap = try fs.captureSource([Pkt.ethernet(type: 0x0800, [1, 2, 3, 4])])
        #expect(errnoOf { _ = try fs.open(cap, .all, O_WRONLY) } == EACCES)
        #expect(errnoOf { _ = try fs.open(cap, .all, O_RDWR) } == EACCES)
        #expect(fs.controller.errors.text.contains("'cap' is a capture-file source"))
        let j = try fs.mkdir(rootInode, "j")
        #expect(errnoOf { _ = try fs.open(j, .pcap, O_WRONLY) } == EACCES)
        #expect(errnoOf { _ = try fs.open(j, .stats, O_WRONLY) } == EACCES)
        #expect(errnoOf { _ = try fs.open(j, .directory, O_RDONLY) } == EISDIR)
        let errorsIno = try fs.tree.lookup(rootInode, ".errors").inode
        let ctlIno = try fs.tree.lookup(rootInode, ".ctl").inode
        #expect(errnoOf { _ = try fs.tree.open(errorsIno, flags: O_WRONLY, caller: .root) } == EACCES)
        #expect(errnoOf { _ = try fs.tree.open(ctlIno, flags: O_RDONLY, caller: .root) } == EACCES)
        #expect(errnoOf { _ = try fs.tree.open(rootInode, flags: O_RDONLY, caller: .root) } == EISDIR)
        #expect(errnoOf { _ = try fs.tree.open(0x5555_0001, flags: O_RDONLY, caller: .root) } == ENOENT)
        // Reading is fine, and a write-only open has nothing to read.
        let r = try fs.open(cap, .all, O_RDONLY)
        #expect(fs.read(r) == .error(EAGAIN), "paused: nothing yet")
        r.release()
        let w = try fs.open(j, .all, O_WRONLY)
        #expect(fs.read(w) == .error(EBADF))
        let ro = try fs.open(j, .all, O_RDONLY)
        #expect(errnoOf { try fs.write(ro, "x") } == EBADF)
    }

    @Test("writing to a junction's all reaches a reader of a child's all, immediately or through a parked read")
    func injection() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        let match = try fs.mkdir(j, "match=foo")
        let reader = try fs.open(match, .all, O_RDONLY)
        let writer = try fs.open(j, .all, O_WRONLY)
        #expect(try fs.write(writer, "xx foo xx") == 9)
        try fs.write(writer, "bar")
        try fs.write(writer, "foo2")
        #expect(fs.read(reader, size: 4) == .text("xx f"))
        #expect(fs.read(reader) == .text("oo xxfoo2"))
        #expect(fs.read(reader) == .error(EAGAIN))
        #expect(try fs.write(writer, "") == 0, "an empty write injects nothing")

        // A read that parks is answered by the next write.
        let (_, parked) = fs.parkedRead(reader)
        #expect(parked.all.isEmpty)
        try fs.write(writer, "later foo")
        #expect(eventually { parked.all == [.text("later foo")] }, "answered by the ring's service thread")

        // A parked read that is interrupted ends with EINTR.
        let (id, interrupted) = fs.parkedRead(reader)
        reader.cancel(requestID: id)
        #expect(interrupted.all == [.error(EINTR)])

        // A reader opened later sees only what is written after it opened.
        let late = try fs.open(match, .all, O_RDONLY)
        try fs.write(writer, "foo3")
        #expect(fs.read(late) == .text("foo3"))
        #expect(fs.read(reader) == .text("foo3"))
    }

    @Test("all.pcap of a junction: a pcap header, then one record per block")
    func pcapTap() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        let reader = try fs.open(j, .pcap, O_RDONLY)
        try fs.inject(j, "hello")
        let got = fs.read(reader).bytes
        #expect(got.count == 24 + 16 + 5)
        func u32(_ at: Int) -> UInt32 { got[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        guard got.count == 45 else { return }
        #expect(u32(0) == 0xA1B2_C3D4)
        #expect(u32(20) == 147, "injected text is LINKTYPE_USER0")
        #expect(u32(32) == 5 && u32(36) == 5, "caplen and len")
        #expect(Array(got[40...]) == Array("hello".utf8))
        #expect(u32(28) < 1_000_000, "microseconds")
    }

    @Test("a reader of a removed filter gets end of stream; writing to it gives ENODEV")
    func removedFilterEndsStream() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        let count = try fs.mkdir(j, "count")
        let buffered = try fs.open(count, .all, O_RDONLY)
        let parkedFile = try fs.open(count, .all, O_RDONLY)
        let writer = try fs.open(count, .all, O_WRONLY)
        try fs.inject(j, "last")
        _ = fs.read(parkedFile)
        let (_, parked) = fs.parkedRead(parkedFile)
        #expect(parked.all.isEmpty)
        try fs.tree.rmdir(j, "count")
        #expect(eventually { parked.all == [.end] }, "a parked read ends")
        #expect(fs.read(buffered) == .text("last"), "buffered data first")
        #expect(fs.read(buffered) == .end)
        #expect(errnoOf { try fs.write(writer, "x") } == ENODEV)
        buffered.release()
        parkedFile.release()
    }

    @Test("closing a reader removes its tap")
    func releaseRemovesTap() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        let r1 = try fs.open(j, .all, O_RDONLY)
        let r2 = try fs.open(j, .pcap, O_RDONLY)
        #expect(fs.node("/pipes/j")?.ringTaps.count == 2)
        r1.release()
        #expect(fs.node("/pipes/j")?.ringTaps.count == 1)
        r2.release()
        #expect(fs.node("/pipes/j")?.ringTaps.count == 0)
        #expect(fs.read(r1) == .end, "a closed reader reads end of stream")
    }

    @Test("a capture-file source streams its file to a reader of all, then end of stream")
    func captureSourceStream() throws {
        let fs = FS()
        let frames = [Pkt.ethernet(type: 0x0800, Array("one".utf8)), Pkt.ethernet(type: 0x0806, Array("two".utf8)),
                      Pkt.ethernet(type: 0x86DD, [1, 2, 3, 4])]
        // Paused until both readers are open (a reader sees only what flows after it opened).
        let cap = try fs.captureSource(frames)
        let eth = try fs.mkdir(cap, "eth")
        let arp = try fs.mkdir(eth, "arp")
        let all = try fs.open(cap, .all, O_RDONLY)
        let arpReader = try fs.open(arp, .all, O_RDONLY)
        try fs.write(try fs.open(cap, .ctl, O_WRONLY), "start\n")
        var got: [UInt8] = []
        var ended = false
        _ = eventually {
            switch fs.read(all) {
            case .data(let b): got += b
            case .end: ended = true
            case .error(EAGAIN): break
            case .error(let e): Issue.record("read failed: \(errnoName(e))"); ended = true
            }
            return ended
        }
        #expect(ended)
        #expect(got == frames.flatMap { $0 })
        #expect(fs.read(arpReader) == .data(frames[1]))
        #expect(fs.read(arpReader) == .end)
        let stats = try fs.text(cap, .stats)
        #expect(stats.contains("packets_out: 3"))
        #expect(stats.contains("stream: ended"))
        #expect(stats.contains("state: finished"))
    }

    @Test("ctl: reading shows the settings; args reconfigures; unknown commands are EINVAL and logged")
    func ctl() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        let match = try fs.mkdir(j, "match=foo")
        let text = try fs.text(match, .ctl)
        #expect(text == """
            filter: match
            summary: packets whose payload contains a byte string
            usage: match=TEXT (escapes: \\n \\r \\t \\\\ \\xHH)
            args: foo
            commands: args TEXT

            """)
        let ctl = try fs.open(match, .ctl, O_WRONLY)
        #expect(try fs.write(ctl, "args bar\n") == 9)
        #expect(fs.node("/pipes/j/match=foo")?.filter.arguments == "bar")
        #expect(errnoOf { try fs.write(ctl, "frobnicate now\n") } == EINVAL)
        #expect(fs.controller.errors.text.contains("unknown command 'frobnicate' for match"))
        #expect(errnoOf { try fs.write(ctl, "args \\q\n") } == EINVAL)
        #expect(fs.node("/pipes/j/match=foo")?.filter.arguments == "bar")
        #expect(try fs.write(ctl, "\n   \n") == 5, "blank lines are ignored")

        // A command without a newline runs at close.
        let count = try fs.mkdir(j, "count")
        let w = try fs.open(j, .all, O_WRONLY)
        try fs.write(w, "abc")
        let countFilter = try #require(fs.node("/pipes/j/count")?.filter as? Count)
        #expect(countFilter.packets == 1)
        let cctl = try fs.open(count, .ctl, O_WRONLY)
        try fs.write(cctl, "reset")
        #expect(countFilter.packets == 1, "not yet: no newline")
        cctl.release()
        #expect(countFilter.packets == 0)
        #expect(try fs.text(count, .ctl).contains("commands: args TEXT, reset"))

        // Class directories and sources take no args.
        let (e, _, arp) = try fs.ethernetARP()
        #expect(errnoOf { try fs.write(try fs.open(arp, .ctl, O_WRONLY), "args 1\n") } == EINVAL)
        #expect(try fs.text(arp, .ctl).contains("class: arp"))
        // The junction's args change its link type.
        try fs.write(try fs.open(e, .ctl, O_WRONLY), "args raw\n")
        #expect(try fs.text(e, .ctl).contains("args: raw"))
    }

    @Test("execution spaces: ctl 'space K' moves a stage with its subtree; stats and .spaces show it; bad placements are EINVAL or EDEADLK")
    func spaces() throws {
        let fs = FS(spaces: 2)
        let j = try fs.mkdir(rootInode, "j")
        let count = try fs.mkdir(j, "count")
        let match = try fs.mkdir(count, "match=x")
        #expect(try fs.text(count, .ctl).contains("commands: args TEXT, reset, space 0..1"))
        #expect(try fs.text(match, .stats).contains("\nspace: 0\n"))
        try fs.write(try fs.open(count, .ctl, O_WRONLY), "space 1\n")
        #expect(try fs.text(count, .stats).contains("\nspace: 1\n"))
        #expect(try fs.text(match, .stats).contains("\nspace: 1\n"), "the subtree moves with it")
        #expect(try fs.text(j, .stats).contains("\nspace: 0\n"))
        // A write into j crosses into space 1: count sees it once it crossed.
        try fs.write(try fs.open(j, .all, O_WRONLY), "hello")
        let countFilter = try #require(fs.node("/pipes/j/count")?.filter as? Count)
        #expect(eventually(within: 10, pollingEvery: 1_000) { fs.controller.space.lock.withLock { countFilter.packets == 1 } })
        let stats = try fs.text(count, .stats)
        #expect(stats.contains("channel_in: produced=1 delivered=1 dropped=0 refused=0 policy=block"), "\(stats)")
        // .spaces: a header and one line per space; space 1 has a thread and one input channel.
        let lines = fs.read(try fs.tree.open(4, flags: O_RDONLY, caller: .root)).string.split(separator: "\n")
        #expect(lines.count == 3)
        #expect(lines.first?.hasPrefix("# space cpu thread") == true)
        #expect(lines.count == 3 && lines[2].split(separator: " ")[4] == "1")
        #expect(errnoOf { _ = try fs.tree.open(4, flags: O_WRONLY, caller: .root) } == EACCES)
        #expect(errnoOf { _ = try fs.mkdir(rootInode, ".spaces") } == EEXIST)
        // Refusals.
        let ctl = try fs.open(match, .ctl, O_WRONLY)
        #expect(errnoOf { try fs.write(ctl, "space 2\n") } == EINVAL)
        #expect(errnoOf { try fs.write(ctl, "space x\n") } == EINVAL)
        #expect(errnoOf { try fs.write(ctl, "space 0\n") } == EDEADLK, "0 → 1 → 0")
        #expect(fs.controller.errors.text.contains("cycle"))
        #expect(errnoOf { try fs.write(ctl, "moderation 8 50\n") } == nil)
        #expect(errnoOf { try fs.write(ctl, "moderation 8\n") } == EINVAL)
        #expect(errnoOf { try fs.write(try fs.open(count, .ctl, O_WRONLY), "moderation 16 0\n") } == nil)
        #expect(try fs.text(count, .stats).contains("policy=block threshold=16 delay_us=0"))
        #expect(errnoOf { try fs.write(try fs.open(j, .ctl, O_WRONLY), "space 1\n") } == nil, "a junction may move")
        #expect(try fs.text(match, .stats).contains("\nspace: 1\n"))
    }

    @Test(".ctl at the root adds sources; .errors shows refused operations")
    func rootCtlAndErrors() throws {
        let fs = FS()
        let path = try fs.captureFile()
        let ctlIno = try fs.tree.lookup(rootInode, ".ctl").inode
        let ctl = try fs.tree.open(ctlIno, flags: O_WRONLY, caller: .root)
        try fs.write(ctl, "source cap=pcap:\(path),paused\n")
        #expect(try fs.names(rootInode).contains("cap"))
        #expect(errnoOf { try fs.write(ctl, "launch rockets\n") } == EINVAL)
        #expect(errnoOf { try fs.write(ctl, "source cap=pcap:\(path)\n") } == EEXIST)
        #expect(errnoOf { try fs.write(ctl, "source x=ftp:/a\n") } == EINVAL)
        #expect(errnoOf { try fs.write(ctl, "source y=pcap:/nonexistent-\(getpid()).pcap\n") } == ENOENT)
        let errorsIno = try fs.tree.lookup(rootInode, ".errors").inode
        let errors = fs.read(try fs.tree.open(errorsIno, flags: O_RDONLY, caller: .root)).string
        #expect(errors.contains(".ctl: 'launch rockets': unknown command"))
        #expect(errors.contains("source x: unknown source scheme 'ftp'"))
        #expect(errors.split(separator: "\n").count == 4)
        #expect(errnoOf { _ = try fs.mkdir(fs.node("/pipes/cap")!.id << 4, "count") } == nil, "filters go below sources")
        #expect(errnoOf { _ = try fs.tree.symlink("/pipes/cap", fs.node("/pipes/cap/count")!.id << 4, "x") } == EINVAL,
                "a source has no input")
    }

    @Test("stats: counters, readers, stream state and the filter's own lines")
    func stats() throws {
        let fs = FS()
        let j = try fs.mkdir(rootInode, "j")
        let count = try fs.mkdir(j, "count")
        let reader = try fs.open(count, .all, O_RDONLY)
        let w = try fs.open(j, .all, O_WRONLY)
        try fs.write(w, "12345")
        try fs.write(w, "1234567")
        let text = try fs.text(count, .stats)
        #expect(text == """
            filter: count
            path: /j/count
            packets_in: 2
            bytes_in: 12
            packets_out: 2
            bytes_out: 12
            dropped: 0
            readers: 1
            writers_waiting: 0
            stream: open
            space: 0
            count_packets: 2
            count_bytes: 12

            """)
        #expect(fs.read(try fs.open(count, .stats, O_RDONLY), size: 6, offset: 8) == .text("count\n"), "reads at an offset")
        reader.release()
        #expect(try fs.text(count, .stats).contains("readers: 0"))

        let (_, _, arp) = try fs.ethernetARP()
        let arpStats = try fs.text(arp, .stats)
        #expect(arpStats.hasPrefix("filter: class\nclass: arp\npath: /e=ethernet/eth/arp\n"))
    }

    @Test("a refused move leaves the filter as it was: name, parent and arguments",
          .bug(id: "rename undo", "Controller.moveNode reconfigures before attach(streamLinkType:) and does not undo the reconfiguration"))
    func refusedMoveIsUndone() throws {
        let fs = FS()
        let e = try fs.mkdir(rootInode, "e=ethernet")
        let s = try fs.mkdir(rootInode, "s=sll")
        try fs.mkdir(e, "bpf=ip")
        // 'vlan' compiles for Ethernet but not for Linux cooked capture: the move must be refused.
        #expect(errnoOf { try fs.tree.rename(e, "bpf=ip", s, "bpf=vlan") } == EINVAL)
        #expect(fs.controller.errors.text.contains("no VLAN support"))
        let n = try #require(fs.node("/pipes/e=ethernet/bpf=ip"))
        #expect(n.filter.arguments == "ip", "the directory is named bpf=ip; its filter must still run 'ip'")
        let reader = try fs.open(n.id << 4, .all, O_RDONLY)
        try fs.inject(e, Pkt.ethernet(type: 0x0800, [0x45] + [UInt8](repeating: 0, count: 19)))
        #expect(fs.read(reader).bytes.count == 34, "an IPv4 frame still passes bpf=ip")
    }

    @Test("a moved symlink's text still leads to its target",
          .bug(id: "moved relative link", "Controller.rename moves a link's text unchanged; a relative text then names another place"))
    func movedRelativeLink() throws {
        let fs = FS()
        let (_, b, _) = try fs.abCount()
        let deeper = try fs.mkdir(b, "match=x")
        _ = try fs.tree.symlink("../a/count", b, "l")
        try fs.tree.rename(b, "l", deeper, "l")
        let text = try fs.tree.readlink(try fs.tree.lookup(deeper, "l").inode)
        // The kernel follows the text from the link's directory, /pipes/b/match=x.
        let bNode = try #require(fs.node("/pipes/b/match=x"))
        let followed = fs.controller.space.lock.withLock { fs.controller.resolve(text, from: bNode) }
        #expect(followed === fs.node("/pipes/a/count"), "'\(text)' from /b/match=x leads to \(followed?.path ?? "nothing")")
    }

    @Test("a source refused because its name exists does not leak its capture file",
          .bug(id: "addSource leak", "Controller.addSource makes (opens) the source before the EEXIST check and never shuts it down"))
    func refusedSourceDoesNotLeak() throws {
        let fs = FS()
        let path = try fs.captureFile()
        try fs.controller.addSource("cap=pcap:\(path),paused")
        func openFiles() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.count ?? 0 }
        let before = openFiles()
        for _ in 0..<300 {
            #expect(errnoOf { try fs.controller.addSource("cap=pcap:\(path),paused") } == EEXIST)
        }
        let growth = openFiles() - before
        #expect(growth < 150, "\(growth) more open files after 300 refused sources")
    }

    @Test("bpf can be made below a raw-IP junction",
          .bug(id: "bpf LINKTYPE_RAW", "BPF.swift passes LINKTYPE_RAW (101) to pcap_open_dead, which wants DLT_RAW (12)"))
    func bpfBelowRawJunction() throws {
        let fs = FS()
        let r = try fs.mkdir(rootInode, "r=raw")
        #expect(errnoOf { try fs.mkdir(r, "bpf=tcp") } == nil, "\(fs.controller.errors.text)")
    }

    @Test("ctl args swaps in a fresh instance: pcapout moves to the new file; a bad path keeps the old instance")
    func argsSwapsInstance() throws {
        let fs = FS()
        let first = temporaryPath("args-first.pcap"), second = temporaryPath("args-second.pcap")
        defer { unlink(first); unlink(second) }
        let j = try fs.mkdir(rootInode, "j=ethernet")
        let out = try fs.mkdir(j, "pcapout=\(first)")
        let w = try fs.open(j, .all, O_WRONLY)
        try fs.write(w, Pkt.ethARP())
        let ctl = try fs.open(out, .ctl, O_WRONLY)
        try fs.write(ctl, "args \(second)\n")
        try fs.write(w, Pkt.ethTCP4())
        try fs.write(w, Pkt.ethTCP4())
        #expect(errnoOf { try fs.write(ctl, "args /nonexistent-\(getpid())/x.pcap\n") } == EINVAL)
        #expect(fs.node("/pipes/j=ethernet")?.children.first?.filter.arguments == second, "the refused change left the filter as it was")
        try fs.write(w, Pkt.ethTCP4())
        try fs.write(ctl, "sync\n")
        func records(_ path: String) -> Int {
            guard let d = FileManager.default.contents(atPath: path), d.count >= 24 else { return -1 }
            var n = 0, off = 24
            while off + 16 <= d.count {
                let cap = Int(d[off + 8]) | Int(d[off + 9]) << 8 | Int(d[off + 10]) << 16 | Int(d[off + 11]) << 24
                off += 16 + cap
                n += 1
            }
            return n
        }
        #expect(records(first) == 1, "the old instance was closed with its one record")
        #expect(records(second) == 3)
    }

    @Test("pcapout refuses a FIFO at once (no wait for a reader), through mkdir and ctl args alike")
    func pcapoutRefusesFIFO() throws {
        let fs = FS()
        let fifo = temporaryPath("args-fifo")
        unlink(fifo)
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let j = try fs.mkdir(rootInode, "j")
        let plain = temporaryPath("args-plain.pcap")
        defer { unlink(plain) }
        let out = try fs.mkdir(j, "pcapout=\(plain)")
        let ctl = try fs.open(out, .ctl, O_WRONLY)
        let t0 = monotonicNanoseconds()
        #expect(errnoOf { try fs.write(ctl, "args \(fifo)\n") } == EINVAL)
        #expect(monotonicNanoseconds() - t0 < 1_000_000_000, "refused without waiting for a reader")
        #expect(fs.controller.errors.text.contains("only regular files"))
        #expect(fs.node("/pipes/j")?.children.first?.filter.arguments == plain, "the old instance stays")
        // With a reader on the FIFO it is still refused: a stalled reader would stall the graph.
        let rfd = Glibc.open(fifo, O_RDONLY | O_NONBLOCK)
        defer { close(rfd) }
        #expect(errnoOf { try fs.write(ctl, "args \(fifo)\n") } == EINVAL)
        #expect(fs.controller.errors.text.contains("not a regular file"))
    }

    @Test("a parked write goes on when its lagging reader leaves its subgraph (rm of the link)")
    func parkedWriteReleasedByGraphChange() throws {
        let fs = FS()
        fs.tree.tapCapacity = 4096
        let j = try fs.mkdir(rootInode, "j")
        let w = try fs.mkdir(rootInode, "w")
        _ = try fs.tree.symlink("/pipes/j", w, "j")
        let reader = try fs.open(j, .all, O_RDONLY)
        let writer = try fs.open(w, .all, O_WRONLY)
        #expect(try fs.write(writer, [UInt8](repeating: 1, count: 3000)) == 3000)
        let (_, parked) = fs.startWrite(writer, [2, 2])
        #expect(parked.value == nil)
        try fs.tree.unlink(w, "j")
        #expect(eventually(within: 5) { parked.value != nil }, "no longer behind the lagging reader")
        #expect(try parked.value?.get() == 2)
        #expect(fs.read(reader).bytes.count == 3000, "the write after the unlink did not reach j")
    }

    @Test("a write behind a lagging reader parks (no thread waits), can be interrupted, and completes when the reader reads")
    func parkedWrites() throws {
        let fs = FS()
        fs.tree.tapCapacity = 4096
        let j = try fs.mkdir(rootInode, "j")
        let reader = try fs.open(j, .all, O_RDONLY)
        let w = try fs.open(j, .all, O_WRONLY)
        #expect(try fs.write(w, [UInt8](repeating: 0x61, count: 3000)) == 3000)
        let (id1, first) = fs.startWrite(w, Array("one".utf8))
        #expect(first.value == nil, "parked behind the lagging reader")
        #expect(errnoOf { try fs.write(w, Array("nb".utf8), nonBlocking: true) } == EAGAIN)
        w.cancel(requestID: id1)
        #expect(errnoOf { _ = try first.value?.get() } == EINTR, "an interrupt ends a parked write")
        let (_, second) = fs.startWrite(w, Array("two".utf8))
        #expect(second.value == nil)
        #expect(fs.read(reader, size: 3000).bytes.count == 3000)
        #expect(eventually { second.value != nil })
        #expect(try second.value?.get() == 3)
        #expect(fs.read(reader).string == "two", "the interrupted write delivered nothing")
    }

    @Test("a user may hold a limited number of open taps (EMFILE); root is not limited")
    func tapLimitPerUser() throws {
        let fs = FS()
        fs.tree.maxTapsPerUser = 3
        let j = try fs.mkdir(rootInode, "j")
        let user = Caller(uid: 1000, gid: 1000)
        var taps: [OpenFile] = []
        for _ in 0..<3 { taps.append(try fs.tree.open(j | FileKind.all.rawValue, flags: O_RDONLY, caller: user)) }
        #expect(errnoOf { _ = try fs.tree.open(j | FileKind.pcap.rawValue, flags: O_RDONLY, caller: user) } == EMFILE)
        #expect(fs.controller.errors.text.contains("uid 1000 holds 3 open taps (limit 3)"))
        #expect(errnoOf { _ = try fs.tree.open(j | FileKind.all.rawValue, flags: O_WRONLY, caller: user) } == nil, "writers hold no ring")
        taps.removeLast().release()
        #expect(errnoOf { taps.append(try fs.tree.open(j | FileKind.all.rawValue, flags: O_RDONLY, caller: user)) } == nil)
        for _ in 0..<5 { taps.append(try fs.open(j, .all, O_RDONLY)) }  // root
        for t in taps { t.release() }
    }

    @Test("the error log never blocks on its sink: lines are queued for a logging thread")
    func errorLogSinkIsAsynchronous() throws {
        let log = ErrorLog()
        let gate = ConditionLock()
        let open = Locked(false)
        let seen = Locked<[String]>([])
        log.sink = { line in
            gate.withLock { while !open.value { gate.wait(timeoutNanoseconds: 10_000_000) } }
            seen.update { $0.append(line) }
        }
        let t0 = monotonicNanoseconds()
        for i in 0..<5 { log.append("line \(i)") }
        #expect(monotonicNanoseconds() - t0 < 500_000_000, "append returned while the sink is stuck")
        #expect(log.text.contains("line 4"), ".errors has the lines at once")
        open.value = true
        #expect(eventually { seen.value.count == 5 })
        #expect(seen.value.last?.hasSuffix("line 4") == true)
    }
}
