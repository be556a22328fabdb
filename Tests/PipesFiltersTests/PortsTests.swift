import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("sport / dport")
struct PortsTests {
    @Test("dport's class is the destination port, sport's the source port, for TCP and UDP over IPv4 and IPv6")
    func ports() throws {
        let sport = try make("sport")
        let dport = try make("dport")
        for frame in [Pkt.ethTCP4(sport: 1234, dport: 80), Pkt.ethUDP4(sport: 1234, dport: 80),
                      Pkt.ethTCP6(sport: 1234, dport: 80), Pkt.ethUDP6(sport: 1234, dport: 80)] {
            #expect(classify(dport, frame) == 80)
            #expect(classify(sport, frame) == 1234)
        }
        #expect(classify(dport, Pkt.ethTCP4Options(dport: 8080)) == 8080, "after IPv4 options")
        #expect(classify(dport, Pkt.ethTCP6HopByHop(dport: 443)) == 443, "after an IPv6 extension header")
        #expect(classify(dport, Pkt.rawTCP4(dport: 22), .raw) == 22)
        #expect(classify(dport, Pkt.ethTCP4(dport: 65535)) == 65535)
    }

    @Test("ports seen are remembered; 'seen' makes them the classes the directory shows")
    func seen() throws {
        let dport = try #require(try make("dport") as? PortClassifier)
        for p: UInt16 in [443, 80, 65535, 80, 0, 22] { classify(dport, Pkt.ethTCP4(dport: p)) }
        classify(dport, Pkt.ethARP())
        #expect(dport.seenPorts() == [0, 22, 80, 443, 65535])
        #expect(dport.seenClassNames().isEmpty, "not shown until asked")
        guard case .success? = dport.control("seen", "") else { Issue.record("seen refused"); return }
        #expect(dport.seenClassNames() == ["22", "80", "443", "65535"], "port 0 is class 0: it never goes on")
        #expect(Dictionary(uniqueKeysWithValues: dport.statistics())["ports_seen"] == "5")
        guard case .success? = dport.control("seen", "off") else { Issue.record("seen off refused"); return }
        #expect(dport.seenClassNames().isEmpty)
        guard case .failure(let e)? = dport.control("seen", "maybe") else { Issue.record("seen maybe accepted"); return }
        #expect(e.message == "seen takes 'on' (the default) or 'off', not 'maybe'")
    }

    @Test("SCTP carries ports too")
    func sctp() throws {
        let frame = Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 132, be16(2905) + be16(2906) + [0, 0, 0, 0, 0, 0, 0, 0]))
        #expect(classify(try make("dport"), frame) == 2906)
    }

    @Test("later fragments, ICMP, non-IP and truncated headers have no ports")
    func noPorts() throws {
        let dport = try make("dport")
        let sport = try make("sport")
        #expect(classify(dport, Pkt.ethTCP4LaterFragment()) == 0, "the bytes after a later fragment's header are not ports")
        #expect(classify(sport, Pkt.ethTCP4LaterFragment()) == 0)
        #expect(classify(dport, Pkt.ethTCP4FirstFragment(dport: 80)) == 80)
        #expect(classify(dport, Pkt.ethICMP4()) == 0)
        #expect(classify(dport, Pkt.ethARP()) == 0)
        let frame = Pkt.ethTCP4(dport: 80)
        #expect(classify(dport, Array(frame.prefix(37))) == 0, "destination port cut in half")
        #expect(classify(dport, Array(frame.prefix(38))) == 80)
    }

    @Test("service names select ports below dport")
    func serviceNames() throws {
        let d = try #require(FilterLibrary.byName["dport"])
        #expect(d.classifying)
        #expect(d.classNames["ssh"] == 22)
        #expect(d.classNames["http"] == 80)
        #expect(d.classNames["https"] == 443)
        #expect(d.classNames["domain"] == 53)
        let web = try ClassSelector.parse("http,https", names: d.classNames)
        #expect(web.matches(classify(try make("dport"), Pkt.ethTCP4(dport: 443))))
        #expect(!web.matches(classify(try make("dport"), Pkt.ethTCP4(dport: 22))))
        #expect(FilterLibrary.byName["sport"]?.classNames == d.classNames)
    }

    @Test("take no arguments")
    func noArguments() {
        #expect(makeError("dport", "80") != nil)
        #expect(makeError("sport", "80") != nil)
    }
}
