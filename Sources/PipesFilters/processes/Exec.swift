#if canImport(Glibc)
import Glibc
#endif
import CURing
import PipesBuffering
import PipesRuntime

/// A Unix process as a filter (§3, §4.1): `mkdir 'P/exec=grep -a foo'` runs the command with P's output on its
/// stdin, and what it writes to stdout is the directory's output stream.
///
/// Input: `process` runs under the space lock and must not block, so it appends the block's bytes to the input
/// ring, a `TapRing` that is the one tap of a private, unregistered node (`inlet`). Pushing through that node is
/// what makes the ring part of the producer's batch: a lossless ring past its high-water mark makes the producer
/// (a capture file, gen, another exec) end its batch and wait outside the lock until the process has read — the
/// same backpressure a lagging `cat all` applies. Below a live source the ring is lossy, like every tap there:
/// what does not fit is dropped and counted (`input_dropped`). A writer thread moves the ring into the child's
/// stdin (a non-blocking pipe). When every input has ended, the ring ends and the child's stdin is closed.
///
/// Output: a reader thread emits each `read(2)` of the child's stdout (up to 64 KiB) as one block (link type
/// `user`) into the node's output, as a source does: its own `Batch`, waiting outside the lock for lossless
/// readers. The stream ends when the child has exited (what it wrote before is delivered first). stderr goes
/// line by line to `.errors`; a non-zero exit status or a signal goes there too, and to `stats`.
///
/// Lifetime: the child starts once the node is in the graph, on the filter's own thread (never under the space
/// lock). `rmdir`, new arguments and unmount send SIGTERM to its process group, then SIGKILL after
/// `graceNanoseconds`; it is always reaped. At most `maxProcesses` run at once (EAGAIN beyond).
///
/// It is a `SourceFilter` for the runtime's sake: its output has its own producer, and its stream ends when the
/// process does, not when its input does (`sort` and `wc` write after the end of their input).
public final class Exec: SourceFilter, @unchecked Sendable {
    /// Processes that may run at once, over all exec filters.
    public static let maxProcesses = 64
    /// Between SIGTERM and SIGKILL.
    public static let graceNanoseconds: Int64 = 2_000_000_000
    /// Input buffered for the process at most before its producer waits (the high-water mark is half).
    public static let inputCapacity = 1 << 20
    /// Largest output block: one read(2) of the child's stdout.
    public static let readSize = 64 << 10
    /// stderr lines copied to `.errors` per process; later ones are counted only.
    public static let maxReportedLines = 100

    public let command: ExecCommand
    public let arguments: String
    public var linkType: LinkType { .user }
    public var isLive: Bool { false }

    private let input: TapRing
    /// Carries the input ring as its one tap; never in the graph. Pushing a block through it is what puts the
    /// ring into the producer's batch (wake-ups, congestion).
    private let inlet: Node
    private let inletRef: Unmanaged<Node>
    /// The node, unretained, for the hot path.
    private var nodeRef: Unmanaged<Node>?
    /// Set under the space lock by `attach`; used under it by `process` and `setDemand`. The threads keep strong
    /// references while they run.
    private unowned(unsafe) var space: Space?
    private unowned(unsafe) var node: Node?
    private var inputEnded = false  // space lock

    private let state = ConditionLock()
    // Guarded by `state`.
    private var attached = false
    private var stopping = false
    private var pid: pid_t = 0
    private var exited = false
    private var waitStatus: Int32 = 0
    private var terminated = false  // we sent SIGTERM
    private var killed = false  // we sent SIGKILL
    private var spawnError: String?
    private var outputEnded = false
    private var inputReadable = false
    private var inputState = "open"
    private var bytesToChild: UInt64 = 0
    private var stderrLines: UInt64 = 0
    private var lastStderr = ""
    private var holdsSlot = true

    private let wake: (read: Int32, write: Int32)
    private let main = JoinableThread()
    private let writer = JoinableThread()
    private let reaper = JoinableThread()

    /// Parses and resolves the command (ENOENT, EACCES, EINVAL) and takes a process slot (EAGAIN). Starts
    /// nothing: the process starts when the filter is attached to its node.
    public init(arguments text: String) throws(FilterError) {
        command = try ExecCommand(text)
        arguments = text
        guard ProcessSlots.take() else {
            throw FilterError("exec: \(Exec.maxProcesses) processes are running (the limit); remove one first", errno: EAGAIN)
        }
        var w: [Int32] = [-1, -1]
        if pipe2(&w, O_CLOEXEC | O_NONBLOCK) != 0 {
            let e = errno
            ProcessSlots.release()
            throw FilterError("exec: pipe: \(String(cString: strerror(e)))", errno: e)
        }
        wake = (w[0], w[1])
        input = TapRing(capacity: Exec.inputCapacity, policy: .block, maxCapacity: Exec.inputCapacity * 4)
        inlet = Node(id: 0, name: "exec-input", descriptor: ClassSelection.descriptor, filter: ClassSelection())
        inletRef = Unmanaged.passUnretained(inlet)
    }

