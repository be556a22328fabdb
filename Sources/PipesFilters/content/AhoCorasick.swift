#if canImport(Glibc)
import Glibc
#endif
import PipesRuntime

/// `ac=PAT1,PAT2,...` or `ac=@FILE`: multi-pattern matching (Aho-Corasick; §6.1, inspection and filtering). A block's
/// class is the 1-based number of the pattern it matched: of the matches in the block, the one that ends first, and
/// of those ending at the same byte, the lowest number. A block with no match is dropped.
///
/// Matching continues across the blocks of a flow (`Block.flow`, as `untcp` tags them): the automaton's state at the
/// end of a block is kept per flow tag, so a pattern split over two blocks of a flow matches in the second. Blocks
/// with no flow tag (packets, text written into a junction) are matched each on its own, from the start state. The
/// state of a flow is forgotten at its end mark (`.end`) and reset at its start mark (`.start`); at most `flows` flows
/// are kept (default 65536), a new one beyond that evicts one not used lately (a clock sweep; `ac_flow_evictions`).
///
/// The automaton is a DFA: a full transition table over byte classes (the bytes that occur in some pattern, one class
/// each, and one class for all others; with `nocase` an ASCII letter and its capital are one class). Entry
/// `[state * stride + class]` is the next state's row offset, so a byte costs one load from the table (and one from
/// the 256-entry class map, which does not depend on the state). States that end some pattern are numbered after
/// all others, so "is this a match" is one comparison of the row offset with `outputBase`.
///
/// Arguments: the patterns, separated by commas, with the escapes `\n`, `\r`, `\t`, `\\`, `\xHH` and `\,`; or `@`
/// and a file holding one pattern per line (the same escapes; a trailing CR is dropped, empty lines skipped).
/// Options follow, each after a blank: `nocase` (ASCII letters match either case), `flows=N`.
public final class AhoCorasick: Filter {
    /// What the control path accepts (tests lower them).
    public struct Limits: Equatable, Sendable {
        /// At most this many patterns.
        public var patterns = 100_000
        /// The transition table may take at most this many bytes (building it takes about twice as much for a moment).
        public var tableBytes = 256 << 20
        public init() {}
    }
    /// A pattern file may be at most this large.
    public static let maxFileBytes = 64 << 20
    public static let defaultFlows = 65_536
    public static let maxFlows = 1 << 20

    private let text: String
    public let patternCount: Int
    public let stateCount: Int
    public let nocase: Bool
    /// Row length of the table: the number of byte classes.
    public let stride: Int
    public let flowLimit: Int

    /// The DFA: `stateCount * stride` entries, each a row offset (`state * stride`).
    private let table: UnsafeMutablePointer<UInt32>
    /// Byte → class (0 for bytes that occur in no pattern).
    private let byteClass: UnsafeMutablePointer<UInt32>
    /// Row offsets from here on belong to states that end a pattern.
    private let outputBase: UInt32
    /// Per state that ends a pattern (in row order from `outputBase`): the lowest pattern number it ends.
    private let firstOutput: UnsafeMutablePointer<UInt32>

    // The flow table: open addressing with linear probing, keyed by flow tag (0: empty). A value is the state's row
    // offset with `referenced` set when the flow was used since the clock hand last passed. Allocated at the first
    // tagged block.
    private static let referenced: UInt32 = 1 << 31
    private var flowKeys: UnsafeMutablePointer<UInt32>?
    private var flowValues: UnsafeMutablePointer<UInt32>?
    private let flowSlots: Int
    private let flowShift: UInt32
    private var flowCount = 0
    private var clockHand = 0

    // Statistics.
    private var blocks: UInt64 = 0
    private var bytesScanned: UInt64 = 0
    private var matchedBlocks: UInt64 = 0
    /// Blocks classified per pattern (index: pattern number; 0 unused).
    private let perPattern: UnsafeMutablePointer<UInt64>
    private var flowsTotal: UInt64 = 0
    private var flowEvictions: UInt64 = 0

