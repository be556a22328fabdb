import PipesBuffering

/// An execution space (§6.1): one memory protection domain whose filters call each other directly.
///
/// The space owns the graph of nodes and the lock that serializes the data path (sources, injection) against
/// the control path (graph changes, taps opening). Sources push a batch of blocks with the lock held, then call
/// `finishBatch`, which wakes readers once per batch (signal moderation, §6.2) and applies backpressure for
/// lossless taps outside the lock.
public final class Space: @unchecked Sendable {
    public let lock = ConditionLock()
    /// Every live node by id.
    public private(set) var nodes: [UInt64: Node] = [:]
    /// Top-level directories in creation order.
    public internal(set) var roots: [Node] = []
    private var nextID: UInt64 = 16
    private var wake: [TapRing] = []
    private var congested: [TapRing] = []
    /// Spare lists swapped with `wake`/`congested` at the end of a batch, so finishing a batch allocates nothing.
    private var spareWake: [TapRing] = []
    private var spareCongested: [TapRing] = []
    private var congestedCount = 0

    /// Receives one-line error reports from sources (the filesystem appends them to `/.errors`).
    public var errorHandler: (@Sendable (String) -> Void)?

    public func reportError(_ message: String) { errorHandler?(message) }

    public init() {
        wake.reserveCapacity(64)
        congested.reserveCapacity(64)
    }

    public func allocateID() -> UInt64 {
        nextID += 1
        return nextID
    }

    // MARK: data path

    /// Runs `block` through `node` and, depth-first, everything downstream whose edges accept its class.
    /// The lock must be held. Allocates nothing and takes no references.
    @inline(__always)
    public func push(_ node: Node, _ block: inout Block) {
        push(Unmanaged.passUnretained(node), &block)
    }

    /// The hot path proper: nodes travel as unmanaged references (the graph keeps them alive and the space lock
    /// keeps the graph still), so walking the graph costs no reference counting.
    @inline(__always)
    public func push(_ node: Unmanaged<Node>, _ block: inout Block) {
        let c: UInt32 = node._withUnsafeGuaranteedRef { n in
            let k = n.counters
            k.pointee.packetsIn &+= 1
            k.pointee.bytesIn &+= UInt64(block.count)
            return n.hotType.process(unretained: n.hotInstance, &block)
        }
        if c == 0 { return }
        forward(node, c, &block)
    }

    /// Delivers a block as `node`'s output (taps and children) without running its filter: injection.
    @inline(__always)
    public func forward(_ node: Node, _ c: UInt32, _ block: inout Block) {
        forward(Unmanaged.passUnretained(node), c, &block)
    }

    func forward(_ node: Unmanaged<Node>, _ c: UInt32, _ block: inout Block) {
        block.classValue = c
        let (edges, taps, k) = node._withUnsafeGuaranteedRef { n in (n.hotEdges, n.hotTaps, n.counters) }
        k.pointee.packetsOut &+= 1
        k.pointee.bytesOut &+= UInt64(block.count)
        if taps.count != 0 { deliverToTaps(taps, k, block) }
        let n = edges.count
        if n == 1 {
            if edges[0].matches(c) { push(edges[0].child, &block) }
            return
        }
        var i = 0
        while i < n {
            let e = edges[i]
            if e.matches(c) {
                var b = block
                push(e.child, &b)
            }
            i += 1
        }
    }

    private func deliverToTaps(_ hotTaps: UnsafeMutableBufferPointer<HotTap>, _ k: UnsafeMutablePointer<NodeStats>,
                               _ block: Block) {
        for t in hotTaps {
            let r: AppendResult
            if t.pcapLinkType < 0 {
                r = t.ring.append(header: nil, body: block.bytes)
            } else if t.pcapLinkType == block.linkType.dltValue {
                var hdr: (UInt32, UInt32, UInt32, UInt32) = (
                    UInt32(truncatingIfNeeded: block.seconds), UInt32(truncatingIfNeeded: max(0, block.nanoseconds) / 1000),
                    UInt32(block.count), UInt32(truncatingIfNeeded: block.wireLength))
                r = withUnsafeBytes(of: &hdr) { t.ring.append(header: $0, body: block.bytes) }
            } else {
                r = []
            }
            if !r.contains(.stored) { k.pointee.tapDrops &+= 1 }
            if r.contains(.becameReadable) { wake.append(t.ring) }
            if r.contains(.congested) { congested.append(t.ring); congestedCount += 1 }
        }
    }

