import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("junction")
struct JunctionTests {
    func junction(_ args: String) throws -> Junction {
        try #require(try FilterLibrary.junction.make(args) as? Junction)
    }

    @Test("the argument names the link type of written data", arguments: [
        ("", LinkType.user, ""), ("user", .user, ""), ("ethernet", .ethernet, "ethernet"), ("eth", .ethernet, "ethernet"),
        ("EN10MB", .ethernet, "ethernet"), ("raw", .raw, "raw"), ("ip", .raw, "raw"), ("sll", .linuxSLL, "sll"),
        ("linux-sll2", .linuxSLL2, "sll2"), ("113", .linuxSLL, "sll"), ("147", .user, ""),
        ("0", .null, "0"),
    ])
    func linkTypes(arg: String, linkType: LinkType, shown: String) throws {
        let j = try junction(arg)
        #expect(j.injectedLinkType == linkType)
        #expect(j.arguments == shown)
        // What it shows, it accepts back (ctl's `args` round trip).
        #expect(try junction(j.arguments).injectedLinkType.sameFraming(linkType))
    }

    @Test("unknown link types are refused", arguments: ["bogus", "-1", "1.5", "ethernet2"])
    func unknown(arg: String) {
        #expect(makeError("junction", arg)?.message.contains("unknown link type '\(arg)'") == true)
    }

    @Test("passes everything through, keeping the class")
    func passThrough() throws {
        let j = try junction("")
        #expect(classify(j, Array("x".utf8), .user) == 1)
        #expect(classify(j, Pkt.ethTCP4(), classValue: 80) == 80)
        #expect(classify(j, [], .user) == 1, "even an empty block")
    }

    @Test("an unknown link type is refused")
    func badLinkType() throws {
        #expect(throws: FilterError.self) { try junction("nope") }
        #expect(try junction("ethernet").injectedLinkType == .ethernet)
    }
}

@Suite("junction arguments round trip")
struct JunctionRoundTripTests {
    /// `Filter.arguments` is documented as "the current argument text, as the descriptor's `make` accepts it".
    @Test("what arguments shows, make accepts", arguments: ["", "ethernet", "raw", "sll", "sll2", "0", "9", "999"])
    func roundTrip(arg: String) throws {
        let j = try #require(try FilterLibrary.junction.make(arg) as? Junction)
        let shown = j.arguments
        let again = try #require(try FilterLibrary.junction.make(shown) as? Junction,
                                 "arguments '\(shown)' (from '\(arg)') must be accepted back")
        #expect(again.injectedLinkType.sameFraming(j.injectedLinkType))
        #expect(again.arguments == shown)
    }
}
