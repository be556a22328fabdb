// Hand-made packets for the tests. Each builder lays out one header, field by field.

/// A 16-bit value in network (big-endian) order.
public func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }

public enum Pkt {
    public static let macA: [UInt8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55]
    public static let macB: [UInt8] = [0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB]

    /// Ethernet II header (14) + payload.
    public static func ethernet(type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        macA  // destination MAC
            + macB  // source MAC
            + be16(type)  // EtherType
            + payload
    }

    /// Linux cooked capture v1 header (SLL, 16) + payload.
    public static func linuxSLL(protocol type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        be16(0)  // packet type 0 (to us)
            + be16(1)  // ARPHRD_ETHER
            + be16(6)  // link-layer address length 6
            + macA + [0, 0]  // link-layer address, padded to 8
            + be16(type)  // protocol (EtherType)
            + payload
    }

    /// IPv4 header (20 + options) + payload.
    public static func ipv4(proto: UInt8, fragmentOffset: UInt16 = 0, moreFragments: Bool = false, options: [UInt8] = [],
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
    public static func ipv6(next: UInt8, _ payload: [UInt8]) -> [UInt8] {
        [0x60, 0x00, 0x00, 0x00]  // version 6, traffic class, flow label
            + be16(UInt16(payload.count))  // payload length
            + [next]  // next header
            + [64]  // hop limit
            + [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]  // source 2001:db8::1
            + [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [2]  // destination 2001:db8::2
            + payload
    }

    /// IPv6 hop-by-hop options header (8 bytes) + payload.
    public static func hopByHop(next: UInt8, _ payload: [UInt8]) -> [UInt8] {
        [next]  // next header
            + [0]  // header extension length 0 (8 bytes)
            + [0x01, 0x04, 0, 0, 0, 0]  // PadN option, length 4
            + payload
    }

    /// TCP header (20, no options) + payload.
    public static func tcp(sport: UInt16, dport: UInt16, flags: UInt8 = 0x18, seq: UInt32 = 1, _ payload: [UInt8] = []) -> [UInt8] {
        be16(sport)  // source port
            + be16(dport)  // destination port
            + be16(UInt16(seq >> 16)) + be16(UInt16(seq & 0xFFFF))  // sequence number
            + [0, 0, 0, 0]  // acknowledgement number
            + [0x50]  // data offset 5 (20 bytes)
            + [flags]  // flags
            + be16(0xFFFF)  // window
            + be16(0)  // checksum
            + be16(0)  // urgent pointer
            + payload
    }

    /// UDP header (8) + payload.
    public static func udp(sport: UInt16, dport: UInt16, _ payload: [UInt8] = []) -> [UInt8] {
        be16(sport)  // source port
            + be16(dport)  // destination port
            + be16(UInt16(8 + payload.count))  // length
            + be16(0)  // checksum
            + payload
    }

    /// ICMP or ICMPv6 header (8) + payload.
    public static func icmp(type: UInt8 = 8, code: UInt8 = 0, _ payload: [UInt8] = []) -> [UInt8] {
        [type]  // type (8: echo request; 128 for ICMPv6)
            + [code]  // code
            + be16(0)  // checksum
            + be16(1)  // identifier
            + be16(1)  // sequence number
            + payload
    }

    /// An ARP request (28 bytes), for Ethernet type 0x0806.
    public static let arp: [UInt8] =
        be16(1)  // hardware type: Ethernet
        + be16(0x0800)  // protocol type: IPv4
        + [6, 4]  // hardware size, protocol size
        + be16(1)  // opcode: request
        + macB + [10, 0, 0, 1]  // sender MAC, sender IP
        + [0, 0, 0, 0, 0, 0] + [10, 0, 0, 2]  // target MAC, target IP

    // Common frames.
    public static func ethTCP4(sport: UInt16 = 40000, dport: UInt16 = 80, flags: UInt8 = 0x18, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, tcp(sport: sport, dport: dport, flags: flags, payload)))
    }
    public static func ethUDP4(sport: UInt16 = 40000, dport: UInt16 = 53, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 17, udp(sport: sport, dport: dport, payload)))
    }
    public static func ethTCP6(sport: UInt16 = 40000, dport: UInt16 = 80, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 6, tcp(sport: sport, dport: dport, payload)))
    }
    public static func ethUDP6(sport: UInt16 = 40000, dport: UInt16 = 53, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 17, udp(sport: sport, dport: dport, payload)))
    }
    public static func ethICMP4(_ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 1, icmp(payload)))
    }
    public static func ethICMP6() -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 58, icmp(type: 128)))
    }
    public static func ethARP() -> [UInt8] { ethernet(type: 0x0806, arp) }
    /// A later fragment of a TCP/IPv4 datagram: the bytes after the IP header look like ports 80 -> 80.
    public static func ethTCP4LaterFragment() -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, fragmentOffset: 185, [0x00, 0x50, 0x00, 0x50, 1, 2, 3, 4]))
    }
    public static func ethTCP4FirstFragment(dport: UInt16 = 80) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, moreFragments: true, tcp(sport: 1234, dport: dport, Array("abc".utf8))))
    }
    /// TCP over IPv4 with 4 bytes of options (IHL 6).
    public static func ethTCP4Options(dport: UInt16 = 80) -> [UInt8] {
        ethernet(type: 0x0800, ipv4(proto: 6, options: [1, 1, 1, 0], tcp(sport: 5555, dport: dport, Array("x".utf8))))
    }
    public static func ethTCP6HopByHop(dport: UInt16 = 80) -> [UInt8] {
        ethernet(type: 0x86DD, ipv6(next: 0, hopByHop(next: 6, tcp(sport: 5555, dport: dport))))
    }
    /// Raw IP (LINKTYPE_RAW), no link header.
    public static func rawTCP4(dport: UInt16 = 80, _ payload: [UInt8] = []) -> [UInt8] {
        ipv4(proto: 6, tcp(sport: 40000, dport: dport, payload))
    }
}
