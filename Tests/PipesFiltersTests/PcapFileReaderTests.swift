#if canImport(Glibc)
import Glibc
#endif
import Foundation
import PipesBuffering
import PipesControl
@testable import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

// The zero-copy classic-pcap reader (PcapFileReader) must read exactly what libpcap reads: the same records
// before the end or the damage, the same bytes, wire lengths, timestamps and link type, and damage reported the
// way libpcap words it. libpcap here is opened as the pcap source opens it (nanosecond precision, pcap_next_ex).

/// One record as a reader delivered it, copied.
struct MappedCaseRecord: Equatable, CustomStringConvertible {
    var bytes: [UInt8]
    var wire: Int
    var seconds: Int64
    var nanoseconds: Int32
    var linkType: Int32

    var description: String {
        "\(bytes.count) bytes (wire \(wire)) at \(seconds).\(nanoseconds) link \(linkType)"
    }
}

/// How a read ended.
enum MappedCaseEnd: Equatable {
    case end
    case failed(String)
}

/// Everything one reader yielded.
struct MappedCaseRead {
    var records: [MappedCaseRecord] = []
    var end: MappedCaseEnd?
    var linkType: Int32 = -1
}

/// Reads `path` with libpcap as `PcapFileSource` opens it; nil and libpcap's reason when it refuses the file.
/// Timestamps are normalized as `PcapDispatcher` normalizes them (libpcap's path into the graph).
func mappedCaseLibpcap(_ path: String) -> (MappedCaseRead?, String) {
    var r = MappedCaseRead()
    let read = readCapture(path, nanoseconds: true) { bytes, hdr in
        let frac = Int64(UInt32(truncatingIfNeeded: hdr.ts.tv_usec))
        r.records.append(MappedCaseRecord(bytes: Array(bytes), wire: Int(hdr.len),
                                          seconds: Int64(hdr.ts.tv_sec) &+ frac / 1_000_000_000,
                                          nanoseconds: Int32(frac % 1_000_000_000), linkType: -1))
    }
    if let refusal = read.openError { return (nil, refusal) }
    r.linkType = read.linkType
    for i in r.records.indices { r.records[i].linkType = read.linkType }
    r.end = read.readError.map { .failed($0) } ?? .end
    return (r, "")
}

/// Reads `path` with `PcapFileReader` into a node, `batch` records per dispatch, as the source thread does;
/// nil when the reader refuses the file (the source then uses libpcap).
func mappedCaseMapped(_ path: String, batch: Int = 7, pread: Bool = false) -> MappedCaseRead? {
    guard let reader = PcapFileReader(path: path, pread: pread) else { return nil }
    let space = Space()
    let collector = RecordingFilter(forwardAs: 1)
    let node = handMadeNode(space, "x", collector)
    space.lock.withLock { space.attach(node, under: nil) }
    var r = MappedCaseRead()
    r.linkType = reader.linkType.rawValue
    var calls = 0
    while r.end == nil {
        calls += 1
        if calls > 1_000_000 { r.end = .failed("PcapFileReader never ended"); break }
        var n = -1
        let before = collector.seen.count
        reader.prepareIO()
        space.lock.lock()
        let status = reader.dispatch(space: space, node: Unmanaged.passUnretained(node), max: batch, count: &n)
        space.lock.unlock()
        space.finishBatch(mayWait: false)
        if n != collector.seen.count - before {
            r.end = .failed("dispatch reported \(n) records but pushed \(collector.seen.count - before)")
            break
        }
        if n > batch {
            r.end = .failed("dispatch pushed \(n) records, more than max \(batch)")
            break
        }
        switch status {
        case .more: break
        case .end: r.end = .end
        case .failed(let why): r.end = .failed(why)
        }
    }
    r.records = collector.seen.map {
        MappedCaseRecord(bytes: $0.bytes, wire: $0.wireLength, seconds: $0.seconds, nanoseconds: $0.nanoseconds,
                         linkType: $0.linkType.rawValue)
    }
    withExtendedLifetime(node) {}
    return r
}

