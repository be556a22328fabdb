#if canImport(Glibc)
import Glibc
#endif
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

/// Runs one `.user` block of a flow through a filter.
@discardableResult
private func scan(_ f: any Filter, _ text: String, flow: UInt32 = 0, marks: FlowMarks = []) -> UInt32 {
    scan(f, Array(text.utf8), flow: flow, marks: marks)
}

@discardableResult
private func scan(_ f: any Filter, _ bytes: [UInt8], flow: UInt32 = 0, marks: FlowMarks = []) -> UInt32 {
    bytes.withUnsafeBytes { raw in
        var b = Block(bytes: raw, linkType: .user)
        b.flow = flow
        b.flowMarks = marks
        return f.process(&b)
    }
}

private func stats(_ f: any Filter) -> [String: String] { Dictionary(uniqueKeysWithValues: f.statistics()) }

/// What `ac` must answer for a block, by brute force: of the pattern occurrences in `history + block` that end inside
/// `block`, the one that ends first, ties to the lowest number (1-based); 0 if none.
private func naiveClass(_ patterns: [[UInt8]], history: [UInt8], block: [UInt8], nocase: Bool) -> UInt32 {
    let fold: (UInt8) -> UInt8 = { nocase && $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }
    let text = (history + block).map(fold)
    for end in (history.count + 1)...max(history.count + 1, text.count) where end <= text.count {
        for (i, p) in patterns.enumerated() where p.count <= end {
            if zip(text[(end - p.count)..<end], p.map(fold)).allSatisfy({ $0 == $1 }) { return UInt32(i + 1) }
        }
    }
    return 0
}

@Suite("ac")
struct AhoCorasickTests {
    @Test("a match at the start, in the middle and at the end of a block; none in a block without one")
    func positions() throws {
        let f = try make("ac", "GET,POST")
        #expect(scan(f, "GET / HTTP/1.1") == 1)
        #expect(scan(f, "xx POST yy") == 2)
        #expect(scan(f, "a request: POST") == 2, "at the very end")
        #expect(scan(f, "PUT / HTTP/1.1") == 0)
        #expect(scan(f, "GE") == 0, "shorter than the pattern")
        #expect(scan(f, "") == 0, "empty")
        #expect(scan(f, "get post") == 0, "case matters")
        #expect(scan(f, "PGET") == 1 && scan(f, "GGGET") == 1 && scan(f, "POPOST") == 2, "a partial match followed by the real one")
    }

    @Test("he, she, his, hers: overlapping patterns; the match ending first wins, ties to the lowest number")
    func overlapping() throws {
        let f = try make("ac", "he,she,his,hers")
        #expect(scan(f, "ushers") == 1, "she and he end at the same byte: he is pattern 1")
        #expect(scan(f, "hishe") == 3, "his ends before she")
        #expect(scan(f, "hers") == 1, "he ends before hers")
        #expect(scan(f, "sh") == 0 && scan(f, "hi") == 0)
        let g = try make("ac", "hers,his,she,he")
        #expect(scan(g, "ushers") == 3, "she (3) and he (4) end at the same byte: the lower number")
        #expect(scan(g, "hers") == 4, "he ends first, although hers has the lower number")
        #expect(scan(g, "xhis") == 2)
        // The automaton of the four: root, h, he, her, hers, hi, his, s, sh, she.
        #expect(stats(g)["ac_states"] == "10")
        #expect(stats(g)["ac_byte_classes"] == "6", "h e r s i, and one class for every other byte")
    }

    @Test("a suffix of a longer pattern is found inside it (output through the failure links)")
    func suffixOutputs() throws {
        let f = try make("ac", "abcd,bc")
        #expect(scan(f, "abcd") == 2, "bc ends inside abcd")
        #expect(scan(f, "xabx") == 0)
        let g = try make("ac", "aab,ab,b")
        #expect(scan(g, "aaab") == 1, "three end at the same byte: the lowest number")
        #expect(scan(g, "cab") == 2)
        #expect(scan(g, "cb") == 3)
    }

