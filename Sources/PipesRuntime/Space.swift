import PipesBuffering

/// What one producer's pushes leave to do once it releases the space lock: readers to wake (once per batch:
/// signal moderation, §6.2) and lossless taps past their high-water mark to wait for. Each producer (a source
/// thread, an injecting write) owns one, so producers never take over each other's backpressure.
public final class Batch: @unchecked Sendable {
    var wake: [TapRing] = []
    var congested: [any BatchRing] = []
    /// Shared rings written in this batch: flushed (readers woken) before the lock is released.
    var exports: [ExportRing] = []
    /// Channels into other spaces written in this batch: their consumers are signalled at its end.
    var channels: [ChannelRing] = []
    /// Filters holding blocks staged in this batch: they hand them on as it ends (`BatchStaged`).
    var staged: [any BatchStaged] = []

    public init() {
        staged.reserveCapacity(4)
        wake.reserveCapacity(64)
        congested.reserveCapacity(16)
        exports.reserveCapacity(8)
        channels.reserveCapacity(8)
    }

    /// True when a lossless tap this batch wrote to is past its high-water mark: end the batch now.
    @inline(__always)
    public var needsDrain: Bool { !congested.isEmpty }
}

/// The graph (§6.1) and the execution spaces that run it.
///
/// The space owns the nodes and the execution spaces (`spaces`, fixed at creation; one by default). Each node
/// runs in one of them (`Node.home`). `lock` (a `GraphLock`: every execution space's lock) serializes graph
/// changes and taps opening against all data paths. A producer whose node is in space 0 (sources) takes only
/// that space's lock with `begin(_:)`, pushes blocks, `end()`s, then calls `finishBatch`, which wakes readers
/// and applies backpressure for lossless readers outside the lock.
public final class Space: @unchecked Sendable {
    /// The execution spaces: 0 runs the sources (their threads) and what is placed there.
    public let spaces: [ExecutionSpace]
    /// Space 0, which the sources' threads run.
    @usableFromInline let main: ExecutionSpace
    /// Every space's lock: hold it to change or read the graph.
    public let lock: GraphLock
    /// Every live node by id.
    public private(set) var nodes: [UInt64: Node] = [:]
    /// Top-level directories in creation order.
    public internal(set) var roots: [Node] = []
    private var nextID: UInt64 = 16

    /// Channels made from now on: size in use (log2 bytes) and moderation threshold (records per signal).
    public var channelSizeLog2 = ChannelRing.defaultSizeLog2
    public var channelThreshold = 32
    /// Runs `refresh()` when a space thread drained a channel whose source had ended.
    let refresher = OnDemandWorker(name: "space-refresh")

    /// Receives one-line error reports from sources (the filesystem appends them to `/.errors`).
    public var errorHandler: (@Sendable (String) -> Void)?

    public func reportError(_ message: String) { errorHandler?(message) }

    /// A graph run by `spaces` execution spaces; `cpus[i]` pins space i's thread (nil or a shorter list:
    /// unpinned). `kinds[i]` labels space i for the control plane's placement (default, and past the list: user);
    /// a deeper label plans for a kernel or device space that, until one exists, runs as a thread like the rest.
    public init(spaces count: Int = 1, cpus: [Int32?] = [], kinds: [SpaceKind] = []) {
        let n = max(1, count)
        spaces = (0..<n).map { ExecutionSpace(index: $0, cpu: $0 < cpus.count ? cpus[$0] : nil, kind: $0 < kinds.count ? kinds[$0] : .user) }
        main = spaces[0]
        lock = GraphLock(spaces)
        for s in spaces { s.graph = self }
    }

    /// Takes space 0's lock for a producer there (a source): what its pushes leave to do is collected in `batch`.
    @inline(__always)
    public func begin(_ batch: Batch) { main.begin(batch) }

    /// Releases the lock taken by `begin`.
    @inline(__always)
    public func end() { main.end() }

