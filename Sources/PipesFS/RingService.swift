#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesRuntime

/// Hands a node's shared ring (its `ExportRing` memfd) to client-library readers in other processes, so they
/// map it and read with no FUSE round trip (paper §5.1, §9.1).
///
/// A client finds the service through the extended attribute `user.pipes.ring` of a stream file
/// (`@NAME NODE`), connects to the abstract Unix socket NAME, sends `attach NODE\n`, and gets `ok\n` with the
/// memfd (SCM_RIGHTS), or `error ERRNO MESSAGE\n`. The caller's credentials (SO_PEERCRED and its groups) are
/// checked against the stream file's mode exactly as open(2) of `all` for reading would be.
public final class RingService: @unchecked Sendable {
    /// The abstract socket's name (without the leading NUL).
    public let name: String
    private let tree: Tree
    private var listener: Int32 = -1
    /// Written once to stop the service thread (a self-pipe: poll has no other way to be interrupted).
    private var stopPipe: [Int32] = [-1, -1]
    /// Connections of attached clients, kept open as their lease: when the daemon goes away, however it goes,
    /// the kernel closes them and a waiting client sees it (a ring's `closed` word alone would never be set by
    /// a daemon killed with SIGKILL). Service thread only. At most `maxLeases` clients (EMFILE beyond).
    private var leases: [(fd: Int32, node: UInt64, pid: UInt32)] = []
    static let maxLeases = 4096
    private let thread = JoinableThread()
    private let stopLock = ConditionLock()
    private var stopping = false
    nonisolated(unsafe) private static var counter = 0

    public init(tree: Tree) {
        self.tree = tree
        RingService.counterLock.lock()
        RingService.counter += 1
        let n = RingService.counter
        RingService.counterLock.unlock()
        name = "pipesfs.\(getpid()).\(n)"
    }
    private static let counterLock = ConditionLock()