    @Test("nocase: ASCII letters in either case, nothing else folded")
    func nocase() throws {
        let f = try make("ac", "GeT,x\\x5b nocase")
        #expect(scan(f, "get /") == 1 && scan(f, "GET /") == 1 && scan(f, "gEt /") == 1)
        #expect(scan(f, "X[") == 2)
        #expect(scan(f, "x{") == 0, "[ and { differ by the case bit but are not letters")
        let g = try make("ac", "\\xc9")
        #expect(scan(g, [0xE9]) == 0, "no folding beyond ASCII")
        let h = try make("ac", "GeT")
        #expect(scan(h, "get") == 0 && scan(h, "GeT") == 1, "without nocase, case matters")
        #expect(stats(f)["ac_nocase"] == "yes" && stats(h)["ac_nocase"] == "no")
        #expect(f.arguments == "GeT,x\\x5b nocase")
    }

    @Test("binary patterns: escapes, NUL and 0xff bytes, every byte value")
    func binary() throws {
        let f = try make("ac", "\\x00\\xff,\\x00\\x00\\x01,\\r\\n\\r\\n,a\\tb,a\\\\b,a\\,b")
        #expect(scan(f, [1, 0, 0xFF, 2]) == 1)
        #expect(scan(f, [0, 0, 0, 1]) == 2)
        #expect(scan(f, Array("HTTP/1.1 200 OK\r\n\r\nbody".utf8)) == 3)
        #expect(scan(f, "a\tb") == 4 && scan(f, "a\\b") == 5 && scan(f, "a,b") == 6)
        #expect(scan(f, "a\\tb") == 0, "escapes are decoded")
        let all = (0...255).map { UInt8($0) }
        var spec = ""
        for b in all { spec += (spec.isEmpty ? "" : ",") + "\\x" + String(b, radix: 16).uppercased().leftPadded(2) }
        let g = try make("ac", spec)
        #expect(stats(g)["ac_byte_classes"] == "257")
        for b in all { #expect(scan(g, [b]) == UInt32(b) + 1) }
    }

    @Test("packets: the transport payload is searched, not the headers")
    func packets() throws {
        let f = try make("ac", "\\x0a\\x00\\x00\\x01,GET")
        #expect(classify(f, Pkt.ethTCP4(Array("payload".utf8))) == 0, "10.0.0.1 in the IP header is not searched")
        #expect(classify(f, Pkt.ethTCP4([0x0A, 0x00, 0x00, 0x01])) == 1)
        #expect(classify(f, Pkt.ethUDP6(Array("a GET b".utf8))) == 2)
        #expect(classify(f, Pkt.ethTCP4()) == 0, "no payload")
        #expect(classify(f, Pkt.ethARP()) == 0)
    }

    @Test("the class is the pattern's, not the one received")
    func classReplaced() throws {
        let f = try make("ac", "a,b")
        #expect(classify(f, Array("b".utf8), .user, classValue: 443) == 2)
        #expect(FilterLibrary.byName["ac"]?.classifying == true, "class directories (|2) apply below it")
    }

    @Test("a pattern split over blocks of one flow matches in the block where it ends, at every split point")
    func acrossBlocks() throws {
        let pattern = Array("Content-Type: evil".utf8)
        for cut in 1..<pattern.count {
            let f = try make("ac", "zzz,Content-Type: evil")
            #expect(scan(f, Array("hello ".utf8) + pattern[..<cut], flow: 6, marks: .start) == 0)
            #expect(scan(f, Array(pattern[cut...]) + Array(" bye".utf8), flow: 6) == 2, "cut at \(cut)")
            #expect(scan(f, "more", flow: 6) == 0, "a match is reported once, where it ends")
        }
        // Three blocks of one byte each, and empty blocks between them that change nothing.
        let f = try make("ac", "GET")
        #expect(scan(f, "G", flow: 2) == 0)
        #expect(scan(f, "", flow: 2) == 0)
        #expect(scan(f, "E", flow: 2) == 0)
        #expect(scan(f, "T", flow: 2) == 1)
        // Without a flow tag each block stands alone.
        #expect(scan(f, "GE") == 0)
        #expect(scan(f, "T") == 0)
        let s = stats(f)
        #expect(s["ac_flows_tracked"] == "1" && s["ac_flows_total"] == "1")
        #expect(s["ac_bytes_scanned"] == "6" && s["ac_blocks"] == "6" && s["ac_matches"] == "1")
    }

    @Test("a match found early in a block still leaves the state at the block's end for the next block")
    func stateAfterMatch() throws {
        let f = try make("ac", "a,xyz")
        #expect(scan(f, "a....xy", flow: 4) == 1)
        #expect(scan(f, "z", flow: 4) == 2)
    }

    @Test("an end mark forgets the flow's state; a start mark starts from nothing")
    func marks() throws {
        let f = try make("ac", "GET")
        #expect(scan(f, "GE", flow: 2) == 0)
        #expect(scan(f, "", flow: 2, marks: .end) == 0, "the empty end block")
        #expect(stats(f)["ac_flows_tracked"] == "0")
        #expect(scan(f, "T", flow: 2) == 0, "the state did not survive the end")

        #expect(scan(f, "xGE", flow: 8, marks: .end) == 0, "bytes and end in one block")
        #expect(scan(f, "T", flow: 8) == 0)

        #expect(scan(f, "G", flow: 10) == 0)
        #expect(scan(f, "ET", flow: 10, marks: .start) == 0, "a start mark: a new flow on a reused tag")
        #expect(scan(f, "xxG", flow: 12) == 0)
        #expect(scan(f, "ET", flow: 12, marks: .end) == 1, "the last block still matches with the state before it")
        #expect(scan(f, "GET", flow: 14, marks: [.start, .end]) == 1)
        #expect(scan(f, "", flow: 99, marks: .end) == 0, "the end of a flow never seen")
        let s = stats(f)
        #expect(s["ac_flows_tracked"] == "3", "flows 2 and 8 (their T) and 10 remain")
    }

    @Test("two interleaved flows, each carrying half of a pattern, do not match across each other")
    func interleavedFlows() throws {
        let f = try make("ac", "attack")
        #expect(scan(f, "xx att", flow: 2) == 0)
        #expect(scan(f, "ack yy", flow: 3) == 0, "the other flow's half")
        #expect(scan(f, "xx at", flow: 3) == 0)
        #expect(scan(f, "tack", flow: 5) == 0)
        #expect(scan(f, "ack", flow: 2) == 1, "flow 2's own continuation")
        #expect(scan(f, "tack", flow: 3) == 1, "flow 3's own continuation")
        #expect(scan(f, "ack", flow: 0) == 0 && scan(f, "tack", flow: 0) == 0, "untagged blocks share no state")
        #expect(stats(f)["ac_flows_tracked"] == "3")
    }

    @Test("the flow table is bounded: past flows=N an idle flow is evicted and counted")
    func eviction() throws {
        let f = try make("ac", "GET flows=2")
        #expect(scan(f, "GE", flow: 2) == 0)
        #expect(scan(f, "GE", flow: 4) == 0)
        #expect(scan(f, "GE", flow: 6) == 0, "a third flow: one of the first two goes")
        var s = stats(f)
        #expect(s["ac_flows_tracked"] == "2" && s["ac_flow_evictions"] == "1" && s["ac_flows_max"] == "2")
        #expect(scan(f, "T", flow: 6) == 1, "the newest flow kept its state")
        // Many flows through a small table: it stays bounded, the survivors keep working.
        let g = try make("ac", "GET flows=100")
        for tag in 1...5000 { scan(g, "G", flow: UInt32(tag)) }
        s = stats(g)
        #expect(s["ac_flows_tracked"] == "100" && s["ac_flow_evictions"] == "4900" && s["ac_flows_total"] == "5000")
        #expect(scan(g, "ET", flow: 5000) == 1, "the last flow seen is never the one evicted")
        for tag in 1...5000 { scan(g, "", flow: UInt32(tag), marks: .end) }
        #expect(stats(g)["ac_flows_tracked"] == "0", "ends empty the table")
    }

    @Test("the flow table finds every flow after removals in the middle of probe runs")
    func flowTableRemovals() throws {
        var rng = SplitMix(seed: 7)
        let f = try make("ac", "xy flows=64")  // 128 slots: up to half full, runs that collide and wrap around
        let tags = (0..<100).map { _ in UInt32(truncatingIfNeeded: rng.next()) | 1 }
        var live: Set<UInt32> = []
        for _ in 0..<50_000 {
            let tag = tags[rng.below(tags.count)]
            if rng.below(3) == 0 {
                scan(f, "", flow: tag, marks: .end)
                live.remove(tag)
            } else if live.contains(tag) || live.count < 64 {
                // A live flow ends in "x" (after its first block): "y" must complete the match.
                if live.contains(tag) { #expect(scan(f, "yx", flow: tag) == 1, "flow \(tag) lost its state") } else { scan(f, "x", flow: tag) }
                live.insert(tag)
            }
        }
        #expect(stats(f)["ac_flows_tracked"] == "\(live.count)")
        #expect(stats(f)["ac_flow_evictions"] == "0")
    }

    @Test("patterns from a file: one a line, escapes, CRLF, empty lines skipped")
    func patternFile() throws {
        let path = temporaryPath("ac-patterns.txt")
        defer { unlink(path) }
        try writeFile(path, "GET\n\nx\\ty\r\na,b\n\\x00\\x01\n\r\nPOST")
        let f = try make("ac", "@" + path)
        #expect(stats(f)["ac_patterns"] == "5")
        #expect(scan(f, "GET") == 1 && scan(f, "x\ty") == 2 && scan(f, "a,b") == 3 && scan(f, [0, 1]) == 4 && scan(f, "POST") == 5)
        #expect(scan(f, "x\ty\r") == 2, "the CR at the end of a line is not part of it")
        let g = try make("ac", "@\(path) nocase")
        #expect(scan(g, "post") == 5)
        #expect(g.arguments == "@\(path) nocase")

        try writeFile(path, "ok\nbad\\q\n")
        #expect(makeError("ac", "@" + path)?.message == "ac: '\(path)' line 2: unknown escape '\\q'")
        try writeFile(path, "\n\n\r\n")
        #expect(makeError("ac", "@" + path)?.message == "ac: no patterns in '\(path)' (every line is empty)")
        try writeFile(path, String(repeating: "abc\n", count: 100_001))
        #expect(makeError("ac", "@" + path)?.message == "ac: too many patterns in '\(path)' (at most 100000)")
    }

    @Test("bad arguments are refused with a precise reason", arguments: [
        ("", "ac: needs patterns, as in ac=GET,POST or ac=@FILE"),
        (" nocase", "ac: needs patterns, as in ac=GET,POST or ac=@FILE"),
        ("a,,b", "ac: pattern 2 is empty (write a comma in a pattern as \\,)"),
        (",a", "ac: pattern 1 is empty (write a comma in a pattern as \\,)"),
        ("a,b,", "ac: pattern 3 is empty (write a comma in a pattern as \\,)"),
        ("a,b\\q", "ac: pattern 2: unknown escape '\\q'"),
        ("abc\\", "ac: pattern 1: trailing backslash"),
        ("\\xZZ", "ac: pattern 1: bad \\x escape (want two hex digits)"),
        ("a,\\x4", "ac: pattern 2: bad \\x escape (want two hex digits)"),
        ("\\x+1", "ac: pattern 1: bad \\x escape (want two hex digits)"),
        ("a flows=0", "ac: flows wants a number from 1 to 1048576, got '0'"),
        ("a flows=many", "ac: flows wants a number from 1 to 1048576, got 'many'"),
        ("a flows=1048577", "ac: flows wants a number from 1 to 1048576, got '1048577'"),
        ("@", "ac: '@' needs a file name, as in ac=@sigs.txt"),
        ("@ nocase", "ac: '@' needs a file name, as in ac=@sigs.txt"),
    ])
    func errors(text: String, message: String) {
        let e = makeError("ac", text)
        #expect(e?.message == message, "'\(text)'")
        #expect(e?.errno == EINVAL)
    }

    @Test("an unreadable pattern file is refused with its errno")
    func unreadableFile() {
        var e = makeError("ac", "@/nonexistent-pipesfs/sigs.txt")
        #expect(e?.message == "ac: cannot read '/nonexistent-pipesfs/sigs.txt': No such file or directory")
        #expect(e?.errno == ENOENT)
        e = makeError("ac", "@/tmp")
        #expect(e?.message == "ac: cannot read '/tmp': Is a directory")
        #expect(e?.errno == EISDIR)
        e = makeError("ac", "@/dev/null")
        #expect(e?.message == "ac: '/dev/null' is not a regular file")
    }

    @Test("at most 100000 patterns; an automaton past its table limit is refused")
    func limits() throws {
        #expect(makeError("ac", Array(repeating: "a", count: 100_001).joined(separator: ","))?.message
                == "ac: too many patterns (at most 100000)")
        let f = try make("ac", Array(repeating: "a", count: 100_000).joined(separator: ","))
        #expect(stats(f)["ac_patterns"] == "100000" && stats(f)["ac_states"] == "2")
        // 3 patterns, 4 byte classes (a b c, others): 64 bytes hold 4 states of 16 bytes, and "abc,cab,bca" needs 10.
        var limits = AhoCorasick.Limits()
        limits.tableBytes = 64
        #expect(throws: FilterError("ac: the automaton is too large: 3 patterns need more than 4 states of 4 byte classes (a table of at most 64 bytes); use fewer or shorter patterns")) {
            try AhoCorasick("abc,cab,bca", limits: limits)
        }
        limits.tableBytes = 10 * 16
        #expect(scan(try AhoCorasick("abc,cab,bca", limits: limits), "xbca") == 3, "exactly at the limit")
        limits.patterns = 2
        #expect(throws: FilterError("ac: too many patterns (at most 2)")) { try AhoCorasick("abc,cab,bca", limits: limits) }
    }

