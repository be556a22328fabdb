#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesBuffering

/// `pipesfs bench scale`: copy throughput (write into the ring, read out of it) of fixed-size records between a
/// producer thread and a consumer thread through one ring while it shrinks from 16 MiB through the L2 and L1
/// sizes (paper §5.4, Fig. 7), by deck-cut (one ring whose cut moves live) and by reallocation (the ring moves
/// to a smaller region live, its reader following). Each size is compared with the first (largest) size
/// measured in the same run.
struct ScaleBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "Self-scaling rings: producer/consumer throughput as one ring shrinks live (deck-cut, reallocation).")

    @Option(help: "Ring sizes in the order the ring moves through them (K/M suffixes; powers of two).")
    var sizes = "16M,4M,1M,256K,64K,16K,4K"
    @Option(help: "Record payload bytes.") var block = 1024
    @Option(help: "Megabytes moved at each size.") var megabytes = 256
    @Option(help: "Runs; the best figure of each size is reported (two cores make single runs noisy).") var runs = 3
    @Flag(help: "One thread writes a batch (up to 64 records, or until the ring is full), then reads it: no hand-off between cores, only the ring's memory.")
    var oneThread = false

    func run() throws {
        let logs = try sizes.split(separator: ",").map { s -> Int in
            guard let v = ScaleBench.bytes(String(s)), v.nonzeroBitCount == 1, v >= 4096, v <= 1 << 30 else {
                throw ValidationError("--sizes: powers of two from 4K to 1G, e.g. 16M,1M,64K")
            }
            return v.trailingZeroBitCount
        }
        guard let top = logs.max(), !logs.isEmpty else { throw ValidationError("--sizes: none given") }
        guard block >= 8, block <= (1 << logs.min()!) / 2 - 40 else {
            throw ValidationError("--block: 8 bytes up to what the smallest ring takes twice")
        }
        print("caches (cpu0): " + ScaleBench.caches())
        print("\(block)-byte records, \(megabytes) MB per size, best of \(max(1, runs)) runs; ratios against the first size; "
              + (oneThread ? "one thread (write a batch, read it)" : "producer and consumer threads"))
        var cut = [Double](repeating: 0, count: logs.count)
        var moved = [Double](repeating: 0, count: logs.count)
        for _ in 0..<max(1, runs) {  // interleaved, so a disturbance hits both methods alike
            for (i, v) in try measure(logs, top: top, reallocate: false).enumerated() { cut[i] = max(cut[i], v) }
            for (i, v) in try measure(logs, top: top, reallocate: true).enumerated() { moved[i] = max(moved[i], v) }
        }
        print("    size   deckcut_MB/s   vs_first   realloc_MB/s   vs_first")
        for (i, l) in logs.enumerated() {
            print(ScaleBench.pad(ScaleBench.name(1 << l), 8) + format6(Int(cut[i].rounded()), 15)
                  + ScaleBench.pad(ScaleBench.ratio(cut[i] / cut[0]), 11)
                  + format6(Int(moved[i].rounded()), 15) + ScaleBench.pad(ScaleBench.ratio(moved[i] / moved[0]), 11))
        }
        fflush(nil)
    }

    /// One ring through every size in turn; MB/s at each, as the consumer saw it (from the first record of a size
    /// to the first of the next).
    func measure(_ logs: [Int], top: Int, reallocate: Bool) throws -> [Double] {
        let ring: DBuf
        do {
            ring = reallocate
                ? try DBuf(sizeLog2: logs[0], policy: .block, maxReaders: 1)
                : try DBuf(sizeLog2: top, policy: .block, maxReaders: 1, cutLog2: logs[0])
        } catch {
            throw ValidationError("ring: \(error.message)")
        }
        guard let reader = ring.attach() else { throw ValidationError("no reader slot") }
        let block = self.block
        let perSize = megabytes * 1_000_000 / block
        if oneThread { return try measureInline(ring, reader, logs, reallocate: reallocate) }
        let failed = Failure()
        startThread(name: "scale-producer") {
            let source = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 64)
            defer { source.deallocate() }
            source.initializeMemory(as: UInt8.self, repeating: 1, count: block)
            for (phase, l) in logs.enumerated() {
                let classValue = UInt32(phase + 1)
                if phase > 0 {
                    // Move the ring live. A smaller region takes the records still unread only when they fit it
                    // without straddling its end: until then keep producing at the old size.
                    while true {
                        do throws(RingError) {
                            if reallocate { try ring.reallocate(sizeLog2: l) } else { try ring.setCut(log2: l) }
                            break
                        } catch {
                            if error.errno != EAGAIN {
                                failed.set(error.message)
                                ring.close()
                                return
                            }
                            ScaleBench.produce(ring, source, block, classValue: classValue - 1)
                        }
                    }
                }
                for _ in 0..<perSize { ScaleBench.produce(ring, source, block, classValue: classValue) }
            }
            ring.close()
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 64)
        defer { buffer.deallocate() }
        var firstSeen = [Int64](repeating: 0, count: logs.count + 1)
        var bytes = [Int](repeating: 0, count: logs.count)
        var current = -1
        while true {
            if let (n, c) = reader.read(into: buffer) {
                let phase = Int(c) - 1
                if phase != current {
                    firstSeen[phase] = monotonicNanoseconds()
                    current = phase
                }
                bytes[phase] += n
                continue
            }
            if reader.isAtEnd { break }
            reader.wait(timeoutNanoseconds: 1_000_000)
        }
        firstSeen[logs.count] = monotonicNanoseconds()
        if let f = failed.message { throw ValidationError("resizing: \(f)") }
        return (0..<logs.count).map { i in
            let ns = firstSeen[i + 1] - firstSeen[i]
            return ns > 0 ? Double(bytes[i]) / (Double(ns) / 1e9) / 1e6 : 0
        }
    }

    /// `--one-thread`: write a batch, read it back, at each size in turn.
    func measureInline(_ ring: DBuf, _ reader: DBufReader, _ logs: [Int], reallocate: Bool) throws -> [Double] {
        let block = self.block
        let perSize = megabytes * 1_000_000 / block
        let source = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 64)
        defer { source.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 1, count: block)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 64)
        defer { buffer.deallocate() }
        var rates: [Double] = []
        for (phase, l) in logs.enumerated() {
            if phase > 0 {
                do throws(RingError) {  // the ring is drained between batches: a smaller region always fits
                    if reallocate { try ring.reallocate(sizeLog2: l) } else { try ring.setCut(log2: l) }
                } catch {
                    throw ValidationError("resizing: \(error.message)")
                }
            }
            let t0 = monotonicNanoseconds()
            var moved = 0
            var bytes = 0
            while moved < perSize {
                var batch = 0
                while batch < 64 && moved + batch < perSize, let p = ring.reserve(block, wait: false) {
                    p.copyMemory(from: source, byteCount: block)
                    ring.commit(block, wireLength: block)
                    batch += 1
                }
                for _ in 0..<batch {
                    guard let (n, _) = reader.read(into: buffer) else { throw ValidationError("a record went missing") }
                    bytes += n
                }
                moved += batch
            }
            rates.append(Double(bytes) / (Double(monotonicNanoseconds() - t0) / 1e9) / 1e6)
        }
        return rates
    }

    /// Why the producer thread gave up, if it did.
    final class Failure: @unchecked Sendable {
        private let lock = ConditionLock()
        private var text: String?
        func set(_ s: String) { lock.withLock { text = s } }
        var message: String? { lock.withLock { text } }
    }

    /// One record, copied in from `source`.
    @inline(__always)
    static func produce(_ ring: DBuf, _ source: UnsafeMutableRawPointer, _ block: Int, classValue: UInt32) {
        guard let p = ring.reserve(block) else { return }
        p.copyMemory(from: source, byteCount: block)
        ring.commit(block, classValue: classValue, wireLength: block)
    }

    /// "16M", "256K", "4096" in bytes.
    static func bytes(_ s: String) -> Int? {
        let u = s.uppercased()
        if u.hasSuffix("K") { return Int(u.dropLast()).map { $0 << 10 } }
        if u.hasSuffix("M") { return Int(u.dropLast()).map { $0 << 20 } }
        if u.hasSuffix("G") { return Int(u.dropLast()).map { $0 << 30 } }
        return Int(u)
    }

    static func name(_ v: Int) -> String {
        v >= 1 << 20 ? "\(v >> 20)M" : v >= 1 << 10 ? "\(v >> 10)K" : "\(v)"
    }

    static func ratio(_ v: Double) -> String { "\((v * 100).rounded() / 100)x" }

    static func pad(_ s: String, _ width: Int) -> String { String(repeating: " ", count: max(1, width - s.count)) + s }

    /// The data and unified caches of cpu0 as "L1d 48K, L2 1024K, L3 32768K" (sysfs).
    static func caches() -> String {
        var out: [String] = []
        for i in 0..<8 {
            let dir = "/sys/devices/system/cpu/cpu0/cache/index\(i)/"
            guard let level = readLine(dir + "level"), let type = readLine(dir + "type"), let size = readLine(dir + "size")
            else { continue }
            if type == "Instruction" { continue }
            out.append("L\(level)\(type == "Data" ? "d" : "") \(size)")
        }
        return out.isEmpty ? "unknown" : out.joined(separator: ", ")
    }

    static func readLine(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &buf, 64)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self).split(separator: "\n").first.map(String.init)
    }
}
