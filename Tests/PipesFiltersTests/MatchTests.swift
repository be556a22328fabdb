import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("match")
struct MatchTests {
    @Test("finds the text in the transport payload")
    func payloadMatch() throws {
        let f = try make("match", "GET")
        #expect(classify(f, Pkt.ethTCP4(Array("GET /index.html HTTP/1.1".utf8))) == 1)
        #expect(classify(f, Pkt.ethTCP4(Array("xxGET".utf8))) == 1, "at the very end")
        #expect(classify(f, Pkt.ethUDP6(Array("a GET b".utf8))) == 1)
        #expect(classify(f, Pkt.ethTCP4(Array("POST /".utf8))) == 0)
        #expect(classify(f, Pkt.ethTCP4(Array("GE".utf8))) == 0, "payload shorter than the text")
        #expect(classify(f, Pkt.ethTCP4()) == 0, "no payload")
        #expect(classify(f, Pkt.ethTCP4(Array("get".utf8))) == 0, "case matters")
    }

    @Test("headers are not searched")
    func headersNotSearched() throws {
        // 10.0.0.1 is in the IP header of every frame; port 80 (0x0050) in the TCP header.
        let f = try make("match", "\\x0a\\x00\\x00\\x01")
        #expect(classify(f, Pkt.ethTCP4(Array("payload".utf8))) == 0)
        #expect(classify(f, Pkt.ethTCP4([0x0A, 0x00, 0x00, 0x01])) == 1)
    }

    @Test("a partial match followed by the real one is found (aab in aaab)")
    func overlapping() throws {
        let f = try make("match", "aab")
        #expect(classify(f, Array("aaab".utf8), .user) == 1)
        #expect(classify(f, Array("aaaa".utf8), .user) == 0)
        #expect(classify(f, Array("abaab".utf8), .user) == 1)
    }

    @Test("injected user data is searched whole")
    func userData() throws {
        let f = try make("match", "needle")
        #expect(classify(f, Array("hay needle hay".utf8), .user) == 1)
        #expect(classify(f, Array("hay".utf8), .user) == 0)
    }

    @Test("escapes: \\xHH, \\n, \\r, \\t, \\\\")
    func escapes() throws {
        #expect(classify(try make("match", "\\x41BC"), Array("xxABCxx".utf8), .user) == 1)
        #expect(classify(try make("match", "\\x4a"), Array("J".utf8), .user) == 1, "lower-case hex")
        #expect(classify(try make("match", "\\x4A"), Array("J".utf8), .user) == 1, "upper-case hex")
        #expect(classify(try make("match", "\\x41BC"), Array("\\x41BC".utf8), .user) == 0, "the escape is decoded, not literal")
        #expect(classify(try make("match", "a\\nb"), Array("a\nb".utf8), .user) == 1)
        #expect(classify(try make("match", "a\\nb"), Array("a\\nb".utf8), .user) == 0)
        #expect(classify(try make("match", "\\r\\n\\r\\n"), Array("HTTP/1.1 200 OK\r\n\r\n".utf8), .user) == 1)
        #expect(classify(try make("match", "a\\tb"), Array("a\tb".utf8), .user) == 1)
        #expect(classify(try make("match", "a\\\\b"), Array("a\\b".utf8), .user) == 1)
        #expect(classify(try make("match", "\\x00\\xff"), [1, 0, 0xFF, 2], .user) == 1)
    }

    @Test("bad escapes and empty text are refused", arguments: [
        ("abc\\", "trailing backslash"),
        ("\\xZZ", "bad \\x escape"),
        ("\\x4", "bad \\x escape"),
        ("\\q", "unknown escape '\\q'"),
        ("", "needs the text"),
    ])
    func errors(text: String, fragment: String) {
        let e = makeError("match", text)
        #expect(e?.message.contains(fragment) == true, "'\(text)': \(e?.message ?? "accepted")")
        #expect(e?.errno == 22)
    }

    @Test("the class travels through")
    func classPassThrough() throws {
        let f = try make("match", "x")
        #expect(classify(f, Array("x".utf8), .user, classValue: 443) == 443)
    }

    @Test("arguments: what it shows makes the same filter again; bad text is refused")
    func argumentsRoundTrip() throws {
        let f = try make("match", "b\\x61r")
        let again = try make("match", f.arguments)
        #expect(classify(again, Array("bar".utf8), .user) == 1)
        #expect(classify(again, Array("foo".utf8), .user) == 0)
        #expect(makeError("match", "\\x") != nil)
    }
}