    @Test("statistics: patterns, states, bytes, matches in total and per pattern")
    func statistics() throws {
        let f = try make("ac", "a,b,c")
        for _ in 0..<3 { scan(f, "xxb") }
        scan(f, "c")
        scan(f, "zz")
        let s = stats(f)
        #expect(s["ac_patterns"] == "3" && s["ac_states"] == "4")
        #expect(s["ac_table_bytes"] == "\(4 * 4 * 4)")
        #expect(s["ac_blocks"] == "5" && s["ac_bytes_scanned"] == "12")
        #expect(s["ac_matches"] == "4")
        #expect(s["ac_matches_top"] == "2:3 3:1")
        #expect((f as? AhoCorasick)?.matches(ofPattern: 2) == 3)
        #expect(stats(try make("ac", "q"))["ac_matches_top"] == "none")
    }

    @Test("arguments: what it shows makes the same filter again")
    func argumentsRoundTrip() throws {
        let f = try make("ac", "b\\x61r,a\\,b flows=10 nocase")
        let again = try make("ac", f.arguments)
        #expect(scan(again, "BAR") == 1 && scan(again, "A,B") == 2)
        #expect(stats(again)["ac_flows_max"] == "10")
        #expect(scan(try make("ac", "nocase"), "nocase") == 1, "a lone word is a pattern, not an option")
        #expect(scan(try make("ac", "a\\x20nocase"), "a nocase") == 1, "an escaped blank keeps the word in the pattern")
    }

