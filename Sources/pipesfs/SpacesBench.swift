#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRingABI
import PipesRuntime

/// `pipesfs bench spaces`: a two-stage pipeline (`gen` source → stage 1 → stage 2 → count), in-process, run in
/// one execution space (the source's thread calls every stage) and spread over two (stage 2 and what follows in
/// space 1, on the other CPU, fed through a channel: §6.2). Each stage does the same work per block (checksum
/// passes over the block), so two spaces can at best double the rate. Ratios are against one space, measured in
/// the same run.
struct SpacesBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spaces",
        abstract: "A two-stage pipeline in one execution space vs spread over two (pinned, and unpinned).")

    @Option(help: "Block size in bytes.") var size = 512
    @Option(help: "Blocks per run.") var count = 4_000_000
    @Option(help: "Checksum passes over each block, per stage (the stage's work).") var passes = 4
    @Option(help: "Runs; the best of each case is reported.") var runs = 3
    @Option(help: "CPUs of space 0 (the source and stage 1) and space 1 (stage 2), comma separated.") var cpus = "0,1"
    @Option(name: .customLong("channel-log2"), help: "Channel ring size in use, log2 bytes (12 to 26).") var channelLog2 = ChannelRing.defaultSizeLog2
    @Option(help: "Cases to run: one, pinned, unpinned (comma separated; ratios need 'one').") var cases = "one,pinned,unpinned"

    func run() throws {
        let parts = cpus.split(separator: ",").compactMap { Int32($0) }
        guard parts.count == 2 else { throw ValidationError("--cpus: two CPU numbers, e.g. 0,1") }
        guard size >= 8 && size <= 65536 else { throw ValidationError("--size: 8 to 65536") }
        print("gen:size=\(size) → checksum×\(passes) → checksum×\(passes) → count, \(count) blocks, best of \(max(1, runs)) runs; usable CPUs: \(pipes_usable_cpus())")
        let want = Set(cases.split(separator: ",").map(String.init))
        var one = Result(), pinned = Result(), unpinned = Result()
        for _ in 0..<max(1, runs) {  // interleaved, so a disturbance hits every case alike
            if want.contains("one") { one = one.best(try measure(spaces: 1, cpus: [])) }
            if want.contains("pinned") { pinned = pinned.best(try measure(spaces: 2, cpus: parts.map { Optional($0) })) }
            if want.contains("unpinned") { unpinned = unpinned.best(try measure(spaces: 2, cpus: [nil, nil])) }
        }
        print("case                       blocks/s      MB/s   vs_one   cpu_s   wakeups/1k   sleeps")
        for (name, r) in [("one space", one), ("two spaces, pinned", pinned), ("two spaces, unpinned", unpinned)] where r.rate > 0 {
            print(pad(name, 24) + pad(String(Int(r.rate)), 12) + pad(String(Int(r.rate * Double(size) / 1e6)), 10)
                  + pad(one.rate > 0 ? format2(r.rate / one.rate) + "x" : "-", 9) + pad(format2(r.cpu), 8)
                  + pad(format2(Double(r.wakeups) * 1000 / Double(count)), 13) + pad(String(r.sleeps), 9))
        }
        if one.rate > 0 { print("stage cost (one space): \(Int(1e9 / one.rate / 2)) ns per block per stage (source included)") }
        fflush(nil)
    }

    struct Result {
        var rate = 0.0
        var cpu = 0.0
        var wakeups: UInt64 = 0
        var sleeps: UInt64 = 0
        func best(_ o: Result) -> Result { o.rate > rate ? o : self }
    }

    func measure(spaces: Int, cpus: [Int32?]) throws -> Result {
        let space = Space(spaces: spaces, cpus: cpus)
        space.channelSizeLog2 = channelLog2
        let c = Controller(space: space)
        let src = try c.addSource("g=gen:size=\(size),count=\(count),paused")
        let s1 = Node(id: space.allocateID(), name: "stage1", descriptor: Checksum.descriptor, filter: Checksum(passes: passes))
        let s2 = Node(id: space.allocateID(), name: "stage2", descriptor: Checksum.descriptor, filter: Checksum(passes: passes))
        space.lock.withLock {
            space.attach(s1, under: src)
            space.attach(s2, under: s1)
        }
        let sink = try c.makeDirectory(in: s2, named: "count")
        if spaces > 1 {
            try space.lock.withLock { () throws(PlacementError) in try space.place(s2, inSpace: 1) }
        }
        var ru0 = rusage()
        getrusage(RUSAGE_SELF.rawValue, &ru0)
        let t0 = monotonicNanoseconds()
        try c.control(src, "start")
        let want = UInt64(count)
        // Wait on the source's own state while it produces (taking the graph lock would stop both spaces), then
        // for the last blocks to cross.
        let gen = src.filter as! any SourceFilter
        while !gen.finished {
            usleep(1000)
            if monotonicNanoseconds() - t0 > 600_000_000_000 { throw ValidationError("the run did not finish within 10 minutes") }
        }
        while space.lock.withLock({ sink.stats.packetsIn }) < want {
            usleep(200)
            if monotonicNanoseconds() - t0 > 600_000_000_000 { throw ValidationError("the run did not finish within 10 minutes") }
        }
        let t = Double(monotonicNanoseconds() - t0) / 1e9
        // Every block crossed, once: the sink counted exactly what the source made, and the channel agrees.
        let (got, crossed) = space.lock.withLock { (sink.stats.packetsIn, space.inputChannels(s2).first?.delivered) }
        if got != want || (spaces > 1 && crossed != want) {
            throw ValidationError("the sink counted \(got) blocks (channel: \(crossed.map(String.init) ?? "none")), want \(want)")
        }
        var ru1 = rusage()
        getrusage(RUSAGE_SELF.rawValue, &ru1)
        let x = space.spaces.count > 1 ? space.spaces[1] : nil
        let (wakeups, sleeps) = space.lock.withLock { (x?.doorbell.rings ?? 0, x?.sleeps ?? 0) }
        c.shutdown()
        let cpu = seconds(ru1.ru_utime) + seconds(ru1.ru_stime) - seconds(ru0.ru_utime) - seconds(ru0.ru_stime)
        return Result(rate: Double(count) / t, cpu: cpu, wakeups: wakeups, sleeps: sleeps)
    }

    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }
}

/// The benchmark's stage: `passes` checksum passes over the block (8 bytes at a time), then forwards it.
final class Checksum: Filter, @unchecked Sendable {
    let passes: Int
    private(set) var sum: UInt64 = 0

    init(passes: Int) { self.passes = max(0, passes) }

    func process(_ block: inout Block) -> UInt32 {
        let b = block.bytes
        guard let base = b.baseAddress else { return 1 }
        let words = b.count / 8
        var s = sum
        for p in 0..<passes {
            var i = 0
            var acc = UInt64(truncatingIfNeeded: p)
            while i < words {
                acc = (acc &+ base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) &* 0x9E37_79B9_7F4A_7C15
                i += 1
            }
            s ^= acc
        }
        sum = s
        return block.classValue == 0 ? 1 : block.classValue
    }

    static let descriptor = FilterDescriptor(name: "checksum", summary: "benchmark stage", usage: "(bench only)",
                                             structuralClass: .filtering) { _ throws(FilterError) in Checksum(passes: 1) }
}
