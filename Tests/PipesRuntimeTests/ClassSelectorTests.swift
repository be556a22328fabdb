import PipesRuntime
import PipesTestSupport
import Testing

/// Parses or records the error as a test issue.
private func sel(_ text: String, names: [String: UInt32] = [:], sourceLocation: SourceLocation = #_sourceLocation) throws -> ClassSelector {
    do {
        return try ClassSelector.parse(text, names: names)
    } catch {
        Issue.record("'\(text)' should parse: \(error.message)", sourceLocation: sourceLocation)
        throw error
    }
}

/// The parse error's message, or nil if it parsed.
private func parseError(_ text: String, names: [String: UInt32] = [:]) -> FilterError? {
    filterError { _ = try ClassSelector.parse(text, names: names) }
}

private let services: [String: UInt32] = ["ssh": 22, "telnet": 23, "http": 80, "https": 443]

@Suite("ClassSelector")
struct ClassSelectorTests {
    @Test("a single value selects exactly that class")
    func single() throws {
        let s = try sel("80")
        #expect(s.ranges == [80...80])
        #expect(!s.negated)
        #expect(s.text == "80")
        #expect(s.description == "80")
        #expect(s.matches(80))
        #expect(!s.matches(79))
        #expect(!s.matches(81))
        #expect(!s.isAny)
    }

    @Test("LO:HI is an inclusive range")
    func range() throws {
        let s = try sel("22:23")
        #expect(s.ranges == [22...23])
        #expect(!s.matches(21))
        #expect(s.matches(22))
        #expect(s.matches(23))
        #expect(!s.matches(24))
    }

    @Test("!N negates; class 0 never matches, negated or not")
    func negation() throws {
        let s = try sel("!80")
        #expect(s.negated)
        #expect(!s.matches(80))
        #expect(s.matches(81))
        #expect(s.matches(1))
        #expect(!s.matches(0), "0 means 'do not forward' and never travels")
        #expect(!(try sel("0:10")).matches(0))
    }

    @Test("names are the parent's class names, looked up case-insensitively, also as range ends")
    func names() throws {
        #expect(try sel("ssh", names: services).ranges == [22...22])
        #expect(try sel("SSH", names: services).ranges == [22...22])
        let r = try sel("ssh:telnet", names: services)
        #expect(r.ranges == [22...23])
        #expect(r.matches(23) && !r.matches(24))
        #expect(try sel("!http", names: services).matches(443))
        #expect(!(try sel("!http", names: services)).matches(80))
        #expect(try sel("ssh:80", names: services).ranges == [22...80])
    }

    @Test("hex values 0xNNNN (EtherTypes)")
    func hex() throws {
        #expect(try sel("0x86dd").ranges == [0x86DD...0x86DD])
        #expect(try sel("0X0800").ranges == [0x0800...0x0800])
        #expect(try sel("0x0800:0x08ff").matches(0x0806))
        #expect(parseError("0xzz")?.message.contains("bad hex class value") == true)
        #expect(parseError("0x") != nil)
    }

    @Test("comma lists: any item matches")
    func lists() throws {
        let s = try sel("80,443")
        #expect(s.ranges == [80...80, 443...443])
        #expect(s.matches(80))
        #expect(s.matches(443))
        #expect(!s.matches(81))
        let n = try sel("!80,443,1000:1010")
        #expect(!n.matches(80) && !n.matches(443) && !n.matches(1005))
        #expect(n.matches(22))
        #expect(try sel("ssh,https", names: services).ranges == [22...22, 443...443])
    }

    @Test("the largest value is UInt32.max")
    func bounds() throws {
        #expect(try sel("4294967295").matches(UInt32.max))
        #expect(try sel("1:4294967295").matches(UInt32.max))
    }

    @Test("errors name the problem", arguments: [
        ("", "empty class selector"),
        ("!", "empty class selector"),
        ("5:3", "empty class range '5:3'"),
        ("foo", "unknown class name 'foo'"),
        ("99999999999", "is not a number"),
        ("4294967296", "is not a number"),
        ("80,", "empty class value"),
        (",80", "empty class value"),
        ("1:2:3", "bad class range '1:2:3'"),
        (":5", "empty class value"),
        ("-1", "unknown class name '-1'"),
        ("8 0", "not a number"),
    ])
    func errors(text: String, fragment: String) {
        let e = parseError(text)
        #expect(e != nil, "'\(text)' must not parse")
        #expect(e?.message.contains(fragment) == true, "message for '\(text)': \(e?.message ?? "none")")
        #expect(e?.errno == 22, "selector errors are EINVAL")
    }

    @Test("a name is not a selector without the parent's names")
    func namesNeedParent() {
        #expect(parseError("ssh") != nil)
        #expect((try? ClassSelector.parse("ssh", names: [:])) == nil)
        #expect((try? ClassSelector.parse("ssh", names: services)) != nil)
        #expect((try? ClassSelector.parse("80", names: [:])) != nil)
        #expect((try? ClassSelector.parse("count", names: services)) == nil)
        #expect((try? ClassSelector.parse("bpf=tcp", names: services)) == nil)
    }

    @Test("the default edge accepts every non-zero class")
    func any() {
        #expect(ClassSelector.any.isAny)
        #expect(ClassSelector.any.matches(1))
        #expect(ClassSelector.any.matches(UInt32.max))
        #expect(!ClassSelector.any.matches(0))
    }
}
