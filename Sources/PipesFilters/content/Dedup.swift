#if canImport(Glibc)
import Glibc
#endif
import PipesRuntime

/// `dedup[=N]`: drops a block whose captured bytes are identical to those of one of the N−1 blocks before it, as
/// `editcap -D N` does (`editcap -d` is N = 5, the default). The window counts the block itself, as editcap's
/// does: `dedup=2` compares each block with the one before. Every block takes its place in the window, dropped
/// ones too, and only the captured bytes count (not the wire length, not the timestamp), as in editcap.
///
/// Each block is hashed (XXH64); blocks with the hash and length of one in the window are compared byte for byte
/// with a copy kept in an arena, so a hash collision never drops a block. The arena holds the newest copies
/// (`Dedup.arenaSize`); a match against a block whose copy was overwritten is decided by hash and length alone,
/// as editcap decides by MD5 and length, and counted in `dedup_unverified`. All storage is allocated when the
/// filter is made: nothing per block.
public final class Dedup: Filter {
    public static let defaultWindow = 5
    public static let maxWindow = 1_000_000

    /// The window in blocks, this one included (editcap's `-D` value).
    public let window: Int
    private let text: String
    /// Per slot of the window: hash, captured length (-1: empty), where its copy starts in the arena (in bytes
    /// ever written; `noCopy` when it was larger than the arena), and its links in a hash bucket's chain.
    private let hashes: UnsafeMutablePointer<UInt64>
    private let lengths: UnsafeMutablePointer<Int>
    private let copies: UnsafeMutablePointer<UInt64>
    private let next: UnsafeMutablePointer<Int32>
    private let previous: UnsafeMutablePointer<Int32>
    /// First slot of each bucket's chain (-1: none); a power of two at least twice the window.
    private let heads: UnsafeMutablePointer<Int32>
    private let bucketMask: UInt64
    /// A byte ring holding the newest blocks' copies.
    private let arena: UnsafeMutableRawPointer
    private let arenaSize: Int
    private var written: UInt64 = 0
    /// The slot of the newest block.
    private var cursor = 0

    public private(set) var dropped: UInt64 = 0
    public private(set) var unverified: UInt64 = 0

    private static let noCopy = UInt64.max

    /// The arena for a window: 64 KiB per block it holds for small windows, at least 256 KiB, at most 16 MiB.
    static func arenaSize(window: Int) -> Int { min(max(window * 65_536, 256 << 10), 16 << 20) }

    init(window: Int, text: String) {
        self.window = window
        self.text = text
        hashes = .allocate(capacity: window)
        lengths = .allocate(capacity: window)
        lengths.initialize(repeating: -1, count: window)
        copies = .allocate(capacity: window)
        copies.initialize(repeating: Dedup.noCopy, count: window)
        next = .allocate(capacity: window)
        previous = .allocate(capacity: window)
        var buckets = 16
        while buckets < 2 * window { buckets <<= 1 }
        heads = .allocate(capacity: buckets)
        heads.initialize(repeating: -1, count: buckets)
        bucketMask = UInt64(buckets - 1)
        arenaSize = Dedup.arenaSize(window: window)
        arena = .allocate(byteCount: arenaSize, alignment: 64)
    }

    deinit {
        hashes.deallocate()
        lengths.deallocate()
        copies.deallocate()
        next.deallocate()
        previous.deallocate()
        heads.deallocate()
        arena.deallocate()
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        let bytes = block.bytes
        let n = bytes.count
        // The oldest slot becomes this block's (editcap: the window holds this block and the N-1 before it).
        cursor += 1
        if cursor == window { cursor = 0 }
        let slot = cursor
        if lengths[slot] >= 0 { unlink(slot) }
        let h = Dedup.hash(bytes)
        let bucket = Int(truncatingIfNeeded: h & bucketMask)
        var duplicate = false
        var e = heads[bucket]
        while e >= 0 {
            let i = Int(e)
            if hashes[i] == h && lengths[i] == n {
                let c = copies[i]
                if c != Dedup.noCopy && written &- c <= UInt64(arenaSize) {
                    if equalsCopy(at: c, bytes) { duplicate = true; break }
                } else {
                    unverified &+= 1
                    duplicate = true
                    break
                }
            }
            e = next[i]
        }
        // Every block takes its slot, a dropped one too (editcap keeps its digest).
        hashes[slot] = h
        lengths[slot] = n
        copies[slot] = store(bytes)
        previous[slot] = -1
        next[slot] = heads[bucket]
        if heads[bucket] >= 0 { previous[Int(heads[bucket])] = Int32(slot) }
        heads[bucket] = Int32(slot)
        if duplicate {
            dropped &+= 1
            return 0
        }
        return block.classValue == 0 ? 1 : block.classValue
    }

