#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PipesBuffering
import PipesFilters
import PipesRuntime

/// `pipesfs bench ac`: the `ac` filter in this process against `grep -F -c -f PATTERNS FILE` as a process, on the same
/// generated text. The filter scans the data in 64 KiB `.user` blocks of one flow (only the scan is timed); grep is
/// timed from spawn to exit on the cached file, in the C locale (its fastest). A second pass, not timed, gives the filter
/// each line as a block of its own: the number of lines it classifies must equal grep's count.
struct ACBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ac",
        abstract: "The ac filter (Aho-Corasick) over generated text vs grep -F -c -f PATTERNS FILE (MB/s ratio; same line count).")
    @Option(help: "Number of patterns (words of 6 to 16 letters).") var patterns = 1000
    @Option(help: "Size of the data in MB.") var megabytes = 100
    @Option(help: "Runs of each; the best is reported.") var runs = 3
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Share of lines that carry a pattern.") var density = 0.02

    static let blockSize = 64 << 10

    func validate() throws {
        guard (1...100_000).contains(patterns) else { throw ValidationError("--patterns is from 1 to 100000") }
        guard (1...100_000).contains(megabytes) else { throw ValidationError("--megabytes is from 1 to 100000") }
        guard runs >= 1 else { throw ValidationError("--runs is at least 1") }
        guard (0...1).contains(density) else { throw ValidationError("--density is between 0 and 1") }
    }

    func run() throws {
        var rng = SyntheticCapture.Random(state: seed)
        let words = ACBench.patternWords(patterns, &rng)
        let data = ACBench.text(megabytes: megabytes, patterns: words, density: density, &rng)
        let base = "/tmp/pipesfs-bench-ac-\(getpid())"
        let patternPath = base + ".patterns", dataPath = base + ".txt", countPath = base + ".count"
        defer { unlink(patternPath); unlink(dataPath); unlink(countPath) }
        try ACBench.write(patternPath, words.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "\n") + "\n")
        try data.withUnsafeBytes { raw throws in try ACBench.write(dataPath, raw) }

        let t0 = monotonicNanoseconds()
        let filter: AhoCorasick
        do { filter = try AhoCorasick("@" + patternPath) } catch { fail(error.message) }
        let buildSeconds = Double(monotonicNanoseconds() - t0) / 1e9
        let st = Dictionary(uniqueKeysWithValues: filter.statistics())

        _ = timeCommand(["cat", dataPath])  // warm the page cache
        setenv("LC_ALL", "C", 1)
        var ours = Double.infinity, theirs = Double.infinity
        var blocksMatched = 0
        var grepCount = -1
        for _ in 0..<runs {
            let (t, m) = ACBench.scanTimed(filter, data)
            ours = min(ours, t)
            blocksMatched = m
            let (status, g) = timeCommand(["grep", "-F", "-c", "-f", patternPath, dataPath], stdoutPath: countPath)
            // grep -c exits 1 when it counts 0 lines.
            guard status >= 0, (status >> 8) & 0xFF <= 1, status & 0x7F == 0 else { fail("grep -F failed (status \(status))") }
            theirs = min(theirs, g)
            grepCount = ACBench.readCount(countPath)
        }
        let (lines, linesMatched) = ACBench.countLines(filter, data)

        let mb = Double(data.count) / 1e6
        let table = Double(Int(st["ac_table_bytes"] ?? "0") ?? 0) / 1e6
        print("data: \(format2(mb)) MB of generated text, \(lines) lines; \(patterns) patterns of 6-16 letters; seed \(seed)")
        print("ac automaton: \(st["ac_states"] ?? "?") states, \(st["ac_byte_classes"] ?? "?") byte classes, "
              + "\(format2(table)) MB table, built in \(format2(buildSeconds * 1000)) ms")
        print("ac in-process, 64 KiB blocks of one flow:   \(format2(ours)) s, \(format2(mb / ours)) MB/s (\(blocksMatched) blocks matched)")
        print("grep -F -c -f PATTERNS FILE (LC_ALL=C):      \(format2(theirs)) s, \(format2(mb / theirs)) MB/s (process, best of \(runs))")
        print("ratio (ac MB/s / grep -F MB/s): \(format2(theirs / ours))x")
        if linesMatched == grepCount {
            print("lines with a match: ac \(linesMatched), grep -F -c \(grepCount): counts equal")
        } else {
            print("lines with a match: ac \(linesMatched), grep -F -c \(grepCount): counts DIFFER")
            throw ExitCode(1)
        }
    }

    /// Scans `data` in 64 KiB blocks of one flow; returns the seconds and the number of blocks that matched.
    static func scanTimed(_ f: AhoCorasick, _ data: [UInt8]) -> (Double, Int) {
        data.withUnsafeBytes { raw in
            var matched = 0
            let t0 = monotonicNanoseconds()
            var off = 0
            while off < raw.count {
                let n = min(blockSize, raw.count - off)
                var b = Block(bytes: UnsafeRawBufferPointer(rebasing: raw[off..<(off + n)]), linkType: .user)
                b.flow = 2
                if off == 0 { b.flowMarks.insert(.start) }
                if off + n == raw.count { b.flowMarks.insert(.end) }
                if f.process(&b) != 0 { matched += 1 }
                off += n
            }
            return (Double(monotonicNanoseconds() - t0) / 1e9, matched)
        }
    }

    /// Gives the filter each line (without its newline) as an untagged block: (lines, lines it classified).
    static func countLines(_ f: AhoCorasick, _ data: [UInt8]) -> (Int, Int) {
        data.withUnsafeBytes { raw in
            var lines = 0, matched = 0
            var start = 0
            let base = raw.baseAddress!
            while start < raw.count {
                let nl = memchr(base + start, 10, raw.count - start)
                let end = nl.map { UnsafeRawPointer($0) - base } ?? raw.count
                var b = Block(bytes: UnsafeRawBufferPointer(rebasing: raw[start..<end]), linkType: .user)
                if f.process(&b) != 0 { matched += 1 }
                lines += 1
                start = end + 1
            }
            return (lines, matched)
        }
    }

    /// English letter frequencies (per mille), a to z.
    static let letterWeights = [82, 15, 28, 43, 127, 22, 20, 61, 70, 2, 8, 40, 24, 67, 75, 19, 1, 60, 63, 91, 28, 10, 24, 2, 20, 1]
    static let letterTable: [UInt8] = {
        var t: [UInt8] = []
        for (i, w) in letterWeights.enumerated() { t += [UInt8](repeating: UInt8(ascii: "a") + UInt8(i), count: w) }
        return t
    }()

    static func word(_ length: Int, _ rng: inout SyntheticCapture.Random) -> [UInt8] {
        (0..<length).map { _ in letterTable[rng.below(letterTable.count)] }
    }

    /// `n` distinct words of 6 to 16 letters.
    static func patternWords(_ n: Int, _ rng: inout SyntheticCapture.Random) -> [[UInt8]] {
        var seen = Set<[UInt8]>()
        var out: [[UInt8]] = []
        while out.count < n {
            let w = word(6 + rng.below(11), &rng)
            if seen.insert(w).inserted { out.append(w) }
        }
        return out
    }

    /// Lines of 40 to 140 bytes: words from a vocabulary of 4096 (2 to 10 letters), now and then a run of random bytes
    /// (never NUL or a newline, so grep reads it as text), and in `density` of the lines a pattern, alone or inside a
    /// word.
    static func text(megabytes: Int, patterns: [[UInt8]], density: Double, _ rng: inout SyntheticCapture.Random) -> [UInt8] {
        let vocabulary = (0..<4096).map { _ in word(2 + rng.below(9), &rng) }
        let target = megabytes * 1_000_000
        var out: [UInt8] = []
        out.reserveCapacity(target + 256)
        while out.count < target {
            let length = 40 + rng.below(100)
            let lineStart = out.count
            let patternAt = rng.chance(density) ? 1 + rng.below(length) : -1
            var placed = false
            while out.count - lineStart < length {
                if out.count > lineStart { out.append(UInt8(ascii: " ")) }
                if !placed && patternAt >= 0 && out.count - lineStart >= patternAt {
                    if rng.chance(0.5) { out += vocabulary[rng.below(vocabulary.count)] }
                    out += patterns[rng.below(patterns.count)]
                    placed = true
                } else if rng.chance(0.05) {
                    for _ in 0..<(1 + rng.below(6)) {
                        var b = UInt8(truncatingIfNeeded: rng.next())
                        if b == 0 || b == 10 { b = 0x7F }
                        out.append(b)
                    }
                } else {
                    out += vocabulary[rng.below(vocabulary.count)]
                }
            }
            out.append(10)
        }
        return out
    }

    static func write(_ path: String, _ text: String) throws {
        var t = text
        try t.withUTF8 { try write(path, UnsafeRawBufferPointer($0)) }
    }

    static func write(_ path: String, _ bytes: UnsafeRawBufferPointer) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if fd < 0 { throw ValidationError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n <= 0 { throw ValidationError("cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    static func readCount(_ path: String) -> Int {
        guard let f = fopen(path, "r") else { return -1 }
        defer { fclose(f) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = fread(&buf, 1, 63, f)
        let s = String(decoding: buf[..<n], as: UTF8.self).trimmingSuffix()
        return Int(s) ?? -1
    }
}

private extension String {
    func trimmingSuffix() -> String {
        var s = Substring(self)
        while let l = s.last, l == "\n" || l == " " || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