    /// True when a lossless tap is past its high-water mark: end the batch early.
    @inline(__always)
    public var needsDrain: Bool { congestedCount != 0 }

    /// Ends a batch: call after `lock.unlock()`. Wakes readers and, if `mayWait`, waits (bounded by
    /// `stopRequested`) until congested lossless taps drained.
    public func finishBatch(mayWait: Bool, stopRequested: () -> Bool = { false }) {
        lock.lock()
        if wake.isEmpty && congested.isEmpty { lock.unlock(); return }
        // Swap in the spares (emptied, with capacity) and work on the full lists outside the lock.
        var w = spareWake, c = spareCongested
        spareWake = []
        spareCongested = []
        swap(&w, &wake)
        swap(&c, &congested)
        congestedCount = 0
        lock.unlock()
        for r in w { r.serviceWaiters() }
        if mayWait {
            outer: for r in c {
                r.serviceWaiters()
                while !r.waitUntilDrained(timeoutNanoseconds: 100_000_000) {
                    if stopRequested() { break outer }
                }
            }
        }
        w.removeAll(keepingCapacity: true)
        c.removeAll(keepingCapacity: true)
        lock.lock()
        if spareWake.capacity < w.capacity { spareWake = w }
        if spareCongested.capacity < c.capacity { spareCongested = c }
        lock.unlock()
    }

    /// Writes `bytes` into `node`'s output (or, for input-injectable filters, its input), as one block.
    /// Lossless: waits for lagging lossless readers like a pipe writer.
    /// At most this many writers wait for lagging readers at once; more get EAGAIN. Each waiting writer holds a
    /// FUSE worker thread (64 at most), and the workers are what interrupts and releases need to get through.
    public static let maxWaitingWriters = 32
    private var waitingWriters = 0

    public func inject(_ node: Node, bytes: UnsafeRawBufferPointer, interrupted: () -> Bool) -> Int32 {
        lock.lock()
        if node.removed { lock.unlock(); return ENODEV_ }
        if waitingWriters >= Space.maxWaitingWriters { lock.unlock(); return EAGAIN_ }
        var block = Block(bytes: bytes, linkType: injectionLinkType(node))
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        block.seconds = Int64(ts.tv_sec)
        block.nanoseconds = Int32(ts.tv_nsec)
        if node.filter is any InputInjectable {
            node.counters.pointee.packetsIn &+= 1
            node.counters.pointee.bytesIn &+= UInt64(block.count)
            let c = node.hotType.process(unretained: node.hotInstance, &block)
            if c == 0 {
                lock.unlock()
                return EIO_
            }
            forward(node, c, &block)
        } else {
            forward(node, 1, &block)
        }
        waitingWriters += 1
        lock.unlock()
        finishBatch(mayWait: true, stopRequested: interrupted)
        lock.withLock { waitingWriters -= 1 }
        return 0
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
    }

    /// Rebuilds the hot edge table of `node` after its children or links changed.
    public func edgesChanged(_ node: Node) { node.rebuildHotEdges() }

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
                r = !ins.isEmpty && ins.allSatisfy { ended($0) }
            }
            memo[ObjectIdentifier(n)] = r
            return r
        }
        for n in nodes.values {
            let e = ended(n)
            if e != n.ended {
                n.ended = e
                if e { for t in n.taps { t.ring.endOfStream() } }
            }
            if let s = n.filter as? any SourceFilter {
                s.setDemand(!n.outputs.isEmpty || !n.taps.isEmpty)
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
let ENODEV_ = ENODEV
let EIO_ = EIO
let EAGAIN_ = EAGAIN
#endif
