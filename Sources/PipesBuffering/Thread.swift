#if canImport(Glibc)
import Glibc
#endif

private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Starts a detached POSIX thread running `body` (sources use one each). `name` shows in `top -H`.
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    let ctx = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { arg in
        let b = Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue()
        b.body()
        return nil
    }, ctx)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    _ = name  // pthread_setname_np is not exported by Glibc here; names are informational only
    pthread_detach(tid)
}

/// Runs a piece of work on a thread of its own whenever asked: the thread starts on the first `request`, runs
/// the work again if more requests came in meanwhile, and ends after a second without one. `request` takes only
/// the worker's own lock and never waits for the work, so it may be called with other locks held.
public final class OnDemandWorker: @unchecked Sendable {
    private let lock = ConditionLock()
    private var wanted = false
    private var threadRunning = false
    private var busy = false
    private let name: String

    public init(name: String) { self.name = name }

    /// Asks for `work` to run (again) soon. The thread it starts keeps `work`, and what it captures, until it
    /// ends; later requests reuse it.
    public func request(_ work: @escaping @Sendable () -> Void) {
        let start: Bool = lock.withLock {
            wanted = true
            if threadRunning { lock.broadcast(); return false }
            threadRunning = true
            return true
        }
        if start { startThread(name: name) { [self] in loop(work) } }
    }

    /// Waits until no request is pending and the work is not running (shutdown, tests).
    public func waitIdle() {
        lock.withLock { _ = lock.wait(until: { !wanted && !busy }, timeoutNanoseconds: Int64.max / 4) }
    }

    private func loop(_ work: () -> Void) {
        while true {
            lock.lock()
            if !lock.wait(until: { wanted }, timeoutNanoseconds: 1_000_000_000) {
                threadRunning = false
                lock.unlock()
                return
            }
            wanted = false
            busy = true
            lock.unlock()
            work()
            lock.withLock { busy = false; lock.broadcast() }
        }
    }
}

/// A thread that can be waited for with a deadline: each source runs on one, and unmount waits for them all so
/// that nothing answers a FUSE request once the session is gone.
public final class JoinableThread: @unchecked Sendable {
    private let lock = ConditionLock()
    private var running = false

    public init() {}

    /// Starts `body` on a new thread.
    public func start(name: String, _ body: @escaping @Sendable () -> Void) {
        lock.withLock { running = true }
        startThread(name: name) { [self] in
            body()
            lock.withLock { running = false; lock.broadcast() }
        }
    }

    /// Waits until the thread's body returned (true), or `timeoutNanoseconds` passed (false).
    public func join(timeoutNanoseconds: Int64) -> Bool {
        lock.withLock { lock.wait(until: { !running }, timeoutNanoseconds: timeoutNanoseconds) }
    }
}
