import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("ipproto")
struct IPProtoTests {
    @Test("the class is the IP protocol number")
    func protocolNumber() throws {
        let f = try make("ipproto")
        #expect(classify(f, Pkt.ethTCP4()) == 6)
        #expect(classify(f, Pkt.ethUDP4()) == 17)
        #expect(classify(f, Pkt.ethICMP4()) == 1)
        #expect(classify(f, Pkt.ethTCP6()) == 6)
        #expect(classify(f, Pkt.ethICMP6()) == 58)
        #expect(classify(f, Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 47, [0, 0, 0x08, 0]))) == 47, "GRE")
    }

    @Test("IPv6 extension headers are walked to the transport protocol")
    func extensionHeaders() throws {
        let f = try make("ipproto")
        #expect(classify(f, Pkt.ethTCP6HopByHop()) == 6)
    }

    @Test("later fragments keep their protocol (as tcpdump's proto primitives)")
    func fragments() throws {
        let f = try make("ipproto")
        #expect(classify(f, Pkt.ethTCP4LaterFragment()) == 6)
    }

    @Test("non-IP is not forwarded")
    func nonIP() throws {
        let f = try make("ipproto")
        #expect(classify(f, Pkt.ethARP()) == 0)
        #expect(classify(f, Array("data".utf8), .user) == 0)
        #expect(classify(f, Array(Pkt.ethTCP4().prefix(20))) == 0, "IPv4 header cut before the protocol field")
    }

    @Test("class names")
    func names() throws {
        let d = try #require(FilterLibrary.byName["ipproto"])
        #expect(d.classifying)
        #expect(d.classNames["tcp"] == 6)
        #expect(d.classNames["udp"] == 17)
        #expect(d.classNames["icmp"] == 1)
        #expect(d.classNames["icmp6"] == 58)
        #expect(d.classNames["sctp"] == 132)
        #expect(try ClassSelector.parse("tcp,udp", names: d.classNames).matches(17))
    }
}
