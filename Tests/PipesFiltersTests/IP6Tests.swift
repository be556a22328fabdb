import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("ip6")
struct IP6Tests {
    @Test("IPv6 is class 1, with or without extension headers, on Ethernet and raw links")
    func ipv6() throws {
        let ip6 = try make("ip6")
        #expect(classify(ip6, Pkt.ethTCP6()) == 1)
        #expect(classify(ip6, Pkt.ethUDP6()) == 1)
        #expect(classify(ip6, Pkt.ethICMP6()) == 1)
        #expect(classify(ip6, Pkt.ethTCP6HopByHop()) == 1)
        #expect(classify(ip6, Pkt.ipv6(next: 17, Pkt.udp(sport: 1, dport: 2)), .raw) == 1)
        #expect(classify(ip6, Pkt.ipv6(next: 17, Pkt.udp(sport: 1, dport: 2)), .ipv6) == 1)
    }

    @Test("IPv4 and ARP are not IPv6")
    func notIPv6() throws {
        let ip6 = try make("ip6")
        #expect(classify(ip6, Pkt.ethTCP4()) == 0)
        #expect(classify(ip6, Pkt.ethARP()) == 0)
        #expect(classify(ip6, Pkt.rawTCP4(), .raw) == 0)
        #expect(classify(ip6, Array("hello".utf8), .user) == 0)
    }

    @Test("takes no arguments")
    func noArguments() {
        #expect(makeError("ip6", "x") != nil)
    }
}
