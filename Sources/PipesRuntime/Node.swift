import PipesBuffering
import PipesRingABI

/// How a tap renders the blocks it receives.
public enum TapFormat: Sendable {
    /// The block bytes, back to back (`all`).
    case raw
    /// A classic pcap stream, microsecond timestamps (`all.pcap`): header written at open, then records.
    case pcap(LinkType)
}

/// An edge as the hot path sees it: trivial, so walking edges costs no reference counting.
struct HotEdge {
    let child: Unmanaged<Node>
    /// Set when the child runs in another execution space: blocks go into this channel instead of a call.
    let remote: Unmanaged<SpaceChannel>?
    let negated: Bool
    let rangeCount: Int
    let ranges: UnsafeMutablePointer<ClosedRange<UInt32>>?

    @inline(__always)
    func matches(_ c: UInt32) -> Bool {
        if c == 0 { return false }
        var hit = false
        var i = 0
        while i < rangeCount {
            if ranges![i].contains(c) { hit = true; break }
            i += 1
        }
        return hit != negated
    }
}

/// A tap as the hot path sees it.
struct HotTap {
    /// Unretained: `Node.taps` keeps the ring alive; the hot path takes no reference.
    let ring: Unmanaged<TapRing>
    let pcapLinkType: Int32  // -1 for raw
}

/// Per-node counters, updated under the lock of the node's execution space.
public struct NodeStats: Sendable {
    public var packetsIn: UInt64 = 0
    public var bytesIn: UInt64 = 0
    public var packetsOut: UInt64 = 0
    public var bytesOut: UInt64 = 0
    /// Records not delivered to a tap (its reader lagged on a lossy stream, or the link type did not fit).
    public var tapDrops: UInt64 = 0
    public init() {}
}

/// A filter instance in the graph: one directory in PipesFS.
///
/// The tree structure (`name`, `parent`, `children`, `links`) is the filesystem's spanning tree of the graph;
/// `edges` is the data flow, rebuilt into a flat, reference-count-free form (`hot`) after every change.
/// All mutable state is guarded by the owning `Space`'s lock.
public final class Node: @unchecked Sendable {
    public let id: UInt64
    public internal(set) var name: String
    public let descriptor: FilterDescriptor
    /// The filter instance. New arguments (`ctl args`, a rename) replace it with a fresh instance made off the
    /// lock (`replaceFilter`), so a filter that opens files never does so under the space lock.
    public private(set) var filter: any Filter
    /// The hot-path view of `filter` (kept alive by `filter`): its type and an unretained pointer to it, so the
    /// per-block call costs no reference counting. See `Filter.process(unretained:_:)`.
    private(set) var hotType: any Filter.Type
    private(set) var hotInstance: UnsafeMutableRawPointer
    /// The class constraint on the edge from `parent` (non-`any` for class directories such as `dport/80`).
    public internal(set) var selector: ClassSelector
    /// True for class directories: the node forwards what its edge selected.
    public let isClassSelection: Bool
    /// The directory parent. Not weak (side tables make every retain slow): a node with children cannot be
    /// removed, so a parent always outlives its children's links to it.
    public internal(set) unowned(unsafe) var parent: Node?
    /// Child directories in creation order.
    public internal(set) var children: [Node] = []
    /// Symlinks in this directory: name → (link text, target). Each is an edge from self to the target.
    public internal(set) var links: [(id: UInt64, name: String, text: String, target: Node)] = []
    /// Nodes with a symlink edge into this one (extra parents, fan-in).
    public internal(set) var linkParents: [Node] = []
    /// Inputs whose edge into this node is dormant: in the graph (structure, channels) but forwarding nothing.
    /// A request's new path is built with dormant edges and activated from its sinks back to its sources, the
    /// edges from the live graph last, so the whole path starts at once (§7.1). The hot form of a dormant edge
    /// accepts no class: it costs what any class check costs. Graph lock held.
    public internal(set) var dormantInputs: Set<ObjectIdentifier> = []
    /// Counters, behind a pointer so the hot path updates them without exclusivity checks.
    let counters: UnsafeMutablePointer<NodeStats> = {
        let p = UnsafeMutablePointer<NodeStats>.allocate(capacity: 1)
        p.initialize(to: NodeStats())
        return p
    }()
    public var stats: NodeStats { counters.pointee }
    /// Owner of the directory (the creator).
    public let uid: UInt32
    public let gid: UInt32
    public internal(set) var removed = false
    /// Set when every upstream source has ended: taps get end-of-file.
    public internal(set) var ended = false