    /// How late a record published on a shared ring may be signalled. A ring signals its readers every
    /// `threshold` records by itself; what a batch leaves unsignalled is flushed this long after the batch, by
    /// one thread per execution space, so a fast stream wakes its readers per threshold, not per batch.
    public static let moderationDelayNanoseconds: UInt32 = 200_000

    public func allocateID() -> UInt64 {
        nextID += 1
        return nextID
    }

    // MARK: data path (space 0: sources)

    /// Runs `block` through `node`, a node of space 0 (a source's), and on downstream. Space 0's lock must be
    /// held (`begin`). Allocates nothing and takes no references.
    /// The block enters the graph here: it gets a new serial.
    @inline(__always)
    public func push(_ node: Node, _ block: inout Block) {
        main.stamp(&block)
        main.push(Unmanaged.passUnretained(node), &block)
    }

    @inline(__always)
    public func push(_ node: Unmanaged<Node>, _ block: inout Block) {
        main.stamp(&block)
        main.push(node, &block)
    }

    /// Delivers a block as the output of `node`, a node of space 0, without running its filter (a new serial).
    @inline(__always)
    public func forward(_ node: Node, _ c: UInt32, _ block: inout Block) {
        main.stamp(&block)
        main.forward(node, c, &block)
    }

    /// True when a lossless reader the current producer of space 0 wrote to is past its high-water mark.
    @inline(__always)
    public var needsDrain: Bool { main.needsDrain }

    /// Ends a producer's batch (after `end()`): see `ExecutionSpace.finishBatch`.
    public func finishBatch(_ batch: Batch, mayWait: Bool, stopRequested: () -> Bool = { false }) {
        main.finishBatch(batch, mayWait: mayWait, stopRequested: stopRequested)
    }

    /// `finishBatch` for pushes into space 0 made with the plain lock (tests and one-off callers).
    public func finishBatch(mayWait: Bool, stopRequested: () -> Bool = { false }) {
        main.finishBatch(mayWait: mayWait, stopRequested: stopRequested)
    }

    /// Takes the lock of the space `node` runs in, for a producer of that node (a filter's own thread, `exec`),
    /// and returns that space (`end()` it). Nil if the node was removed. The node may move between spaces
    /// meanwhile: its home is read again under the lock.
    public func beginHome(of node: Node, _ batch: Batch) -> ExecutionSpace? {
        while true {
            let i = node.homeIndex
            guard i >= 0 && i < spaces.count else { return nil }
            let h = spaces[i]
            h.begin(batch)
            if node.homeIndex == i { return h }
            h.end()
        }
    }

    // MARK: injection

    /// Bytes of parked writes (copies) held at most, over all nodes; more writers get EAGAIN.
    public static let maxPendingWriteBytes = 64 << 20

    /// Writes queued behind lagging lossless readers, per node, oldest first.
    private var pendingWrites: [ObjectIdentifier: [PendingWrite]] = [:]
    private var pendingOrder: [Node] = []
    private var pendingBytes = 0
    /// Rings a retry is registered on (so a ring gets one registration, not one per parked write). Guarded by
    /// `retryLock`.
    private var retryRegistered = Set<ObjectIdentifier>()

    /// The outcome of `inject`.
    public enum InjectOutcome: Equatable, Sendable {
        /// Delivered.
        case done
        /// Queued behind a lagging lossless reader: `completion` runs later with 0 or an errno.
        case parked
        /// Refused with an errno.
        case failed(Int32)
    }