    deinit {
        close(wake.read)
        close(wake.write)
        releaseSlot()
    }

    // MARK: data path (space lock held)

    /// The input side: appends the block to the input ring through the inlet. Never blocks.
    public func process(_ block: inout Block) -> UInt32 {
        if let n = nodeRef { Node.forward(inletRef, inSpaceOf: n, 1, &block) }  // the node's space runs the inlet's tap too
        return 0
    }

    // MARK: control path

    /// Binds to the node and starts the process on the filter's thread. Space lock held. Refuses (EPERM) a node
    /// made by a user other than the daemon's or root: the process would run with the daemon's identity.
    public func attach(space: Space, node: Node) throws(FilterError) {
        let me = geteuid()
        if node.uid != 0 && node.uid != me {
            throw FilterError("exec: the command would run as the daemon's user (uid \(me)); only that user or root may create exec filters (you are uid \(node.uid))",
                              errno: EPERM)
        }
        self.space = space
        self.node = node
        nodeRef = Unmanaged.passUnretained(node)
        space.addTap(inlet, input, .raw)
        input.setPolicy(space.isFedByLiveSource(node) ? .drop : .block)
        input.setReadableNotifier { [self] in state.withLock { inputReadable = true; state.broadcast() } }
        state.withLock { attached = true }
        main.start(name: "exec-\(node.name)") { [self] in run(space, node) }
    }

    /// Called under the space lock after every graph change: the input follows the stream's policy (lossy below
    /// a live source), and ends once every input has ended.
    public func setDemand(_ demand: Bool) {
        guard let space, let node else { return }
        input.setPolicy(space.isFedByLiveSource(node) ? .drop : .block)
        if !inputEnded && Exec.inputsEnded(node) {
            inputEnded = true
            input.endOfStream()
        }
    }

    /// True when every input of `node` has ended, by the rule `Space.refresh` uses (a source when it finished,
    /// a top-level node never, any other node when all its inputs ended). Computed here rather than read from
    /// `Node.ended`, which `refresh` may not have updated yet for the inputs.
    static func inputsEnded(_ node: Node) -> Bool {
        var memo: [ObjectIdentifier: Bool] = [:]
        func ended(_ n: Node) -> Bool {
            if let m = memo[ObjectIdentifier(n)] { return m }
            memo[ObjectIdentifier(n)] = false
            let r: Bool
            if let s = n.filter as? any SourceFilter {
                r = s.finished
            } else if n.parent == nil {
                r = false
            } else {
                let ins = n.inputs
                r = !ins.isEmpty && ins.allSatisfy { ended($0) }
            }
            memo[ObjectIdentifier(n)] = r
            return r
        }
        let ins = node.inputs
        return !ins.isEmpty && ins.allSatisfy { ended($0) }
    }

    public var finished: Bool { state.withLock { outputEnded } }

    /// rmdir, new arguments, unmount: SIGTERM to the process group now, SIGKILL after the grace period (from the
    /// filter's thread). Never blocks: it may run under the space lock.
    public func shutdown() {
        let first: Bool = state.withLock {
            if stopping { return false }
            stopping = true
            if pid > 0 && !exited {
                terminated = true
                kill(-pid, SIGTERM)
            }
            state.broadcast()
            return true
        }
        guard first else { return }
        signalWake()
        input.closeReader()  // a producer waiting for room stops waiting; later input is dropped and counted
        let unstarted = state.withLock { !attached }
        if unstarted { releaseSlot() }
    }

    public func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool {
        let deadline = monotonicNanoseconds() + timeoutNanoseconds
        for t in [main, writer, reaper] where !t.join(timeoutNanoseconds: max(0, deadline - monotonicNanoseconds())) {
            return false
        }
        return true
    }

    public func statistics() -> [(String, String)] {
        let (policy, buffered) = (input.policy, input.available)
        let dropped = inlet.stats.tapDrops  // updated under the space lock, which statsText holds
        return state.withLock {
            let st: String
            if let e = spawnError {
                st = "failed to start: \(e)"
            } else if exited {
                st = describeWaitStatus(waitStatus) + (killed ? " (SIGKILL after the grace period)" : terminated ? " (SIGTERM sent)" : "")
            } else if pid > 0 {
                st = stopping ? "stopping" : "running"
            } else {
                st = stopping ? "not started (removed)" : "starting"
            }
            var lines: [(String, String)] = [
                ("command", command.text), ("executable", command.executable),
                ("pid", pid > 0 ? "\(pid)" : "-"), ("process", st),
                ("input", inputState), ("input_policy", policy == .block ? "block (lossless)" : "drop (live upstream)"),
                ("input_buffered", "\(buffered)"), ("input_bytes_written", "\(bytesToChild)"), ("input_dropped", "\(dropped)"),
                ("stderr_lines", "\(stderrLines)"),
            ]
            if !lastStderr.isEmpty { lines.append(("last_stderr", lastStderr)) }
            return lines
        }
    }

