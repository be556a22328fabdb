#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesRingABI

/// An execution space (§6.1–6.2): a set of nodes whose filters call each other directly, run by whoever holds
/// the space's lock — its producers (source threads, injections) and its own scheduler thread, pinned to a CPU,
/// which consumes the rings of the edges that enter the space from other spaces (`SpaceChannel`).
///
/// The data path takes one space lock, never two, and never waits while holding it: a producer `begin`s, pushes
/// blocks (function calls down the graph; edges into other spaces append to their channel), `end`s, then
/// `finishBatch` wakes readers and waits for lossless readers outside the lock. Graph changes take every
/// space's lock (`GraphLock`), so a graph change never meets a half-run batch.
public final class ExecutionSpace: @unchecked Sendable {
    /// Position in `Space.spaces` (0: the sources' space).
    public let index: Int
    /// The CPU the space's thread is pinned to, or nil (unpinned).
    public let cpu: Int32?
    /// Where the space sits (§7.1): what the control plane's discovery offers and its selection compares.
    public let kind: SpaceKind
    /// `user0`, `kernel2`: its kind and index.
    public var name: String { "\(kind)\(index)" }
    /// The data-path lock of the space's nodes.
    let lock = ConditionLock()
    /// The batch of the producer holding the lock (`defaultBatch` outside `begin`/`end`).
    /// Unretained: every producer keeps its own batch alive for the length of its `begin`/`end`, and the space
    /// keeps `defaultBatch`; switching batches and appending to them costs no reference counting.
    private var currentRef: Unmanaged<Batch>
    @inline(__always) private var current: Unmanaged<Batch> { currentRef }
    let defaultBatch = Batch()
    weak var graph: Space?
    /// Where the scheduler thread sleeps while its input rings are empty.
    public let doorbell = Doorbell()
    /// Channels whose consumer this space is, in the order they were made (graph lock to change; own lock to read).
    var inputs: [SpaceChannel] = [] {
        didSet { inputsVersion &+= 1 }
    }
    /// Bumped with every change of `inputs`: the scheduler rebuilds its unretained copy only then.
    private var inputsVersion = 0
    private let thread = JoinableThread()
    /// Graph lock held to change.
    private var threadStarted = false
    private var stopping = false
    /// Statistics (own lock): records consumed from input channels, sleeps of the thread, its kernel thread id,
    /// and the error of pinning (0: pinned or not asked).
    public private(set) var consumed: UInt64 = 0
    public private(set) var sleeps: UInt64 = 0
    public private(set) var threadID: Int32 = 0
    public private(set) var pinError: Int32 = 0
    /// The scheduler's batch: records per pass over one input, and the longest sleep (a safety net: producers
    /// ring the doorbell).
    static let budget = 256
    static let idleSleepNanoseconds: UInt64 = 50_000_000
    /// How long an idle scheduler keeps looking before it sleeps (the moderation delay: a producer's batch ends
    /// with a signal at most this late anyway).
    static let spinNanoseconds: Int64 = 50_000

    init(index: Int, cpu: Int32?, kind: SpaceKind = .user) {
        self.index = index
        self.cpu = cpu
        self.kind = kind
        currentRef = Unmanaged.passUnretained(defaultBatch)
    }

    /// A placeholder home for nodes that are not in a graph (a filter's private inlet node).
    static let unplaced = ExecutionSpace(index: -1, cpu: nil)

    // MARK: producers

    /// Takes the lock for a producer: what its pushes leave to do is collected in `batch`.
    @inline(__always)
    public func begin(_ batch: Batch) {
        lock.lock()
        currentRef = Unmanaged.passUnretained(batch)
    }

    /// Releases the lock taken by `begin`.
    @inline(__always)
    public func end() {
        settle()
        lock.unlock()
    }

    /// Ends the current batch's work under the lock (signals) and goes back to the default batch.
    @inline(__always)
    func settle() {
        currentRef._withUnsafeGuaranteedRef { b in
            if !b.staged.isEmpty { publishStaged(b, notes: b) }
            // What pushes made with the plain lock staged (their batch is the default one, published by the plain
            // `finishBatch`, which such a caller may not have called yet): it goes on with this batch.
            if !defaultBatch.staged.isEmpty && b !== defaultBatch { publishStaged(defaultBatch, notes: b) }
            if !b.exports.isEmpty || !b.channels.isEmpty { deferFlush(b) }
        }
        currentRef = Unmanaged.passUnretained(defaultBatch)
    }