/// The words a libpcap read error starts with, up to the first number (what the two readers must share).
func mappedCaseErrorKind(_ message: String) -> String {
    for kind in ["truncated dump file", "invalid packet capture length"] where message.hasPrefix(kind) { return kind }
    return message
}

/// Expects the fast reader to yield what libpcap yields. Returns false (after recording why) if it does not.
/// With `mayRefuse`, the fast reader may also refuse the file (the source then reads it with libpcap).
@discardableResult
func expectFastEqualsLibpcap(_ path: String, batch: Int = 7, mayRefuse: Bool = false,
                               sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
    let (l, refusal) = mappedCaseLibpcap(path)
    guard let l else {
        Issue.record("libpcap refuses \(path): \(refusal)", sourceLocation: sourceLocation)
        return false
    }
    guard let m = mappedCaseMapped(path, batch: batch) else {
        if mayRefuse { return true }
        Issue.record("PcapFileReader refuses \(path)", sourceLocation: sourceLocation)
        return false
    }
    var same = true
    if m.linkType != l.linkType {
        Issue.record("link type: mapped \(m.linkType), libpcap \(l.linkType)", sourceLocation: sourceLocation)
        same = false
    }
    if m.records.count != l.records.count {
        Issue.record("records before \(String(describing: l.end)): mapped \(m.records.count), libpcap \(l.records.count)",
                     sourceLocation: sourceLocation)
        same = false
    }
    for (i, (a, b)) in zip(m.records, l.records).enumerated() where a != b {
        var what: [String] = []
        if a.bytes != b.bytes { what.append("bytes (\(a.bytes.count) vs \(b.bytes.count))") }
        if a.wire != b.wire { what.append("wire length \(a.wire) vs \(b.wire)") }
        if a.seconds != b.seconds || a.nanoseconds != b.nanoseconds {
            what.append("timestamp \(a.seconds).\(a.nanoseconds) vs \(b.seconds).\(b.nanoseconds)")
        }
        if a.linkType != b.linkType { what.append("link type \(a.linkType) vs \(b.linkType)") }
        Issue.record("record \(i + 1) differs (mapped vs libpcap): \(what.joined(separator: ", "))", sourceLocation: sourceLocation)
        same = false
        break
    }
    switch (m.end, l.end) {
    case (.end?, .end?):
        break
    case (.failed(let a)?, .failed(let b)?):
        if mappedCaseErrorKind(a) != mappedCaseErrorKind(b) || !a.hasPrefix(mappedCaseErrorKind(b)) {
            Issue.record("error: mapped '\(a)', libpcap '\(b)'", sourceLocation: sourceLocation)
            same = false
        }
    default:
        Issue.record("end: mapped \(String(describing: m.end)), libpcap \(String(describing: l.end))", sourceLocation: sourceLocation)
        same = false
    }
    return same
}

/// Writes `file` to a temporary path (ending in `name`), expects the fast reader to read it as libpcap does
/// (`expectFastEqualsLibpcap`), removes it, and returns what the fast reader read (nil when it refused the file).
@discardableResult
func expectAgreement(_ file: HandPcap, _ name: String, mayRefuse: Bool = false, _ comment: Comment? = nil,
                     sourceLocation: SourceLocation = #_sourceLocation) throws -> MappedCaseRead? {
    let path = try file.write(name)
    defer { unlink(path) }
    #expect(expectFastEqualsLibpcap(path, mayRefuse: mayRefuse, sourceLocation: sourceLocation), comment,
            sourceLocation: sourceLocation)
    return mappedCaseMapped(path)
}

/// Expects both readers to agree on a file damaged after its first record, and the fast reader to read that one
/// record, then fail with a reason that starts with `failure`.
func expectDamaged(_ file: HandPcap, _ name: String, failure: String,
                   sourceLocation: SourceLocation = #_sourceLocation) throws {
    let m = try #require(try expectAgreement(file, name, sourceLocation: sourceLocation), sourceLocation: sourceLocation)
    #expect(m.records.count == 1, sourceLocation: sourceLocation)
    guard case .failed(let why)? = m.end else {
        Issue.record("expected a failure, got \(String(describing: m.end))", sourceLocation: sourceLocation)
        return
    }
    #expect(why.hasPrefix(failure), "\(why)", sourceLocation: sourceLocation)
}

