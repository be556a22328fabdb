/// A filter that bootstraps the graph walk (Table I "source"): it owns a thread or callback that pushes blocks
/// into its node through the space.
public protocol SourceFilter: Filter {
    /// Binds the source to its node. Called once, on the control path, before any `setDemand`.
    func attach(space: Space, node: Node) throws(FilterError)
    /// Demand changed: something is (or no longer is) attached below the source. Sources produce only on demand.
    /// Called with the space lock held; must not block.
    func setDemand(_ demand: Bool)
    /// Live sources cannot wait: taps below them drop records for lagging readers instead of blocking.
    var isLive: Bool { get }
    /// The link type of the blocks it produces.
    var linkType: LinkType { get }
    /// True once a finite source has produced its last block.
    var finished: Bool { get }
    /// After `shutdown()`: waits (without the space lock) until the source's thread has exited, so nothing
    /// pushes or answers readers any more. Returns false on timeout.
    func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool
}

/// A filter whose `all` file takes writes as *input* (e.g. `tx` sends what is written) rather than
/// injecting them into its output.
public protocol InputInjectable: Filter {}

/// A filter that fixes the link type of what is injected into it (junctions: `mkdir /pipes/j=ethernet`).
public protocol InjectionLinkType: Filter {
    var injectedLinkType: LinkType { get }
}
