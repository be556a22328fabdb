#if canImport(Glibc)
import Glibc
#endif
import CPcap
import Foundation
import PipesControl
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("inspect")
struct InspectTests {
    /// The line `inspect` makes of one block (without its newline, which it checks).
    static func line(_ f: any Filter, _ bytes: [UInt8], _ linkType: LinkType = .ethernet,
                     seconds: Int64 = 1_700_000_000, nanoseconds: Int32 = 123_456_789,
                     wireLength: Int? = nil) -> String {
        bytes.withUnsafeBytes { raw in
            var b = Block(bytes: raw, wireLength: wireLength, seconds: seconds, nanoseconds: nanoseconds,
                          linkType: linkType)
            guard f.process(&b) != 0 else { return "(dropped)" }
            let text = String(decoding: b.bytes, as: UTF8.self)
            guard text.hasSuffix("\n"), b.linkType == .user, b.wireLength == b.count else {
                return "(bad block: \(text))"
            }
            return String(text.dropLast())
        }
    }

    static let ts = "1700000000.123456789"

    @Test("IPv4, IPv6, TCP, UDP, ICMP and other frames, one line each")
    func packets() throws {
        let f = try make("inspect")
        func l(_ bytes: [UInt8], _ t: LinkType = .ethernet) -> String { InspectTests.line(f, bytes, t) }
        let ts = InspectTests.ts
        #expect(l(Pkt.ethTCP4(flags: 0x02)) == "\(ts) ethernet 54 IP 10.0.0.1.40000 > 10.0.0.2.80: tcp [S] seq 1 len 0")
        #expect(l(Pkt.ethTCP4(sport: 80, dport: 1234, flags: 0x18, Array("GET".utf8)))
                == "\(ts) ethernet 57 IP 10.0.0.1.80 > 10.0.0.2.1234: tcp [P.] seq 1 ack 0 len 3")
        #expect(l(Pkt.ethUDP6(Array("abc".utf8)))
                == "\(ts) ethernet 65 IP6 2001:db8::1.40000 > 2001:db8::2.53: udp len 3")
        #expect(l(Pkt.ethUDP4()) == "\(ts) ethernet 42 IP 10.0.0.1.40000 > 10.0.0.2.53: udp len 0")
        #expect(l(Pkt.ethICMP4([1, 2])) == "\(ts) ethernet 44 IP 10.0.0.1 > 10.0.0.2: icmp type 8 code 0 len 2")
        #expect(l(Pkt.ethICMP6()) == "\(ts) ethernet 62 IP6 2001:db8::1 > 2001:db8::2: icmp6 type 128 code 0 len 0")
        #expect(l(Pkt.ethTCP6HopByHop())
                == "\(ts) ethernet 82 IP6 2001:db8::1.5555 > 2001:db8::2.80: tcp [P.] seq 1 ack 0 len 0")
        #expect(l(Pkt.ethARP()) == "\(ts) ethernet 42 ethertype 0x0806")
        #expect(l(Pkt.ethTCP4LaterFragment()) == "\(ts) ethernet 42 IP 10.0.0.1 > 10.0.0.2: tcp fragment")
        #expect(l(Pkt.ethTCP4FirstFragment())
                == "\(ts) ethernet 57 IP 10.0.0.1.1234 > 10.0.0.2.80: tcp [P.] seq 1 ack 0 len 3")
        #expect(l(Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 47, [1, 2, 3, 4, 5])))
                == "\(ts) ethernet 39 IP 10.0.0.1 > 10.0.0.2: proto 47 len 5")
        #expect(l(Pkt.rawTCP4(dport: 443), .raw)
                == "\(ts) raw 40 IP 10.0.0.1.40000 > 10.0.0.2.443: tcp [P.] seq 1 ack 0 len 0")
        #expect(l(Pkt.linuxSLL(protocol: 0x0800, Pkt.ipv4(proto: 17, Pkt.udp(sport: 1, dport: 2))), .linuxSLL)
                == "\(ts) linux-sll 44 IP 10.0.0.1.1 > 10.0.0.2.2: udp len 0")
        // Ethernet padding: the length is the datagram's, not the frame's.
        #expect(l(Pkt.ethUDP4(Array("x".utf8)) + [0, 0, 0])
                == "\(ts) ethernet 46 IP 10.0.0.1.40000 > 10.0.0.2.53: udp len 1")
    }

    @Test("TCP flags as tcpdump prints them")
    func flags() throws {
        let f = try make("inspect")
        func flags(_ v: UInt8) -> String {
            let s = InspectTests.line(f, Pkt.ethTCP4(flags: v))
            return String(s[s.firstIndex(of: "[")!...s.firstIndex(of: "]")!])
        }
        #expect(flags(0x02) == "[S]")
        #expect(flags(0x12) == "[S.]")
        #expect(flags(0x10) == "[.]")
        #expect(flags(0x11) == "[F.]")
        #expect(flags(0x19) == "[FP.]")
        #expect(flags(0x04) == "[R]")
        #expect(flags(0x14) == "[R.]")
        #expect(flags(0x00) == "[none]")
        #expect(flags(0xFF) == "[FSRP.UEW]")
        #expect(InspectTests.line(f, Pkt.ethTCP4(flags: 0x02)).contains("seq 1 len"), "no ack without the ACK flag")
    }

    @Test("truncated and damaged packets: what decodes, then where it stops")
    func truncated() throws {
        let f = try make("inspect")
        let ts = InspectTests.ts
        let p = Pkt.ethTCP4(Array("data".utf8))
        func cut(_ n: Int) -> String { InspectTests.line(f, Array(p.prefix(n)), wireLength: p.count) }
        #expect(cut(50) == "\(ts) ethernet 58 cap 50 IP 10.0.0.1.40000 > 10.0.0.2.80: tcp [P.] seq 1 ack 0 truncated")
        #expect(cut(40) == "\(ts) ethernet 58 cap 40 IP 10.0.0.1.40000 > 10.0.0.2.80: tcp truncated")
        #expect(cut(35) == "\(ts) ethernet 58 cap 35 IP 10.0.0.1 > 10.0.0.2: tcp truncated")
        #expect(cut(30) == "\(ts) ethernet 58 cap 30 IP truncated")
        #expect(cut(13) == "\(ts) ethernet 58 cap 13")
        #expect(cut(0) == "\(ts) ethernet 58 cap 0")
        #expect(InspectTests.line(f, Array(Pkt.ethUDP6().prefix(40)), wireLength: 62)
                == "\(ts) ethernet 62 cap 40 IP6 truncated")
        var badIHL = p
        badIHL[14] = 0x44
        #expect(InspectTests.line(f, badIHL) == "\(ts) ethernet 58 IP 10.0.0.1 > 10.0.0.2: undecodable")
        var lying = p
        lying[16] = 0xFF  // total length 0xFF2C: more than was captured
        #expect(InspectTests.line(f, lying)
                == "\(ts) ethernet 58 IP 10.0.0.1.40000 > 10.0.0.2.80: tcp [P.] seq 1 ack 0 len 65284",
                "the length the header declares, as tcpdump")
    }

    @Test("user data: length and an escaped prefix of 64 bytes")
    func userData() throws {
        let f = try make("inspect")
        let ts = InspectTests.ts
        let text = Array("GET / HTTP/1.1\r\n\"q\"\\\t".utf8) + [0, 0xFF, 0x7F]
        #expect(InspectTests.line(f, text, .user)
                == "\(ts) user 24 \"GET / HTTP/1.1\\r\\n\\\"q\\\"\\\\\\t\\x00\\xff\\x7f\"")
        let long = [UInt8](repeating: UInt8(ascii: "x"), count: 100)
        #expect(InspectTests.line(f, long, .user) == "\(ts) user 100 \"" + String(repeating: "x", count: 64) + "\"...")
        #expect(InspectTests.line(f, [], .user) == "\(ts) user 0 \"\"")
        let worst = [UInt8](repeating: 0xFF, count: 5000)
        #expect(InspectTests.line(f, worst, .user)
                == "\(ts) user 5000 \"" + String(repeating: "\\xff", count: 64) + "\"...")
    }

    @Test("timestamps and link types as they are, damaged ones included")
    func header() throws {
        let f = try make("inspect")
        #expect(InspectTests.line(f, [1, 2, 3], LinkType(rawValue: 999), seconds: 0, nanoseconds: 0)
                == "0.000000000 linktype-999 3")
        #expect(InspectTests.line(f, [1], .user, seconds: -1, nanoseconds: 5) == "-1.000000005 user 1 \"\\x01\"")
        #expect(InspectTests.line(f, [], .ppp, seconds: 1, nanoseconds: 1_500_000_000) == "1.1500000000 ppp 0")
        #expect(InspectTests.line(f, [], .null, seconds: .min, nanoseconds: .min)
                == "-9223372036854775808.-2147483648 null 0")
    }

    @Test("the output is user data in the filter's buffer; the class travels; layers are reset")
    func output() throws {
        let f = try make("inspect")
        let inspect = try #require(f as? Inspect)
        #expect(f.outputLinkType(.ethernet) == .user)
        #expect(f.outputLinkType(nil) == .user)
        let p = Pkt.ethTCP4()
        p.withUnsafeBytes { raw in
            var b = Block(bytes: raw, linkType: .ethernet)
            b.classValue = 80
            #expect(f.process(&b) == 80)
            #expect(b.bytes.baseAddress == inspect.buffer.baseAddress)
            #expect(b.layers.state == .unknown)
            #expect(b.linkType == .user)
        }
        #expect(classify(f, p) == 1)
        #expect(makeError("inspect", "x")?.message == "takes no arguments (got 'x')")
    }

    @Test("in a graph: a reader of all gets one line per packet, each copied before the next is written")
    func inGraph() throws {
        let c = Controller()
        defer { c.shutdown() }
        let j = try c.makeDirectory(in: nil, named: "j=ethernet")
        let node = try c.makeDirectory(in: j, named: "inspect")
        let ring = openTap(c, node)
        for p in [Pkt.ethTCP4(flags: 0x02), Pkt.ethUDP6(), Pkt.ethARP()] {
            let rc = p.withUnsafeBytes { c.space.inject(j, bytes: $0) }
            #expect(rc == .done)
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { ring.copyOut(into: $0.baseAddress!, max: $0.count) }
        let text = String(decoding: buffer[0..<n], as: UTF8.self)
        let lines = text.split(separator: "\n").map { $0.split(separator: " ") }
        try #require(lines.count == 3)
        #expect(lines.map { $0.dropFirst().joined(separator: " ") } == [
            "ethernet 54 IP 10.0.0.1.40000 > 10.0.0.2.80: tcp [S] seq 1 len 0",
            "ethernet 62 IP6 2001:db8::1.40000 > 2001:db8::2.53: udp len 0",
            "ethernet 42 ethertype 0x0806",
        ])
    }

    /// The fields both tools print, from one line of each.
    struct Fields: Equatable {
        var time = "", family = "", source = "", destination = ""
        var flags: String?, seq: String?, ack: String?, length: String?
    }

    /// The value after `key` in `tokens`, without trailing punctuation.
    static func value(after key: String, in tokens: [Substring]) -> String? {
        guard let i = tokens.firstIndex(of: Substring(key)), i + 1 < tokens.count else { return nil }
        return String(tokens[i + 1].trimmingCharacters(in: [",", ":", "[", "]"]))
    }

    /// tcpdump -n -tt -S: `TIME IP SRC > DST: Flags [S.], seq A[:B], ack N, win W, ..., length L`.
    static func tcpdumpFields(_ line: Substring) -> Fields {
        let t = line.split(separator: " ")
        var f = Fields(time: String(t[0]), family: String(t[1]))
        guard f.family == "IP" || f.family == "IP6", t.count > 4 else { return f }
        f.source = String(t[2])
        f.destination = String(t[4].dropLast())  // "DST:"
        guard t.count > 6, t[5] == "Flags" else { return f }
        f.flags = String(t[6].trimmingCharacters(in: ["[", "]", ","]))
        f.seq = value(after: "seq", in: t).map { String($0.prefix { $0 != ":" }) }
        f.ack = value(after: "ack", in: t)
        f.length = value(after: "length", in: t)
        return f
    }

    /// inspect: `TIME LINK LEN [cap N] IP SRC > DST: tcp [S.] seq A [ack N] len L`.
    static func inspectFields(_ line: String, tcpdumpHasSeq: Bool) -> Fields {
        var t = line.split(separator: " ")
        var f = Fields(time: String(t[0]))
        t.removeFirst(t.count > 4 && t[3] == "cap" ? 5 : 3)
        guard let family = t.first, family == "IP" || family == "IP6", t.count > 3 else {
            f.family = t.first.map(String.init) ?? ""
            return f
        }
        f.family = String(family)
        f.source = String(t[1])
        f.destination = String(t[3].dropLast())
        guard t.count > 5, t[4] == "tcp", t[5].hasPrefix("[") else { return f }
        f.flags = String(t[5].trimmingCharacters(in: ["[", "]"]))
        f.seq = tcpdumpHasSeq ? value(after: "seq", in: t) : nil  // tcpdump leaves it out of bare ACKs
        f.ack = value(after: "ack", in: t)
        f.length = value(after: "len", in: t)
        return f
    }

    /// Compares inspect's line for every record of a capture with tcpdump's; returns how many TCP lines agreed.
    static func compareWithTcpdump(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int {
        let run = try runTool(["tcpdump", "-n", "-tt", "-S", "--time-stamp-precision=nano", "-r", path])
        try #require(run.status == 0, "tcpdump: \(run.errors)", sourceLocation: sourceLocation)
        let reference = run.output.split(separator: "\n")
        var records: [([UInt8], pcap_pkthdr)] = []
        let read = readCapture(path, nanoseconds: true) { bytes, h in records.append((Array(bytes), h)) }
        try #require(read.openError == nil && read.readError == nil, "\(read)", sourceLocation: sourceLocation)
        let f = try make("inspect")
        let lines = records.map { bytes, h in
            bytes.withUnsafeBytes { raw in
                // As PcapFileSource makes blocks.
                var b = Block(bytes: raw, wireLength: Int(h.len), seconds: Int64(h.ts.tv_sec),
                              nanoseconds: Int32(truncatingIfNeeded: h.ts.tv_usec),
                              linkType: LinkType(rawValue: read.linkType))
                _ = f.process(&b)
                return String(decoding: b.bytes.dropLast(), as: UTF8.self)
            }
        }
        try #require(lines.count == reference.count, "\(lines.count) lines against tcpdump's \(reference.count)",
                     sourceLocation: sourceLocation)
        var tcp = 0
        for (mine, theirs) in zip(lines, reference) {
            let r = tcpdumpFields(theirs)
            let m = inspectFields(mine, tcpdumpHasSeq: r.seq != nil)
            if r.family == "ARP," {
                #expect(mine.hasSuffix("ethertype 0x0806"), "\(mine)\n\(theirs)", sourceLocation: sourceLocation)
                continue
            }
            if r.family == "IP" || r.family == "IP6", r.flags == nil {
                // UDP, ICMP, fragments: tcpdump decodes the application; the addresses and ports must agree.
                #expect(m.source == r.source && m.destination == r.destination && m.time == r.time,
                        "\(mine)\n\(theirs)", sourceLocation: sourceLocation)
                continue
            }
            #expect(m == r, "\(mine)\n\(theirs)", sourceLocation: sourceLocation)
            if r.flags != nil { tcp += 1 }
        }
        return tcp
    }

    @Test("agrees with tcpdump -n -tt -S on the synthetic capture: addresses, ports, flags, seq, ack, length")
    func synthetic() throws {
        let path = try syntheticCapture(flows: 500, seed: 3)
        defer { unlink(path) }
        #expect(try InspectTests.compareWithTcpdump(path) > 3000)
    }

    @Test("agrees with tcpdump on captures of the corpus (Linux cooked, nanoseconds, raw IPv6)", arguments: [
        ("tcp-handshake-nano.pcap", 3), ("print-flags.pcap", 10), ("dns_tcp.pcap", 10), ("mptcp-v1.pcap", 20),
        ("LINKTYPE_RAW_ipv6.pcap", 0),
    ])
    func corpus(file: String, tcpLines: Int) throws {
        try #require(Corpus.files.contains(file))
        #expect(try InspectTests.compareWithTcpdump(Corpus.path(file)) >= tcpLines)
    }
}