/// A recognisable frame of `n` bytes (an Ethernet header, then a counter pattern).
func handFrame(_ n: Int, seed: UInt8 = 0) -> [UInt8] {
    Array(Pkt.ethernet(type: 0x0800, (0..<max(0, n - 14)).map { UInt8(truncatingIfNeeded: $0 &+ Int(seed)) }).prefix(n))
}

@Suite("mapped pcap reader equals libpcap")
struct PcapFileReaderTests {
    @Test("every corpus capture it accepts reads as libpcap reads it", arguments: Corpus.files)
    func corpus(name: String) throws {
        let path = try #require(Corpus.directory) + "/" + name
        guard PcapFileReader(path: path) != nil else {
            // Refused: it must be something other than a classic version 2.4 file (the libpcap path reads it).
            let head = Array((FileManager.default.contents(atPath: path) ?? Data()).prefix(8))
            let classic24 = head.count == 8 && (head[0...3] == [0xD4, 0xC3, 0xB2, 0xA1] || head[0...3] == [0x4D, 0x3C, 0xB2, 0xA1])
                && head[4...7] == [2, 0, 4, 0]
            #expect(!classic24, "\(name) is classic pcap 2.4 but the fast reader refused it")
            return
        }
        // Batches of 1, of a few and of many: record boundaries must not depend on where a batch ends.
        for batch in [1, 7, 256] {
            expectFastEqualsLibpcap(path, batch: batch)
        }
    }

    @Test("the corpus exercises the fast reader")
    func corpusCoverage() throws {
        let dir = try #require(Corpus.directory)
        let accepted = Corpus.files.filter { PcapFileReader(path: dir + "/" + $0) != nil }
        #expect(accepted.count >= 20, "only \(accepted.count) of \(Corpus.files.count) captures are read by the fast reader")
        for known in ["bigtcp-ipv4.pcap", "tcp-handshake-nano.pcap", "timestamp_invalid_nano.pcap", "ppp_ip_udp_dns.pcap"] {
            #expect(accepted.contains(known), "\(known) should be read by the fast reader")
        }
        for refused in Corpus.files where refused.hasSuffix(".pcapng") {
            #expect(!accepted.contains(refused), "\(refused) is pcapng: the libpcap path reads it")
        }
    }

    @Test("microsecond and nanosecond magic, both byte orders",
          arguments: [(false, false), (false, true), (true, false), (true, true)])
    func magicAndByteOrder(bigEndian: Bool, nanoseconds: Bool) throws {
        var f = HandPcap(bigEndian: bigEndian, nanoseconds: nanoseconds)
        let top: UInt32 = nanoseconds ? 999_999_999 : 999_999
        let records: [(UInt32, UInt32, [UInt8], UInt32?)] = [
            (1_600_000_000, 0, handFrame(60, seed: 1), nil),
            (1_600_000_001, 123_456, handFrame(1514, seed: 2), nil),
            (1_600_000_002, top, handFrame(14, seed: 3), 1500),  // wire longer than captured
            (0, 1, handFrame(0), 0),  // an empty record
            (0x7FFF_FFFF, top, handFrame(200, seed: 4), 9000),
        ]
        for (s, frac, data, wire) in records { f.record(seconds: s, fraction: frac, data: data, wire: wire) }
        let read = try expectAgreement(f, "magic.pcap")
        // And the values themselves, not only agreement.
        let m = try #require(read)
        #expect(m.end == .end)
        try #require(m.records.count == records.count)
        let scale: Int32 = nanoseconds ? 1 : 1000
        #expect(m.records[1].seconds == 1_600_000_001 && m.records[1].nanoseconds == 123_456 * scale)
        #expect(m.records[2].nanoseconds == Int32(top) * scale)
        #expect(m.records[2].wire == 1500 && m.records[2].bytes == handFrame(14, seed: 3))
        #expect(m.records[1].bytes == handFrame(1514, seed: 2))
        #expect(m.records[3].bytes.isEmpty)
        #expect(m.records.allSatisfy { $0.linkType == 1 })
    }