    var hotEdges = UnsafeMutableBufferPointer<HotEdge>(start: nil, count: 0)
    var hotTaps = UnsafeMutableBufferPointer<HotTap>(start: nil, count: 0)
    /// Strong references behind `hotTaps`.
    public internal(set) var taps: [(ring: TapRing, format: TapFormat)] = []
    /// The node's stream in a shared ring (made when the first reader opens `all` or asks through the client
    /// library), and the hot path's unretained view of it, set only while someone reads.
    public internal(set) var exportRing: ExportRing?
    var hotExport: Unmanaged<ExportRing>?
    /// Open `all`/`all.pcap` files reading the shared ring. Space lock held.
    public var ringTaps: [RingTap] = []

    /// The execution space the node's filter runs in (§6.1). Changed only under the graph lock; read by the
    /// data path holding that space's lock.
    public internal(set) var home: ExecutionSpace {
        get { homeRef.takeUnretainedValue() }
        set {
            homeRef = Unmanaged.passUnretained(newValue)
            pipes_store_release32(homeWord, UInt32(bitPattern: Int32(newValue.index)))
        }
    }
    /// The home, unretained (hot paths use it: no reference counting; `Space.spaces` keeps spaces alive).
    private(set) var homeRef = Unmanaged.passUnretained(ExecutionSpace.unplaced)

    /// Delivers `block` as the output of `inlet` (a filter's private node, e.g. pcapout's queue) in the execution
    /// space `owner` runs in, from inside `owner`'s filter (that space's lock held). No reference counting.
    @inline(__always)
    public static func forward(_ inlet: Unmanaged<Node>, inSpaceOf owner: Unmanaged<Node>, _ c: UInt32, _ block: inout Block) {
        owner._withUnsafeGuaranteedRef { $0.homeRef }._withUnsafeGuaranteedRef { $0.forward(inlet, c, &block) }
    }
    /// Gives `block` a new serial in the space `owner` runs in (a filter that hands on several blocks for one: each
    /// is a block of its own to the joins below). That space's lock held.
    @inline(__always)
    public static func stamp(_ block: inout Block, inSpaceOf owner: Unmanaged<Node>) {
        owner._withUnsafeGuaranteedRef { $0.homeRef }._withUnsafeGuaranteedRef { $0.stamp(&block) }
    }
    /// Registers `staged` with the batch of the producer running `owner`'s space (from inside `owner`'s filter,
    /// that space's lock held): it publishes as the batch ends.
    @inline(__always)
    public static func stage(_ staged: any BatchStaged, inSpaceOf owner: Unmanaged<Node>) {
        owner._withUnsafeGuaranteedRef { $0.homeRef }._withUnsafeGuaranteedRef { $0.stage(staged) }
    }

    /// Reports an append a filter made to `ring` itself to the batch of the producer running `owner`'s space:
    /// readers to wake and lossless backpressure, as for a tap.
    @inline(__always)
    public static func note(_ ring: TapRing, _ result: AppendResult, inSpaceOf owner: Unmanaged<Node>) {
        owner._withUnsafeGuaranteedRef { $0.homeRef }._withUnsafeGuaranteedRef { $0.note(ring, result) }
    }
    /// `home.index`, readable without a lock (a producer finding which lock to take).
    private let homeWord: UnsafeMutablePointer<UInt32> = {
        let p = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        p.initialize(to: UInt32(bitPattern: -1))
        return p
    }()
    public var homeIndex: Int { Int(Int32(bitPattern: pipes_load_acquire32(homeWord))) }
    /// Moderation of the channels that feed this node from other spaces (`ctl moderation`), or nil for the
    /// space's defaults. Graph lock held.
    public internal(set) var moderation: (threshold: Int, delayNanoseconds: UInt32)?
    /// Channels of the edges from this node into nodes of other spaces, by child. Graph lock held.
    public internal(set) var outChannels: [ObjectIdentifier: SpaceChannel] = [:]

    /// Counts records a reader lost (a closing tap hands its count to the node). Space lock held.
    public func countTapDrops(_ n: UInt64) { counters.pointee.tapDrops &+= n }