    @Test("random patterns and flows: every block's class is what a brute-force search over its flow gives",
          arguments: [UInt64(1), 2, 3, 4, 5, 6, 7, 8])
    func randomized(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        let nocase = seed % 2 == 0
        // A small alphabet, so that patterns overlap and occur often; seeds 1-4 few short patterns, 5-8 many.
        let alphabet: [UInt8] = Array("abcAB".utf8) + [0, 0xFF, 0x2C, 0x5C]
        let many = seed > 4
        let count = many ? 200 + rng.below(300) : 2 + rng.below(10)
        var patterns: [[UInt8]] = []
        for i in 0..<count {
            // One short pattern somewhere, so that blocks match often.
            let length = i == count / 2 ? 2 : 1 + rng.below(many ? 9 : 5)
            patterns.append((0..<length).map { _ in alphabet[rng.below(alphabet.count)] })
        }
        let spec = patterns.map { p in p.map { "\\x" + String($0, radix: 16).leftPadded(2) }.joined() }.joined(separator: ",")
        let f = try make("ac", spec + (nocase ? " nocase" : ""))
        var history: [UInt32: [UInt8]] = [:]
        var matches = 0
        for step in 0..<3000 {
            let flow = UInt32(rng.below(5))  // 0: untagged
            var marks: FlowMarks = []
            if flow != 0 && rng.below(40) == 0 { marks.insert(.start) }
            if flow != 0 && rng.below(40) == 0 { marks.insert(.end) }
            let block = (0..<rng.below(14)).map { _ in alphabet[rng.below(alphabet.count)] }
            let before = marks.contains(.start) || flow == 0 ? [] : history[flow, default: []]
            let expected = naiveClass(patterns, history: before, block: block, nocase: nocase)
            let got = scan(f, block, flow: flow, marks: marks)
            #expect(got == expected, "seed \(seed) step \(step) flow \(flow): \(block) after \(before.suffix(12))")
            if got != expected { return }
            if got != 0 { matches += 1 }
            if flow != 0 { history[flow] = marks.contains(.end) ? [] : Array((before + block).suffix(16)) }
        }
        #expect(matches > 100, "the test should exercise matches (got \(matches))")
    }