    @Test("a record longer than the header's snaplen is cut to it, as libpcap cuts it", arguments: [false, true])
    func caplenAboveSnaplen(bigEndian: Bool) throws {
        var f = HandPcap(bigEndian: bigEndian, snaplen: 64)
        f.record(seconds: 1, fraction: 1, data: handFrame(60, seed: 1))
        f.record(seconds: 2, fraction: 2, data: handFrame(100, seed: 2), wire: 1000)  // caplen 100 > snaplen 64
        f.record(seconds: 3, fraction: 3, data: handFrame(64, seed: 3))  // the next record is found after all 100 bytes
        let m = try #require(try expectAgreement(f, "oversnap.pcap"))
        try #require(m.records.count == 3)
        #expect(m.records[1].bytes == Array(handFrame(100, seed: 2).prefix(64)))
        #expect(m.records[1].wire == 1000)
        #expect(m.records[2].bytes == handFrame(64, seed: 3))
    }

    @Test("a snaplen of 0 or above 262144 means 262144", arguments: [UInt32(0), 300_000, 0xFFFF_FFFF])
    func oddSnaplen(snaplen: UInt32) throws {
        var f = HandPcap(snaplen: snaplen)
        f.record(seconds: 1, fraction: 1, data: handFrame(70_000, seed: 1))
        f.record(seconds: 2, fraction: 2, data: handFrame(262_144, seed: 2))
        try expectAgreement(f, "snaplen.pcap")
    }

    @Test("a capture length above 262144 is an error", arguments: [(UInt32(65535), false), (0, false), (65535, true)])
    func hugeCaplen(snaplen: UInt32, bigEndian: Bool) throws {
        var f = HandPcap(bigEndian: bigEndian, snaplen: snaplen)
        f.record(seconds: 1, fraction: 1, data: handFrame(60))
        f.record(seconds: 2, fraction: 2, data: handFrame(100), caplen: 262_145)
        try expectDamaged(f, "huge.pcap", failure: "invalid packet capture length 262145")
    }

    @Test("a record header cut after 10 bytes is a truncated dump file", arguments: [false, true])
    func cutHeader(bigEndian: Bool) throws {
        var f = HandPcap(bigEndian: bigEndian)
        f.record(seconds: 1, fraction: 1, data: handFrame(60))
        f.record(seconds: 2, fraction: 2, data: handFrame(60))
        f.bytes.removeLast(60 + 6)  // 10 of the second record's 16 header bytes remain
        try expectDamaged(f, "cuthdr.pcap", failure: "truncated dump file")
    }

    @Test("a record cut short is a truncated dump file",
          arguments: [(false, UInt32(65535)), (true, 65535), (false, 64)])  // snaplen 64: the cut record is also over-long
    func cutRecord(bigEndian: Bool, snaplen: UInt32) throws {
        var f = HandPcap(bigEndian: bigEndian, snaplen: snaplen)
        f.record(seconds: 1, fraction: 1, data: handFrame(60))
        f.record(seconds: 2, fraction: 2, data: handFrame(100))
        f.bytes.removeLast(60)  // 40 of 100 bytes remain
        try expectDamaged(f, "cutrec.pcap", failure: "truncated dump file")
    }

    @Test("a file of only the 24-byte header has no records", arguments: [false, true])
    func headerOnly(bigEndian: Bool) throws {
        let m = try #require(try expectAgreement(HandPcap(bigEndian: bigEndian, nanoseconds: bigEndian), "empty.pcap"))
        #expect(m.records.isEmpty)
        #expect(m.end == .end)
    }

