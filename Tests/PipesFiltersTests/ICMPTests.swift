import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("icmp")
struct ICMPTests {
    @Test("ICMP over IPv4 is class 1")
    func icmp() throws {
        let f = try make("icmp")
        #expect(classify(f, Pkt.ethICMP4()) == 1)
        #expect(classify(f, Pkt.ipv4(proto: 1, Pkt.icmp()), .raw) == 1)
    }

    @Test("ICMPv6, and protocol 1 inside IPv6, are not 'icmp' (IPv4 only, as tcpdump)")
    func notICMPv6() throws {
        let f = try make("icmp")
        #expect(classify(f, Pkt.ethICMP6()) == 0)
        #expect(classify(f, Pkt.ethernet(type: 0x86DD, Pkt.ipv6(next: 1, Pkt.icmp()))) == 0)
    }

    @Test("TCP, UDP and non-IP are not ICMP")
    func others() throws {
        let f = try make("icmp")
        #expect(classify(f, Pkt.ethTCP4()) == 0)
        #expect(classify(f, Pkt.ethUDP4()) == 0)
        #expect(classify(f, Pkt.ethARP()) == 0)
    }

    @Test("takes no arguments")
    func noArguments() {
        #expect(makeError("icmp", "8") != nil)
    }
}