    public init(_ arguments: String, limits: Limits = Limits()) throws(FilterError) {
        text = arguments
        var spec = Substring(arguments)
        var fold = false
        var flows = AhoCorasick.defaultFlows
        // Options: trailing words after a blank.
        while let blank = spec.lastIndex(of: " ") {
            let word = spec[spec.index(after: blank)...]
            if word == "nocase" {
                fold = true
            } else if word.hasPrefix("flows=") {
                let v = word.dropFirst("flows=".count)
                guard let n = Int(v), n >= 1, n <= AhoCorasick.maxFlows else {
                    throw FilterError("ac: flows wants a number from 1 to \(AhoCorasick.maxFlows), got '\(v)'")
                }
                flows = n
            } else {
                break
            }
            spec = spec[..<blank]
        }
        nocase = fold
        flowLimit = flows

        var patterns: [[UInt8]]
        if spec.first == "@" {
            patterns = try AhoCorasick.readPatternFile(String(spec.dropFirst()), limit: limits.patterns)
        } else {
            patterns = try AhoCorasick.parseList(spec, limit: limits.patterns)
        }
        if fold {
            for i in patterns.indices { patterns[i] = patterns[i].map(AhoCorasick.lower) }
        }
        patternCount = patterns.count

        let dfa = try AhoCorasick.build(patterns, nocase: fold, tableBytes: limits.tableBytes)
        stateCount = dfa.states
        stride = dfa.stride
        table = dfa.table
        byteClass = dfa.byteClass
        outputBase = dfa.outputBase
        firstOutput = dfa.firstOutput
        perPattern = .allocate(capacity: patternCount + 1)
        perPattern.initialize(repeating: 0, count: patternCount + 1)

        var slots = 16
        while slots < 2 * flows { slots <<= 1 }
        flowSlots = slots
        flowShift = UInt32(32 - slots.trailingZeroBitCount)
    }

    deinit {
        table.deallocate()
        byteClass.deallocate()
        firstOutput.deallocate()
        perPattern.deallocate()
        flowKeys?.deallocate()
        flowValues?.deallocate()
    }

    public var arguments: String { text }

    // MARK: the data path