    /// Publishes into the shared ring only while it has readers (FUSE taps, or a client-library request).
    func updateExport() {
        if let x = exportRing, !ringTaps.isEmpty || x.clientRequested {
            hotExport = Unmanaged.passUnretained(x)
        } else {
            hotExport = nil
        }
    }

    public init(id: UInt64, name: String, descriptor: FilterDescriptor, filter: any Filter,
                selector: ClassSelector = .any, isClassSelection: Bool = false, uid: UInt32 = 0, gid: UInt32 = 0) {
        self.id = id
        self.name = name
        self.descriptor = descriptor
        self.filter = filter
        self.hotType = type(of: filter)
        self.hotInstance = Unmanaged<AnyObject>.passUnretained(filter).toOpaque()
        self.selector = selector
        self.isClassSelection = isClassSelection
        self.uid = uid
        self.gid = gid
    }

    deinit {
        homeWord.deallocate()
        counters.deallocate()
        freeHotEdges()
        hotTaps.deallocate()
    }

    public var isSource: Bool { descriptor.structuralClass == .source }

    /// Swaps in a new instance of the same filter kind. Space lock held. Returns the old one: shut it down
    /// after releasing the lock.
    public func replaceFilter(_ new: any Filter) -> any Filter {
        let old = filter
        filter = new
        hotType = type(of: new)
        hotInstance = Unmanaged<AnyObject>.passUnretained(new).toOpaque()
        return old
    }

    /// Every node this one receives from: its directory parent and its symlink parents.
    public var inputs: [Node] { (parent.map { [$0] } ?? []) + linkParents }

    /// Data-flow children: directory children and symlink targets.
    public var outputs: [(node: Node, selector: ClassSelector)] {
        children.map { ($0, $0.selector) } + links.map { ($0.target, ClassSelector.any) }
    }

    /// Path from the root, e.g. `/rx/ip/tcp`.
    public var path: String {
        var parts: [String] = []
        var n: Node? = self
        while let x = n { parts.append(x.name); n = x.parent }
        return "/" + parts.reversed().joined(separator: "/")
    }

    /// True if `other` is this node or reachable downstream of it.
    public func reaches(_ other: Node) -> Bool {
        var seen = Set<ObjectIdentifier>()
        var stack = [self]
        while let n = stack.popLast() {
            if n === other { return true }
            if !seen.insert(ObjectIdentifier(n)).inserted { continue }
            stack.append(contentsOf: n.outputs.map(\.node))
        }
        return false
    }

    // MARK: hot-path tables (rebuilt under the space lock)

    func rebuildHotEdges() {
        freeHotEdges()
        let outs = outputs
        let buf = UnsafeMutableBufferPointer<HotEdge>.allocate(capacity: outs.count)
        for (i, var o) in outs.enumerated() {
            if o.node.dormantInputs.contains(ObjectIdentifier(self)) { o.selector = .nothing }
            let rs: UnsafeMutablePointer<ClosedRange<UInt32>>?
            if o.selector.ranges.isEmpty {
                rs = nil
            } else {
                rs = .allocate(capacity: o.selector.ranges.count)
                rs!.initialize(from: o.selector.ranges, count: o.selector.ranges.count)
            }
            let remote = outChannels[ObjectIdentifier(o.node)].map { Unmanaged.passUnretained($0) }
            (buf.baseAddress! + i).initialize(to: HotEdge(child: Unmanaged.passUnretained(o.node), remote: remote,
                                                          negated: o.selector.negated,
                                                          rangeCount: o.selector.ranges.count, ranges: rs))
        }
        hotEdges = buf
    }

    private func freeHotEdges() {
        for e in hotEdges { e.ranges?.deallocate() }
        hotEdges.deallocate()
        hotEdges = UnsafeMutableBufferPointer(start: nil, count: 0)
    }

    func rebuildHotTaps() {
        hotTaps.deallocate()
        let buf = UnsafeMutableBufferPointer<HotTap>.allocate(capacity: taps.count)
        for (i, t) in taps.enumerated() {
            let lt: Int32
            switch t.format {
            case .raw: lt = -1
            case .pcap(let l): lt = l.dltValue
            }
            (buf.baseAddress! + i).initialize(to: HotTap(ring: Unmanaged.passUnretained(t.ring), pcapLinkType: lt))
        }
        hotTaps = buf
    }
}
