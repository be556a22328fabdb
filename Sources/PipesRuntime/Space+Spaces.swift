import PipesBuffering
import PipesRingABI

/// Execution spaces (§6.1–6.2): where each node runs, the channels of edges between spaces, and moving nodes
/// between spaces. All of it runs with the graph lock held unless noted.
extension Space {
    /// Makes, re-homes or closes the channels of `node`'s edges so that exactly the edges into nodes of another
    /// space have one. An edge that becomes local first delivers what is still in its channel (order is kept).
    func reconcileChannels(_ node: Node) {
        let outs = node.outputs
        var wanted = Set<ObjectIdentifier>()
        for o in outs where o.node.home !== node.home { wanted.insert(ObjectIdentifier(o.node)) }
        // Edges gone, or now local. What is in flight was sent while the edge stood: it is delivered first (the
        // child may have moved elsewhere, or now runs next to its parent), unless the child is gone.
        for (key, ch) in node.outChannels where !wanted.contains(key) {
            if !ch.dest.removed {
                let b = Batch()
                ch.dest.home.drainInline(ch, b)
                finishInline(b)
            }
            retire(ch)
            node.outChannels[key] = nil
        }
        for o in outs where o.node.home !== node.home {
            let key = ObjectIdentifier(o.node)
            let consumer = o.node.home
            if let ch = node.outChannels[key] {
                if ch.consumer !== consumer {
                    // The child moved to another space: the new consumer reads the old ring first.
                    ch.consumer.inputs.removeAll { $0 === ch }
                    do throws(RingError) {
                        try ch.rehome(doorbell: consumer.doorbell, sizeLog2: channelSizeLog2, threshold: channelThreshold)
                    } catch {
                        reportError("\(o.node.path): channel from space \(node.home.index): \(error)")
                    }
                    ch.consumer = consumer
                    consumer.inputs.append(ch)
                    consumer.startIfNeeded()
                }
                continue
            }
            do throws(RingError) {
                let ch = try SpaceChannel(source: node, dest: o.node, policy: isFedByLiveSource(node) ? .drop : .block,
                                          consumer: consumer, sizeLog2: channelSizeLog2, threshold: channelThreshold)
                if let m = o.node.moderation { ch.setModeration(threshold: m.threshold, delayNanoseconds: m.delayNanoseconds) }
                node.outChannels[key] = ch
                consumer.inputs.append(ch)
                consumer.startIfNeeded()
            } catch {
                // No ring (out of memory or descriptors): the edge stays a call across spaces, which the locks
                // do not cover; refuse it loudly rather than corrupt the graph.
                reportError("\(o.node.path): cannot make a channel from space \(node.home.index) to \(consumer.index): \(error)")
            }
        }
    }

    /// Closes a channel and takes it out of its consumer's inputs (what is still in it is discarded: its edge is
    /// gone).
    private func retire(_ ch: SpaceChannel) {
        ch.close()
        ch.consumer.inputs.removeAll { $0 === ch }
    }

    /// What pushes made under the graph lock left to do: readers to wake. Nobody waits (the lock is held);
    /// congested rings have room for the overshoot (they grow) and their producers notice at their next batch.
    private func finishInline(_ b: Batch) {
        for r in b.wake { r.serviceWaiters() }
        b.wake.removeAll()
        b.congested.removeAll()
    }

    /// A channel's ring follows its source's lossiness (a live source joined or left upstream).
    func updateChannelPolicies(_ node: Node, live: Bool) {
        let p: OverflowPolicy = live ? .drop : .block
        for ch in node.outChannels.values where ch.policy != p {
            do throws(RingError) {
                try ch.replaceRing(policy: p, doorbell: ch.consumer.doorbell, sizeLog2: channelSizeLog2, threshold: channelThreshold)
            } catch {
                reportError("\(ch.dest.path): channel: \(error)")
            }
        }
    }

    /// For `refresh()`: true when nothing from `parent` to `child` is in flight. If something is, the consumer
    /// asks for another refresh once it drained it.
    func channelDrained(from parent: Node, to child: Node) -> Bool {
        guard let ch = parent.outChannels[ObjectIdentifier(child)] else { return true }
        if ch.isDrained { return true }
        ch.endPending = true
        ch.consumer.doorbell.wake()
        return false
    }

    /// Asks for `refresh()` on a worker thread (a space thread must not take the graph lock: it holds its own).
    /// Any thread.
    func requestRefresh() {
        refresher.request { [self] in lock.withLock { refresh() } }
    }

    /// `ctl moderation THRESHOLD DELAY_US` (§6.2): how the channels feeding `node` signal its space — every
    /// `threshold` blocks, and what a producer's batch leaves unsignalled at most `delayNanoseconds` later (0:
    /// at the batch's end). Kept for channels made later. Refused (EINVAL) outside 1...65536 and 0...1 s.
    public func setModeration(_ node: Node, threshold: Int, delayNanoseconds: Int) throws(PlacementError) {
        guard (1...65536).contains(threshold) else {
            throw PlacementError(EINVAL_, "moderation threshold \(threshold): want 1 to 65536 blocks")
        }
        guard (0...1_000_000_000).contains(delayNanoseconds) else {
            throw PlacementError(EINVAL_, "moderation delay: want 0 to 1000000 microseconds")
        }
        node.moderation = (threshold, UInt32(delayNanoseconds))
        for ch in inputChannels(node) { ch.setModeration(threshold: threshold, delayNanoseconds: UInt32(delayNanoseconds)) }
    }