    public func process(_ block: inout Block) -> UInt32 {
        let hay = block.payloadBytes()
        blocks &+= 1
        let n = hay.count
        bytesScanned &+= UInt64(n)
        let flow = block.flow
        if flow == 0 {
            guard n > 0, let p = hay.baseAddress else { return 0 }
            var s: UInt32 = 0
            if AhoCorasick.scanToOutput(table, byteClass, outputBase, &s, p.assumingMemoryBound(to: UInt8.self), n) == 0 {
                return 0
            }
            return matched(s)
        }

        let marks = block.flowMarks
        let start = marks.contains(.start), end = marks.contains(.end)
        var slot = lookupFlow(flow)
        guard n > 0, let p = hay.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            // Nothing to scan: an end (or a new start) forgets the flow's state.
            if slot >= 0 && (start || end) { removeFlow(slot) }
            return 0
        }
        var s: UInt32 = 0
        if slot >= 0 {
            if !start { s = flowValues.unsafelyUnwrapped[slot] & ~AhoCorasick.referenced }
        } else if !end {
            slot = insertFlow(flow)
        }
        var cls: UInt32 = 0
        let i = AhoCorasick.scanToOutput(table, byteClass, outputBase, &s, p, n)
        if i != 0 {
            cls = matched(s)
            if i < n { AhoCorasick.scan(table, byteClass, &s, p + i, n - i) }
        }
        if end {
            if slot >= 0 { removeFlow(slot) }
        } else {
            flowValues.unsafelyUnwrapped[slot] = s | AhoCorasick.referenced
        }
        return cls
    }

    /// Counts a match at the state whose row offset is `s` and returns its class.
    @inline(__always)
    private func matched(_ s: UInt32) -> UInt32 {
        let id = firstOutput[Int(s &- outputBase) / stride]
        matchedBlocks &+= 1
        perPattern[Int(id)] &+= 1
        return id
    }

    /// Runs the automaton from state `s` over `n` bytes until it enters a state that ends a pattern. Returns the number
    /// of bytes consumed up to and including the one that entered it (`s` is that state), or 0 if none did (`s` is the
    /// state after the last byte).
    @inline(__always)
    static func scanToOutput(_ t: UnsafeMutablePointer<UInt32>, _ c: UnsafeMutablePointer<UInt32>, _ outputBase: UInt32,
                             _ s: inout UInt32, _ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var st = s
        var i = 0
        while i < n {
            st = t[Int(st &+ c[Int(p[i])])]
            i &+= 1
            if st >= outputBase {
                s = st
                return i
            }
        }
        s = st
        return 0
    }

    /// Runs the automaton from state `s` over `n` bytes, not looking for matches (the rest of a flow's block).
    @inline(__always)
    static func scan(_ t: UnsafeMutablePointer<UInt32>, _ c: UnsafeMutablePointer<UInt32>, _ s: inout UInt32,
                     _ p: UnsafePointer<UInt8>, _ n: Int) {
        var st = s
        var i = 0
        while i < n {
            st = t[Int(st &+ c[Int(p[i])])]
            i &+= 1
        }
        s = st
    }

    // MARK: the flow table

    @inline(__always)
    private func home(_ flow: UInt32) -> Int { Int((flow &* 0x9E37_79B1) >> flowShift) }

    /// The slot holding `flow`, or -1.
    @inline(__always)
    private func lookupFlow(_ flow: UInt32) -> Int {
        guard let keys = flowKeys else { return -1 }
        let mask = flowSlots - 1
        var i = home(flow)
        while true {
            let k = keys[i]
            if k == flow { return i }
            if k == 0 { return -1 }
            i = (i + 1) & mask
        }
    }

    /// Adds `flow` (not in the table) in the start state, evicting one if the table is full; returns its slot.
    private func insertFlow(_ flow: UInt32) -> Int {
        if flowKeys == nil {
            let k = UnsafeMutablePointer<UInt32>.allocate(capacity: flowSlots)
            k.initialize(repeating: 0, count: flowSlots)
            let v = UnsafeMutablePointer<UInt32>.allocate(capacity: flowSlots)
            v.initialize(repeating: 0, count: flowSlots)
            flowKeys = k
            flowValues = v
        }
        if flowCount >= flowLimit { evictFlow() }
        let keys = flowKeys.unsafelyUnwrapped
        let mask = flowSlots - 1
        var i = home(flow)
        while keys[i] != 0 { i = (i + 1) & mask }
        keys[i] = flow
        flowValues.unsafelyUnwrapped[i] = AhoCorasick.referenced
        flowCount += 1
        flowsTotal &+= 1
        return i
    }

    /// Evicts the first flow the clock hand finds not used since its last pass.
    private func evictFlow() {
        let keys = flowKeys.unsafelyUnwrapped, values = flowValues.unsafelyUnwrapped
        let mask = flowSlots - 1
        while true {
            let i = clockHand
            clockHand = (clockHand + 1) & mask
            guard keys[i] != 0 else { continue }
            if values[i] & AhoCorasick.referenced != 0 {
                values[i] &= ~AhoCorasick.referenced
            } else {
                removeFlow(i)
                flowEvictions &+= 1
                return
            }
        }
    }

    /// Empties a slot, moving later entries of its probe run back so that every entry stays reachable from its home.
    private func removeFlow(_ slot: Int) {
        let keys = flowKeys.unsafelyUnwrapped, values = flowValues.unsafelyUnwrapped
        let mask = flowSlots - 1
        var hole = slot
        var j = slot
        while true {
            j = (j + 1) & mask
            let k = keys[j]
            if k == 0 { break }
            // The entry at j may move into the hole unless its home lies cyclically in (hole, j].
            let h = home(k)
            let stays = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j)
            if !stays {
                keys[hole] = k
                values[hole] = values[j]
                hole = j
            }
        }
        keys[hole] = 0
        values[hole] = 0
        flowCount -= 1
    }

    // MARK: statistics

    public func statistics() -> [(String, String)] {
        var top: [(UInt32, UInt64)] = []
        for id in 1...patternCount where perPattern[id] > 0 {
            top.append((UInt32(id), perPattern[id]))
        }
        top.sort { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
        let topText = top.isEmpty ? "none" : top.prefix(10).map { "\($0.0):\($0.1)" }.joined(separator: " ")
        return [("ac_patterns", "\(patternCount)"), ("ac_states", "\(stateCount)"), ("ac_byte_classes", "\(stride)"),
                ("ac_table_bytes", "\(stateCount * stride * 4)"), ("ac_nocase", nocase ? "yes" : "no"),
                ("ac_blocks", "\(blocks)"), ("ac_bytes_scanned", "\(bytesScanned)"), ("ac_matches", "\(matchedBlocks)"),
                ("ac_matches_top", topText), ("ac_flows_tracked", "\(flowCount)"), ("ac_flows_max", "\(flowLimit)"),
                ("ac_flows_total", "\(flowsTotal)"), ("ac_flow_evictions", "\(flowEvictions)")]
    }

    /// Blocks classified as pattern `id` (1-based) so far.
    public func matches(ofPattern id: Int) -> UInt64 { id >= 1 && id <= patternCount ? perPattern[id] : 0 }

    // MARK: arguments

    @inline(__always)
    static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

    /// `PAT1,PAT2,...` with escapes.
    static func parseList(_ spec: Substring, limit: Int) throws(FilterError) -> [[UInt8]] {
        if spec.isEmpty { throw FilterError("ac: needs patterns, as in ac=GET,POST or ac=@FILE") }
        var out: [[UInt8]] = []
        var current: [UInt8] = []
        var it = Array(spec.utf8)[...]
        func finish() throws(FilterError) {
            if current.isEmpty {
                throw FilterError("ac: pattern \(out.count + 1) is empty (write a comma in a pattern as \\,)")
            }
            if out.count == limit { throw FilterError("ac: too many patterns (at most \(limit))") }
            out.append(current)
            current = []
        }
        while let c = it.popFirst() {
            if c == UInt8(ascii: ",") {
                try finish()
            } else if c == UInt8(ascii: "\\") {
                current.append(try decodeEscape(&it, comma: true, where: "pattern \(out.count + 1)"))
            } else {
                current.append(c)
            }
        }
        try finish()
        return out
    }

    /// One pattern per line; empty lines are skipped.
    static func readPatternFile(_ path: String, limit: Int) throws(FilterError) -> [[UInt8]] {
        if path.isEmpty { throw FilterError("ac: '@' needs a file name, as in ac=@sigs.txt") }
        let bytes = try readFile(path)
        var out: [[UInt8]] = []
        var line = 0
        var start = 0
        while start < bytes.count {
            line += 1
            var end = start
            while end < bytes.count && bytes[end] != 10 { end += 1 }
            var last = end
            if last > start && bytes[last - 1] == 13 { last -= 1 }
            if last > start {
                if out.count == limit {
                    throw FilterError("ac: too many patterns in '\(path)' (at most \(limit))")
                }
                var it = bytes[start..<last]
                var p: [UInt8] = []
                while let c = it.popFirst() {
                    p.append(c == UInt8(ascii: "\\") ? try decodeEscape(&it, comma: true, where: "'\(path)' line \(line)") : c)
                }
                out.append(p)
            }
            start = end + 1
        }
        if out.isEmpty { throw FilterError("ac: no patterns in '\(path)' (every line is empty)") }
        return out
    }

    static func readFile(_ path: String) throws(FilterError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            throw FilterError("ac: cannot read '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 {
            let e = errno
            throw FilterError("ac: cannot read '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            throw FilterError("ac: cannot read '\(path)': \(String(cString: strerror(EISDIR)))", errno: EISDIR)
        }
        if (st.st_mode & S_IFMT) != S_IFREG {
            throw FilterError("ac: '\(path)' is not a regular file")
        }
        if Int(st.st_size) > maxFileBytes {
            throw FilterError("ac: '\(path)' is larger than \(maxFileBytes >> 20) MiB", errno: EFBIG)
        }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < out.count {
            let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                throw FilterError("ac: cannot read '\(path)': \(String(cString: strerror(e)))", errno: e)
            }
            if r == 0 { break }
            got += r
        }
        out.removeSubrange(got...)
        return out
    }

    @inline(__always)
    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// The byte an escape stands for; `it` is just past the backslash.
    static func decodeEscape(_ it: inout ArraySlice<UInt8>, comma: Bool, where place: String) throws(FilterError) -> UInt8 {
        guard let e = it.popFirst() else { throw FilterError("ac: \(place): trailing backslash") }
        switch e {
        case UInt8(ascii: "n"): return 10
        case UInt8(ascii: "r"): return 13
        case UInt8(ascii: "t"): return 9
        case UInt8(ascii: "\\"): return 92
        case UInt8(ascii: ","): return 44
        case UInt8(ascii: "x"):
            guard it.count >= 2, let hi = hexValue(it[it.startIndex]), let lo = hexValue(it[it.startIndex + 1]) else {
                throw FilterError("ac: \(place): bad \\x escape (want two hex digits)")
            }
            it = it.dropFirst(2)
            return hi << 4 | lo
        default:
            throw FilterError("ac: \(place): unknown escape '\\\(Character(UnicodeScalar(e)))'")
        }
    }

    /// `256 MiB`, `64 KiB`, `100 bytes`.
    static func sizeText(_ n: Int) -> String {
        n >= 1 << 20 && n % (1 << 20) == 0 ? "\(n >> 20) MiB" : n >= 1 << 10 && n % (1 << 10) == 0 ? "\(n >> 10) KiB" : "\(n) bytes"
    }

    // MARK: building the automaton

    struct DFA {
        var states: Int
        var stride: Int
        var table: UnsafeMutablePointer<UInt32>
        var byteClass: UnsafeMutablePointer<UInt32>
        var outputBase: UInt32
        var firstOutput: UnsafeMutablePointer<UInt32>
    }

    /// The trie of the patterns, completed into a DFA by the failure links (breadth first), its states renumbered so
    /// that those ending a pattern come last.
    static func build(_ patterns: [[UInt8]], nocase: Bool, tableBytes: Int) throws(FilterError) -> DFA {
        // Byte classes: one per byte that occurs in a pattern, 0 for the rest.
        var cls = [UInt32](repeating: 0, count: 256)
        var k: UInt32 = 1
        for p in patterns {
            for b in p where cls[Int(b)] == 0 {
                cls[Int(b)] = k
                k += 1
            }
        }
        if nocase {
            for b in UInt8(ascii: "A")...UInt8(ascii: "Z") { cls[Int(b)] = cls[Int(b | 0x20)] }
        }
        let stride = Int(k)
        let maxStates = max(1, tableBytes / (4 * stride))
        func tooLarge() -> FilterError {
            FilterError("ac: the automaton is too large: \(patterns.count) patterns need more than \(maxStates) states of "
                        + "\(stride) byte classes (a table of at most \(AhoCorasick.sizeText(tableBytes))); use fewer or shorter patterns")
        }

        // The trie, in rows of the table to be (unset: none).
        let unset = UInt32.max
        var g = [UInt32](repeating: unset, count: stride)
        var own = [UInt32](repeating: 0, count: 1)  // the lowest pattern number ending at the state, 0: none
        var states = 1
        for (id, p) in patterns.enumerated() {
            var s = 0
            for b in p {
                let at = s * stride + Int(cls[Int(b)])
                var next = g[at]
                if next == unset {
                    if states == maxStates { throw tooLarge() }
                    next = UInt32(states)
                    states += 1
                    g.append(contentsOf: repeatElement(unset, count: stride))
                    own.append(0)
                    g[at] = next
                }
                s = Int(next)
            }
            if own[s] == 0 { own[s] = UInt32(id + 1) }
        }

        // Failure links breadth first; a missing transition is the failure state's. A state's output is its own
        // pattern and its failure state's (the longest proper suffix that is a trie state): keep the lowest number.
        var fail = [UInt32](repeating: 0, count: states)
        var out = own
        var queue = [UInt32]()
        queue.reserveCapacity(states)
        for c in 0..<stride {
            if g[c] == unset { g[c] = 0 } else { queue.append(g[c]) }
        }
        var head = 0
        while head < queue.count {
            let s = Int(queue[head])
            head += 1
            let f = Int(fail[s])
            let fo = out[f]
            if fo != 0 && (out[s] == 0 || fo < out[s]) { out[s] = fo }
            for c in 0..<stride {
                let next = g[s * stride + c]
                if next == unset {
                    g[s * stride + c] = g[f * stride + c]
                } else {
                    fail[Int(next)] = g[f * stride + c]
                    queue.append(next)
                }
            }
        }

        // Renumber: states with no output first (the root stays 0), then those with one; each group breadth first, so
        // the shallow states, where a scan spends most of its bytes, lie together.
        var number = [UInt32](repeating: 0, count: states)
        var plain = 1
        for s in queue where out[Int(s)] == 0 {
            number[Int(s)] = UInt32(plain)
            plain += 1
        }
        var withOutput = plain
        for s in queue where out[Int(s)] != 0 {
            number[Int(s)] = UInt32(withOutput)
            withOutput += 1
        }
        let table = UnsafeMutablePointer<UInt32>.allocate(capacity: states * stride)
        let firstOutput = UnsafeMutablePointer<UInt32>.allocate(capacity: max(1, states - plain))
        for s in 0..<states {
            let row = table + Int(number[s]) * stride
            let from = s * stride
            for c in 0..<stride { row[c] = number[Int(g[from + c])] * UInt32(stride) }
            if out[s] != 0 { firstOutput[Int(number[s]) - plain] = out[s] }
        }
        let byteClass = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
        for b in 0..<256 { byteClass[b] = cls[b] }
        return DFA(states: states, stride: stride, table: table, byteClass: byteClass,
                   outputBase: UInt32(plain * stride), firstOutput: firstOutput)
    }

    public static let descriptor = FilterDescriptor(
        name: "ac", summary: "multi-pattern matching (Aho-Corasick): the class is the number of the pattern found",
        usage: "ac=PAT1,PAT2,... | ac=@FILE [nocase] [flows=N] (escapes: \\n \\r \\t \\\\ \\xHH \\,)",
        structuralClass: .filtering, classifying: true
    ) { a throws(FilterError) in try AhoCorasick(a) }
}