    /// Writes `bytes` into `node`'s output (or, for input-injectable filters, its input), as one block.
    ///
    /// Lossless, like a pipe writer: if a lossless reader downstream lags (its tap is past the high-water
    /// mark), or earlier writes to this node wait, the write is copied and parked — no thread waits — and
    /// `completion` runs once it went through (0), was cancelled (`cancelWrite`: EINTR), the node went away
    /// (ENODEV) or the space shut down (`failPendingWrites`). A non-blocking write gets EAGAIN instead.
    /// `interrupted` is checked before parking.
    public func inject(_ node: Node, bytes: UnsafeRawBufferPointer, id: UInt64 = 0, nonBlocking: Bool = false,
                       interrupted: () -> Bool = { false },
                       completion: @escaping @Sendable (Int32) -> Void = { _ in }) -> InjectOutcome {
        let batch = Batch()
        lock.lock()  // the whole graph: the parked-write queues are shared by all spaces
        if node.removed { lock.unlock(); return .failed(ENODEV_) }
        let key = ObjectIdentifier(node)
        let queued = pendingWrites[key] != nil
        let blocking = queued ? [] : congestedRings(below: node)
        if queued || !blocking.isEmpty {
            if nonBlocking { lock.unlock(); return .failed(EAGAIN_) }
            if interrupted() { lock.unlock(); return .failed(EINTR_) }
            if pendingBytes + bytes.count > Space.maxPendingWriteBytes { lock.unlock(); return .failed(EAGAIN_) }
            let w = PendingWrite(node: node, bytes: bytes, id: id, completion: completion)
            if queued { pendingWrites[key]!.append(w) } else { pendingWrites[key] = [w]; pendingOrder.append(node) }
            pendingBytes += bytes.count
            let register = claimRetry(blocking)
            lock.unlock()
            registerRetry(on: register)
            return .parked
        }
        let rc = deliverInjected(node, bytes, batch)
        lock.unlock()
        main.finishBatch(batch, mayWait: false)
        return rc == 0 ? .done : .failed(rc)
    }

    /// Cancels a parked write (an interrupt): it completes with EINTR. No-op if it already went through.
    public func cancelWrite(_ node: Node, id: UInt64) {
        let w: PendingWrite? = lock.withLock {
            let key = ObjectIdentifier(node)
            guard var q = pendingWrites[key], let i = q.firstIndex(where: { $0.id == id }) else { return nil }
            let w = q.remove(at: i)
            pendingBytes -= w.data.count
            if q.isEmpty {
                pendingWrites[key] = nil
                pendingOrder.removeAll { $0 === node }
            } else {
                pendingWrites[key] = q
            }
            return w
        }
        w?.completion(EINTR_)
    }

    /// Completes every parked write with `errno` and waits until no retry pass is running (unmount: afterwards
    /// nothing in the space answers a request).
    public func failPendingWrites(_ errno: Int32) {
        defer { retryWorker.waitIdle() }
        let all: [PendingWrite] = lock.withLock {
            let ws = pendingOrder.flatMap { pendingWrites[ObjectIdentifier($0)] ?? [] }
            pendingWrites = [:]
            pendingOrder = []
            pendingBytes = 0
            return ws
        }
        for w in all { w.completion(errno) }
    }

    /// Parked writes waiting now (for stats and tests).
    public var pendingWriteCount: Int { lock.withLock { pendingWrites.values.reduce(0) { $0 + $1.count } } }

    /// Writes parked on `node`. Lock held.
    public func pendingWriteCount(_ node: Node) -> Int { pendingWrites[ObjectIdentifier(node)]?.count ?? 0 }

    /// The rings of `rings` that have no retry registered yet, now marked as having one.
    private func claimRetry(_ rings: [any BatchRing]) -> [any BatchRing] {
        retryLock.withLock { rings.filter { retryRegistered.insert(ObjectIdentifier($0)).inserted } }
    }

    private func registerRetry(on rings: [any BatchRing]) {
        for r in rings {
            // The callback may run with the space lock held (a stream ending): it takes only `retryLock`.
            let registered = r.whenDrained { [self] in
                retryLock.withLock { _ = retryRegistered.remove(ObjectIdentifier(r)) }
                requestRetry()
            }
            if !registered {  // drained between the check and the registration
                retryLock.withLock { _ = retryRegistered.remove(ObjectIdentifier(r)) }
                requestRetry()
            }
        }
    }

    private let retryLock = ConditionLock()
    private let retryWorker = OnDemandWorker(name: "retry-writes")

    /// Asks the retry thread to run `retryPendingWrites`. Drain notifications can come from a thread that
    /// holds the space lock (a stream ending, a policy change), so they never retry in place.
    private func requestRetry() {
        retryWorker.request { [self] in retryPendingWrites() }
    }

