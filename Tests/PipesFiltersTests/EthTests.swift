import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("eth")
struct EthTests {
    @Test("the class is the EtherType")
    func classIsEtherType() throws {
        let eth = try make("eth")
        #expect(classify(eth, Pkt.ethTCP4()) == 0x0800)
        #expect(classify(eth, Pkt.ethTCP6()) == 0x86DD)
        #expect(classify(eth, Pkt.ethARP()) == 0x0806)
        #expect(classify(eth, Pkt.ethernet(type: 0x88CC, [0, 0])) == 0x88CC)
    }

    @Test("non-Ethernet link types and frames shorter than the header are not forwarded")
    func rejects() throws {
        let eth = try make("eth")
        #expect(classify(eth, Pkt.rawTCP4(), .raw) == 0)
        #expect(classify(eth, Pkt.ethTCP4(), .linuxSLL) == 0)
        #expect(classify(eth, Array(Pkt.ethTCP4().prefix(13))) == 0)
        #expect(classify(eth, Array(Pkt.ethTCP4().prefix(14))) == 0x0800, "14 bytes are a whole header")
        #expect(classify(eth, []) == 0)
        #expect(classify(eth, Pkt.ethernet(type: 0, [])) == 0, "EtherType 0 is class 0: not forwarded")
    }

    @Test("class names for the class directories below it")
    func names() throws {
        let d = try #require(FilterLibrary.byName["eth"])
        #expect(d.classifying)
        #expect(d.classNames["ipv4"] == 0x0800)
        #expect(d.classNames["ipv6"] == 0x86DD)
        #expect(d.classNames["arp"] == 0x0806)
        #expect(d.classNames["vlan"] == 0x8100)
        let s = try ClassSelector.parse("arp", names: d.classNames)
        #expect(s.matches(classify(try make("eth"), Pkt.ethARP())))
    }

    @Test("takes no arguments")
    func noArguments() {
        #expect(makeError("eth", "x")?.message.contains("takes no arguments") == true)
    }
}
