import PipesBuffering
import PipesRuntime

// MARK: tap deliveries

/// A copy of one tap delivery (the pointers in a `ReadOutcome` die with the delivery call).
public protocol DeliveryCopy {
    init(_ outcome: ReadOutcome)
}

/// Collects deliveries, possibly made later from another thread.
public final class DeliveryLog<Copy: DeliveryCopy>: @unchecked Sendable {
    private let lock = ConditionLock()
    private var items: [Copy] = []

    public init() {}

    public func add(_ o: ReadOutcome) {
        let c = Copy(o)
        lock.withLock {
            items.append(c)
            lock.broadcast()
        }
    }

    public var all: [Copy] { lock.withLock { items } }
    public var count: Int { lock.withLock { items.count } }
}

// MARK: recording filters and nodes

/// One block as a filter saw it, copied.
public struct SeenBlock: Equatable, Sendable {
    public var bytes: [UInt8]
    public var wireLength: Int
    public var seconds: Int64
    public var nanoseconds: Int32
    public var linkType: LinkType
    /// The class it arrived with.
    public var classValue: UInt32
}

/// Records every block that reaches it; forwards it with the class it arrived with, or with `forwardAs`.
public final class RecordingFilter: Filter {
    public private(set) var seen: [SeenBlock] = []
    private let forwardAs: UInt32?

    public init(forwardAs: UInt32? = nil) { self.forwardAs = forwardAs }

    public func process(_ block: inout Block) -> UInt32 {
        seen.append(SeenBlock(bytes: Array(block.bytes), wireLength: block.wireLength, seconds: block.seconds,
                              nanoseconds: block.nanoseconds, linkType: block.linkType, classValue: block.classValue))
        return forwardAs ?? block.classValue
    }
}

/// The descriptor of filters built by hand in tests (the runtime asks a descriptor only whether its node is a source).
public let handMadeDescriptor = FilterDescriptor(name: "test", summary: "test filter", usage: "test",
                                                 structuralClass: .filtering, classifying: true) { _ throws(FilterError) in
    RecordingFilter()
}

/// A node around a filter built by hand, with a fresh id of `space` (not attached yet).
public func handMadeNode(_ space: Space, _ name: String, _ filter: any Filter, selector: ClassSelector = .any) -> Node {
    Node(id: space.allocateID(), name: name, descriptor: handMadeDescriptor, filter: filter, selector: selector)
}

// MARK: errors

/// The FilterError `body` throws, or nil when it succeeds (any other error comes back as a FilterError naming it).
public func filterError(_ body: () throws -> Void) -> FilterError? {
    do {
        try body()
        return nil
    } catch let error as FilterError {
        return error
    } catch {
        return FilterError("not a FilterError: \(error)")
    }
}

// MARK: sources driven by tests

/// A source that pushes nothing by itself: tests push for it. `live` decides whether what it feeds is lossy;
/// `done` ends its stream (change both under the graph lock, then `refresh()`).
public final class StubSource: SourceFilter, @unchecked Sendable {
    public var live: Bool
    public var done = false
    public init(live: Bool) { self.live = live }
    public var isLive: Bool { live }
    public var finished: Bool { done }
    public var linkType: LinkType { .ethernet }
    public func attach(space: Space, node: Node) throws(FilterError) {}
    public func setDemand(_ d: Bool) {}
    public func process(_ block: inout Block) -> UInt32 { 1 }
    public func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool { true }
}

/// The descriptor of stub sources (a source, so the runtime treats its node as one).
public let stubSourceDescriptor = FilterDescriptor(name: "stub", summary: "", usage: "", structuralClass: .source) { _ throws(FilterError) in
    StubSource(live: false)
}