    /// Delivers parked writes, oldest first per node, as far as their readers allow. Runs on the retry worker's
    /// thread, without locks held.
    func retryPendingWrites() {
        let batch = Batch()
        var done: [(PendingWrite, Int32)] = []
        var register: [any BatchRing] = []
        lock.lock()
        var i = 0
        while i < pendingOrder.count {
            let node = pendingOrder[i]
            let key = ObjectIdentifier(node)
            var q = pendingWrites[key] ?? []
            while let w = q.first {
                if node.removed {
                    done.append((w, ENODEV_))
                } else {
                    let blocking = congestedRings(below: node)
                    if !blocking.isEmpty {
                        register += claimRetry(blocking)
                        break
                    }
                    let rc = w.data.withUnsafeBytes { deliverInjected(node, $0, batch) }
                    done.append((w, rc))
                }
                pendingBytes -= w.data.count
                q.removeFirst()
            }
            if q.isEmpty {
                pendingWrites[key] = nil
                pendingOrder.remove(at: i)
            } else {
                pendingWrites[key] = q
                i += 1
            }
        }
        lock.unlock()
        main.finishBatch(batch, mayWait: false)
        for (w, rc) in done { w.completion(rc) }
        if !register.isEmpty { registerRetry(on: register) }
    }

    /// Runs one injected block into `node` and on, in the node's execution space. The graph lock held.
    private func deliverInjected(_ node: Node, _ bytes: UnsafeRawBufferPointer, _ batch: Batch) -> Int32 {
        let h = node.home
        return h.asProducer(batch) {
            var block = Block(bytes: bytes, linkType: injectionLinkType(node))
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            block.seconds = Int64(ts.tv_sec)
            block.nanoseconds = Int32(ts.tv_nsec)
            h.stamp(&block)
            if node.filter is any InputInjectable {
                node.counters.pointee.packetsIn &+= 1
                node.counters.pointee.bytesIn &+= UInt64(block.count)
                let c = node.hotType.process(unretained: node.hotInstance, &block)
                if c == 0 { return EIO_ }
                h.forward(node, c, &block)
            } else {
                h.forward(node, 1, &block)
            }
            return 0
        }
    }

    /// Lossless taps at or below `node` that are past their high-water mark. Lock held.
    public func congestedRings(below node: Node) -> [any BatchRing] {
        var found: [any BatchRing] = []
        var seen = Set<ObjectIdentifier>()
        var stack = [node]
        while let n = stack.popLast() {
            guard seen.insert(ObjectIdentifier(n)).inserted else { continue }
            for t in n.taps where t.ring.isCongested { found.append(t.ring) }
            if let x = n.exportRing, x.isCongested { found.append(x) }
            for ch in n.outChannels.values where ch.ring.isCongested { found.append(ch.ring) }
            for o in n.outputs { stack.append(o.node) }
        }
        return found
    }

    /// The link type injected blocks carry: the node's stream type if it has one, else `.user`.
    public func injectionLinkType(_ node: Node) -> LinkType {
        if let j = node.filter as? any InjectionLinkType { return j.injectedLinkType }
        return streamLinkType(node) ?? .user
    }

    /// The link type of a node's output stream: from its sources, through each filter's `outputLinkType`;
    /// nil when inputs disagree. Lock held.
    public func streamLinkType(_ node: Node) -> LinkType? {
        var memo: [ObjectIdentifier: LinkType?] = [:]
        func output(_ n: Node) -> LinkType? {
            if let m = memo[ObjectIdentifier(n)] { return m }
            memo[ObjectIdentifier(n)] = .some(nil)  // cycle guard
            let r: LinkType?
            if let s = n.filter as? any SourceFilter {
                r = s.linkType
            } else if let j = n.filter as? any InjectionLinkType {
                r = j.injectedLinkType
            } else {
                let ins = n.inputs.map { output($0) }
                var input: LinkType? = ins.isEmpty ? .user : ins[0]
                for t in ins.dropFirst() where t == nil || !(t!.sameFraming(input ?? t!)) || input == nil { input = nil }
                r = n.filter.outputLinkType(input)
            }
            memo[ObjectIdentifier(n)] = .some(r)
            return r
        }
        return output(node)
    }

