import PipesBuffering

/// Where a block stands in its flow (`Block.flowMarks`).
public struct FlowMarks: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The first bytes of the flow (direction) on this stream.
    public static let start = FlowMarks(rawValue: 1)
    /// The last: nothing more of the flow follows (FIN, RST, eviction, or the end of the input).
    public static let end = FlowMarks(rawValue: 2)
}

/// An IP address, v4 or v6, as 16 bytes (v4 in the last four, as an IPv4-mapped address without the ffff).
public struct FlowAddress: Hashable, Sendable {
    public var high: UInt64
    public var low: UInt64
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Reads an address of `count` bytes (4 or 16) in network order.
    @inline(__always)
    public init(_ p: UnsafeRawPointer, count: Int) {
        if count == 4 {
            high = 0
            low = UInt64(UInt32(bigEndian: p.loadUnaligned(as: UInt32.self)))
        } else {
            high = UInt64(bigEndian: p.loadUnaligned(as: UInt64.self))
            low = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        }
    }

    /// The address in tcpflow's file-name form: IPv4 as four zero-padded decimal bytes (`010.000.000.001`), IPv6 in
    /// its RFC 5952 short form (`2001:db8::1`, what tcpflow's `inet_ntop` gives).
    public func tcpflowText(v6: Bool) -> String {
        if !v6 {
            return (0..<4).map { i in
                let b = Int((low >> UInt64(24 - 8 * i)) & 0xFF)
                return String(repeating: "0", count: 3 - String(b).count) + String(b)
            }.joined(separator: ".")
        }
        return text(v6: true)
    }

    /// The usual text form: dotted decimal, or RFC 5952 IPv6 (the longest run of zero groups as `::`).
    public func text(v6: Bool) -> String {
        if !v6 {
            return (0..<4).map { String((low >> UInt64(24 - 8 * $0)) & 0xFF) }.joined(separator: ".")
        }
        let groups = (0..<8).map { i -> UInt16 in
            let w = i < 4 ? high : low
            return UInt16((w >> UInt64(48 - 16 * (i % 4))) & 0xFFFF)
        }
        var best = (start: -1, count: 0)
        var i = 0
        while i < 8 {
            if groups[i] == 0 {
                var j = i
                while j < 8 && groups[j] == 0 { j += 1 }
                if j - i > best.count && j - i >= 2 { best = (i, j - i) }
                i = j
            } else {
                i += 1
            }
        }
        func hex(_ r: Range<Int>) -> String { r.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        if best.start < 0 { return hex(0..<8) }
        return hex(0..<best.start) + "::" + hex((best.start + best.count)..<8)
    }
}

/// The identity of one direction of a connection: who sent the bytes to whom.
public struct FlowKey: Hashable, Sendable {
    public var source: FlowAddress
    public var destination: FlowAddress
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var v6: Bool
    public init(source: FlowAddress, destination: FlowAddress, sourcePort: UInt16, destinationPort: UInt16, v6: Bool) {
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.v6 = v6
    }

    /// The other direction.
    public var reversed: FlowKey {
        FlowKey(source: destination, destination: source, sourcePort: destinationPort, destinationPort: sourcePort, v6: v6)
    }

    /// tcpflow's name for the file of this direction: `SRCIP.SPORT-DSTIP.DPORT`, addresses and ports zero-padded
    /// (`010.000.000.001.01024-192.000.002.001.00080`).
    public var tcpflowName: String {
        func port(_ p: UInt16) -> String { let s = String(p); return String(repeating: "0", count: 5 - s.count) + s }
        return "\(source.tcpflowText(v6: v6)).\(port(sourcePort))-\(destination.tcpflowText(v6: v6)).\(port(destinationPort))"
    }

    /// `10.0.0.1:1024 > 192.0.2.1:80` (IPv6 in brackets).
    public var description: String {
        func end(_ a: FlowAddress, _ p: UInt16) -> String { v6 ? "[\(a.text(v6: true))]:\(p)" : "\(a.text(v6: false)):\(p)" }
        return "\(end(source, sourcePort)) > \(end(destination, destinationPort))"
    }
}

/// What a flow tag stands for.
public struct FlowInfo: Sendable, Hashable {
    /// The direction's addresses and ports (sender first).
    public var key: FlowKey
    /// The tag (`FlowTable.tag(connection:direction:)`).
    public var tag: UInt32
    /// 0: sent by the side that opened the connection (or was seen first); 1: the other side.
    public var direction: UInt32 { tag & 1 }
    public var connection: UInt32 { tag >> 1 }
}

/// The names of flow tags, for every filter of the process (§4.2: "only the first filter in a pipeline has to
/// assign a block to a session; all successive filters refer to the [tag]"). A filter that assigns tags (`untcp`)
/// registers each connection once; filters below look a tag up the first time they see it (`files` names its file
/// by it) and keep what they need. Connections that ended stay known for the last `retainedEnded` of them, so a
/// filter in another space that sees a flow's last bytes after its end can still name it. Not on the per-block
/// path: one lock per new connection and per lookup of a new tag.
public final class FlowTable: @unchecked Sendable {
    public static let shared = FlowTable()

    /// How many ended connections stay known.
    public static let retainedEnded = 1 << 16

    private let lock = ConditionLock()
    private var live: [UInt32: FlowKey] = [:]  // connection → key of direction 0
    private var ended: [UInt32: FlowKey] = [:]
    private var endedOrder: [UInt32] = []
    private var endedNext = 0
    private var nextConnection: UInt32 = 1

    public init() {}

    /// The tag of one direction of a connection.
    @inline(__always)
    public static func tag(connection: UInt32, direction: UInt32) -> UInt32 { connection << 1 | (direction & 1) }

    /// A new connection whose direction 0 is `key`: returns its number (never 0; wraps after 2^31 - 1).
    public func register(_ key: FlowKey) -> UInt32 {
        // lock()/unlock() rather than withLock: no closure context to retain, once per connection.
        lock.lock()
        defer { lock.unlock() }
        var c = nextConnection
        while live[c] != nil || c == 0 { c = (c &+ 1) & 0x7FFF_FFFF }
        nextConnection = (c &+ 1) & 0x7FFF_FFFF
        live[c] = key
        return c
    }

    /// The connection ended: it stays known among the last `retainedEnded` ended ones.
    public func retire(_ connection: UInt32) {
        lock.lock()
        defer { lock.unlock() }
        guard let k = live.removeValue(forKey: connection) else { return }
        if endedOrder.count < FlowTable.retainedEnded {
            endedOrder.append(connection)
        } else {
            ended.removeValue(forKey: endedOrder[endedNext])
            endedOrder[endedNext] = connection
            endedNext = (endedNext + 1) % FlowTable.retainedEnded
        }
        ended[connection] = k
    }

    /// What `tag` stands for, or nil if it was never registered or ended too long ago.
    public func info(_ tag: UInt32) -> FlowInfo? {
        lock.lock()
        defer { lock.unlock() }
        let c = tag >> 1
        guard let k = live[c] ?? ended[c] else { return nil }
        return FlowInfo(key: tag & 1 == 0 ? k : k.reversed, tag: tag)
    }

    /// Connections registered and not retired.
    public var liveCount: Int { lock.withLock { live.count } }
}

/// A filter that may hold blocks back (a reassembler waiting for a missing segment): when everything upstream of
/// it has ended, the runtime calls `endOfStream()` once, as a producer of its node's space (that space's lock held),
/// before the node's own taps and children see their end, so what it held back goes out first.
public protocol FlushingFilter: Filter {
    func endOfStream()
}
