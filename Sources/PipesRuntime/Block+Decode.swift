/// Layer offsets of a block, decoded once and shared by all downstream filters (so `tcp` does not re-parse what
/// `ip` parsed). Offsets are from the start of the block; -1 means absent or not decodable.
public struct Layers {
    public enum State: UInt8 { case unknown, network, transport }
    public var state: State = .unknown
    /// Ethertype of the network layer: 0x0800 (IPv4), 0x86DD (IPv6), other values, or 0 if none.
    public var networkType: UInt16 = 0
    public var network: Int32 = -1
    /// IP protocol number of the transport layer (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), or -1.
    public var transportProtocol: Int16 = -1
    public var transport: Int32 = -1
    /// Start of the transport payload, or -1 when the transport header is incomplete.
    public var payload: Int32 = -1
    /// True for an IPv4 fragment with a non-zero offset (no transport header inside), as tcpdump treats it.
    public var laterFragment = false
    /// End of the IP datagram (excludes link-layer padding); -1 if unknown (then the captured end counts).
    public var end: Int32 = -1
    public init() {}
}

public let etherTypeIPv4: UInt16 = 0x0800
public let etherTypeIPv6: UInt16 = 0x86DD

extension Block {
    /// Decodes the link layer: sets `layers.networkType` and `layers.network`. Safe on any input.
    @inline(__always)
    public mutating func decodeNetwork() {
        if layers.state != .unknown { return }
        layers.state = .network
        switch linkType {
        case .ethernet:
            guard let t = u16(12) else { return }
            setNetwork(t, at: 14)
        case .raw, .dltRaw12, .dltRaw14:
            guard let v = u8(0) else { return }
            switch v >> 4 {
            case 4: setNetwork(etherTypeIPv4, at: 0)
            case 6: setNetwork(etherTypeIPv6, at: 0)
            default: return
            }
        case .ipv4: setNetwork(etherTypeIPv4, at: 0)
        case .ipv6: setNetwork(etherTypeIPv6, at: 0)
        case .null, .loop:
            guard let raw = u32(0) else { return }
            // Family is host order for DLT_NULL, network order for DLT_LOOP; accept both byte orders.
            // DLT_LOOP is network order; DLT_NULL is the capturing host's order, so take whichever is small.
            let fam = linkType == .loop ? raw : (raw & 0xFFFF_0000 != 0 ? raw.byteSwapped : raw)
            switch fam {
            case 2: setNetwork(etherTypeIPv4, at: 4)
            case 24, 28, 30: setNetwork(etherTypeIPv6, at: 4)
            default: return
            }
        case .linuxSLL:
            guard let t = u16(14) else { return }
            setNetwork(t, at: 16)
        case .linuxSLL2:
            guard let t = u16(0) else { return }
            setNetwork(t, at: 20)
        case .arcnetLinux:
            // Source, destination, offset (2), then the protocol: RFC 1201 types have a split flag and a sequence
            // number (8 bytes in all, 12 for an exception packet, split flag 0xff); RFC 1051 types do not (5).
            guard let t = u8(4) else { return }
            switch t {
            case 212, 0xC4:
                guard let split = u8(5) else { return }
                setNetwork(t == 212 ? etherTypeIPv4 : etherTypeIPv6, at: split == 0xFF ? 12 : 8)
            case 240: setNetwork(etherTypeIPv4, at: 5)
            default: return
            }
        case .ppp:
            guard let p = u16(2) else { return }
            if p == 0x0021 { setNetwork(etherTypeIPv4, at: 4) } else if p == 0x0057 { setNetwork(etherTypeIPv6, at: 4) }
        default:
            return
        }
    }

    @inline(__always)
    private mutating func setNetwork(_ type: UInt16, at offset: Int) {
        layers.networkType = type
        layers.network = Int32(offset)
    }

    /// Decodes through the transport layer (IPv4 and IPv6, walking IPv6 extension headers). Safe on any input.
    @inline(__always)
    public mutating func decodeTransport() {
        if layers.state == .transport { return }
        decodeNetwork()
        layers.state = .transport
        let n = Int(layers.network)
        guard n >= 0 else { return }
        if layers.networkType == etherTypeIPv4 {
            guard let vihl = u8(n), vihl >> 4 == 4 else { return }
            let ihl = Int(vihl & 0x0F) * 4
            guard ihl >= 20, let proto = u8(n + 9), let frag = u16(n + 6), let total = u16(n + 2) else { return }
            layers.transportProtocol = Int16(proto)
            if Int(total) >= ihl { layers.end = Int32(min(count, n + Int(total))) }  // 0: TSO, use the capture
            if frag & 0x1FFF != 0 { layers.laterFragment = true; return }
            setTransport(at: n + ihl, proto: proto)
        } else if layers.networkType == etherTypeIPv6 {
            guard let v = u8(n), v >> 4 == 6, var next = u8(n + 6), let plen = u16(n + 4) else { return }
            if plen != 0 { layers.end = Int32(min(count, n + 40 + Int(plen))) }  // 0: jumbogram
            var off = n + 40
            // Walk hop-by-hop (0), routing (43), fragment (44) and destination options (60) headers.
            var hops = 0
            while hops < 8 {
                hops += 1
                switch next {
                case 0, 43, 60:
                    guard let nh = u8(off), let len = u8(off + 1) else { return }
                    next = nh
                    off += (Int(len) + 1) * 8
                case 44:
                    guard let nh = u8(off), let fo = u16(off + 2) else { return }
                    next = nh
                    if fo & 0xFFF8 != 0 { layers.transportProtocol = Int16(nh); layers.laterFragment = true; return }
                    off += 8
                default:
                    layers.transportProtocol = Int16(next)
                    setTransport(at: off, proto: next)
                    return
                }
            }
        }
    }

    @inline(__always)
    private mutating func setTransport(at off: Int, proto: UInt8) {
        guard off <= count else { return }
        layers.transport = Int32(off)
        let headerLength: Int?
        switch proto {
        case 6:
            if let d = u8(off + 12) { headerLength = max(20, Int(d >> 4) * 4) } else { headerLength = nil }
        case 17: headerLength = 8
        case 1, 58: headerLength = 8
        default: headerLength = 0
        }
        if let h = headerLength, off + h <= count { layers.payload = Int32(off + h) }
    }

    /// The transport payload (or the whole block when it is not a decodable packet, e.g. injected text).
    @inline(__always)
    public mutating func payloadBytes() -> UnsafeRawBufferPointer {
        if linkType == .user { return bytes }
        decodeTransport()
        let p = Int(layers.payload)
        let e = layers.end >= 0 ? Int(layers.end) : count
        if p < 0 || p >= e { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(rebasing: bytes[p..<e])
    }

    /// Source and destination ports of a TCP or UDP header (first fragment only), or nil.
    @inline(__always)
    public mutating func ports() -> (source: UInt16, destination: UInt16)? {
        decodeTransport()
        let p = layers.transportProtocol
        guard p == 6 || p == 17 || p == 132, !layers.laterFragment, layers.transport >= 0 else { return nil }
        let t = Int(layers.transport)
        guard let s = u16(t), let d = u16(t + 2) else { return nil }
        return (s, d)
    }
}
