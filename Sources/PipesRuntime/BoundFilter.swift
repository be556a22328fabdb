import PipesBuffering

/// A filter that needs the space it runs in once it has a place in the graph: `pcapout` queues its records
/// for a writer thread through a tap ring of its own, and pushing them through the space is what makes a lagging
/// writer hold up lossless producers (the same backpressure as a lagging reader of `all`).
///
/// The control path calls `bind` under the space lock, after the node joined the graph and before the filter
/// sees a block; a filter made for a node but refused before then is never bound. It must not block.
public protocol SpaceBoundFilter: Filter {
    func bind(space: Space, node: Node) throws(FilterError)
}

/// A filter whose work outlives `shutdown()` (a writer thread that still has queued bytes to put in a file):
/// `shutdown()` only asks it to finish, since it may run under the space lock; unmount then waits for it here,
/// without the lock.
public protocol DrainingFilter: Filter {
    /// Waits until the queued work is done and the filter's files are closed. Returns false on timeout.
    func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool
}

/// A filter that gathers what it hands on over a whole batch instead of appending block by block (`pcapout`: its
/// records go to its file's queue a chunk at a time, so the queue's lock and its reader's cache lines are touched
/// once per chunk, not once per record). It registers with the producer's batch the first time it stages
/// something in it (`Node.stage(_:inSpaceOf:)`); the batch calls `publishStaged` as it ends, under the space lock,
/// before the lock is released and before readers are woken, so nothing staged outlives the batch.
public protocol BatchStaged: AnyObject {
    /// Hands on what was staged: the ring it went to and how the append went (nil: nothing was staged).
    func publishStaged() -> (TapRing, AppendResult)?
}