    /// Binds the socket and serves requests on a thread of its own.
    public func start() throws(FSError) {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if s < 0 { throw FSError(errno, "ring service: socket: \(String(cString: strerror(errno)))") }
        var (addr, len) = RingService.address(name)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, len) }
        }
        if rc != 0 || listen(s, 64) != 0 {
            let e = errno
            close(s)
            throw FSError(e, "ring service: bind @\(name): \(String(cString: strerror(e)))")
        }
        var p: [Int32] = [0, 0]
        if pipe(&p) != 0 {
            let e = errno
            close(s)
            throw FSError(e, "ring service: pipe: \(String(cString: strerror(e)))")
        }
        for f in p { _ = fcntl(f, F_SETFD, FD_CLOEXEC) }
        stopPipe = p
        listener = s
        tree.ringServiceName = name
        thread.start(name: "ring-service") { [self] in serve() }
    }

    /// Stops accepting and waits for the thread.
    public func stop() {
        let s: Int32 = stopLock.withLock {
            stopping = true
            return listener
        }
        if s < 0 { return }
        tree.ringServiceName = nil
        var b: UInt8 = 1
        _ = write(stopPipe[1], &b, 1)
        if thread.join(timeoutNanoseconds: 2_000_000_000) {
            for l in leases { close(l.fd) }
            leases = []
            close(s)
            close(stopPipe[0])
            close(stopPipe[1])
        }
    }

    static func address(_ name: String) -> (sockaddr_un, socklen_t) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8.prefix(106))
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            p[0] = 0
            for (i, b) in bytes.enumerated() { p[i + 1] = b }
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + 1 + bytes.count)
        return (addr, len)
    }

    private func serve() {
        var fds: [pollfd] = []
        while true {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0))
            for l in leases { fds.append(pollfd(fd: l.fd, events: Int16(POLLIN), revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[1].revents != 0 || stopLock.withLock({ stopping }) { return }
            // A lease ends when its client closes it (or sends anything: the protocol has one request).
            var ended: [Int32] = []
            for p in fds.dropFirst(2) where p.revents != 0 { ended.append(p.fd) }
            if !ended.isEmpty {
                for c in ended { close(c) }
                // A node whose last client left no longer needs its stream for clients; a process whose last
                // lease on a node closed holds no slot there any more (one it never took up, or one kept for it
                // across a policy change it did not follow, would otherwise hold a lossless stream).
                let gone = leases.filter { ended.contains($0.fd) }
                leases.removeAll { ended.contains($0.fd) }
                for l in gone {
                    let last = !leases.contains { $0.node == l.node && $0.pid == l.pid }
                    tree.clientLeft(node: l.node, pid: last ? l.pid : nil)
                }
            }
            if fds[0].revents & Int16(POLLIN) != 0 {
                let c = accept(listener, nil, nil)
                if c < 0 {
                    if errno == EMFILE || errno == ENFILE { usleep(10_000) }
                    continue
                }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                if leases.count >= RingService.maxLeases {
                    reply(c, "error \(EMFILE) \(RingService.maxLeases) clients are attached; read through the filesystem\n", fd: -1)
                    close(c)
                } else if let (node, pid) = handle(c) {
                    leases.append((c, node, pid))
                } else {
                    close(c)
                }
            }
        }
    }

    /// One request: a line in, a line (and maybe a descriptor) out. A client that does not send its line within
    /// a second is dropped, so none can hold up the others. The node, when the client got its ring (keep the
    /// connection as its lease).
    private func handle(_ c: Int32) -> (UInt64, UInt32)? {
        var tv = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // struct ucred (pid, uid, gid), which Glibc's module hides behind _GNU_SOURCE.
        struct PeerCredentials { var pid: Int32 = 0; var uid: UInt32 = 0; var gid: UInt32 = 0 }
        var cred = PeerCredentials()
        var clen = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 else { return nil }
        var buf = [UInt8](repeating: 0, count: 128)
        var got = 0
        // One second for the whole line, not per recv: a client dribbling bytes cannot hold the service.
        let deadline = monotonicNanoseconds() + 1_000_000_000
        while got < buf.count {
            let left = deadline - monotonicNanoseconds()
            if left <= 0 { return nil }
            var t = timeval(tv_sec: Int(left / 1_000_000_000), tv_usec: Int(left % 1_000_000_000 / 1000))
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
            let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress! + got, $0.count - got, 0) }
            if n <= 0 { return nil }
            got += n
            if buf[..<got].contains(10) { break }
        }
        let line = String(decoding: buf[..<got].prefix { $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count == 2, parts[0] == "attach", let id = UInt64(parts[1]) else {
            reply(c, "error \(EPROTO) expected 'attach NODE'\n", fd: -1)
            return nil
        }
        let who = Caller(uid: cred.uid, gid: cred.gid)
        let groups = RingService.supplementaryGroups(pid: cred.pid)
        do throws(FSError) {
            let ring = try tree.sharedRing(node: id, caller: who, groups: groups, pid: UInt32(bitPattern: cred.pid))
            reply(c, "ok \(ring.slot) \(ring.sequence)\n", fd: ring.fd)
            close(ring.fd)
            return (id, UInt32(bitPattern: cred.pid))
        } catch {
            reply(c, "error \(error.errno) \(error.message)\n", fd: -1)
            return nil
        }
    }

    private func reply(_ c: Int32, _ text: String, fd: Int32) {
        var bytes = Array(text.utf8)
        bytes.withUnsafeMutableBytes { b in
            var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
            var msg = msghdr()
            msg.msg_iov = withUnsafeMutablePointer(to: &iov) { $0 }
            msg.msg_iovlen = 1
            let space = MemoryLayout<cmsghdr>.size + 8
            var control = [UInt8](repeating: 0, count: space)
            control.withUnsafeMutableBytes { cb in
                if fd >= 0 {
                    msg.msg_control = cb.baseAddress
                    msg.msg_controllen = cb.count
                    let h = cb.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                    h.pointee.cmsg_level = SOL_SOCKET
                    h.pointee.cmsg_type = Int32(SCM_RIGHTS)
                    h.pointee.cmsg_len = MemoryLayout<cmsghdr>.size + MemoryLayout<Int32>.size
                    (cb.baseAddress! + MemoryLayout<cmsghdr>.size).storeBytes(of: fd, as: Int32.self)
                }
                withUnsafeMutablePointer(to: &iov) { ip in
                    msg.msg_iov = ip
                    _ = sendmsg(c, &msg, Int32(MSG_NOSIGNAL))
                }
            }
        }
    }

    /// The supplementary groups of a process (from /proc), for the permission check.
    static func supplementaryGroups(pid: pid_t) -> [UInt32] {
        guard let f = fopen("/proc/\(pid)/status", "r") else { return [] }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>?
        var cap = 0
        defer { free(line) }
        while getline(&line, &cap, f) > 0 {
            let s = String(cString: line!)
            if s.hasPrefix("Groups:") {
                return s.dropFirst(7).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt32($0) }
            }
        }
        return []
    }
}
