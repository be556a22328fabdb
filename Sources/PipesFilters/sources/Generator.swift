#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesRuntime

/// A fast generator source for benchmarks and demos: `--source NAME=gen:size=BYTES[,rate=BPS][,count=N][,paused]`.
///
/// Produces blocks of `size` bytes (link type `user`) as fast as the graph takes them, or at `rate` bytes per
/// second. Each block starts with its sequence number (64-bit little-endian) followed by a fixed pattern, so a
/// reader can check that nothing was lost or reordered. With `count` the stream ends after that many blocks.
/// Lossless like a capture file: it waits for lagging readers. `ctl` takes `start`, `stop`, `rate BPS`.
public final class GeneratorSource: SourceFilter, @unchecked Sendable {
    public let size: Int
    public let count: UInt64?
    public var linkType: LinkType { .user }
    private let state = ConditionLock()
    private var rate: Int
    private var paused: Bool
    private var demand = false
    private var stopping = false
    private let thread = JoinableThread()
    private var _finished = false
    private var produced: UInt64 = 0
    private let block: UnsafeMutableRawPointer
    private var space: Space?
    private var node: Node?

    public init(spec: String) throws(FilterError) {
        var size = 0, rate = 0, paused = false
        var count: UInt64?
        for o in spec.split(separator: ",").map(String.init) {
            if o.hasPrefix("size="), let v = Int(o.dropFirst(5)), v >= 8, v <= 1 << 20 { size = v }
            else if o.hasPrefix("rate="), let v = Int(o.dropFirst(5)), v >= 0 { rate = v }
            else if o.hasPrefix("count="), let v = UInt64(o.dropFirst(6)) { count = v }
            else if o == "paused" { paused = true }
            else { throw FilterError("gen source: bad option '\(o)' (size=BYTES (8 to 1048576), rate=BYTES_PER_SECOND, count=BLOCKS, paused)") }
        }
        guard size > 0 else { throw FilterError("gen source: needs size=BYTES, e.g. gen:size=65536") }
        self.size = size
        self.rate = rate
        self.count = count
        self.paused = paused
        block = .allocate(byteCount: size, alignment: 64)
        for i in 0..<size { block.storeBytes(of: UInt8(truncatingIfNeeded: i &* 7 &+ 1), toByteOffset: i, as: UInt8.self) }
    }

    deinit { block.deallocate() }

    public var isLive: Bool { false }
    public var finished: Bool { state.withLock { _finished } }
    public func process(_ block: inout Block) -> UInt32 { 1 }

    public func attach(space: Space, node: Node) throws(FilterError) {
        self.space = space
        self.node = node
        let threadName = "gen-\(node.name)"
        thread.start(name: threadName) { [self] in
            space.pinSourceThread(name: threadName)
            run()
        }
    }

    public func setDemand(_ d: Bool) { state.withLock { demand = d; state.broadcast() } }

    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        switch command {
        case "start": state.withLock { paused = false; state.broadcast() }
        case "stop", "pause": state.withLock { paused = true }
        case "rate":
            guard let r = Int(argument), r >= 0 else { return .failure(FilterError("rate: want bytes per second (0 = as fast as possible)")) }
            state.withLock { rate = r; state.broadcast() }
        default: return nil
        }
        return .success(())
    }

    public func statistics() -> [(String, String)] {
        state.withLock {
            let s = _finished ? "finished" : paused ? "paused" : demand ? "running" : "idle (nothing attached)"
            return [("source", "gen:size=\(size)"), ("state", s), ("blocks_produced", "\(produced)"),
                    ("rate", rate == 0 ? "max" : "\(rate)")]
        }
    }

    public func shutdown() { state.withLock { stopping = true; state.broadcast() } }

    public func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool {
        thread.join(timeoutNanoseconds: timeoutNanoseconds)
    }

    private func run() {
        let batch = Batch()
        var paceStart = monotonicNanoseconds()
        var paced: Int64 = 0
        var sequence: UInt64 = 0
        while true {
            state.lock()
            while !stopping && (paused || !demand || _finished) { state.wait() }
            let stop = stopping
            let rate = self.rate
            state.unlock()
            guard !stop, let space, let node else { break }
            var n = rate > 0 ? max(1, min(64, rate / size / 100)) : 64
            if let c = count { n = Int(min(UInt64(n), c - sequence)) }
            space.begin(batch)
            if node.removed { space.end(); break }
            let bytes = UnsafeRawBufferPointer(start: block, count: size)
            var pushed = 0
            while pushed < n && !space.needsDrain {
                block.storeBytes(of: sequence.littleEndian, as: UInt64.self)
                var b = Block(bytes: bytes, linkType: .user)
                space.push(node, &b)
                sequence &+= 1
                pushed += 1
            }
            space.end()
            state.withLock { produced = sequence }
            space.finishBatch(batch, mayWait: true) { [self] in state.withLock { stopping } }
            if let c = count, sequence >= c {
                state.withLock { _finished = true; state.broadcast() }
                space.lock.withLock { space.refresh() }
            }
            if rate > 0 {
                paced += Int64(pushed * size)
                // In floating point: bytes × 10^9 overflows 64 bits after ~9 GB (36 s at 256 MB/s).
                let due = paceStart + Int64(Double(paced) * 1e9 / Double(rate))
                let now = monotonicNanoseconds()
                if due > now {
                    state.withLock { _ = state.wait(timeoutNanoseconds: min(due - now, 1_000_000_000)) }
                } else if now - due > 1_000_000_000 {
                    paceStart = now
                    paced = 0
                }
            }
        }
        space = nil
        node = nil
    }

    public static let descriptor = FilterDescriptor(
        name: "gen", summary: "generator source: numbered blocks of a fixed size",
        usage: "--source NAME=gen:size=BYTES[,rate=BYTES_PER_SECOND][,count=BLOCKS][,paused]", structuralClass: .source
    ) { a throws(FilterError) in try GeneratorSource(spec: a) }
}