    /// True when a live (lossy) source feeds this node. Lock held.
    public func isFedByLiveSource(_ node: Node) -> Bool {
        var seen = Set<ObjectIdentifier>()
        var stack = [node]
        while let n = stack.popLast() {
            guard seen.insert(ObjectIdentifier(n)).inserted else { continue }
            if let s = n.filter as? any SourceFilter, s.isLive { return true }
            stack.append(contentsOf: n.inputs)
        }
        return false
    }

    // MARK: structure (control path, lock held)

    public func register(_ node: Node) {
        nodes[node.id] = node
    }

    public func addRoot(_ node: Node) {
        register(node)
        roots.append(node)
    }

    public func removeRoot(_ node: Node) {
        roots.removeAll { $0 === node }
    }

    public func unregister(_ node: Node) {
        nodes[node.id] = nil
        node.removed = true
        node.exportRing?.endOfStream()
    }

    /// Size of the shared rings made from now on (log2 bytes): half of it is the most a lossless reader may lag.
    public var sharedRingLog2 = 24

    /// The node's shared ring (FUSE readers of `all` and client-library readers), made on first use; a new one
    /// if the stream had ended and goes on. Call `refresh()` after attaching readers. Lock held.
    public func exportRing(_ node: Node) throws(RingError) -> ExportRing {
        if let x = node.exportRing {
            if x.isEnded && !node.ended { try x.reopen() }
            return x
        }
        let x = try ExportRing(policy: isFedByLiveSource(node) ? .drop : .block, sizeLog2: sharedRingLog2, ringID: node.id)
        node.exportRing = x
        if node.ended { x.endOfStream() }
        return x
    }

    /// Rebuilds the hot edge table of `node` after its children, links or placement changed, making, moving or
    /// closing the channels of its edges into other execution spaces first. Graph lock held.
    public func edgesChanged(_ node: Node) {
        reconcileChannels(node)
        node.rebuildHotEdges()
    }

    /// Opens a tap on `node`. Lock held.
    public func addTap(_ node: Node, _ ring: TapRing, _ format: TapFormat) {
        node.taps.append((ring, format))
        node.rebuildHotTaps()
        if node.ended { ring.endOfStream() }
    }

    public func removeTap(_ node: Node, _ ring: TapRing) {
        node.taps.removeAll { $0.ring === ring }
        node.rebuildHotTaps()
    }

    // MARK: end of stream and demand