    /// What staged filters gathered in batch `b` goes on now (lock held); readers to wake and lossless queues past
    /// their mark join batch `notes` as if the blocks had been appended one by one.
    private func publishStaged(_ b: Batch, notes: Batch) {
        var i = 0
        while i < b.staged.count {
            if let (ring, r) = b.staged[i].publishStaged() { note(ring, r, in: notes) }
            i += 1
        }
        b.staged.removeAll(keepingCapacity: true)
    }

    @inline(__always)
    private func note(_ ring: TapRing, _ r: AppendResult, in b: Batch) {
        if r.contains(.becameReadable) { b.wake.append(ring) }
        if r.contains(.congested) { b.congested.append(ring) }
    }

    /// Registers `s` with the current producer's batch (lock held): it publishes as the batch ends.
    @inline(__always)
    func stage(_ s: any BatchStaged) { currentRef._withUnsafeGuaranteedRef { $0.staged.append(s) } }

    /// An append to `ring` made by a filter itself (lock held): readers to wake, backpressure, as in a tap's.
    @inline(__always)
    func note(_ ring: TapRing, _ r: AppendResult) { currentRef._withUnsafeGuaranteedRef { note(ring, r, in: $0) } }

    /// Lock held by the graph (every space's lock): runs `body` as this space's producer with `batch`.
    func asProducer<R>(_ batch: Batch, _ body: () -> R) -> R {
        currentRef = Unmanaged.passUnretained(batch)
        defer { settle() }
        return body()
    }

    // MARK: moderation of shared rings and channels (§6.2)

    private var deferredFlushes: [ExportRing] = []
    private var deferredSignals: [ChannelRing] = []
    /// The shortest delay among what is deferred now (lock held).
    private var deferredDelay: UInt32 = Space.moderationDelayNanoseconds
    private let flusher = OnDemandWorker(name: "ring-flush")

    /// Lock held.
    private func deferFlush(_ b: Batch) {
        let kick = deferredFlushes.isEmpty && deferredSignals.isEmpty
        let waiting = !b.congested.isEmpty  // the producer will wait for readers: they must run now
        // Loops by index here and below: `for in` over an array runs a coroutine that an unoptimized build
        // allocates (once per batch is still too often for 09-no-alloc's debug pass).
        var i = 0
        while i < b.exports.count {
            let x = b.exports[i]
            i += 1
            if !x.hasSleepers {
                x.pendingFlush = false  // nobody to wake: readers that sleep later see what was published
            } else if waiting || x.hasWaitingTaps {
                x.flush()  // a producer about to wait, or a parked read(2) of `all`: wake readers at once
            } else {
                deferredFlushes.append(x)  // other readers are signalled in batches
            }
        }
        b.exports.removeAll(keepingCapacity: true)
        if kick { deferredDelay = Space.moderationDelayNanoseconds }
        i = 0
        while i < b.channels.count {
            let c = b.channels[i]
            i += 1
            if waiting || c.delayNanoseconds == 0 {
                c.signal()
            } else {
                deferredSignals.append(c)
                deferredDelay = min(deferredDelay, c.delayNanoseconds)
            }
        }
        b.channels.removeAll(keepingCapacity: true)
        if kick && (!deferredFlushes.isEmpty || !deferredSignals.isEmpty) { flusher.request(flushWork) }
    }

    /// Made once: a request with a new closure would allocate per batch. Weak: the worker's thread outlives the
    /// request by up to a second and may run it after the space is gone (a graph torn down between the request and
    /// the run); the strong reference taken for the run keeps the space alive through it.
    private lazy var flushWork: @Sendable () -> Void = { [weak self] in self?.flushDeferred() }

    private func flushDeferred() {
        let delay = lock.withLock { deferredDelay }
        usleep(max(1, delay / 1000))
        lock.withLock {
            var i = 0
            while i < deferredFlushes.count { deferredFlushes[i].flush(); i += 1 }
            deferredFlushes.removeAll(keepingCapacity: true)
            i = 0
            while i < deferredSignals.count { deferredSignals[i].signal(); i += 1 }
            deferredSignals.removeAll(keepingCapacity: true)
        }
    }

