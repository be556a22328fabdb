#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("pcap file source")
struct PcapFileSourceTests {
    typealias Packet = (seconds: UInt32, micros: UInt32, bytes: [UInt8], wire: UInt32?)

    static let packets: [Packet] = [
        (1_600_000_000, 111_111, Pkt.ethTCP4(Array("first".utf8)), nil),
        (1_600_000_001, 222_222, Pkt.ethUDP4(Array("second".utf8)), 1000),
        (1_600_000_002, 333_333, Pkt.ethARP(), nil),
    ]

    /// `packets` as a classic pcap file (microsecond timestamps) of `linkType`; without its file header, the records
    /// alone, as a pcap tap delivers them.
    static func capture(_ packets: [Packet], linkType: UInt32 = 1, fileHeader: Bool = true) -> HandPcap {
        var f = fileHeader ? HandPcap(linkType: linkType) : HandPcap.withoutFileHeader()
        for p in packets { f.record(seconds: p.seconds, fraction: p.micros, data: p.bytes, wire: p.wire) }
        return f
    }

    func source(_ spec: String) -> FilterError? {
        filterError { _ = try PcapFileSource(spec: spec) }
    }

    @Test("a missing file gives ENOENT")
    func missingFile() throws {
        let path = "/nonexistent-\(getpid())/none.pcap"
        let e = try #require(source(path))
        #expect(e.errno == ENOENT)
        #expect(e.message.contains(path))
        #expect(e.message.contains("No such file or directory"))
    }

    @Test("a text file gives EINVAL and libpcap's reason")
    func textFile() throws {
        let path = temporaryPath("notes.txt")
        defer { unlink(path) }
        try writeFile(path, Array("these are notes, not packets\n".utf8))
        let libpcap = try #require(readCapture(path) { _, _ in }.openError, "libpcap should refuse a text file")
        let e = try #require(source(path))
        #expect(e.errno == EINVAL)
        #expect(e.message.contains("is not a capture file libpcap can read"))
        #expect(e.message.contains(libpcap), "'\(e.message)' should carry libpcap's '\(libpcap)'")
    }

    @Test("bad options and a missing path are explained", arguments: [
        ("/tmp/x.pcap,bogus", "unknown option 'bogus'"),
        ("/tmp/x.pcap,loop,rate=-5", "bad rate 'rate=-5'"),
        ("/tmp/x.pcap,rate=fast", "bad rate"),
        ("", "missing file path"),
        (",loop", "missing file path"),
    ])
    func badOptions(spec: String, fragment: String) throws {
        let e = try #require(source(spec))
        #expect(e.message.contains(fragment), "\(e.message)")
    }

    @Test("options are parsed; the link type comes from the file")
    func options() throws {
        let path = try Self.capture([], linkType: 101).write("ok.pcap")
        defer { unlink(path) }
        let s = try PcapFileSource(spec: "\(path),loop,paused,rate=50")
        #expect(s.path == path)
        #expect(s.loop)
        #expect(s.linkType == .raw || s.linkType == .dltRaw12, "LINKTYPE_RAW, as libpcap reports it")
        #expect(!s.isLive)
        let stats = Dictionary(uniqueKeysWithValues: s.statistics())
        #expect(stats["state"] == "paused")
        #expect(stats["rate"] == "50")
        #expect(stats["link_type"] == "raw")
        s.shutdown()
    }

