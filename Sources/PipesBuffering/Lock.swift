#if canImport(Glibc)
import Glibc
#endif

/// A pthread mutex with a condition variable, for state shared between the FUSE threads and source threads.
///
/// Swift 6's `Mutex` has no condition variable; taps and backpressure need one, so this wraps
/// `pthread_mutex_t` and `pthread_cond_t` (heap-allocated so their addresses are stable).
public final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits for a signal; the lock must be held. `timeout` in nanoseconds, nil waits forever.
    /// Returns false on timeout.
    @discardableResult
    public func wait(timeoutNanoseconds: Int64? = nil) -> Bool {
        guard let ns = timeoutNanoseconds else {
            pthread_cond_wait(cond, mutex)
            return true
        }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        var total = Int64(now.tv_nsec) + ns % 1_000_000_000
        var deadline = timespec()
        deadline.tv_sec = now.tv_sec + Int(ns / 1_000_000_000) + Int(total / 1_000_000_000)
        total %= 1_000_000_000
        deadline.tv_nsec = Int(total)
        return pthread_cond_timedwait(cond, mutex, &deadline) != ETIMEDOUT
    }

    /// Waits (the lock held) until `done()` is true or `timeoutNanoseconds` passed; returns `done()`.
    public func wait(until done: () -> Bool, timeoutNanoseconds: Int64) -> Bool {
        let deadline = monotonicNanoseconds() + timeoutNanoseconds
        while !done() {
            let left = deadline - monotonicNanoseconds()
            if left <= 0 { return false }
            wait(timeoutNanoseconds: left)
        }
        return true
    }

    public func broadcast() { pthread_cond_broadcast(cond) }
    public func signal() { pthread_cond_signal(cond) }
}

extension ConditionLock {
    /// Takes every callback out of `list` under the lock, then runs them without it (drain notifications of
    /// rings: a callback may take other locks).
    public func runTaking(_ list: inout [() -> Void]) {
        let fire: [() -> Void] = withLock {
            defer { list = [] }
            return list
        }
        for f in fire { f() }
    }
}

/// Monotonic clock in nanoseconds.
@inline(__always)
public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
