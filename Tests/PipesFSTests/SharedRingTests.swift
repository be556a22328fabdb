#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesControl
import PipesFS
import PipesRuntime
import PipesTestSupport
import Testing

/// The client library's side of the daemon: a node's stream in a shared ring (`ExportRing`), handed out by the
/// ring service, named by the `user.pipes.ring` attribute.
@Suite("Shared rings")
struct SharedRingTests {
    /// Maps the node's ring the way a client does (a duplicate descriptor, another mapping) and attaches a reader.
    func mapped(_ fs: FS, _ dir: UInt64) throws -> DBufReader {
        let claim = try fs.tree.sharedRing(node: dir >> 4, caller: .root, pid: UInt32(getpid()))
        defer { close(claim.fd) }
        let ring = try DBuf(mapping: claim.fd)
        let r = try #require(ring.attach())
        // This reader attached on its own; give back the slot the daemon held for it.
        let node = fs.controller.space.lock.withLock { fs.controller.space.nodes[dir >> 4] }
        node?.exportRing?.releaseSlot(claim.slot)
        return r
    }

    func next(_ r: DBufReader, timeoutSeconds: Double = 5) -> [UInt8]? {
        let deadline = monotonicNanoseconds() + Int64(timeoutSeconds * 1e9)
        while monotonicNanoseconds() < deadline {
            if let rec = r.peek() {
                let b = Array(rec.bytes)
                r.consume(rec)
                return b
            }
            r.wait(timeoutNanoseconds: 1_000_000)
        }
        return nil
    }

