#if canImport(Glibc)
import Glibc
#endif
import PipesFilters
import PipesRuntime
import Testing

// Hand-made packets for the filter tests. Each builder lays out one header, field by field.

func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
func le16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

enum Pkt {
    static let macA: [UInt8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55]
    static let macB: [UInt8] = [0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB]

    /// Ethernet II header (14) + payload.
    static func ethernet(type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        macA  // destination MAC
            + macB  // source MAC
            + be16(type)  // EtherType
            + payload
    }

    /// IPv4 header (20 + options) + payload.
    static func ipv4(proto: UInt8, fragmentOffset: UInt16 = 0, moreFragments: Bool = false, options: [UInt8] = [],
                     src: [UInt8] = [10, 0, 0, 1], dst: [UInt8] = [10, 0, 0, 2], _ payload: [UInt8]) -> [UInt8] {
        precondition(options.count % 4 == 0)
        let ihl = UInt8(5 + options.count / 4)
        let total = UInt16(20 + options.count + payload.count)
        return [0x40 | ihl]  // version 4, IHL
            + [0x00]  // DSCP, ECN
            + be16(total)  // total length
            + be16(0x1234)  // identification
            + be16((moreFragments ? 0x2000 : 0) | fragmentOffset)  // flags, fragment offset (8-byte units)
            + [64]  // TTL
            + [proto]  // protocol
            + be16(0)  // header checksum (not checked)
            + src  // source address
            + dst  // destination address
            + options  // options
            + payload
    }

    /// IPv6 header (40) + payload (extension headers included in it).
    static func ipv6(next: UInt8, _ payload: [UInt8]) -> [UInt8] {
        [0x60, 0x00, 0x00, 0x00]  // version 6, traffic class, flow label
            + be16(UInt16(payload.count))  // payload length
            + [next]  // next header
            + [64]  // hop limit
            + [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]  // source 2001:db8::1
            + [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [2]  // destination 2001:db8::2
            + payload
    }

    /// IPv6 hop-by-hop options header (8 bytes) + payload.
    static func hopByHop(next: UInt8, _ payload: [UInt8]) -> [UInt8] {
        [next]  // next header
            + [0]  // header extension length 0 (8 bytes)
            + [0x01, 0x04, 0, 0, 0, 0]  // PadN option, length 4
            + payload
    }

    /// TCP header (20, no options) + payload.
    static func tcp(sport: UInt16, dport: UInt16, flags: UInt8 = 0x18, _ payload: [UInt8] = []) -> [UInt8] {
        be16(sport)  // source port
            + be16(dport)  // destination port
            + [0, 0, 0, 1]  // sequence number
            + [0, 0, 0, 0]  // acknowledgement number
            + [0x50]  // data offset 5 (20 bytes)
            + [flags]  // flags
            + be16(0xFFFF)  // window
            + be16(0)  // checksum
            + be16(0)  // urgent pointer
            + payload
    }

    /// UDP header (8) + payload.
    static func udp(sport: UInt16, dport: UInt16, _ payload: [UInt8] = []) -> [UInt8] {
        be16(sport)  // source port
            + be16(dport)  // destination port
            + be16(UInt16(8 + payload.count))  // length
            + be16(0)  // checksum
            + payload
    }

    /// ICMP or ICMPv6 header (8) + payload.
    static func icmp(type: UInt8 = 8, code: UInt8 = 0, _ payload: [UInt8] = []) -> [UInt8] {
        [type]  // type (8: echo request; 128 for ICMPv6)
            + [code]  // code
            + be16(0)  // checksum
            + be16(1)  // identifier
            + be16(1)  // sequence number
            + payload
    }

    /// An ARP request (28 bytes), for Ethernet type 0x0806.
    static let arp: [UInt8] =
        be16(1)  // hardware type: Ethernet
        + be16(0x0800)  // protocol type: IPv4
        + [6, 4]  // hardware size, protocol size
        + be16(1)  // opcode: request
        + macB + [10, 0, 0, 1]  // sender MAC, sender IP
        + [0, 0, 0, 0, 0, 0] + [10, 0, 0, 2]  // target MAC, target IP

    // Common frames.
    static func ethTCP4(sport: UInt16 = 40000, dport: UInt16 = 80, flags: UInt8 = 0x18, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, tcp(sport: sport, dport: dport, flags: flags, payload)))
    }
    static func ethUDP4(sport: UInt16 = 40000, dport: UInt16 = 53, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 17, udp(sport: sport, dport: dport, payload)))
    }
    static func ethTCP6(sport: UInt16 = 40000, dport: UInt16 = 80, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 6, tcp(sport: sport, dport: dport, payload)))
    }
    static func ethUDP6(sport: UInt16 = 40000, dport: UInt16 = 53, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 17, udp(sport: sport, dport: dport, payload)))
    }
    static func ethICMP4(_ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 1, icmp(payload)))
    }
    static func ethICMP6() -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 58, icmp(type: 128)))
    }
    static func ethARP() -> [UInt8] { ethernet(type: 0x0806, arp) }
    /// A later fragment of a TCP/IPv4 datagram: the bytes after the IP header look like ports 80 -> 80.
    static func ethTCP4LaterFragment() -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, fragmentOffset: 185, [0x00, 0x50, 0x00, 0x50, 1, 2, 3, 4]))
    }
    static func ethTCP4FirstFragment(dport: UInt16 = 80) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, moreFragments: true, tcp(sport: 1234, dport: dport, Array("abc".utf8))))
    }
    /// TCP over IPv4 with 4 bytes of options (IHL 6).
    static func ethTCP4Options(dport: UInt16 = 80) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, options: [1, 1, 1, 0], tcp(sport: 5555, dport: dport, Array("x".utf8))))
    }
    static func ethTCP6HopByHop(dport: UInt16 = 80) -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 0, hopByHop(next: 6, tcp(sport: 5555, dport: dport))))
    }
    /// Raw IP (LINKTYPE_RAW), no link header.
    static func rawTCP4(dport: UInt16 = 80, _ payload: [UInt8] = []) -> [UInt8] {
        ipv4(proto: 6, tcp(sport: 40000, dport: dport, payload))
    }
}

