#if canImport(Glibc)
import Glibc
#endif
import Foundation
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

/// One block a filter handed on, copied.
struct HandedOn {
    var flow: UInt32
    var marks: FlowMarks
    var classValue: UInt32
    var linkType: LinkType
    var bytes: [UInt8]
    var view: UnsafeRawBufferPointer
}

/// What a rewriting filter (`pcap`, `compress`) handed on, in order and per flow.
final class Output {
    var blocks: [HandedOn] = []
    var bytes: [UInt32: [UInt8]] = [:]
    /// `then`: where each block goes next (the next filter of a chain), after it was recorded.
    var then: ((inout Block) -> Void)?

    func take(_ b: Block) {
        blocks.append(HandedOn(flow: b.flow, marks: b.flowMarks, classValue: b.classValue, linkType: b.linkType,
                               bytes: Array(b.bytes), view: b.bytes))
        bytes[b.flow, default: []] += Array(b.bytes)
        if let then {
            var copy = b
            then(&copy)
        }
    }

    func marks(_ flow: UInt32) -> [FlowMarks] { blocks.filter { $0.flow == flow }.map(\.marks) }
    var flows: [UInt32] { bytes.keys.sorted() }
}

/// Pushes one block with a flow tag and marks through a filter (unbound: its output goes to its `unboundOutput`).
@discardableResult
func push(_ f: any Filter, _ bytes: [UInt8], flow: UInt32 = 0, marks: FlowMarks = [], linkType: LinkType = .user,
          seconds: Int64 = 0, nanoseconds: Int32 = 0, wireLength: Int? = nil, classValue: UInt32 = 1) -> UInt32 {
    bytes.withUnsafeBytes { raw in
        var b = Block(bytes: raw, wireLength: wireLength, seconds: seconds, nanoseconds: nanoseconds, linkType: linkType)
        b.flow = flow
        b.flowMarks = marks
        b.classValue = classValue
        return f.process(&b)
    }
}

/// A pcap record as `pcap` writes it: host byte order.
func pcapRecord(seconds: UInt32, micros: UInt32, _ data: [UInt8], wire: Int? = nil) -> [UInt8] {
    var h = (seconds, micros, UInt32(data.count), UInt32(wire ?? data.count))
    return withUnsafeBytes(of: &h) { Array($0) } + data
}

/// Every file in a directory: name → bytes. The directory is removed with `removeDirectory`.
func filesIn(_ dir: String) -> [String: [UInt8]] {
    var out: [String: [UInt8]] = [:]
    for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
        if let d = FileManager.default.contents(atPath: dir + "/" + name) { out[name] = Array(d) }
    }
    return out
}

func removeDirectory(_ dir: String) {
    for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] { unlink(dir + "/" + name) }
    rmdir(dir)
}

/// Runs `tool` with `arguments` and returns its exit status and standard output, or nil if it is not installed.
func runTool(_ tool: String, _ arguments: [String], input: [UInt8]? = nil) throws -> (status: Int32, output: [UInt8])? {
    guard let path = ["/usr/bin/", "/usr/sbin/", "/bin/"].map({ $0 + tool }).first(where: { access($0, X_OK) == 0 }) else { return nil }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    let inPipe = Pipe()
    if input != nil { p.standardInput = inPipe }
    try p.run()
    if let input {
        inPipe.fileHandleForWriting.write(Data(input))
        try inPipe.fileHandleForWriting.close()
    }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, Array(data))
}

@Suite("pcap")
struct PcapTests {
    func make(_ args: String = "") throws -> Pcap {
        try #require(try FilterLibrary.byName["pcap"]!.make(args) as? Pcap)
    }

    func stats(_ f: any Filter) -> [String: String] { Dictionary(uniqueKeysWithValues: f.statistics()) }