    @Test("pcapng, other versions, other magic and short files go to libpcap (init returns nil)")
    func refused() throws {
        var paths: [String] = []
        defer { for p in paths { unlink(p) } }
        /// Writes `file` (removed at the end) and expects the fast reader to refuse it; returns its path.
        @discardableResult
        func expectRefused(_ file: HandPcap, _ name: String, _ comment: Comment,
                           sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
            let p = try file.write(name)
            paths.append(p)
            #expect(PcapFileReader(path: p) == nil, comment, sourceLocation: sourceLocation)
            return p
        }
        // Version 2.3 (caplen and len may be swapped) and 2.2 (they are): libpcap reads them, the fast reader does not.
        for minor: UInt16 in [3, 2] {
            for big in [false, true] {
                var f = HandPcap(bigEndian: big, minor: minor)
                f.record(seconds: 1, fraction: 1, data: handFrame(60), wire: 40)  // caplen > len: swapped in 2.3
                let p = try expectRefused(f, "v2\(minor).pcap", "version 2.\(minor), big-endian \(big)")
                #expect(mappedCaseLibpcap(p).0 != nil, "libpcap reads version 2.\(minor)")
            }
        }
        // pcapng: the corpus's, and a minimal one written here (section header and interface description blocks).
        if let dir = Corpus.directory {
            for name in Corpus.files where name.hasSuffix(".pcapng") {
                #expect(PcapFileReader(path: dir + "/" + name) == nil, "\(name)")
            }
        }
        var shb = HandPcap()
        shb.bytes = []
        shb.u32(0x0A0D_0D0A)  // block type
        shb.u32(28)  // block length
        shb.u32(0x1A2B_3C4D)  // byte-order magic
        shb.u16(1)
        shb.u16(0)  // version 1.0
        shb.u32(0xFFFF_FFFF)
        shb.u32(0xFFFF_FFFF)  // section length: unknown
        shb.u32(28)
        shb.u32(1)  // interface description block
        shb.u32(20)
        shb.u16(1)  // Ethernet
        shb.u16(0)
        shb.u32(65535)  // snaplen
        shb.u32(20)
        let ng = try expectRefused(shb, "min.pcapng", "pcapng")
        #expect(mappedCaseLibpcap(ng).0 != nil, "libpcap reads the minimal pcapng: \(mappedCaseLibpcap(ng).1)")
        // Kuznetzov's modified pcap (a longer record header), a text file, and files shorter than the header.
        var kuz = HandPcap()
        kuz.bytes.replaceSubrange(0..<4, with: [0x34, 0xCD, 0xB2, 0xA1])
        try expectRefused(kuz, "kuz.pcap", "modified pcap (0xa1b2cd34)")
        var text = HandPcap()
        text.bytes = Array("these are notes, not packets, really not\n".utf8)
        try expectRefused(text, "notes.txt", "text")
        for n in [0, 4, 23] {
            var short = HandPcap()
            short.bytes.removeLast(24 - n)
            try expectRefused(short, "short\(n).pcap", "\(n)-byte file")
        }
        #expect(PcapFileReader(path: "/nonexistent-\(getpid())/x.pcap") == nil)
    }

    @Test("out-of-range fractions are normalized as the libpcap path normalizes them")
    func oddTimestamps() throws {
        for nano in [false, true] {
            var f = HandPcap(nanoseconds: nano)
            f.record(seconds: 1_400_000_000, fraction: nano ? 1_000_000_000 : 1_000_000, data: handFrame(60, seed: 1))
            f.record(seconds: 1_400_000_000, fraction: nano ? 0x8000_0000 : 2_000_000, data: handFrame(60, seed: 2))
            f.record(seconds: 1_400_000_000, fraction: nano ? 0xFFFF_FFFF : 4_294_967, data: handFrame(60, seed: 3))
            try expectAgreement(f, "oddts.pcap", "\(nano ? "nanosecond" : "microsecond") fractions")
        }
    }

    /// Includes LINKTYPE_ values whose DLT_ value differs (ATM_RFC1483, SLIP_BSDOS, PPP_BSDOS, ATM_CLIP), and one
    /// with bits 16-25 set (libpcap masks with 0x03FFFFFF).
    @Test("link types in the file header map to libpcap's DLT values",
          arguments: [UInt32(0), 1, 9, 50, 101, 105, 113, 127, 228, 229, 276, 0x3000_0001, 147,
                      100, 102, 103, 104, 106, 107, 108, 109, 117, 246, 258, 0x0001_0001])
    func linkTypes(linkType: UInt32) throws {
        var f = HandPcap(linkType: linkType)
        f.record(seconds: 1, fraction: 1, data: handFrame(60))
        try expectAgreement(f, "lt.pcap", mayRefuse: true, "LINKTYPE \(linkType)")
    }