    @Test("injected blocks reach a mapped reader whole and in order")
    func injectedBlocks() throws {
        let fs = FS()
        let a = try fs.mkdir(rootInode, "a")
        let r = try mapped(fs, a)
        for i in 0..<100 { try fs.inject(a, "block \(i)") }
        for i in 0..<100 { #expect(next(r).map { String(decoding: $0, as: UTF8.self) } == "block \(i)") }
        #expect(r.peek() == nil)
        #expect(r.dropped == 0)
    }

    @Test("a lossless stream parks writers behind a mapped reader that lags, and lets them go once it reads")
    func backpressure() throws {
        let fs = FS()
        let a = try fs.mkdir(rootInode, "a")
        let r = try mapped(fs, a)
        let mib = [UInt8](repeating: 7, count: 1 << 20)
        let w = try fs.open(a, .all, O_WRONLY)
        var parked: Locked<Result<Int, FSError>?>?
        var accepted = 0
        for _ in 0..<20 {
            let (_, result) = fs.startWrite(w, mib)
            if result.value == nil { parked = result; break }
            accepted += 1
        }
        // A quarter of the 16 MiB ring: the fifth MiB congests it, the next write waits.
        #expect(accepted >= 4 && accepted < 12)
        let waiting = try #require(parked)
        #expect(fs.controller.space.pendingWriteCount == 1)
        var got = 0
        for _ in 0...accepted { if next(r)?.count == 1 << 20 { got += 1 } }
        #expect(got == accepted + 1)
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while waiting.value == nil && monotonicNanoseconds() < deadline { usleep(1000) }
        #expect(try waiting.value?.get() == 1 << 20)
    }

    @Test("rmdir ends the stream for mapped readers")
    func rmdirEnds() throws {
        let fs = FS()
        let a = try fs.mkdir(rootInode, "a")
        let b = try fs.mkdir(a, "count")
        let r = try mapped(fs, b)
        #expect(!r.isAtEnd)
        try fs.tree.rmdir(a, "count")
        #expect(r.isAtEnd)
    }

    @Test("a policy change moves the stream to a new ring; readers of the old one are told to ask again")
    func policyChange() throws {
        let x = try ExportRing(policy: .block, sizeLog2: 16, ringID: 9)
        let old = x.ring
        let r = try #require(old.attach())
        var b: UInt64 = 42
        let stored = withUnsafeBytes(of: &b) { x.append($0, classValue: 3, wireLength: 8, linkType: 1, timestampNanoseconds: 5) }
        #expect(stored.contains(.stored))
        x.flush()
        try x.setPolicy(.drop)
        #expect(x.ring !== old)
        #expect(x.ring.policy == .drop)
        #expect(x.policy == .drop)
        let rec = try #require(r.peek())
        #expect(rec.classValue == 3 && rec.linkType == 1 && rec.timestampNanoseconds == 5 && rec.bytes.count == 8)
        r.consume(rec)
        #expect(r.isAtEnd)
        #expect(old.closedState == ringClosedReplaced)
        x.endOfStream()
        #expect(x.ring.closedState == ringClosedEnd)
    }

    @Test("a lossless ring reports congestion at a quarter full and drains when its reader reads")
    func congestion() throws {
        let x = try ExportRing(policy: .block, sizeLog2: 16, ringID: 1)
        let r = try #require(x.ring.attach())
        let chunk = [UInt8](repeating: 1, count: 1000)
        var n = 0
        var congested = false
        while !congested && n < 1000 {
            let res = chunk.withUnsafeBytes { x.append($0, classValue: 1, wireLength: 1000, linkType: 0, timestampNanoseconds: 0) }
            #expect(res.contains(.stored))
            congested = res.contains(.congested)
            n += 1
        }
        #expect(congested && x.isCongested)
        #expect(n > 12 && n < 20)  // 65536 / 4 / (1000 + 32 header bytes) ~ 16
        let fired = Locked(false)
        #expect(x.whenDrained { fired.value = true })
        #expect(!x.waitUntilDrained(timeoutNanoseconds: 5_000_000))
        x.flush()
        while let rec = r.peek() { r.consume(rec) }
        #expect(x.waitUntilDrained(timeoutNanoseconds: 1_000_000_000))
        let deadline = monotonicNanoseconds() + 2_000_000_000
        while !fired.value && monotonicNanoseconds() < deadline { usleep(1000) }
        #expect(fired.value)
        #expect(!x.whenDrained { })
    }

    @Test("the ring service hands out rings over its socket and refuses bad requests with an errno")
    func service() throws {
        let fs = FS()
        let a = try fs.mkdir(rootInode, "a")
        let rings = RingService(tree: fs.tree)
        try rings.start()
        defer { rings.stop() }
        let attr = try fs.tree.getxattr(a | FileKind.all.rawValue, Tree.ringAttribute)
        #expect(attr == "@\(rings.name) \(a >> 4)")
        #expect(try fs.tree.listxattr(a | FileKind.all.rawValue) == [Tree.ringAttribute])
        #expect(throws: FSError.self) { try fs.tree.getxattr(a | FileKind.stats.rawValue, Tree.ringAttribute) }
        #expect(throws: FSError.self) { try fs.tree.getxattr(a | FileKind.all.rawValue, "user.other") }

        let lease = Locked<Int32>(-1)
        let (reply, fd) = try ask(rings.name, "attach \(a >> 4)\n", keep: lease)
        #expect(reply.hasPrefix("ok "), "ok SLOT SEQUENCE: \(reply)")
        #expect(fd >= 0)
        let ring = try DBuf(mapping: fd)
        close(fd)
        let r = try #require(ring.attach())
        // The service held a slot for the client at the head (it is this process): release it.
        if let slot = Int(reply.split(separator: " ").dropFirst().first ?? "") {
            #expect(ring.slotState(slot) == 1)
            fs.node("/pipes/a")?.exportRing?.releaseSlot(slot)
        }
        try fs.inject(a, "through the socket")
        #expect(next(r).map { String(decoding: $0, as: UTF8.self) } == "through the socket")

        // The client's connection is its lease: once it closes, the node no longer publishes for clients.
        let x = fs.node("/pipes/a")?.exportRing
        #expect(fs.controller.space.lock.withLock { x?.clients == 1 })
        close(lease.value)
        #expect(eventually { fs.controller.space.lock.withLock { x?.clients == 0 } })

        #expect(try ask(rings.name, "hello\n").0 == "error \(EPROTO) expected 'attach NODE'")
        #expect(try ask(rings.name, "attach 999999\n").0.hasPrefix("error \(ENOENT) "))
    }

    @Test("rings are mapped for the daemon's user and root only; other users read through the filesystem")
    func permissions() throws {
        let fs = FS()  // the daemon's user is root here
        let a = try fs.mkdir(rootInode, "a")  // all mode 0644: readable by others through the filesystem
        let user = Caller(uid: 4321, gid: 4321)
        #expect(errnoOf { _ = try fs.tree.sharedRing(node: a >> 4, caller: user, pid: 1) } == EACCES)
        let claim = try fs.tree.sharedRing(node: a >> 4, caller: .root, pid: 1)
        close(claim.fd)
        #expect(claim.slot >= 0)
        #expect(errnoOf { _ = try fs.tree.sharedRing(node: 987_654, caller: .root) } == ENOENT)
        // Another user's reader through the filesystem still works.
        #expect(errnoOf { _ = try fs.tree.open(a | FileKind.all.rawValue, flags: O_RDONLY, caller: user) } == nil)
    }

    /// Sends one request line to the service and returns its reply line and the descriptor that came with it.
    func ask(_ name: String, _ line: String, keep: Locked<Int32>? = nil) throws -> (String, Int32) {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(s >= 0)
        defer { if let keep { keep.value = s } else { close(s) } }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            p[0] = 0
            for (i, b) in bytes.enumerated() { p[i + 1] = b }
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + 1 + bytes.count)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, len) } }
        try #require(rc == 0)
        _ = line.withCString { send(s, $0, strlen($0), 0) }
        var buf = [UInt8](repeating: 0, count: 256)
        var control = [UInt8](repeating: 0, count: 64)
        var fd: Int32 = -1
        let n: Int = buf.withUnsafeMutableBytes { b in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
                return withUnsafeMutablePointer(to: &iov) { ip in
                    var msg = msghdr()
                    msg.msg_iov = ip
                    msg.msg_iovlen = 1
                    msg.msg_control = c.baseAddress
                    msg.msg_controllen = c.count
                    let n = recvmsg(s, &msg, 0)
                    if n > 0 && msg.msg_controllen >= MemoryLayout<cmsghdr>.size + 4 {
                        fd = (c.baseAddress! + MemoryLayout<cmsghdr>.size).load(as: Int32.self)
                    }
                    return n
                }
            }
        }
        let text = String(decoding: buf[..<max(0, n)], as: UTF8.self)
        return (String(text.prefix { $0 != "\n" }), fd)
    }
}
