#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering

/// Sleeps the calling thread: a moment for another thread to get going (or to show that it does not).
public func pause(nanoseconds: Int) {
    var ts = timespec(tv_sec: nanoseconds / 1_000_000_000, tv_nsec: nanoseconds % 1_000_000_000)
    nanosleep(&ts, nil)
}

/// Polls `condition` every `interval` nanoseconds until it holds or `seconds` pass; returns its last answer.
public func eventually(within seconds: Double = 10, pollingEvery interval: Int = 1_000_000, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + Int64(seconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        pause(nanoseconds: interval)
    }
    return condition()
}

/// Everything buffered in a ring now, read at once.
public func drain(_ ring: TapRing) -> [UInt8] {
    var out: [UInt8] = []
    while ring.available > 0 {
        ring.read(max: 1 << 20, id: 1) { o in
            if case .data(let x, let y) = o { out += Array(x) + Array(y) }
        }
    }
    return out
}

/// Reads a ring as its producer fills it, until the stream has ended and the ring is empty or `seconds` pass;
/// returns every byte read.
public func drainUntilEnded(_ ring: TapRing, within seconds: Double = 20, pollingEvery interval: Int = 1_000_000) -> [UInt8] {
    var got: [UInt8] = []
    _ = eventually(within: seconds, pollingEvery: interval) {
        got += drain(ring)
        return ring.isEnded && ring.available == 0
    }
    return got
}

/// A value shared with another thread, read and written under a lock.
public final class Locked<Value>: @unchecked Sendable {
    private let lock = ConditionLock()
    private var stored: Value

    public init(_ value: Value) { stored = value }

    public var value: Value {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }

    /// Changes the value in place, under the lock.
    public func update(_ body: (inout Value) -> Void) { lock.withLock { body(&stored) } }
}