    @Test("a pcap tap on a LINKTYPE_ATM_RFC1483 capture gets every record (the stream's link type is libpcap's)")
    func tapLinkType() throws {
        var f = HandPcap(linkType: 100)
        for i in 0..<3 { f.record(seconds: UInt32(i), fraction: 0, data: handFrame(60, seed: UInt8(i))) }
        try withCaptureSource(f, named: "x", options: ",paused") { c, node, _ in
            let streamType = try #require(c.space.lock.withLock { c.space.streamLinkType(node) })
            #expect(streamType.rawValue == 11, "libpcap's DLT_ATM_RFC1483")
            let ring = openTap(c, node, .pcap(streamType))  // as all.pcap opens it
            try c.control(node, "start")
            #expect(eventually { ring.isEnded })
            #expect(c.space.lock.withLock { node.stats.tapDrops } == 0)
            #expect(ring.available == 3 * (16 + 60))
        }
    }

    /// Records whose link-layer pseudo-header libpcap rewrites: swapped to host order in a file of the other byte
    /// order (Linux USB, NFLOG, SocketCAN in Linux cooked headers), or with a length fix-up (memory-mapped USB).
    static let pseudoHeaderRecords: [(name: String, linkType: UInt32, data: [UInt8], wire: UInt32?)] = {
        var usb = [UInt8](repeating: 0, count: 64 + 16)
        usb[8] = 0x43  // event 'C' (complete)
        usb[9] = 0  // isochronous
        usb[10] = 0x81  // endpoint 1, in
        usb[32] = 100  // urb_len 100 (little-endian)
        usb[60] = 1  // ndesc 1
        usb[64 + 8] = 40  // descriptor: offset 0, length 40
        for i in 0..<8 { usb[i] = UInt8(i + 1) }  // id
        usb[12] = 3  // bus
        var nflog: [UInt8] = [2, 0, 0, 0]  // AF_INET, version 0, resource 0
        nflog += [0, 8, 0, 1, 0xAA, 0xBB, 0xCC, 0xDD]  // TLV: length 8, type 1 (big-endian, as written there)
        var sll: [UInt8] = [0, 0, 0x01, 0x18, 0, 0] + [UInt8](repeating: 0, count: 8) + [0x00, 0x0C]  // protocol CAN
        sll += [0x12, 0x34, 0x56, 0x78, 8, 0, 0, 0] + [UInt8](repeating: 0x5A, count: 8)  // can_id, len, data
        var sll2: [UInt8] = [0x00, 0x0C, 0, 0] + [0, 0, 0, 1] + [0x01, 0x18, 0, 0] + [UInt8](repeating: 0, count: 8)
        sll2 += [0x12, 0x34, 0x56, 0x78, 8, 0, 0, 0] + [UInt8](repeating: 0x5A, count: 8)
        return [("usb", 189, usb, nil), ("usb-mmapped", 220, usb, 64 + 16 + 100), ("nflog", 239, nflog, nil),
                ("sll-can", 113, sll, nil), ("sll2-can", 276, sll2, nil)]
    }()

    @Test("pseudo-headers libpcap rewrites (or the fast reader leaves the file to libpcap)",
          arguments: [0, 1, 2, 3, 4], [false, true])
    func pseudoHeaders(index: Int, bigEndian: Bool) throws {
        let r = Self.pseudoHeaderRecords[index]
        var f = HandPcap(bigEndian: bigEndian, linkType: r.linkType)
        f.record(seconds: 1, fraction: 1, data: r.data, wire: r.wire)
        // libpcap swaps these pseudo-headers to host order in files of the other byte order (swap_pseudo_headers),
        // and fixes up memory-mapped USB lengths in any file; the fast reader hands the bytes over as they are.
        try expectAgreement(f, "\(r.name).pcap", mayRefuse: true, "\(r.name), big-endian \(bigEndian)")
    }

    @Test("link types with a larger maximum capture length (D-Bus 128 MiB, USBPcap 1 MiB, EBHSCR 8 MiB)",
          arguments: [UInt32(231), 249, 279])
    func largeMaximum(linkType: UInt32) throws {
        var f = HandPcap(snaplen: 0, linkType: linkType)
        f.record(seconds: 1, fraction: 1, data: handFrame(300_000))
        try expectAgreement(f, "bigmax.pcap", mayRefuse: true, "LINKTYPE \(linkType)")
    }

