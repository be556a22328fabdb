#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime
import Testing

/// Polls `condition` until it holds or `seconds` pass.
func eventually(within seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + Int64(seconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
        nanosleep(&ts, nil)
    }
    return condition()
}

/// Everything buffered in a ring.
func drain(_ ring: TapRing) -> [UInt8] {
    var out: [UInt8] = []
    while ring.available > 0 {
        ring.read(max: 1 << 20, id: 1) { o in
            if case .data(let x, let y) = o { out += Array(x) + Array(y) }
        }
    }
    return out
}

@Suite("pcap file source")
struct PcapFileSourceTests {
    static let packets: [(seconds: UInt32, micros: UInt32, bytes: [UInt8], wire: Int?)] = [
        (1_600_000_000, 111_111, Pkt.ethTCP4(Array("first".utf8)), nil),
        (1_600_000_001, 222_222, Pkt.ethUDP4(Array("second".utf8)), 1000),
        (1_600_000_002, 333_333, Pkt.ethARP(), nil),
    ]

    func source(_ spec: String) -> FilterError? {
        do {
            _ = try PcapFileSource(spec: spec)
            return nil
        } catch {
            return error
        }
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
        let path = temporaryPath("ok.pcap")
        defer { unlink(path) }
        try writeFile(path, pcapFile(linkType: 101, []))
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
        let path = temporaryPath("three.pcap")
        defer { unlink(path) }
        try writeFile(path, pcapFile(linkType: 1, Self.packets))
        let c = Controller()
        defer { c.shutdown() }
        let node = try c.addSource("cap=pcap:\(path)")
        let raw = TapRing(capacity: 1 << 16, policy: .block)
        let pcap = TapRing(capacity: 1 << 16, policy: .block)
        c.space.lock.withLock {
            c.space.addTap(node, raw, .raw)
            c.space.addTap(node, pcap, .pcap(.ethernet))
            c.space.refresh()  // demand: the source starts
        }
        #expect(eventually { raw.isEnded && pcap.isEnded }, "the stream should end after the last packet")
        #expect(drain(raw) == Self.packets.flatMap(\.bytes))
        var expected: [UInt8] = []
        for p in Self.packets {
            expected += le32(p.seconds) + le32(p.micros) + le32(UInt32(p.bytes.count)) + le32(UInt32(p.wire ?? p.bytes.count)) + p.bytes
        }
        #expect(drain(pcap) == expected, "timestamps survive the nanosecond round trip")
        c.space.lock.withLock { #expect(node.ended) }
        let stats = c.statsText(node)
        #expect(stats.contains("packets_out: 3"))
        #expect(stats.contains("state: finished"))
        #expect(stats.contains("packets_read: 3"))
        #expect(stats.contains("stream: ended"))
    }

    @Test("paused sources wait for 'start'; 'rewind' reads the file again")
    func pausedStartRewind() throws {
        let path = temporaryPath("paused.pcap")
        defer { unlink(path) }
        try writeFile(path, pcapFile(linkType: 1, Self.packets))
        let c = Controller()
        defer { c.shutdown() }
        let node = try c.addSource("cap=pcap:\(path),paused")
        let ring = TapRing(capacity: 1 << 16, policy: .block)
        c.space.lock.withLock {
            c.space.addTap(node, ring, .raw)
            c.space.refresh()
        }
        var ts = timespec(tv_sec: 0, tv_nsec: 20_000_000)
        nanosleep(&ts, nil)
        #expect(ring.available == 0, "a paused source reads nothing")
        try c.control(node, "start")
        #expect(eventually { ring.isEnded })
        #expect(drain(ring).count == Self.packets.map(\.bytes.count).reduce(0, +))

        // Rewind while stopped, so the new reader is there before the first packet flows again.
        try c.control(node, "stop")
        try c.control(node, "rewind")
        let again = TapRing(capacity: 1 << 16, policy: .block)
        c.space.lock.withLock {
            #expect(!node.ended, "a rewound source's stream is open again")
            c.space.addTap(node, again, .raw)
            c.space.refresh()
        }
        nanosleep(&ts, nil)
        #expect(again.available == 0, "stopped: nothing flows")
        try c.control(node, "start")
        #expect(eventually { again.isEnded })
        #expect(drain(again) == Self.packets.flatMap(\.bytes))
        #expect(c.statsText(node).contains("packets_read: 6"))

        #expect(throws: ControlError.self) { try c.control(node, "rate fast") }
        #expect(throws: ControlError.self) { try c.control(node, "args x") }
    }

    @Test("a nanosecond capture with an out-of-range fraction (as tcpdump's timestamp_invalid_nano) does not crash a pcap tap",
          .bug(id: "negative nanoseconds", "PcapFile.swift:157 wraps ns >= 2^31 to a negative Int32; Space.swift:78 (deliverToTaps) traps in UInt32(block.nanoseconds / 1000)"))
    func outOfRangeNanoseconds() async {
        let path = temporaryPath("bad-ns.pcap")
        defer { unlink(path) }
        await #expect(processExitsWith: .success) { [path = path as String] in
            let frame = Pkt.ethTCP4()
            let file: [UInt8] = le32(0xA1B2_3C4D)  // magic: nanosecond timestamps
                + le16(2) + le16(4) + le32(0) + le32(0) + le32(65535) + le32(1)  // version, zone, sigfigs, snaplen, Ethernet
                + le32(1_400_000_000)  // ts_sec
                + le32(0x8000_0000)  // ts_nsec: 2147483648, out of range
                + le32(UInt32(frame.count)) + le32(UInt32(frame.count))  // caplen, len
                + frame
            guard (try? writeFile(path, file)) != nil else { exit(2) }
            let c = Controller()
            guard let node = try? c.addSource("cap=pcap:\(path)") else { exit(3) }
            let ring = TapRing(capacity: 1 << 16, policy: .block)
            c.space.lock.withLock {
                c.space.addTap(node, ring, .pcap(.ethernet))
                c.space.refresh()
            }
            let ended = eventually { ring.isEnded }
            c.shutdown()
            exit(ended && drain(ring).count == 16 + frame.count ? 0 : 4)
        }
    }

    @Test("a lossless tap that lags makes the source wait instead of dropping")
    func backpressure() throws {
        // 300 packets of 1000 bytes through a 4 KiB ring: the source must wait for the reader many times.
        let path = temporaryPath("many.pcap")
        defer { unlink(path) }
        let many = (0..<300).map { i in
            (seconds: UInt32(i), micros: UInt32(0), bytes: Pkt.ethUDP4(sport: UInt16(i), [UInt8](repeating: UInt8(i & 0xFF), count: 958)), wire: Int?.none)
        }
        try writeFile(path, pcapFile(linkType: 1, many))
        let c = Controller()
        defer { c.shutdown() }
        let node = try c.addSource("cap=pcap:\(path)")
        let ring = TapRing(capacity: 4096, policy: .block)
        c.space.lock.withLock {
            c.space.addTap(node, ring, .raw)
            c.space.refresh()
        }
        var got: [UInt8] = []
        let deadline = monotonicNanoseconds() + 20_000_000_000
        while monotonicNanoseconds() < deadline {
            got += drain(ring)
            if ring.isEnded && ring.available == 0 { break }
            var ts = timespec(tv_sec: 0, tv_nsec: 200_000)
            nanosleep(&ts, nil)
        }
        #expect(ring.isEnded)
        #expect(ring.dropped == 0)
        #expect(got == many.flatMap(\.bytes))
    }
}
