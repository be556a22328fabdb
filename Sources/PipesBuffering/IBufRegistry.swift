#if canImport(Glibc)
import Glibc
#endif
import PipesRingABI

/// The rings a rich pointer may name (paper §5.3.1): DBufs by their system-wide `ring_id`, and the address
/// ranges an IBuf compares a written block against to decide whether it can splice it (§5.3.3).
///
/// A ring id is `pid << 32 | n`, so ids made by different processes never collide while those processes live,
/// and the id is written into the ring's `info.ring_id` when the ring is made (`makeRing`), so another process
/// mapping the memfd reads the same name. The registry holds the rings it lists strongly until `unregister`;
/// an IBuf that indexes a ring holds it too, so unregistering never invalidates an index already written.
///
/// It also knows which reader slots of a ring are IBuf *holds* (the keep-alive slots, see `IBuf`), so that an
/// IBuf can tell the ring's real readers from other IBufs' holds.
public final class DBufRegistry: @unchecked Sendable {
    /// The process's registry.
    public static let shared = DBufRegistry()

    private let lock = ConditionLock()
    private var rings: [UInt64: DBuf] = [:]
    /// Reader slots of a ring that are IBuf holds, as a bit mask per slot index (two words: 124 slots at most).
    private var holds: [ObjectIdentifier: (UInt64, UInt64)] = [:]
    private var counter: UInt32 = 0
    /// Bumped (release) whenever the set of rings changes, so writers refresh their copy of the ranges.
    let generation: UnsafeMutablePointer<UInt64>

    public init() {
        generation = .allocate(capacity: 1)
        generation.initialize(to: 0)
    }

    deinit { generation.deallocate() }

    /// A new system-wide ring id (never 0).
    public func makeRingID() -> UInt64 {
        lock.withLock {
            counter &+= 1
            if counter == 0 { counter = 1 }
            return UInt64(UInt32(bitPattern: getpid())) << 32 | UInt64(counter)
        }
    }

    /// Makes a data ring with a fresh id and registers it, so IBufs can name it and splice from it.
    public func makeRing(sizeLog2: Int, policy: DBuf.Policy, maxReaders: Int = 16, threshold: Int = 32,
                         timeoutNanoseconds: UInt64 = 1_000_000) throws(RingError) -> DBuf {
        let ring = try DBuf(sizeLog2: sizeLog2, policy: policy, maxReaders: maxReaders, threshold: threshold,
                            timeoutNanoseconds: timeoutNanoseconds, ringID: makeRingID())
        try register(ring)
        return ring
    }

    /// Lists `ring` under its `info.ring_id`. Throws for id 0 (a ring made without an id) or an id in use.
    public func register(_ ring: DBuf) throws(RingError) {
        let id = DBufRegistry.id(of: ring)
        guard id != 0 else { throw RingError(EINVAL, "a ring with ring_id 0 cannot be named by rich pointers") }
        let ok: Bool = lock.withLock {
            if let old = rings[id] { return old === ring }
            rings[id] = ring
            pipes_store_release64(generation, pipes_load_relaxed64(generation) &+ 1)
            return true
        }
        if !ok { throw RingError(EEXIST, "ring_id \(id) is registered to another ring") }
    }

    /// Removes `ring` from the registry (indices already written keep it alive through their IBufs).
    public func unregister(_ ring: DBuf) {
        lock.withLock {
            let id = DBufRegistry.id(of: ring)
            if rings[id] === ring {
                rings[id] = nil
                pipes_store_release64(generation, pipes_load_relaxed64(generation) &+ 1)
            }
        }
    }

    /// The ring registered under `id`.
    public func ring(id: UInt64) -> DBuf? { lock.withLock { rings[id] } }

    /// The ring's system-wide id (`info.ring_id`, written once when the ring was made).
    public static func id(of ring: DBuf) -> UInt64 { ring.lock.withLock { ring.header.pointee.info.ring_id } }

    /// Every registered ring and the generation they belong to.
    func snapshot() -> (generation: UInt64, rings: [DBuf]) {
        lock.withLock { (pipes_load_relaxed64(generation), Array(rings.values)) }
    }

    // MARK: holds

    func addHold(_ ring: DBuf, slot: Int) {
        lock.withLock {
            var m = holds[ObjectIdentifier(ring)] ?? (0, 0)
            if slot < 64 { m.0 |= 1 << UInt64(slot) } else { m.1 |= 1 << UInt64(slot - 64) }
            holds[ObjectIdentifier(ring)] = m
        }
    }

    func removeHold(_ ring: DBuf, slot: Int) {
        lock.withLock {
            guard var m = holds[ObjectIdentifier(ring)] else { return }
            if slot < 64 { m.0 &= ~(1 << UInt64(slot)) } else { m.1 &= ~(1 << UInt64(slot - 64)) }
            holds[ObjectIdentifier(ring)] = m.0 == 0 && m.1 == 0 ? nil : m
        }
    }

    /// The reader slots of `ring` that are IBuf holds (bit i of the pair: slot i).
    func holdSlots(of ring: DBuf) -> (UInt64, UInt64) { lock.withLock { holds[ObjectIdentifier(ring)] ?? (0, 0) } }
}