    @Test("timestamps past 2038 (seconds >= 2^31): libpcap 1.10 reads the field as signed")
    func past2038() throws {
        var f = HandPcap(nanoseconds: true)
        f.record(seconds: 0x8000_0000, fraction: 5, data: handFrame(60))
        f.record(seconds: 0xFFFF_FFFF, fraction: 5, data: handFrame(60))
        try expectAgreement(f, "y2038.pcap")
    }

    @Test("through the pcap source: records up to the damage, then libpcap's reason in .errors",
          arguments: ["cutrec", "huge", "whole"])
    func throughTheSource(kind: String) throws {
        var f = HandPcap(nanoseconds: true)
        for i in 0..<300 { f.record(seconds: UInt32(1_600_000_000 + i), fraction: UInt32(i), data: handFrame(60 + i % 50, seed: UInt8(i & 0xFF))) }
        switch kind {
        case "cutrec":
            f.record(seconds: 9, fraction: 9, data: handFrame(100))
            f.bytes.removeLast(60)
        case "huge":
            f.record(seconds: 9, fraction: 9, data: handFrame(100), caplen: 300_000)
        default:
            break
        }
        try withCaptureSource(f, named: "x", options: ",paused") { c, node, path in
            let (libpcap, _) = mappedCaseLibpcap(path)
            let l = try #require(libpcap)
            #expect(expectFastEqualsLibpcap(path))

            let ring = openTap(c, node, capacity: 1 << 20)
            try c.control(node, "start")
            let got = drainUntilEnded(ring, within: 20)
            #expect(ring.isEnded, "the stream should end")
            #expect(got == l.records.flatMap(\.bytes), "the tap holds libpcap's records")
            #expect(c.statsText(node).contains("packets_read: \(l.records.count)\n"), "\(c.statsText(node))")
            let errors = c.errors.text
            switch l.end {
            case .failed(let why)?:
                let kind = mappedCaseErrorKind(why)
                #expect(errors.contains("source x: '\(path)' is damaged after \(l.records.count) packets: \(kind)"),
                        "libpcap: '\(why)'; .errors: '\(errors)'")
            default:
                #expect(errors.isEmpty, "\(errors)")
            }
        }
    }
}

@Suite("capture-file reader: chunks read ahead")
struct PcapFileReaderChunkTests {
    @Test("5 MiB of records from 3 bytes to 200000 across 1 MiB chunks, through io_uring and through pread: as libpcap reads them",
          arguments: [false, true])
    func acrossChunks(pread: Bool) throws {
        var f = HandPcap(snaplen: 262_144)
        var total = 0, i = 0
        while total < 5 << 20 {
            let size = [60, 1514, 65535, 9000, 200_000, 3, 262_144][i % 7]
            f.record(seconds: UInt32(i), fraction: UInt32(i % 1_000_000), data: (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ i) })
            total += size + 16
            i += 1
        }
        let path = try f.write("chunks.pcap")
        defer { unlink(path) }
        let mine = try #require(mappedCaseMapped(path, batch: 50, pread: pread))
        let (lib, why) = mappedCaseLibpcap(path)
        let theirs = try #require(lib, "\(why)")
        #expect(mine.end == .end)
        #expect(mine.records.count == i)
        #expect(mine.records == theirs.records)
    }

    @Test("a file cut inside a record after the first chunk ends with libpcap's truncation message", arguments: [false, true])
    func cutAfterChunks(pread: Bool) throws {
        var f = HandPcap()
        for i in 0..<2000 { f.record(seconds: UInt32(i), fraction: 0, data: [UInt8](repeating: UInt8(i & 0xff), count: 1500)) }
        f.bytes.removeLast(700)
        let path = try f.write("cut.pcap")
        defer { unlink(path) }
        let mine = try #require(mappedCaseMapped(path, batch: 64, pread: pread))
        #expect(mine.records.count == 1999)
        #expect(mine.end == .failed("truncated dump file; tried to read 1500 captured bytes, only got 800"))
    }
}