/// Runs one block through a filter and returns its class (and the block as the filter left it).
@discardableResult
func classify(_ filter: any Filter, _ bytes: [UInt8], _ linkType: LinkType = .ethernet, classValue: UInt32 = 0,
              wireLength: Int? = nil, inspect: (inout Block) -> Void = { _ in }) -> UInt32 {
    bytes.withUnsafeBytes { raw in
        var b = Block(bytes: raw, wireLength: wireLength, linkType: linkType)
        b.classValue = classValue
        let c = filter.process(&b)
        inspect(&b)
        return c
    }
}

/// Instantiates a library filter by name.
func make(_ name: String, _ args: String = "", sourceLocation: SourceLocation = #_sourceLocation) throws -> any Filter {
    let d = try #require(FilterLibrary.byName[name], "no filter '\(name)' in the library", sourceLocation: sourceLocation)
    return try d.make(args)
}

/// The FilterError a construction throws, or nil.
func makeError(_ name: String, _ args: String) -> FilterError? {
    guard let d = FilterLibrary.byName[name] ?? FilterLibrary.sources[name] ?? (name == "junction" ? FilterLibrary.junction : nil) else {
        return FilterError("no such descriptor")
    }
    do {
        _ = try d.make(args)
        return nil
    } catch {
        return error
    }
}

/// A fresh path under the system temporary directory.
func temporaryPath(_ name: String) -> String {
    let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    return "\(dir)/pipesfs-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))-\(name)"
}

/// Writes bytes to a file.
func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    guard let f = fopen(path, "w") else { throw FilterError("cannot create \(path)") }
    defer { fclose(f) }
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
}

/// A classic pcap file (microsecond timestamps) holding `packets`.
func pcapFile(linkType: UInt32, _ packets: [(seconds: UInt32, micros: UInt32, bytes: [UInt8], wire: Int?)]) -> [UInt8] {
    var out = le32(0xA1B2_C3D4)  // magic: microseconds, host order
        + le16(2) + le16(4)  // version 2.4
        + le32(0)  // thiszone
        + le32(0)  // sigfigs
        + le32(65535)  // snaplen
        + le32(linkType)  // link type
    for p in packets {
        out += le32(p.seconds)  // ts_sec
            + le32(p.micros)  // ts_usec
            + le32(UInt32(p.bytes.count))  // caplen
            + le32(UInt32(p.wire ?? p.bytes.count))  // len
            + p.bytes
    }
    return out
}