    @Test("below untcp: a pattern split over two TCP segments matches in the second block of its direction only")
    func belowUnTCP() throws {
        let untcp = try #require(try FilterLibrary.byName["untcp"]!.make("") as? UnTCP)
        let ac = try make("ac", "evil.exe,HTTP/1.1 500")
        var classes: [(UInt32, FlowMarks, UInt32)] = []
        untcp.unboundOutput = { b in
            var copy = b
            classes.append((copy.flow, copy.flowMarks, ac.process(&copy)))
        }
        let c = Conversation(client: 1000, server: 5000, sport: 41000)
        let r1 = Array("GET /evi".utf8), r2 = Array("l.exe HTTP/1.1\r\n\r\n".utf8)
        let s1 = Array("HTTP/1.1 5".utf8), s2 = Array("00 oops evil".utf8)
        feed(untcp, [c.syn(), c.synAck(), c.data(fromClient: true, at: 0, r1), c.data(fromClient: false, at: 0, s1),
                     c.data(fromClient: true, at: r1.count, r2), c.data(fromClient: false, at: s1.count, s2),
                     c.fin(fromClient: true, at: r1.count + r2.count), c.fin(fromClient: false, at: s1.count + s2.count)])
        let got = classes.map { $0.2 }
        #expect(got == [0, 0, 1, 2, 0, 0], "\(classes)")
        #expect(classes[2].0 != classes[3].0, "two directions, two flows")
        #expect(stats(ac)["ac_flows_tracked"] == "0", "both directions ended")
    }
}

private extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

private func writeFile(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    try #require(fd >= 0)
    defer { close(fd) }
    var t = text
    let n = t.withUTF8 { write(fd, $0.baseAddress, $0.count) }
    try #require(n == text.utf8.count)
}
