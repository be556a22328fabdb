import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("udp")
struct UDPTests {
    @Test("UDP over IPv4 and IPv6 is class 1")
    func udp() throws {
        let f = try make("udp")
        #expect(classify(f, Pkt.ethUDP4()) == 1)
        #expect(classify(f, Pkt.ethUDP6()) == 1)
        #expect(classify(f, Pkt.ethernet(type: 0x86DD, Pkt.ipv6(next: 0, Pkt.hopByHop(next: 17, Pkt.udp(sport: 1, dport: 2))))) == 1)
        #expect(classify(f, Pkt.ipv4(proto: 17, Pkt.udp(sport: 1, dport: 2)), .raw) == 1)
    }

    @Test("TCP, ICMP and non-IP are not UDP")
    func others() throws {
        let f = try make("udp")
        #expect(classify(f, Pkt.ethTCP4()) == 0)
        #expect(classify(f, Pkt.ethTCP6()) == 0)
        #expect(classify(f, Pkt.ethICMP4()) == 0)
        #expect(classify(f, Pkt.ethARP()) == 0)
    }

    @Test("takes no arguments")
    func noArguments() {
        #expect(makeError("udp", "53") != nil)
    }
}