    /// Takes a slot out of its bucket's chain.
    @inline(__always)
    private func unlink(_ slot: Int) {
        let p = previous[slot], nx = next[slot]
        if p >= 0 { next[Int(p)] = nx } else { heads[Int(truncatingIfNeeded: hashes[slot] & bucketMask)] = nx }
        if nx >= 0 { previous[Int(nx)] = p }
    }

    /// Copies the bytes into the arena; returns where the copy starts, or `noCopy` when it does not fit.
    @inline(__always)
    private func store(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        let n = bytes.count
        guard n <= arenaSize else { return Dedup.noCopy }
        let start = written
        if n > 0, let src = bytes.baseAddress {
            let at = Int(start % UInt64(arenaSize))
            let first = min(n, arenaSize - at)
            memcpy(arena + at, src, first)
            if first < n { memcpy(arena, src + first, n - first) }
        }
        written &+= UInt64(n)
        return start
    }

    /// True when the arena's copy starting at `start` holds exactly `bytes` (of the copy's length).
    @inline(__always)
    private func equalsCopy(at start: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
        let n = bytes.count
        guard n > 0, let src = bytes.baseAddress else { return true }
        let at = Int(start % UInt64(arenaSize))
        let first = min(n, arenaSize - at)
        if memcmp(arena + at, src, first) != 0 { return false }
        return first == n || memcmp(arena, src + first, n - first) == 0
    }

    /// XXH64 with seed 0 (Yann Collet's xxHash, 64-bit variant).
    @inline(__always)
    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        let p1: UInt64 = 0x9E37_79B1_85EB_CA87, p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F, p3: UInt64 = 0x1656_67B1_9E37_79F9
        let p4: UInt64 = 0x85EB_CA77_C2B2_AE63, p5: UInt64 = 0x27D4_EB2F_1656_67C5
        @inline(__always) func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { x << r | x >> (64 - r) }
        @inline(__always) func round(_ acc: UInt64, _ lane: UInt64) -> UInt64 { rotl(acc &+ lane &* p2, 31) &* p1 }
        @inline(__always) func merge(_ acc: UInt64, _ v: UInt64) -> UInt64 { (acc ^ round(0, v)) &* p1 &+ p4 }
        let n = bytes.count
        guard let p = bytes.baseAddress else { return avalanche(p5) }
        var i = 0
        var h: UInt64
        if n >= 32 {
            var v1 = p1 &+ p2, v2 = p2, v3: UInt64 = 0, v4 = 0 &- p1
            while i + 32 <= n {
                v1 = round(v1, p.loadUnaligned(fromByteOffset: i, as: UInt64.self).littleEndian)
                v2 = round(v2, p.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self).littleEndian)
                v3 = round(v3, p.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self).littleEndian)
                v4 = round(v4, p.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self).littleEndian)
                i += 32
            }
            h = rotl(v1, 1) &+ rotl(v2, 7) &+ rotl(v3, 12) &+ rotl(v4, 18)
            h = merge(merge(merge(merge(h, v1), v2), v3), v4)
        } else {
            h = p5
        }
        h &+= UInt64(n)
        while i + 8 <= n {
            h ^= round(0, p.loadUnaligned(fromByteOffset: i, as: UInt64.self).littleEndian)
            h = rotl(h, 27) &* p1 &+ p4
            i += 8
        }
        if i + 4 <= n {
            h ^= UInt64(p.loadUnaligned(fromByteOffset: i, as: UInt32.self).littleEndian) &* p1
            h = rotl(h, 23) &* p2 &+ p3
            i += 4
        }
        while i < n {
            h ^= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) &* p5
            h = rotl(h, 11) &* p1
            i += 1
        }
        return avalanche(h)
    }

    @inline(__always)
    private static func avalanche(_ x: UInt64) -> UInt64 {
        var h = x
        h ^= h >> 33
        h &*= 0xC2B2_AE3D_27D4_EB4F
        h ^= h >> 29
        h &*= 0x1656_67B1_9E37_79F9
        h ^= h >> 32
        return h
    }

    public var arguments: String { text }

    public func statistics() -> [(String, String)] {
        [("dedup_window", "\(window)"), ("dedup_dropped", "\(dropped)"), ("dedup_unverified", "\(unverified)")]
    }

    static func parse(_ a: String) throws(FilterError) -> Int {
        if a.isEmpty { return defaultWindow }
        guard a.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), let n = Int(a),
              (2...maxWindow).contains(n) else {
            throw FilterError(
                "dedup=N: N is the window in blocks, this one included (as editcap -D), 2 to \(maxWindow) (got '\(a)')")
        }
        return n
    }

    public static let descriptor = FilterDescriptor(
        name: "dedup", summary: "drops a block identical to one of the N-1 before it (editcap -D N; default 5)",
        usage: "dedup[=N] (window in blocks, this one included, 2 to 1000000; default 5)", structuralClass: .filtering
    ) { a throws(FilterError) in Dedup(window: try Dedup.parse(a), text: a) }
}