    func flushExports(_ b: Batch) {
        for x in b.exports { x.flush() }
        b.exports.removeAll(keepingCapacity: true)
        for c in b.channels { c.signal() }
        b.channels.removeAll(keepingCapacity: true)
    }

    // MARK: data path

    /// The next block serial of this space (its index in the top byte, so spaces never hand out the same one).
    private var serials: UInt64 = 0

    /// Gives `block` a new serial: call where a block enters the graph (lock held).
    @inline(__always)
    public func stamp(_ block: inout Block) {
        serials &+= 1
        block.serial = UInt64(truncatingIfNeeded: max(0, index)) << 56 | (serials & 0x00FF_FFFF_FFFF_FFFF)
    }

    /// Runs `block` through `node` and, depth-first, everything downstream in this space whose edges accept its
    /// class; edges into other spaces append to their channel. The lock must be held. Allocates nothing and
    /// takes no references.
    @inline(__always)
    public func push(_ node: Node, _ block: inout Block) {
        push(Unmanaged.passUnretained(node), &block)
    }

    /// The hot path proper: nodes travel as unmanaged references (the graph keeps them alive and the lock keeps
    /// the graph still), so walking the graph costs no reference counting.
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
        let (edges, taps, k, x) = node._withUnsafeGuaranteedRef { n in (n.hotEdges, n.hotTaps, n.counters, n.hotExport) }
        k.pointee.packetsOut &+= 1
        k.pointee.bytesOut &+= UInt64(block.count)
        // An empty block that only marks a flow's end has no bytes for readers of `all` (filters below get it).
        if taps.count != 0 || x != nil, block.count != 0 || block.flowMarks.isEmpty {
            if taps.count != 0 { deliverToTaps(taps, k, block) }
            if let x { deliverToExport(x, k, block) }
        }
        let n = edges.count
        if n == 1 {
            let e = edges[0]
            if e.matches(c) {
                if let ch = e.remote { deliverToChannel(ch, block) } else { push(e.child, &block) }
            }
            return
        }
        var i = 0
        while i < n {
            let e = edges[i]
            if e.matches(c) {
                if let ch = e.remote {
                    deliverToChannel(ch, block)
                } else {
                    var b = block
                    push(e.child, &b)
                }
            }
            i += 1
        }
    }

    private func deliverToTaps(_ hotTaps: UnsafeMutableBufferPointer<HotTap>, _ k: UnsafeMutablePointer<NodeStats>,
                               _ block: Block) {
        for t in hotTaps {
            t.ring._withUnsafeGuaranteedRef { ring in
                let r: AppendResult
                if t.pcapLinkType < 0 {
                    r = ring.append(header: nil, body: block.bytes)
                } else if t.pcapLinkType == block.linkType.dltValue {
                    var hdr: (UInt32, UInt32, UInt32, UInt32) = (
                        UInt32(truncatingIfNeeded: block.seconds), UInt32(truncatingIfNeeded: max(0, block.nanoseconds) / 1000),
                        UInt32(block.count), UInt32(truncatingIfNeeded: block.wireLength))
                    r = withUnsafeBytes(of: &hdr) { ring.append(header: $0, body: block.bytes) }
                } else {
                    r = []
                }
                if !r.contains(.stored) { k.pointee.tapDrops &+= 1 }
                if r.contains(.becameReadable) { current._withUnsafeGuaranteedRef { $0.wake.append(ring) } }
                if r.contains(.congested) { current._withUnsafeGuaranteedRef { $0.congested.append(ring) } }
            }
        }
    }

    private func deliverToExport(_ ux: Unmanaged<ExportRing>, _ k: UnsafeMutablePointer<NodeStats>, _ block: Block) {
        ux._withUnsafeGuaranteedRef { x in
            let ts = Int64(block.seconds) &* 1_000_000_000 &+ Int64(block.nanoseconds)
            let r = x.append(block.bytes, classValue: block.classValue, wireLength: block.wireLength,
                             linkType: UInt16(truncatingIfNeeded: block.linkType.dltValue), timestampNanoseconds: ts)
            if !r.contains(.stored) { k.pointee.tapDrops &+= 1 }
            if r.contains(.congested) { current._withUnsafeGuaranteedRef { $0.congested.append(x) } }
            if !x.pendingFlush {
                x.pendingFlush = true
                current._withUnsafeGuaranteedRef { $0.exports.append(x) }
            }
        }
    }

    /// Appends a block to the ring of an edge into another space. The link type travels as its raw value (not
    /// the libpcap one), so the consumer sees the same `LinkType`.
    private func deliverToChannel(_ uc: Unmanaged<SpaceChannel>, _ block: Block) {
        let hot = uc._withUnsafeGuaranteedRef { $0.hotRing }
        hot._withUnsafeGuaranteedRef { c in
            let ts = Int64(block.seconds) &* 1_000_000_000 &+ Int64(block.nanoseconds)
            let r = c.append(block.bytes, serial: block.serial, flow: block.flow, flowMarks: block.flowMarks.rawValue,
                             classValue: block.classValue, wireLength: block.wireLength,
                             linkType: UInt16(truncatingIfNeeded: block.linkType.rawValue), timestampNanoseconds: ts)
            if r.contains(.congested) { current._withUnsafeGuaranteedRef { $0.congested.append(c) } }
            if !c.pendingSignal {
                c.pendingSignal = true
                current._withUnsafeGuaranteedRef { $0.channels.append(c) }
            }
        }
    }

    /// True when a lossless reader the current producer wrote to is past its high-water mark: end the batch
    /// early. Lock held.
    @inline(__always)
    public var needsDrain: Bool { current._withUnsafeGuaranteedRef { $0.needsDrain } }

    /// Ends a producer's batch: call after `end()`. Wakes readers and, if `mayWait`, waits (bounded by
    /// `stopRequested`) until the lossless readers the batch congested drained. Allocates nothing.
    public func finishBatch(_ batch: Batch, mayWait: Bool, stopRequested: () -> Bool = { false }) {
        for r in batch.wake { r.serviceWaiters() }
        batch.wake.removeAll(keepingCapacity: true)
        if batch.congested.isEmpty { return }
        for r in batch.congested { r.serviceWaiters() }
        if mayWait {
            outer: for r in batch.congested {
                while !r.waitUntilDrained(timeoutNanoseconds: 100_000_000) {
                    if stopRequested() { break outer }
                }
            }
        }
        batch.congested.removeAll(keepingCapacity: true)
    }

    /// `finishBatch` for pushes made with the plain lock (outside `begin`/`end`): tests and one-off callers.
    public func finishBatch(mayWait: Bool, stopRequested: () -> Bool = { false }) {
        let b = Batch()
        lock.withLock {
            if !defaultBatch.staged.isEmpty { publishStaged(defaultBatch, notes: defaultBatch) }
            if !defaultBatch.exports.isEmpty || !defaultBatch.channels.isEmpty { flushExports(defaultBatch) }
            swap(&b.wake, &defaultBatch.wake)
            swap(&b.congested, &defaultBatch.congested)
        }
        finishBatch(b, mayWait: mayWait, stopRequested: stopRequested)
    }

    // MARK: the scheduler thread

    /// Starts the thread if it is not running (graph lock held): a space gets one with its first input channel.
    func startIfNeeded() {
        if threadStarted { return }
        threadStarted = true
        thread.start(name: "space-\(index)") { [self] in run() }
    }

    /// Stops the thread and waits for it (without any lock held). Records still in input channels stay there.
    func stop() {
        lock.withLock { stopping = true }
        doorbell.wake()
        if !thread.join(timeoutNanoseconds: 5_000_000_000) {
            graph?.reportError("space \(index): its thread did not stop within 5 s")
        }
    }

    private func run() {
        pipes_set_thread_name("pipes-space\(index)")
        let tid = pipes_thread_id()
        var pinRC: Int32 = 0
        if let cpu { pinRC = pipes_pin_self(cpu) }
        lock.withLock {
            threadID = tid
            pinError = -pinRC
        }
        if pinRC != 0 {
            graph?.reportError("space \(index): cannot pin its thread to CPU \(cpu!) (\(String(cString: strerror(-pinRC)))): it runs unpinned")
        }
        let batch = Batch()
        // The inputs, unretained (`inputs` keeps them alive; it changes only under the graph lock, which includes
        // this space's lock, and the copy is rebuilt under the lock before use): no reference counting per pass.
        // A plain buffer, walked by index: iterating an Array goes through a coroutine that an unoptimized build
        // allocates per loop.
        var hot = UnsafeMutableBufferPointer<Unmanaged<SpaceChannel>>(start: nil, count: 0)
        defer { hot.deallocate() }
        var hotVersion = -1
        var idleSince: Int64 = 0
        let stop: () -> Bool = { [unowned self] in lock.withLock { stopping } }
        while true {
            lock.lock()
            if stopping { lock.unlock(); return }
            if hotVersion != inputsVersion {
                hot.deallocate()
                hot = .allocate(capacity: inputs.count)
                for (i, ch) in inputs.enumerated() { (hot.baseAddress! + i).initialize(to: Unmanaged.passUnretained(ch)) }
                hotVersion = inputsVersion
            }
            currentRef = Unmanaged.passUnretained(batch)
            var moved = 0
            var ended = false
            var i = 0
            while i < hot.count {
                let u = hot[i]
                i += 1
                // The closure returns what it found rather than changing captured variables (which would be boxed
                // on the heap in an unoptimized build).
                let (m, e, drain) = u._withUnsafeGuaranteedRef { ch -> (Int, Bool, Bool) in
                    let m = ch.consume(in: self, budget: ExecutionSpace.budget)
                    var e = false
                    if ch.endPending && ch.isDrained { ch.endPending = false; e = true }
                    return (m, e, needsDrain)
                }
                moved &+= m
                if e { ended = true }
                if drain { break }
            }
            consumed &+= UInt64(moved)
            settle()
            lock.unlock()
            if ended { graph?.requestRefresh() }
            finishBatch(batch, mayWait: true, stopRequested: stop)
            if moved != 0 { idleSince = 0; continue }
            // Idle: keep looking for a while (a producer in the middle of a stream publishes again soon, and a
            // sleep costs both sides a system call), then sleep until a producer rings or the safety timeout.
            let now = monotonicNanoseconds()
            if idleSince == 0 { idleSince = now }
            if now - idleSince < ExecutionSpace.spinNanoseconds {
                for _ in 0..<32 { pipes_cpu_relax() }
                continue
            }
            idleSince = 0
            let token = doorbell.prepareSleep()
            lock.lock()
            var work = stopping || hotVersion != inputsVersion
            var j = 0
            while !work && j < hot.count {
                work = hot[j]._withUnsafeGuaranteedRef { $0.mayHaveRecords || ($0.endPending && $0.isDrained) }
                j += 1
            }
            if !work { sleeps &+= 1 }
            lock.unlock()
            if work {
                doorbell.cancelSleep()
                continue
            }
            doorbell.sleep(token: token, timeoutNanoseconds: ExecutionSpace.idleSleepNanoseconds)
        }
    }

    /// Runs the consumer's step for `channel` until it is drained, on the calling thread, which holds every space
    /// lock (a graph change that cuts or re-homes a channel): records in flight go on before the change. What the
    /// pushes leave to do is collected in `batch`: finish it (without waiting) after releasing the locks.
    func drainInline(_ channel: SpaceChannel, _ batch: Batch) {
        asProducer(batch) {
            var rounds = 0
            while !channel.isDrained && rounds < 1 << 20 {
                if channel.consume(in: self, budget: Int.max) == 0 { break }
                rounds += 1
            }
        }
    }
}

/// Every space's lock, taken in index order: what graph changes (and anything that must see the whole graph
/// still) hold. With one space it is that space's lock.
public final class GraphLock: @unchecked Sendable {
    let spaces: [ExecutionSpace]

    init(_ spaces: [ExecutionSpace]) { self.spaces = spaces }

    public func lock() {
        for s in spaces { s.lock.lock() }
    }

    public func unlock() {
        var i = spaces.count
        while i > 0 {
            i -= 1
            spaces[i].lock.unlock()
        }
    }

    @inline(__always)
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}