    /// Recomputes which nodes have ended (all upstream sources finished) and ends their taps; recomputes
    /// source demand. Call with the lock held after any change to the graph or a source's state.
    public func refresh() {
        var memo: [ObjectIdentifier: Bool] = [:]
        func ended(_ n: Node) -> Bool {
            if let m = memo[ObjectIdentifier(n)] { return m }
            memo[ObjectIdentifier(n)] = false  // cycle guard (the graph is acyclic; be safe)
            let r: Bool
            if let s = n.filter as? any SourceFilter {
                r = s.finished
            } else if n.parent == nil {
                r = false  // junctions and top-level filters take writes: they never end
            } else {
                let ins = n.inputs
                r = !ins.isEmpty && ins.allSatisfy { ended($0) && channelDrained(from: $0, to: n) }
            }
            memo[ObjectIdentifier(n)] = r
            return r
        }
        // What the flushes handed on may sit in channels to other spaces now: what ended is computed again, so a
        // node fed through such a channel ends only once it drained it.
        flushEnding(ended) { memo.removeAll(keepingCapacity: true) }
        var liveMemo: [ObjectIdentifier: Bool] = [:]
        func live(_ n: Node) -> Bool {
            if let m = liveMemo[ObjectIdentifier(n)] { return m }
            liveMemo[ObjectIdentifier(n)] = false
            let r = (n.filter as? any SourceFilter)?.isLive ?? false || n.inputs.contains { live($0) }
            liveMemo[ObjectIdentifier(n)] = r
            return r
        }
        for n in nodes.values {
            if !n.outChannels.isEmpty { updateChannelPolicies(n, live: live(n)) }
            if !n.taps.isEmpty || n.exportRing != nil {
                // A stream fed by a live source cannot wait: its taps are lossy; all others are lossless.
                let p: OverflowPolicy = live(n) ? .drop : .block
                for t in n.taps { t.ring.setPolicy(p) }
                if let x = n.exportRing {
                    do throws(RingError) { try x.setPolicy(p) } catch { reportError("\(n.path): shared ring: \(error)") }
                }
            }
            let e = ended(n)
            if e != n.ended {
                n.ended = e
                if e {
                    for t in n.taps { t.ring.endOfStream() }
                    n.exportRing?.endOfStream()
                } else if let x = n.exportRing, x.isEnded {
                    // The stream goes on (a capture file rewound): readers that had their end of stream keep
                    // it; readers from now on get a new ring.
                    do throws(RingError) { try x.reopen() } catch { reportError("\(n.path): shared ring: \(error)") }
                }
            }
            n.updateExport()
            if let s = n.filter as? any SourceFilter {
                s.setDemand(!n.outputs.isEmpty || !n.taps.isEmpty || n.hotExport != nil)
            }
        }
        // The graph changed: a parked write whose lagging reader is no longer downstream (a link removed, a
        // filter moved or removed) may go now. Drain callbacks do not see such changes.
        if !pendingOrder.isEmpty { requestRetry() }
    }

    /// Filters that hold blocks back (`FlushingFilter`) and whose inputs all ended hand on what they hold, before
    /// anything below them is marked ended: upstream ones first, each once per end of its input. Lock held.
    @discardableResult
    private func flushEnding(_ ended: (Node) -> Bool, recompute: () -> Void) -> Bool {
        // Depth: the longest path from a root, so a node comes after everything that can feed it (links too).
        var depths: [ObjectIdentifier: Int] = [:]
        func depth(_ n: Node) -> Int {
            if let d = depths[ObjectIdentifier(n)] { return d }
            depths[ObjectIdentifier(n)] = 0  // cycle guard (the graph is acyclic; be safe)
            let d = 1 + (n.inputs.map { depth($0) }.max() ?? 0)
            depths[ObjectIdentifier(n)] = d
            return d
        }
        var due: [(depth: Int, node: Node, filter: any FlushingFilter)] = []
        for n in nodes.values where !n.ended {
            guard let f = n.filter as? any FlushingFilter, ended(n) else { continue }
            due.append((depth(n), n, f))
        }
        var flushed = false
        for d in due.sorted(by: { $0.depth < $1.depth }) {
            // What an upstream flush handed on may be in a channel into this node's space: not ended yet, then.
            if flushed {
                recompute()
                if !ended(d.node) { continue }
            }
            flushed = true
            let b = Batch()
            d.node.home.asProducer(b) { d.filter.endOfStream() }
            // Readers of what it handed on are woken now (as `endOfStream` of a tap does, lock held); channels into
            // other spaces were signalled as the batch settled.
            for r in b.wake { r.serviceWaiters() }
            for r in b.congested { r.serviceWaiters() }
        }
        if flushed { recompute() }
        return flushed
    }
}

#if canImport(Glibc)
import Glibc
let ENODEV_ = ENODEV
let EIO_ = EIO
let EAGAIN_ = EAGAIN
let EINTR_ = EINTR
#endif

/// A write parked behind a lagging lossless reader: a copy of its bytes and how to answer it.
final class PendingWrite {
    let node: Node
    let data: [UInt8]
    let id: UInt64
    let completion: @Sendable (Int32) -> Void

    init(node: Node, bytes: UnsafeRawBufferPointer, id: UInt64, completion: @escaping @Sendable (Int32) -> Void) {
        self.node = node
        data = Array(bytes)
        self.id = id
        self.completion = completion
    }
}