    @Test("each block goes on as one record (timestamp, lengths, bytes), after one file header; link type user, class kept")
    func records() throws {
        let f = try make()
        let out = Output()
        f.unboundOutput = out.take
        let a = Pkt.ethTCP4(), b = Pkt.ethUDP4()
        #expect(push(f, a, linkType: .ethernet, seconds: 1_700_000_000, nanoseconds: 123_456_789, classValue: 7) == 0,
                "the input block itself does not go on")
        push(f, b, linkType: .ethernet, seconds: 1_700_000_001, nanoseconds: 999, wireLength: 1500, classValue: 7)
        #expect(out.blocks.count == 3)
        #expect(out.blocks[0].bytes == LinkType.ethernet.pcapFileHeader)
        #expect(out.blocks[1].bytes == pcapRecord(seconds: 1_700_000_000, micros: 123_456, a))
        #expect(out.blocks[2].bytes == pcapRecord(seconds: 1_700_000_001, micros: 0, b, wire: 1500))
        #expect(out.blocks.allSatisfy { $0.linkType == .user && $0.classValue == 7 && $0.flow == 0 && $0.marks.isEmpty })
        #expect(f.outputLinkType(.ethernet) == .user)
        let s = stats(f)
        #expect(s["pcap_records"] == "2" && s["pcap_file_headers"] == "1" && s["pcap_flows"] == "1")
        #expect(s["pcap_bytes_in"] == "\(a.count + b.count)" && s["pcap_bytes_out"] == "\(24 + 32 + a.count + b.count)")
        #expect(s["pcap_connections"] == nil, "connection figures only with flows")
    }

    @Test("raw IP gets LINKTYPE_RAW (101) in its header, as libpcap's DLT_RAW 12 is written in files")
    func rawHeader() throws {
        let f = try make()
        let out = Output()
        f.unboundOutput = out.take
        push(f, Pkt.rawTCP4(), linkType: .dltRaw12)
        #expect(out.blocks[0].bytes == LinkType.raw.pcapFileHeader)
        #expect(out.blocks[0].bytes[20..<24] == [101, 0, 0, 0][...])
    }

    @Test("one header per flow tag, before its first record; marks carried (start on the header); an empty end goes on and the flow is forgotten")
    func flowsAndMarks() throws {
        let f = try make()
        let out = Output()
        f.unboundOutput = out.take
        push(f, [1, 2, 3], flow: 2, marks: .start)
        push(f, [4, 5], flow: 3, marks: .start)
        push(f, [6], flow: 2)
        push(f, [], flow: 2, marks: .end)
        push(f, [7, 8], flow: 3, marks: .end)  // an end that carries bytes: its record is marked
        #expect(out.marks(2) == [.start, [], [], .end])
        #expect(out.marks(3) == [.start, [], .end])
        let h = LinkType.user.pcapFileHeader
        #expect(out.bytes[2] == h + pcapRecord(seconds: 0, micros: 0, [1, 2, 3]) + pcapRecord(seconds: 0, micros: 0, [6]))
        #expect(out.bytes[3] == h + pcapRecord(seconds: 0, micros: 0, [4, 5]) + pcapRecord(seconds: 0, micros: 0, [7, 8]))
        #expect(out.blocks.last { $0.flow == 2 }?.bytes == [], "the end goes on empty, after nothing")
        #expect(stats(f)["pcap_flows"] == "0", "ended flows are forgotten")
        // A later block with the tag starts a new file.
        push(f, [9], flow: 2)
        #expect(out.blocks.suffix(2).map(\.bytes) == [h, pcapRecord(seconds: 0, micros: 0, [9])])
        // The end of a flow that never had a record goes on too.
        push(f, [], flow: 40, marks: .end)
        #expect(out.blocks.last?.flow == 40 && out.blocks.last?.marks == .end && out.blocks.last?.bytes == [])
    }

    @Test("no allocation per block: every record is a view of one scratch buffer, grown only for a larger block; records stop at 262144 bytes")
    func scratch() throws {
        let f = try make()
        let out = Output()
        f.unboundOutput = out.take
        for n in [60, 1500, 100, 1500] { push(f, [UInt8](repeating: 1, count: n)) }
        let bases = Set(out.blocks.dropFirst().map { $0.view.baseAddress! })
        #expect(bases.count == 1, "one buffer for all records")
        #expect(out.blocks[0].view.baseAddress! + 24 == out.blocks[1].view.baseAddress!, "the header sits before the record")
        push(f, [UInt8](repeating: 2, count: 300_000), wireLength: 310_000)
        let big = try #require(out.blocks.last)
        #expect(big.bytes.count == 16 + 262_144)
        big.bytes.withUnsafeBytes { r in
            #expect(r.loadUnaligned(fromByteOffset: 8, as: UInt32.self) == 262_144, "captured: cut to the snapshot length")
            #expect(r.loadUnaligned(fromByteOffset: 12, as: UInt32.self) == 310_000, "wire length kept")
        }
        push(f, [UInt8](repeating: 3, count: 50))
        #expect(stats(f)["pcap_truncated"] == "1")
        #expect(out.blocks.last!.bytes.count == 66)
    }

    @Test("pcap | files: every flow's file is a capture libpcap reads back record for record")
    func throughFiles() throws {
        let f = try make()
        let dir = temporaryPath("pcap-files")
        defer { removeDirectory(dir) }
        let files = try #require(try FilterLibrary.byName["files"]!.make(dir) as? Files)
        let out = Output()
        out.then = { b in _ = files.process(&b) }
        f.unboundOutput = out.take
        // Two connections tagged as untcp tags them (registered, so files names them), and untagged packets.
        let k1 = FlowKey(source: FlowAddress(high: 0, low: 0x0A00_0001), destination: FlowAddress(high: 0, low: 0x0A00_0002),
                         sourcePort: 1111, destinationPort: 80, v6: false)
        let c1 = FlowTable.shared.register(k1)
        defer { FlowTable.shared.retire(c1) }
        let t0 = FlowTable.tag(connection: c1, direction: 0), t1 = FlowTable.tag(connection: c1, direction: 1)
        var expected: [UInt32: [PcapRecord]] = [:]
        for i in 0..<30 {
            let tag = [t0, t1, 0][i % 3]
            let frame = Pkt.ethTCP4(sport: UInt16(1000 + i), [UInt8](repeating: UInt8(i), count: i * 7))
            push(f, frame, flow: tag, marks: i < 3 && tag != 0 ? .start : [], linkType: .ethernet, seconds: Int64(100 + i),
                 nanoseconds: Int32(i * 1000), wireLength: frame.count + (i == 5 ? 10 : 0))
            expected[tag, default: []].append(PcapRecord(seconds: 100 + i, micros: i, captured: frame.count,
                                                         wire: frame.count + (i == 5 ? 10 : 0), bytes: frame))
        }
        push(f, [], flow: t0, marks: .end)
        push(f, [], flow: t1, marks: .end)
        f.endOfStream()
        files.endOfStream()
        let names = [t0: k1.tcpflowName, t1: k1.reversed.tcpflowName, 0: "unflowed"]
        #expect(Set(filesIn(dir).keys) == Set(names.values))
        for (tag, name) in names {
            let (r, recs) = readRecords(dir + "/" + name)
            #expect(r.openError == nil && r.readError == nil, "\(name): \(r.openError ?? r.readError ?? "")")
            #expect(r.linkType == 1)
            #expect(recs == expected[tag], "\(name) holds its flow's records in order")
        }
        if let (status, text) = try runTool("tcpdump", ["-nr", dir + "/" + names[t0]!]) {
            #expect(status == 0)
            #expect(String(decoding: text, as: UTF8.self).split(separator: "\n").count == 10, "tcpdump reads it too")
        }
    }

    @Test("pcap flows: a tag per TCP or UDP connection direction (direction 0: the first packet's sender), named as tcpflow names them; other packets keep theirs")
    func assignsFlows() throws {
        let f = try make("flows")
        let out = Output()
        f.unboundOutput = out.take
        let conv = Conversation(client: 10, server: 20, sport: 5555)
        let udp = Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 17, src: [192, 0, 2, 9], dst: [10, 0, 0, 1], Pkt.udp(sport: 53, dport: 3333, [1, 2])))
        let udpBack = Pkt.ethernet(type: 0x0800, Pkt.ipv4(proto: 17, src: [10, 0, 0, 1], dst: [192, 0, 2, 9], Pkt.udp(sport: 3333, dport: 53)))
        // The server answers first here: its packet makes direction 0.
        let frames = [conv.synAck(), conv.syn(), udp, Pkt.ethICMP4(), conv.data(fromClient: true, at: 0, [1]), udpBack,
                      Pkt.ethTCP6(sport: 7, dport: 8), Pkt.ethTCP4LaterFragment()]
        for fr in frames { push(f, fr, flow: 0, linkType: .ethernet) }
        let tagged = out.flows.filter { $0 != 0 }
        #expect(tagged.count == 5, "TCP both ways, UDP both ways, TCP over IPv6 one way")
        var names: [String: UInt32] = [:]
        for t in tagged { names[try #require(FlowTable.shared.info(t)).key.tcpflowName] = t }
        let server = "010.000.000.002.00080-010.000.000.001.05555", client = "010.000.000.001.05555-010.000.000.002.00080"
        #expect(Set(names.keys) == [server, client, "192.000.002.009.00053-010.000.000.001.03333",
                                    "010.000.000.001.03333-192.000.002.009.00053", "2001:db8::1.00007-2001:db8::2.00008"])
        #expect(names[server]! & 1 == 0 && names[client]! == names[server]! | 1, "the first sender is direction 0")
        #expect(out.marks(names[client]!) == [.start, [], []], "header (start), then a record per packet")
        #expect(out.bytes[names[client]!]!.count == 24 + 2 * 16 + frames[1].count + frames[4].count)
        #expect(out.blocks.filter { $0.flow == 0 }.count == 3, "ICMP and a later fragment keep flow 0: a header and two records")
        let s = stats(f)
        #expect(s["pcap_connections"] == "3" && s["pcap_connections_total"] == "3" && s["pcap_not_tcp_udp"] == "2")
        // The end of the input ends every connection: an empty end block per direction, tags retired.
        let before = out.blocks.count
        f.endOfStream()
        let ends = out.blocks[before...]
        #expect(ends.count == 5 && ends.allSatisfy { $0.marks == .end && $0.bytes.isEmpty })
        #expect(Set(ends.map(\.flow)) == Set(tagged))
        #expect(stats(f)["pcap_connections"] == "0")
        #expect(FlowTable.shared.info(names[client]!) != nil, "retired tags stay nameable for a while")
    }

    @Test("pcap flows connections=N: the least recently seen connection is evicted, its directions end, and it comes back as a new one")
    func connectionEviction() throws {
        let f = try make("flows connections=2")
        let out = Output()
        f.unboundOutput = out.take
        let convs = (0..<3).map { Conversation(client: 1, server: 2, sport: UInt16(6000 + $0)) }
        push(f, convs[0].syn(), linkType: .ethernet)
        push(f, convs[0].synAck(), linkType: .ethernet)
        push(f, convs[1].syn(), linkType: .ethernet)
        let first = out.flows
        #expect(first.count == 3)
        push(f, convs[2].syn(), linkType: .ethernet)  // evicts convs[0], the least recently seen
        let ended = out.blocks.filter { $0.marks == .end }
        #expect(ended.count == 2 && Set(ended.map(\.flow)) == Set(first.filter { $0 >> 1 == first[0] >> 1 }))
        push(f, convs[0].data(fromClient: true, at: 0, [1]), linkType: .ethernet)  // evicts convs[1]
        let s = stats(f)
        #expect(s["pcap_connections"] == "2" && s["pcap_connections_evicted"] == "2" && s["pcap_connections_total"] == "4")
        let again = try #require(out.blocks.last?.flow)
        #expect(again >> 1 != first[0] >> 1, "a new connection number")
        #expect(out.blocks.suffix(2).first?.marks == .start, "its first block is a new file's header")
    }

    @Test("tags=N bounds the flows remembered: past it the least recently seen flow ends, so its file stays valid")
    func tagEviction() throws {
        let f = try make("tags=2")
        let out = Output()
        f.unboundOutput = out.take
        push(f, [1], flow: 2, classValue: 3)
        push(f, [2], flow: 4)
        push(f, [3], flow: 2, classValue: 3)
        push(f, [4], flow: 6)  // evicts flow 4
        #expect(out.blocks.map(\.flow) == [2, 2, 4, 4, 2, 4, 6, 6])
        #expect(out.blocks[5].marks == .end && out.blocks[5].bytes.isEmpty)
        push(f, [5], flow: 0)
        push(f, [6], flow: 4)  // back: a header again (and flow 2 ends)
        #expect(out.blocks.suffix(3).map(\.flow) == [2, 4, 4])
        #expect(out.blocks.suffix(3).first?.classValue == 3, "an end goes on with its flow's class")
        #expect(out.blocks.suffix(2).first?.bytes == LinkType.user.pcapFileHeader)
        let s = stats(f)
        #expect(s["pcap_flows_evicted"] == "2" && s["pcap_flows"] == "3", "two tags and flow 0, which is never evicted")
    }

    @Test("arguments: flows and limits; anything else is refused with a reason")
    func arguments() throws {
        let f = try make("flows connections=10K tags=64")
        #expect(f.settings.flows && f.settings.connections == 10 << 10 && f.settings.tags == 64)
        #expect(try make("tags=5").settings.tags == 5)
        #expect(makeError("pcap", "flow")?.message == "pcap: unknown argument 'flow' (want flows, connections=N or tags=N)")
        #expect(makeError("pcap", "flows snaplen=5")?.message == "pcap: unknown argument 'snaplen=5' (want flows, connections=N or tags=N)")
        #expect(makeError("pcap", "flows connections=0")?.message == "pcap: connections wants a positive number (K and M suffixes allowed), got '0'")
        #expect(makeError("pcap", "tags=many")?.message == "pcap: tags wants a positive number (K and M suffixes allowed), got 'many'")
        #expect(makeError("pcap", "flows connections=20M")?.message == "pcap: connections is at most 16777216, got 20971520")
        #expect(makeError("pcap", "connections=5")?.message
                == "pcap: connections= applies to 'pcap flows' only (without flows the input's flow tags are kept)")
    }
}