    // MARK: threads

    private func signalWake() {
        var one: UInt8 = 1
        _ = write(wake.write, &one, 1)  // never drained: it stays readable for every poller
    }

    private func releaseSlot() {
        let give = state.withLock { () -> Bool in
            defer { holdsSlot = false }
            return holdsSlot
        }
        if give { ProcessSlots.release() }
    }

    /// The filter's thread: starts the child, then emits its stdout and reports its stderr until it exits or
    /// the filter is stopped, then makes sure it is gone and ends the stream.
    private func run(_ space: Space, _ node: Node) {
        defer {
            state.withLock { outputEnded = true; state.broadcast() }
            input.setReadableNotifier(nil)
            space.lock.withLock { if node.filter === self { space.refresh() } }
        }
        if state.withLock({ stopping }) { return }
        let child: ChildProcess
        switch ChildProcess.spawn(command.executable, command.argv) {
        case .failure(let e):
            let msg = "\(node.path): cannot run '\(command.executable)': \(e.message)"
            state.withLock { spawnError = e.message; inputState = "closed (no process)" }
            input.closeReader()
            releaseSlot()
            space.reportError(msg)
            return
        case .success(let c):
            child = c
        }
        state.withLock {
            pid = child.pid
            if stopping { terminated = true; kill(-child.pid, SIGTERM) }
        }
        reaper.start(name: "exec-reap") { [self] in reap(child.pid, space, node) }
        writer.start(name: "exec-stdin") { [self] in writeInput(child.stdin) }
        readOutput(child, space, node)
        close(child.stdout)
        close(child.stderr)
        // Stopped (or the output pipes broke): make sure the process goes.
        state.withLock {
            if !exited && !state.wait(until: { exited }, timeoutNanoseconds: Exec.graceNanoseconds) {
                killed = true
                kill(-child.pid, SIGKILL)
                _ = state.wait(until: { exited }, timeoutNanoseconds: 10_000_000_000)
            }
        }
    }

    /// Emits stdout and reports stderr until the child has exited (then what is left in the pipes is read) or
    /// the filter is stopped.
    private func readOutput(_ child: ChildProcess, _ space: Space, _ node: Node) {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: Exec.readSize, alignment: 64)
        defer { buf.deallocate() }
        let batch = Batch()
        var outOpen = true, errOpen = true
        var line: [UInt8] = []
        var draining = false
        while true {
            var fds = [pollfd(fd: outOpen ? child.stdout : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: errOpen ? child.stderr : -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: draining ? -1 : wake.read, events: Int16(POLLIN), revents: 0)]
            if draining {
                if !outOpen && !errOpen { break }
                for i in 0..<2 { fds[i].revents = Int16(POLLIN) }  // read until EAGAIN or EOF, without waiting
            } else if poll(&fds, 3, -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            if errOpen && fds[1].revents != 0 {
                let n = read(child.stderr, buf, Exec.readSize)
                if n > 0 {
                    stderrBytes(UnsafeRawBufferPointer(start: buf, count: n), &line, space, node)
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) || draining {
                    errOpen = false
                    if !line.isEmpty { reportStderr(line, space, node); line = [] }
                }
            }
            if outOpen && fds[0].revents != 0 {
                let n = read(child.stdout, buf, Exec.readSize)
                if n > 0 {
                    if !emit(UnsafeRawBufferPointer(start: buf, count: n), batch, space, node) { return }
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) || draining {
                    outOpen = false
                }
            }
            if !draining && fds[2].revents != 0 {
                let (stop, gone) = state.withLock { (stopping, exited) }
                if stop { return }
                if gone { draining = true }
            }
        }
    }