    // MARK: placement

    /// What the spaces are, for the control plane's discovery (§7.1).
    public var catalog: SpaceCatalog { SpaceCatalog(spaces.map(\.kind)) }

    /// Runs `node` and the directory descendants that ran where it did in space `index` (a stage of a pipeline
    /// and what hangs below it). Refused with EINVAL for sources (their threads run space 0), an index out of
    /// range, and with EDEADLK when spaces would feed each other in a cycle (a lossless wait could then close on
    /// itself: paths only flow forward between spaces, §7.1). In-flight records keep their order.
    public func place(_ node: Node, inSpace index: Int) throws(PlacementError) {
        guard index >= 0 && index < spaces.count else {
            throw PlacementError(EINVAL_, "no space \(index) (this mount has \(spaces.count): 0 to \(spaces.count - 1); see --spaces)")
        }
        if node.isSource { throw PlacementError(EINVAL_, "a source runs in space 0, on its own thread") }
        let target = spaces[index]
        let from = node.home
        if from === target { return }
        var moved: [Node] = []
        var stack = [node]
        while let n = stack.popLast() {
            guard n.home === from else { continue }
            moved.append(n)
            stack.append(contentsOf: n.children)
        }
        for n in moved { n.home = target }
        if !spacesAcyclic() {
            for n in moved { n.home = from }
            throw PlacementError(EDEADLK_, "space \(index) would both feed and be fed by another space (a cycle between spaces could deadlock lossless streams)")
        }
        // Every edge into or out of a moved node: its producer's channels.
        var producers: [ObjectIdentifier: Node] = [:]
        for n in moved {
            producers[ObjectIdentifier(n)] = n
            for p in n.inputs { producers[ObjectIdentifier(p)] = p }
        }
        for p in producers.values { edgesChanged(p) }
        refresh()
    }

    /// True when the spaces, linked by the edges that cross between them, form no cycle.
    public func spacesAcyclic() -> Bool {
        let n = spaces.count
        if n == 1 { return true }
        var feeds = [Set<Int>](repeating: [], count: n)
        for node in nodes.values {
            let a = node.home.index
            guard a >= 0 else { continue }
            for o in node.outputs where o.node.home !== node.home && o.node.home.index >= 0 { feeds[a].insert(o.node.home.index) }
        }
        // Depth-first search for a back edge.
        var state = [UInt8](repeating: 0, count: n)  // 0 new, 1 on the path, 2 done
        func visit(_ i: Int) -> Bool {
            state[i] = 1
            for j in feeds[i] {
                if state[j] == 1 { return false }
                if state[j] == 0 && !visit(j) { return false }
            }
            state[i] = 2
            return true
        }
        for i in 0..<n where state[i] == 0 { if !visit(i) { return false } }
        return true
    }

    /// Pins the calling thread, a source's, to space 0's CPU when the graph is spread over several spaces (a
    /// source thread runs space 0's filters); with one space, threads stay where the system puts them.
    public func pinSourceThread(name: String) {
        pipes_set_thread_name(name)
        guard spaces.count > 1, let c = main.cpu else { return }
        let rc = pipes_pin_self(c)
        if rc != 0 { reportError("\(name): cannot pin to CPU \(c) (errno \(-rc)): it runs unpinned") }
    }

    // MARK: shutdown

    /// Delivers everything still in flight between spaces (unmount, after the sources stopped), then stops the
    /// spaces' threads. Takes the graph lock itself.
    public func stopSpaces() {
        if spaces.count > 1 {
            lock.withLock {
                // Spaces feed each other without cycles: a pass per space empties every channel.
                for _ in 0..<spaces.count {
                    var left = false
                    for n in nodes.values {
                        for ch in n.outChannels.values where !ch.isDrained {
                            let b = Batch()
                            ch.dest.home.drainInline(ch, b)
                            finishInline(b)
                            left = true
                        }
                    }
                    if !left { break }
                }
            }
        }
        for s in spaces { s.stop() }
        refresher.waitIdle()
    }

    // MARK: statistics

    /// Channels that feed `node` (graph lock held).
    public func inputChannels(_ node: Node) -> [SpaceChannel] {
        node.inputs.compactMap { $0.outChannels[ObjectIdentifier(node)] }
    }

    /// One line per execution space: index, CPU, thread, nodes, input channels, records consumed, sleeps. Graph
    /// lock held (the spaces' threads update their counters under their locks).
    public func spacesText() -> String {
        var s = "# space cpu thread nodes channels_in consumed sleeps wakeups\n"
        for x in spaces {
            let nodesHere = nodes.values.filter { $0.home === x }.count
            let cpu = x.cpu.map { "\($0)" + (x.pinError != 0 ? "(unpinned)" : "") } ?? "-"
            let tid = x.threadID == 0 ? "-" : "\(x.threadID)"
            s += "\(x.index) \(cpu) \(tid) \(nodesHere) \(x.inputs.count) \(x.consumed) \(x.sleeps) \(x.doorbell.rings)\n"
        }
        return s
    }
}

/// A placement refused: errno and message.
public struct PlacementError: Error, Sendable {
    public var errno: Int32
    public var message: String
    public init(_ errno: Int32, _ message: String) {
        self.errno = errno
        self.message = message
    }
}

#if canImport(Glibc)
import Glibc
let EINVAL_ = EINVAL
let EDEADLK_ = EDEADLK
#endif
