import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("ip")
struct IPTests {
    @Test("IPv4 on every link type the runtime decodes is class 1")
    func ipv4() throws {
        let ip = try make("ip")
        #expect(classify(ip, Pkt.ethTCP4()) == 1)
        #expect(classify(ip, Pkt.ethUDP4()) == 1)
        #expect(classify(ip, Pkt.ethICMP4()) == 1)
        #expect(classify(ip, Pkt.ethTCP4LaterFragment()) == 1)
        #expect(classify(ip, Pkt.rawTCP4(), .raw) == 1)
        #expect(classify(ip, Pkt.rawTCP4(), .ipv4) == 1)
        // Linux cooked capture: 14 bytes of header, protocol, then the packet.
        let sll = Pkt.linuxSLL(protocol: 0x0800, Pkt.rawTCP4())
        #expect(classify(ip, sll, .linuxSLL) == 1)
    }

    @Test("IPv6, ARP, non-IP and user data are not IPv4")
    func notIPv4() throws {
        let ip = try make("ip")
        #expect(classify(ip, Pkt.ethTCP6()) == 0)
        #expect(classify(ip, Pkt.ethARP()) == 0)
        #expect(classify(ip, Pkt.ipv6(next: 6, Pkt.tcp(sport: 1, dport: 2)), .raw) == 0)
        #expect(classify(ip, Array("GET / HTTP/1.0".utf8), .user) == 0)
        #expect(classify(ip, Array(Pkt.ethTCP4().prefix(13))) == 0, "no complete Ethernet header")
    }

    @Test("takes no arguments")
    func noArguments() {
        #expect(makeError("ip", "4") != nil)
    }
}
