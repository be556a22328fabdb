#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesBuffering

/// `pipesfs bench splice`: forwarding blocks from a DBuf to a downstream buffer that a consumer reads, with
/// splicing (DBuf to IBuf: a rich pointer per block, paper §5.3.3) against without (DBuf to DBuf: the block
/// copied), measured in the same run at each block size: the shape of the paper's Fig. 4. A producer, a
/// forwarder and a consumer run as three threads of this process. The producer publishes records over data
/// already in the source ring (it stamps a sequence number, as a page cache or a NIC ring would hold the bytes
/// already), so the cases differ only in what the forwarder writes and what the consumer's peek resolves.
struct SpliceBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "splice",
        abstract: "DBuf -> IBuf (splice, pointer only) vs DBuf -> DBuf (copy) forwarding throughput, three threads.")

    @Option(help: "Megabytes forwarded per case at 4 KiB blocks and up (an eighth below).") var megabytes = 2000
    @Option(help: "Block sizes, comma-separated.") var sizes = "64,256,1024,4096,16384,65536"
    @Option(help: "Source and copy rings' size as a power of two (bytes).") var ringLog2 = 22
    @Option(help: "The IBuf's index ring size as a power of two (64 bytes per index).") var indexLog2 = 18
    @Option(help: "How the consumer takes a block: peek (in place, touching its first and last 8 bytes) or read (copied out).")
    var consumer = "peek"
    @Option(help: "Runs per case; the best is reported (a shared machine makes single runs noisy).") var runs = 3
    @Option(help: "threads: producer, forwarder and consumer on three threads; inline: called in turn on one thread, a batch of 64 blocks at a time (the CPU cost, without scheduling).")
    var mode = "threads"

    func run() throws {
        let blockSizes = sizes.split(separator: ",").compactMap { Int($0) }
        guard !blockSizes.isEmpty, blockSizes.allSatisfy({ $0 >= 16 && $0 <= 1 << 20 }) else {
            throw ValidationError("--sizes: block sizes of 16 bytes to 1 MiB, comma-separated")
        }
        guard (16...30).contains(ringLog2), (12...30).contains(indexLog2) else {
            throw ValidationError("--ring-log2: 16 to 30; --index-log2: 12 to 30")
        }
        if let big = blockSizes.first(where: { $0 > (1 << ringLog2) / 2 - 64 }) {
            throw ValidationError("--sizes: a \(big)-byte block does not fit a 2^\(ringLog2)-byte ring twice; raise --ring-log2")
        }
        guard consumer == "peek" || consumer == "read" else { throw ValidationError("--consumer: peek or read") }
        guard mode == "threads" || mode == "inline" else { throw ValidationError("--mode: threads or inline") }
        let config = Config(ringLog2: ringLog2, indexLog2: indexLog2, read: consumer == "read", inline: mode == "inline")
        print("mode: \(mode); consumer: \(consumer); source and copy rings 2^\(ringLog2) B, index ring 2^\(indexLog2) B; best of \(max(1, runs))")
        print("block    copy_MB/s  splice_MB/s   copy_rec/s  splice_rec/s  spliced  splice/copy")
        for bs in blockSizes {
            let total = (bs < 4096 ? megabytes * 1_000_000 / 8 : megabytes * 1_000_000) / bs * bs
            let records = total / bs
            var copy = 0.0, splice = 0.0
            var share = 0.0
            for _ in 0..<max(1, runs) {  // interleaved, so a disturbance hits both cases alike
                copy = max(copy, try runCase(bs, records, config, splice: false).seconds.map { Double(records) / $0 } ?? 0)
                let s = try runCase(bs, records, config, splice: true)
                splice = max(splice, s.seconds.map { Double(records) / $0 } ?? 0)
                share = s.splicedShare
            }
            print(format6(bs, 5) + col(copy * Double(bs) / 1e6, 11) + col(splice * Double(bs) / 1e6, 13)
                  + col(copy, 13) + col(splice, 14) + String(format6(Int((share * 100).rounded()), 8)) + "%"
                  + ratio(splice / copy, 12))
            fflush(nil)
        }
    }

    struct Config {
        let ringLog2: Int
        let indexLog2: Int
        let read: Bool
        let inline: Bool
    }

    /// Outcome of one case: seconds from the first record produced to the last consumed, and the share of
    /// blocks the forwarder spliced (splice case).
    struct Result {
        let seconds: Double?
        let splicedShare: Double
    }

    /// Set by the forwarder and producer threads, read after they are joined.
    final class Failure: @unchecked Sendable { var message: String? }

    func runCase(_ bs: Int, _ records: Int, _ c: Config, splice: Bool) throws -> Result {
        if c.inline { return try inlineCase(bs, records, c, splice: splice) }
        let source = try ring { () throws(RingError) in try DBufRegistry.shared.makeRing(sizeLog2: c.ringLog2, policy: .block, maxReaders: 4) }
        defer { DBufRegistry.shared.unregister(source) }
        prefill(source, bs)
        guard let src = source.attach() else { throw ValidationError("no reader slot") }
        let failure = Failure()
        let producer = JoinableThread(), forwarder = JoinableThread()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 64)
        defer { buffer.deallocate() }
        var spliced: UInt64 = 0
        let t0: Int64
        var checked = 0
        if splice {
            let ibuf = try ring { () throws(RingError) in try IBuf(sizeLog2: c.indexLog2, backingSizeLog2: 16) }
            ibuf.addSource(source)
            guard let out = ibuf.attach() else { throw ValidationError("no IBuf reader slot") }
            t0 = monotonicNanoseconds()
            produce(producer, source, bs, records, failure)
            forwarder.start(name: "forwarder") {
                while true {
                    guard let r = src.peek() else {
                        if src.isAtEnd { break }
                        ibuf.flush()
                        src.wait()
                        continue
                    }
                    if ibuf.write(r.bytes) == .refused { failure.message = "the IBuf refused a block"; break }
                    src.consume(r)
                }
                ibuf.close()
            }
            while true {
                if c.read {
                    if let (n, _, _) = out.read(into: buffer) {
                        if n != bs || buffer.load(as: UInt64.self) != UInt64(checked) { break }
                        checked += 1
                        continue
                    }
                } else if let r = out.peek() {
                    if r.bytes.count != bs || r.bytes.load(as: UInt64.self) != UInt64(checked)
                        || r.bytes.load(fromByteOffset: bs - 8, as: UInt64.self) != 0x0101_0101_0101_0101 { break }
                    out.consume(r)
                    checked += 1
                    continue
                }
                if out.isAtEnd { break }
                out.wait()
            }
            _ = producer.join(timeoutNanoseconds: 60_000_000_000)
            _ = forwarder.join(timeoutNanoseconds: 60_000_000_000)
            spliced = ibuf.spliced
        } else {
            let downstream = try ring { () throws(RingError) in try DBuf(sizeLog2: c.ringLog2, policy: .block, maxReaders: 4) }
            guard let out = downstream.attach() else { throw ValidationError("no reader slot") }
            t0 = monotonicNanoseconds()
            produce(producer, source, bs, records, failure)
            forwarder.start(name: "forwarder") {
                while true {
                    guard let r = src.peek() else {
                        if src.isAtEnd { break }
                        downstream.flush()
                        src.wait()
                        continue
                    }
                    downstream.write(r.bytes, classValue: r.classValue, wireLength: r.wireLength, linkType: r.linkType,
                                     timestampNanoseconds: r.timestampNanoseconds)
                    src.consume(r)
                }
                downstream.close()
            }
            while true {
                if c.read {
                    if let (n, _) = out.read(into: buffer) {
                        if n != bs || buffer.load(as: UInt64.self) != UInt64(checked) { break }
                        checked += 1
                        continue
                    }
                } else if let r = out.peek() {
                    if r.bytes.count != bs || r.bytes.load(as: UInt64.self) != UInt64(checked)
                        || r.bytes.load(fromByteOffset: bs - 8, as: UInt64.self) != 0x0101_0101_0101_0101 { break }
                    out.consume(r)
                    checked += 1
                    continue
                }
                if out.isAtEnd { break }
                out.wait()
            }
            _ = producer.join(timeoutNanoseconds: 60_000_000_000)
            _ = forwarder.join(timeoutNanoseconds: 60_000_000_000)
        }
        let t = monotonicNanoseconds() - t0
        if let m = failure.message { throw ValidationError(m) }
        guard checked == records else {
            throw ValidationError("\(splice ? "splice" : "copy") case: block \(checked) of \(records) was missing or wrong")
        }
        return Result(seconds: Double(t) / 1e9, splicedShare: splice ? Double(spliced) / Double(records) : 0)
    }

    /// The three stages called in turn on this thread, 64 blocks at a time: what the cases cost in CPU.
    func inlineCase(_ bs: Int, _ records: Int, _ c: Config, splice: Bool) throws -> Result {
        let source = try ring { () throws(RingError) in try DBufRegistry.shared.makeRing(sizeLog2: c.ringLog2, policy: .block, maxReaders: 4) }
        defer { DBufRegistry.shared.unregister(source) }
        prefill(source, bs)
        guard let src = source.attach() else { throw ValidationError("no reader slot") }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 64)
        defer { buffer.deallocate() }
        var checked = 0
        var spliced: UInt64 = 0
        let t0: Int64
        if splice {
            let ibuf = try ring { () throws(RingError) in try IBuf(sizeLog2: c.indexLog2, backingSizeLog2: 16) }
            ibuf.addSource(source)
            guard let out = ibuf.attach() else { throw ValidationError("no IBuf reader slot") }
            t0 = monotonicNanoseconds()
            checked = SpliceBench.inlineLoop(source, src, bs, records, c.read, buffer,
                                             forward: { ibuf.write($0.bytes, wait: false) != .refused },
                                             endOfBatch: { ibuf.flush() },
                                             consume: { check in
                                                 if c.read {
                                                     guard let (n, _, _) = out.read(into: buffer) else { return nil }
                                                     return check(n, buffer.baseAddress!)
                                                 }
                                                 guard let r = out.peek() else { return nil }
                                                 let ok = check(r.bytes.count, r.bytes.baseAddress!)
                                                 out.consume(r)
                                                 return ok
                                             })
            spliced = ibuf.spliced
        } else {
            let downstream = try ring { () throws(RingError) in try DBuf(sizeLog2: c.ringLog2, policy: .block, maxReaders: 4) }
            guard let out = downstream.attach() else { throw ValidationError("no reader slot") }
            t0 = monotonicNanoseconds()
            checked = SpliceBench.inlineLoop(source, src, bs, records, c.read, buffer,
                                             forward: { r in
                                                 downstream.write(r.bytes, classValue: r.classValue, wireLength: r.wireLength,
                                                                  linkType: r.linkType, timestampNanoseconds: r.timestampNanoseconds,
                                                                  wait: false)
                                             },
                                             endOfBatch: { downstream.flush() },
                                             consume: { check in
                                                 if c.read {
                                                     guard let (n, _) = out.read(into: buffer) else { return nil }
                                                     return check(n, buffer.baseAddress!)
                                                 }
                                                 guard let r = out.peek() else { return nil }
                                                 let ok = check(r.bytes.count, r.bytes.baseAddress!)
                                                 out.consume(r)
                                                 return ok
                                             })
        }
        let t = monotonicNanoseconds() - t0
        guard checked == records else {
            throw ValidationError("\(splice ? "splice" : "copy") case (inline): block \(checked) of \(records) was missing or wrong")
        }
        return Result(seconds: Double(t) / 1e9, splicedShare: splice ? Double(spliced) / Double(records) : 0)
    }

    /// Produces, forwards and consumes `records` blocks in batches of 64; returns how many were consumed
    /// correctly (it stops at the first wrong one). `consume` returns nil when there is nothing to consume.
    @inline(__always)
    static func inlineLoop(_ source: DBuf, _ src: DBufReader, _ bs: Int, _ records: Int, _ read: Bool,
                           _ buffer: UnsafeMutableRawBufferPointer, forward: (DBufReader.Record) -> Bool,
                           endOfBatch: () -> Void,
                           consume: ((Int, UnsafeRawPointer) -> Bool) -> Bool?) -> Int {
        var produced = 0, checked = 0
        var expected: UInt64 = 0
        let check: (Int, UnsafeRawPointer) -> Bool = { n, p in
            n == bs && p.load(as: UInt64.self) == expected
                && (read || p.load(fromByteOffset: bs - 8, as: UInt64.self) == 0x0101_0101_0101_0101)
        }
        while checked < records {
            var n = 0
            while n < 64 && produced < records, let p = source.reserve(bs, wait: false) {
                p.storeBytes(of: UInt64(produced), as: UInt64.self)
                source.commit(bs, wireLength: bs)
                produced += 1
                n += 1
            }
            n = 0
            while n < 64, let r = src.peek() {
                guard forward(r) else { break }
                src.consume(r)
                n += 1
            }
            endOfBatch()
            n = 0
            while n < 64, let ok = consume(check) {
                if !ok { return checked }
                checked += 1
                expected &+= 1
                n += 1
            }
        }
        return checked
    }

    /// Fills the source ring's data area once, as data already in memory (every byte 1).
    func prefill(_ ring: DBuf, _ bs: Int) {
        guard let r = ring.attach() else { return }
        let lap = (ring.capacity / 2) / bs + 1
        for _ in 0..<2 * lap {
            guard let p = ring.reserve(bs, wait: false) else { break }
            p.initializeMemory(as: UInt8.self, repeating: 1, count: bs)
            ring.commit(bs, wireLength: bs)
            if let x = r.peek() { r.consume(x) }
        }
        r.detach()
    }

    /// The producer thread: `records` records of `bs` bytes, each stamped with its sequence number.
    func produce(_ thread: JoinableThread, _ ring: DBuf, _ bs: Int, _ records: Int, _ failure: Failure) {
        thread.start(name: "producer") {
            for i in 0..<records {
                guard let p = ring.reserve(bs) else { failure.message = "the source ring refused a block"; break }
                p.storeBytes(of: UInt64(i), as: UInt64.self)
                ring.commit(bs, wireLength: bs)
            }
            ring.close()
        }
    }

    func ring<T>(_ make: () throws(RingError) -> T) throws -> T {
        do { return try make() } catch { throw ValidationError("ring: \(error.message)") }
    }

    func col(_ v: Double, _ w: Int) -> String { format6(Int(v.rounded()), w) }
    func ratio(_ v: Double, _ w: Int) -> String {
        let s = "\((v * 100).rounded() / 100)x"
        return String(repeating: " ", count: max(1, w - s.count)) + s
    }
}