    @Test("attached below a controller, it reads the whole file into a tap, then ends the stream")
    func readsWholeFile() throws {
        try withCaptureSource(Self.capture(Self.packets)) { c, node, _ in
            let taps = openTaps(c, node, [.raw, .pcap(.ethernet)])  // demand: the source starts
            let (raw, pcap) = (taps[0], taps[1])
            #expect(eventually { raw.isEnded && pcap.isEnded }, "the stream should end after the last packet")
            #expect(drain(raw) == Self.packets.flatMap(\.bytes))
            let expected = Self.capture(Self.packets, fileHeader: false).bytes
            #expect(drain(pcap) == expected, "timestamps survive the nanosecond round trip")
            c.space.lock.withLock { #expect(node.ended) }
            let stats = c.statsText(node)
            #expect(stats.contains("packets_out: 3"))
            #expect(stats.contains("state: finished"))
            #expect(stats.contains("packets_read: 3"))
            #expect(stats.contains("stream: ended"))
        }
    }

    @Test("paused sources wait for 'start'; 'rewind' reads the file again")
    func pausedStartRewind() throws {
        try withCaptureSource(Self.capture(Self.packets), options: ",paused") { c, node, _ in
            let ring = openTap(c, node)
            pause(nanoseconds: 20_000_000)
            #expect(ring.available == 0, "a paused source reads nothing")
            try c.control(node, "start")
            #expect(eventually { ring.isEnded })
            #expect(drain(ring).count == Self.packets.map(\.bytes.count).reduce(0, +))

            // Rewind while stopped, so the new reader is there before the first packet flows again.
            try c.control(node, "stop")
            try c.control(node, "rewind")
            c.space.lock.withLock { #expect(!node.ended, "a rewound source's stream is open again") }
            let again = openTap(c, node)
            pause(nanoseconds: 20_000_000)
            #expect(again.available == 0, "stopped: nothing flows")
            try c.control(node, "start")
            #expect(eventually { again.isEnded })
            #expect(drain(again) == Self.packets.flatMap(\.bytes))
            #expect(c.statsText(node).contains("packets_read: 6"))

            #expect(throws: ControlError.self) { try c.control(node, "rate fast") }
            #expect(throws: ControlError.self) { try c.control(node, "args x") }
        }
    }

    @Test("a nanosecond capture with an out-of-range fraction (as tcpdump's timestamp_invalid_nano) does not crash a pcap tap",
          .bug(id: "negative nanoseconds", "PcapFile.swift:157 wraps ns >= 2^31 to a negative Int32; Space.swift:78 (deliverToTaps) traps in UInt32(block.nanoseconds / 1000)"))
    func outOfRangeNanoseconds() async {
        let path = temporaryPath("bad-ns.pcap")
        defer { unlink(path) }
        await #expect(processExitsWith: .success) { [path = path as String] in
            let frame = Pkt.ethTCP4()
            var file = HandPcap(nanoseconds: true)  // magic: nanosecond timestamps; version 2.4, snaplen 65535, Ethernet
            file.record(seconds: 1_400_000_000,  // ts_sec
                        fraction: 0x8000_0000,  // ts_nsec: 2147483648, out of range
                        data: frame)  // caplen = len = the frame's length
            guard (try? writeFile(path, file.bytes)) != nil else { exit(2) }
            let c = Controller()
            guard let node = try? c.addSource("cap=pcap:\(path)") else { exit(3) }
            let ring = openTap(c, node, .pcap(.ethernet))
            let ended = eventually { ring.isEnded }
            c.shutdown()
            exit(ended && drain(ring).count == 16 + frame.count ? 0 : 4)
        }
    }

    @Test("a lossless tap that lags makes the source wait instead of dropping")
    func backpressure() throws {
        // 300 packets of 1000 bytes through a 4 KiB ring: the source must wait for the reader many times.
        let many: [Packet] = (0..<300).map { i in
            (seconds: UInt32(i), micros: 0, bytes: Pkt.ethUDP4(sport: UInt16(i), [UInt8](repeating: UInt8(i & 0xFF), count: 958)), wire: nil)
        }
        try withCaptureSource(Self.capture(many)) { c, node, _ in
            let ring = openTap(c, node, capacity: 4096)
            let got = drainUntilEnded(ring, within: 20, pollingEvery: 200_000)
            #expect(ring.isEnded)
            #expect(ring.dropped == 0)
            #expect(got == many.flatMap(\.bytes))
        }
    }
}
