import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("tcp")
struct TCPTests {
    @Test("TCP over IPv4 and IPv6 is class 1")
    func tcp() throws {
        let f = try make("tcp")
        #expect(classify(f, Pkt.ethTCP4()) == 1)
        #expect(classify(f, Pkt.ethTCP6()) == 1)
        #expect(classify(f, Pkt.ethTCP4Options()) == 1)
        #expect(classify(f, Pkt.ethTCP6HopByHop()) == 1)
        #expect(classify(f, Pkt.rawTCP4(), .raw) == 1)
    }

    @Test("every fragment of a TCP datagram matches, as tcpdump's 'tcp'")
    func fragments() throws {
        let f = try make("tcp")
        #expect(classify(f, Pkt.ethTCP4LaterFragment()) == 1)
        #expect(classify(f, Pkt.ethTCP4FirstFragment()) == 1)
    }

    @Test("UDP, ICMP and non-IP are not TCP")
    func others() throws {
        let f = try make("tcp")
        #expect(classify(f, Pkt.ethUDP4()) == 0)
        #expect(classify(f, Pkt.ethUDP6()) == 0)
        #expect(classify(f, Pkt.ethICMP4()) == 0)
        #expect(classify(f, Pkt.ethARP()) == 0)
        #expect(classify(f, Array("tcp".utf8), .user) == 0)
    }

    @Test("takes no arguments")
    func noArguments() {
        #expect(makeError("tcp", "80")?.message.contains("takes no arguments") == true)
    }
}
