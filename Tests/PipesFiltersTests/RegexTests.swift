import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("regex")
struct RegexTests {
    @Test("matches the transport payload, not the headers")
    func payload() throws {
        let f = try make("regex", "GET /[a-z]+\\.html")
        #expect(classify(f, Pkt.ethTCP4(Array("GET /index.html HTTP/1.1".utf8))) == 1)
        #expect(classify(f, Pkt.ethUDP6(Array("xx GET /a.html".utf8))) == 1)
        #expect(classify(f, Pkt.ethTCP4(Array("GET /index.htm".utf8))) == 0)
        #expect(classify(f, Pkt.ethTCP4(Array("GET /INDEX.html".utf8))) == 0, "case matters")
        #expect(classify(try make("regex", "(?i)get /index"), Pkt.ethTCP4(Array("GET /INDEX.html".utf8))) == 1,
                "unless the pattern says (?i)")
        // 10.0.0.1 is in every IPv4 header here, port 80 (0x0050) in the TCP header.
        let h = try make("regex", "\\x0a\\x00\\x00\\x01|\\x00\\x50")
        #expect(classify(h, Pkt.ethTCP4(Array("payload".utf8))) == 0)
        #expect(classify(h, Pkt.ethTCP4([0x00, 0x50])) == 1)
    }

    @Test("anchors are the payload's start and end; $ before a final newline, \\z only at the end")
    func anchors() throws {
        let start = try make("regex", "^GET ")
        #expect(classify(start, Pkt.ethTCP4(Array("GET / HTTP/1.1".utf8))) == 1)
        #expect(classify(start, Pkt.ethTCP4(Array(" GET / HTTP/1.1".utf8))) == 0)
        #expect(classify(start, Array("GET /".utf8), .user) == 1)
        #expect(classify(start, Array("x\nGET /".utf8), .user) == 0, "^ is not after a newline without (?m)")
        #expect(classify(try make("regex", "(?m)^GET "), Array("x\nGET /".utf8), .user) == 1)
        let end = try make("regex", "\\r\\n\\r\\n$")
        #expect(classify(end, Pkt.ethTCP4(Array("HTTP/1.1 200 OK\r\n\r\n".utf8))) == 1)
        #expect(classify(end, Pkt.ethTCP4(Array("HTTP/1.1 200 OK\r\n\r\nbody".utf8))) == 0)
        // Ethernet padding is not payload: a short frame padded to 60 bytes still ends where its datagram ends.
        let padded = Pkt.ethTCP4(Array("ok\r\n\r\n".utf8)) + [UInt8](repeating: 0, count: 6)
        #expect(classify(end, padded) == 1)
        let whole = try make("regex", "^abc\\z")
        #expect(classify(whole, Array("abc".utf8), .user) == 1)
        #expect(classify(whole, Array("abc\n".utf8), .user) == 0)
        #expect(classify(whole, Array("xabc".utf8), .user) == 0)
    }

    @Test("binary bytes: NUL and high bytes match byte for byte (no UTF-8 mode)")
    func binary() throws {
        let f = try make("regex", "\\x00\\xff.\\x80")
        #expect(classify(f, [1, 0, 0xFF, 0xC3, 0x80, 2], .user) == 1)
        #expect(classify(f, [0, 0xFF, 0x80], .user) == 0)
        #expect(classify(try make("regex", "^[\\x80-\\xff]+$"), [0x80, 0xFE, 0xFF], .user) == 1)
        #expect(classify(try make("regex", "^.$"), [0xC3, 0xA9], .user) == 0,
                "é in UTF-8 is two bytes, two characters")
        #expect(classify(try make("regex", "a.b"), Array("a\0b".utf8), .user) == 1, ". matches NUL")
    }

    @Test("a match does not span blocks; blocks with no payload do not match")
    func perBlock() throws {
        let f = try make("regex", "GET")
        #expect(classify(f, Pkt.ethTCP4(Array("xxGE".utf8))) == 0)
        #expect(classify(f, Pkt.ethTCP4(Array("Txx".utf8))) == 0)
        #expect(classify(f, Pkt.ethTCP4()) == 0)
        #expect(classify(try make("regex", "^$"), Pkt.ethTCP4()) == 0, "an empty payload is not matched at all")
        #expect(classify(try make("regex", "x*"), Pkt.ethARP()) == 0, "nor a frame with no IP payload")
        #expect(classify(try make("regex", "x*"), [], .user) == 0)
        #expect(classify(try make("regex", "x*"), Pkt.ethTCP4LaterFragment()) == 0, "later fragments have no payload")
    }

    @Test("keeps the class it received; counts matches")
    func classAndStats() throws {
        let f = try make("regex", "a+")
        #expect(classify(f, Array("baa".utf8), .user, classValue: 22) == 22)
        #expect(classify(f, Array("bbb".utf8), .user, classValue: 22) == 0)
        let r = try #require(f as? RegexMatch)
        #expect(r.matches == 1)
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["regex_matches"] == "1")
        #expect(stats["regex_errors"] == "0")
    }

    @Test("the JIT is used when PCRE2 has one (regex_jit: yes)")
    func jit() throws {
        #if arch(x86_64) || arch(arm64)
        #expect(RegexMatch.jitAvailable, "Debian's libpcre2-8 has a JIT on this architecture")
        #endif
        let f = try #require(try make("regex", "^(GET|POST) ") as? RegexMatch)
        #expect(f.jit == RegexMatch.jitAvailable)
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["regex_jit"] == (RegexMatch.jitAvailable ? "yes" : "no (PCRE2 has no JIT for this machine)"))
    }

    @Test("a match that exceeds PCRE2's limits drops the block and is counted")
    func limits() throws {
        let f = try #require(try make("regex", "^(a+)+$") as? RegexMatch)
        let subject = [UInt8](repeating: UInt8(ascii: "a"), count: 40) + [UInt8(ascii: "b")]
        #expect(classify(f, subject, .user) == 0)
        #expect(f.errors == 1)
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["regex_errors"] == "1")
        #expect(stats["regex_last_error"] == "match limit exceeded")
        #expect(classify(f, Array("aaa".utf8), .user) == 1, "the next block is matched as usual")
    }

    @Test("a bad pattern is refused with PCRE2's message and the offset", arguments: [
        ("(abc", "regex: bad pattern '(abc' at offset 4: missing closing parenthesis"),
        ("a{2,1}", "regex: bad pattern 'a{2,1}' at offset 5: numbers out of order in {} quantifier"),
        ("[z-a]", "regex: bad pattern '[z-a]' at offset 3: range out of order in character class"),
        ("*a", "regex: bad pattern '*a' at offset 0: quantifier does not follow a repeatable item"),
        ("ab\\", "regex: bad pattern 'ab\\' at offset 3: \\ at end of pattern"),
        ("", "regex: needs a pattern, as in regex=^GET (PCRE2 syntax)"),
    ])
    func errors(pattern: String, message: String) {
        let e = makeError("regex", pattern)
        #expect(e?.message == message)
        #expect(e?.errno == 22)
    }

    @Test("arguments: what it shows makes the same filter again")
    func arguments() throws {
        let f = try make("regex", "^GET \\x2fadmin")
        #expect(f.arguments == "^GET \\x2fadmin")
        #expect(classify(try make("regex", f.arguments), Array("GET /admin".utf8), .user) == 1, "\\x2f is /")
    }
}
