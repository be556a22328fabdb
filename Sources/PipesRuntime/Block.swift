/// Link-layer header types, numbered as libpcap's LINKTYPE_* / DLT_* values.
public struct LinkType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let null = LinkType(rawValue: 0)  // BSD loopback, host-order family
    public static let ethernet = LinkType(rawValue: 1)
    public static let ppp = LinkType(rawValue: 9)
    public static let raw = LinkType(rawValue: 101)  // LINKTYPE_RAW: IPv4 or IPv6, no link header
    public static let dltRaw12 = LinkType(rawValue: 12)  // DLT_RAW on most systems
    public static let dltRaw14 = LinkType(rawValue: 14)  // DLT_RAW on OpenBSD
    public static let loop = LinkType(rawValue: 108)  // OpenBSD loopback, network-order family
    public static let linuxSLL = LinkType(rawValue: 113)
    public static let ipv4 = LinkType(rawValue: 228)
    public static let ipv6 = LinkType(rawValue: 229)
    public static let linuxSLL2 = LinkType(rawValue: 276)
    public static let arcnetLinux = LinkType(rawValue: 129)  // Linux ARCNET: RFC 1201 and RFC 1051 headers
    /// Data that is not a frame: written into a tap by a process (LINKTYPE_USER0).
    public static let user = LinkType(rawValue: 147)

    /// The value libpcap's API (`pcap_open_dead`, `pcap_datalink`) uses: DLT_RAW is 12 on Linux, not 101.
    public var dltValue: Int32 { self == .raw || self == .dltRaw14 ? 12 : rawValue }
    /// The value a capture file header carries (LINKTYPE_*): 101 for raw IP.
    public var fileValue: UInt32 { self == .dltRaw12 || self == .dltRaw14 ? 101 : UInt32(bitPattern: rawValue) }
    /// The 24-byte header of a classic pcap file of this link type, as every file and `all.pcap` here writes it:
    /// microsecond timestamps, version 2.4, snapshot length 262144.
    public var pcapFileHeader: [UInt8] {
        var h: (UInt32, UInt16, UInt16, Int32, UInt32, UInt32, UInt32) = (0xA1B2_C3D4, 2, 4, 0, 0, 262_144, fileValue)
        return withUnsafeBytes(of: &h) { Array($0) }
    }
    /// Two link types that mean the same framing.
    public func sameFraming(_ o: LinkType) -> Bool { dltValue == o.dltValue }

    public var description: String {
        switch self {
        case .null: "null"
        case .ethernet: "ethernet"
        case .ppp: "ppp"
        case .raw, .dltRaw12, .dltRaw14: "raw"
        case .loop: "loop"
        case .linuxSLL: "linux-sll"
        case .linuxSLL2: "linux-sll2"
        case .arcnetLinux: "arcnet-linux"
        case .ipv4: "ipv4"
        case .ipv6: "ipv6"
        case .user: "user"
        default: "linktype-\(rawValue)"
        }
    }
}

/// A block travelling through the graph: a non-owning view of bytes plus the metadata filters annotate (§6.1).
///
/// Blocks are values passed `inout` down the graph by function calls; they never own memory, so passing one
/// allocates nothing. The bytes stay valid for the duration of one `push` from a source.
public struct Block {
    /// The captured bytes.
    public var bytes: UnsafeRawBufferPointer
    /// Length on the wire (may exceed `bytes.count` when the capture was truncated by a snap length).
    public var wireLength: Int
    public var seconds: Int64
    public var nanoseconds: Int32
    public var linkType: LinkType
    /// The class value the upstream filter returned (0 never travels: it means "do not forward").
    public var classValue: UInt32 = 0
    /// Which push from a source (or injection) this block is: every copy of one block that reaches a node by
    /// several paths carries the same serial, so join filters (union, intersect, difference) recognise it.
    /// Stamped where a block enters the graph (`ExecutionSpace.stamp`), carried across spaces by channels.
    public var serial: UInt64 = 0
    /// The flow tag (§4.2, connection handling): which connection and direction the bytes belong to when one stream
    /// carries many connections (`untcp` sets it; `FlowTable` names it). 0: not part of a flow. Filters below the
    /// one that set it keep it, so they group blocks into sessions by it instead of parsing headers again.
    public var flow: UInt32 = 0
    /// Where the block stands in its flow: its first bytes, its last (nothing follows: FIN, RST or eviction).
    public var flowMarks: FlowMarks = []
    /// Decoded layer offsets; see `Block+Decode.swift`. Filled lazily, once, by whichever filter needs them.
    public var layers = Layers()

    public init(bytes: UnsafeRawBufferPointer, wireLength: Int? = nil, seconds: Int64 = 0, nanoseconds: Int32 = 0,
                linkType: LinkType) {
        self.bytes = bytes
        self.wireLength = wireLength ?? bytes.count
        self.seconds = seconds
        self.nanoseconds = nanoseconds
        self.linkType = linkType
    }

    @inline(__always) public var count: Int { bytes.count }

    /// Big-endian readers that return nil instead of trapping when the bytes are not there.
    @inline(__always)
    public func u8(_ at: Int) -> UInt8? {
        at >= 0 && at < bytes.count ? bytes[at] : nil
    }
    @inline(__always)
    public func u16(_ at: Int) -> UInt16? {
        guard at >= 0, at + 2 <= bytes.count else { return nil }
        return UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1])
    }
    @inline(__always)
    public func u32(_ at: Int) -> UInt32? {
        guard at >= 0, at + 4 <= bytes.count else { return nil }
        return UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
    }
}
