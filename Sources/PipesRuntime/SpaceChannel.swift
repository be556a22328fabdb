import PipesBuffering

/// An edge whose two ends run in different execution spaces (§6.2): the parent's space appends the blocks that
/// pass the edge's class constraint into a `ChannelRing`; the child's space thread reads them and pushes them
/// into the child.
///
/// The ring's policy is fixed; when the stream's lossiness changes (a live source joins or leaves upstream) the
/// channel gets a new ring and the consumer finishes the old one first, so order is kept.
/// Fields are guarded as marked: "graph" = every space lock (`Space.lock`), "producer" = the parent's home
/// space lock, "consumer" = the child's home space lock.
public final class SpaceChannel: @unchecked Sendable {
    /// The producing node (the edge's parent) and the consuming node (its child). The graph removes a channel
    /// before either node goes.
    public unowned(unsafe) let source: Node
    public unowned(unsafe) let dest: Node
    /// The ring appended to now (graph to replace; producer to append).
    public private(set) var ring: ChannelRing {
        didSet { hotRing = Unmanaged.passUnretained(ring) }
    }
    /// `ring` for the producer's hot path: no reference counting per block (`ring` keeps it alive).
    private(set) var hotRing: Unmanaged<ChannelRing>
    /// Rings replaced by a policy change, still read until drained (consumer).
    private var retired: [ChannelRing] = []
    /// Set by `refresh()` when the source ended while records were still in flight: the consumer asks for
    /// another refresh once it drained them (graph to set; consumer to read).
    var endPending = false
    /// Counters carried over from replaced rings.
    private var oldProduced: UInt64 = 0
    private var oldDelivered: UInt64 = 0
    private var oldDropped: UInt64 = 0
    private var oldRefused: UInt64 = 0

    /// The space whose thread reads the channel: `dest`'s home (graph lock to change).
    public internal(set) unowned(unsafe) var consumer: ExecutionSpace

    init(source: Node, dest: Node, policy: OverflowPolicy, consumer: ExecutionSpace, sizeLog2: Int, threshold: Int) throws(RingError) {
        self.source = source
        self.dest = dest
        self.consumer = consumer
        let r = try ChannelRing(policy: policy, doorbell: consumer.doorbell, sizeLog2: sizeLog2, threshold: threshold, ringID: dest.id)
        ring = r
        hotRing = Unmanaged.passUnretained(r)
    }

    public var policy: OverflowPolicy { ring.policy }

    /// Moderation of the channel's signals (graph lock held): see `ChannelRing.threshold`.
    public func setModeration(threshold: Int, delayNanoseconds: UInt32) {
        ring.threshold = UInt32(max(1, threshold))
        ring.delayNanoseconds = delayNanoseconds
    }

    /// A new ring with `policy`, the old one drained first by the consumer (graph lock held). The moderation
    /// settings carry over.
    func replaceRing(policy: OverflowPolicy, doorbell: Doorbell, sizeLog2: Int, threshold: Int) throws(RingError) {
        let fresh = try ChannelRing(policy: policy, doorbell: doorbell, sizeLog2: sizeLog2, threshold: Int(ring.threshold), ringID: dest.id)
        fresh.delayNanoseconds = ring.delayNanoseconds
        ring.close()
        retired.append(ring)
        ring = fresh
    }

    /// The consumer's doorbell changed (the child moved to another space): the rings keep their records.
    func rehome(doorbell: Doorbell, sizeLog2: Int, threshold: Int) throws(RingError) {
        try replaceRing(policy: ring.policy, doorbell: doorbell, sizeLog2: sizeLog2, threshold: threshold)
    }

    /// Consumer: pushes up to `budget` records into `dest` through `space` (the consumer, its lock held and a
    /// batch begun). Stops early when a lossless reader downstream is congested. Returns the records pushed.
    @inline(__always)
    func consume(in space: ExecutionSpace, budget: Int) -> Int {
        var n = 0
        if !retired.isEmpty {
            n = consumeRetired(in: space, budget: budget)
            if !retired.isEmpty { return n }
        }
        let d = Unmanaged.passUnretained(dest)
        let start = n
        return hotRing._withUnsafeGuaranteedRef { r -> Int in
            var k = start  // a local of the closure: no boxed capture
            while k < budget, let rec = r.next() {
                var b = Block(record: rec)
                space.push(d, &b)
                r.consume(rec)
                k &+= 1
                if space.needsDrain { break }
            }
            if k != 0 { r.consumerProgress() }
            return k
        }
    }

    private func consumeRetired(in space: ExecutionSpace, budget: Int) -> Int {
        var n = 0
        let d = Unmanaged.passUnretained(dest)
        while let r = retired.first {
            while n < budget, let rec = r.next() {
                var b = Block(record: rec)
                space.push(d, &b)
                r.consume(rec)
                n &+= 1
                if space.needsDrain { r.consumerProgress(); return n }
            }
            if n >= budget { r.consumerProgress(); return n }
            oldProduced &+= r.produced
            oldDelivered &+= r.delivered
            oldDropped &+= r.dropped
            oldRefused &+= r.refused
            retired.removeFirst()
        }
        return n
    }

    /// Consumer (or the graph lock): true when nothing waits in any of the channel's rings.
    var isDrained: Bool { retired.isEmpty && ring.isDrained }

    /// A hint for the consumer's sleep: a record may wait. Any thread holding a reference.
    var mayHaveRecords: Bool { ring.mayHaveRecords || !retired.isEmpty }

    /// Stops the channel: no more appends; what is in flight is discarded with it (graph lock held).
    func close() {
        ring.close()
        for r in retired { r.close() }
    }

    /// Counters over the channel's life (any of its rings). Graph lock held.
    public var produced: UInt64 { oldProduced &+ ring.produced &+ retired.reduce(0) { $0 &+ $1.produced } }
    public var delivered: UInt64 { oldDelivered &+ ring.delivered &+ retired.reduce(0) { $0 &+ $1.delivered } }
    public var dropped: UInt64 { oldDropped &+ ring.dropped &+ retired.reduce(0) { $0 &+ $1.dropped } }
    public var refused: UInt64 { oldRefused &+ ring.refused &+ retired.reduce(0) { $0 &+ $1.refused } }
}

extension Block {
    /// A block read back from a channel record (the bytes are the ring's, valid until the record is consumed),
    /// with the serial it had on the other side.
    @inline(__always)
    init(record rec: DBufReader.Record) {
        let ts = rec.timestampNanoseconds
        let (serial, flow, marks, bytes) = ChannelRing.split(rec)
        self.init(bytes: bytes, wireLength: rec.wireLength, seconds: ts / 1_000_000_000,
                  nanoseconds: Int32(truncatingIfNeeded: ts % 1_000_000_000), linkType: LinkType(rawValue: Int32(rec.linkType)))
        classValue = rec.classValue
        self.serial = serial
        self.flow = flow
        flowMarks = FlowMarks(rawValue: marks)
    }
}