    /// One output block into the node's output, as a source pushes: own batch, lossless readers waited for
    /// outside the lock. False when the filter no longer belongs to the node (removed, replaced).
    private func emit(_ bytes: UnsafeRawBufferPointer, _ batch: Batch, _ space: Space, _ node: Node) -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var block = Block(bytes: bytes, seconds: Int64(ts.tv_sec), nanoseconds: Int32(ts.tv_nsec), linkType: .user)
        guard let home = space.beginHome(of: node, batch) else { return false }
        if node.removed || node.filter !== self {
            home.end()
            return false
        }
        home.stamp(&block)
        home.forward(node, 1, &block)
        home.end()
        home.finishBatch(batch, mayWait: true) { [self] in state.withLock { stopping } }
        return true
    }

    private func stderrBytes(_ bytes: UnsafeRawBufferPointer, _ line: inout [UInt8], _ space: Space, _ node: Node) {
        for c in bytes {
            if c == UInt8(ascii: "\n") {
                reportStderr(line, space, node)
                line.removeAll(keepingCapacity: true)
            } else if line.count < 400 {
                line.append(c)
            }
        }
    }

    private func reportStderr(_ line: [UInt8], _ space: Space, _ node: Node) {
        let text = String(decoding: line, as: UTF8.self)
        let n: UInt64 = state.withLock {
            stderrLines += 1
            lastStderr = text
            return stderrLines
        }
        if n <= UInt64(Exec.maxReportedLines) {
            space.reportError("\(node.path): stderr: \(text)")
        } else if n == UInt64(Exec.maxReportedLines) + 1 {
            space.reportError("\(node.path): stderr: further lines are only counted (stats: stderr_lines)")
        }
    }

    /// The writer thread: moves the input ring into the child's stdin until the input ends (then closes
    /// stdin), the child stops reading, or the filter stops.
    private func writeInput(_ fd: Int32) {
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, nil)  // a child that stopped reading gives EPIPE, not SIGPIPE
        let buf = UnsafeMutableRawPointer.allocate(byteCount: Exec.readSize, alignment: 64)
        defer { buf.deallocate() }
        var why = "ended (stdin closed)"
        outer: while true {
            var n = 0
            var ended = false
            input.read(max: Exec.readSize, id: 0, nonBlocking: true) { o in
                switch o {
                case .data(let a, let b):
                    if let p = a.baseAddress { buf.copyMemory(from: p, byteCount: a.count) }
                    if let p = b.baseAddress { (buf + a.count).copyMemory(from: p, byteCount: b.count) }
                    n = a.count + b.count
                case .segments(let v):  // not from a TapRing; handled for completeness
                    for s in v where s.iov_len > 0 {
                        (buf + n).copyMemory(from: s.iov_base!, byteCount: min(s.iov_len, Exec.readSize - n))
                        n += min(s.iov_len, Exec.readSize - n)
                    }
                case .endOfStream: ended = true
                case .error: break  // EAGAIN: nothing buffered
                }
            }
            if ended { break }
            if n == 0 {
                let stop: Bool = state.withLock {
                    while !inputReadable && !stopping && !exited { state.wait() }
                    inputReadable = false
                    return stopping || exited
                }
                if stop { why = "closed (the process ended or was stopped)"; break }
                continue
            }
            var off = 0
            while off < n {
                let r = write(fd, buf + off, n - off)
                if r > 0 {
                    off += r
                    state.withLock { bytesToChild &+= UInt64(r) }
                } else if r < 0 && errno == EINTR {
                    continue
                } else if r < 0 && errno == EAGAIN {
                    var fds = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0),
                               pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
                    _ = poll(&fds, 2, -1)
                    if fds[1].revents != 0 { why = "closed (the process ended or was stopped)"; break outer }
                } else {
                    let e = errno
                    why = e == EPIPE ? "closed by the process" : "closed (write error: \(String(cString: strerror(e))))"
                    break outer
                }
            }
        }
        close(fd)
        state.withLock { inputState = why }
        input.closeReader()  // later input is dropped and counted; producers waiting for room go on
    }

    /// The reaper thread: waits for the child to exit, then reaps it under the state lock, so that a signal
    /// is never sent to a pid that was reaped and could be reused.
    private func reap(_ pid: pid_t, _ space: Space, _ node: Node) {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
        let (status, ours): (Int32, Bool) = state.withLock {
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
            waitStatus = st
            exited = true
            state.broadcast()
            return (st, terminated)
        }
        signalWake()
        releaseSlot()
        if status != 0 && !ours {
            space.reportError("\(node.path): '\(command.argv[0])' \(describeWaitStatus(status))")
        }
    }

    public static let descriptor = FilterDescriptor(
        name: "exec", summary: "a Unix process as a filter: input on its stdin, its stdout is the output",
        usage: "exec=COMMAND [ARG...] (words and quotes as in sh, no shell syntax; use exec=sh -c '...' for a shell)",
        structuralClass: .rewriting
    ) { a throws(FilterError) in try Exec(arguments: a) }
}

/// The count of exec processes running (or about to), over all filters.
enum ProcessSlots {
    private static let lock = ConditionLock()
    nonisolated(unsafe) private static var used = 0

    static func take() -> Bool {
        lock.withLock {
            if used >= Exec.maxProcesses { return false }
            used += 1
            return true
        }
    }

    static func release() { lock.withLock { used -= 1 } }

    /// Slots taken now (tests).
    static var inUse: Int { lock.withLock { used } }
}
