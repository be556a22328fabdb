import PipesRuntime

/// `pcap`: wraps a stream as pcap records (§6.1, the rewriting class; §4.2's `rx | ip | tcp | pcap | compress | files`).
/// Each input block goes on as one block holding a 16-byte pcap record header (the block's timestamp in seconds and
/// microseconds, its captured and its wire length) and the block's bytes. Before the first record of each flow (the
/// first block with a given `Block.flow` tag; flow 0 is one flow too) the 24-byte pcap file header of the input's link
/// type goes on as a block of its own, so the bytes of every flow, concatenated, are a complete pcap file: `files`
/// below writes one capture per flow. Output blocks have link type `user`, the input's flow tag, marks and class; an
/// empty block marked `.end` (the end of a flow) goes on as it is, and the flow is forgotten (a later block with its tag
/// starts a new file, header first).
///
/// `pcap flows` assigns the tags itself: each TCP or UDP connection (protocol, addresses and ports, IPv4 or IPv6) is
/// registered in `FlowTable.shared` as `untcp` registers its connections, direction 0 being the sender of its first
/// packet seen, and every packet of it gets the tag of its direction (their first block, the file header, is marked
/// `.start`). Other packets (ICMP, ARP, later fragments) keep the tag they came with. Packets carry no end of their
/// connection, so at most `connections` are kept, least recently seen evicted first: an evicted connection's
/// directions end (an empty `.end` block each) and its tags are retired; a later packet of it is a new connection. At
/// the end of the input every connection ends so.
///
/// Which flows have had their file header is remembered for at most `tags` flows (flow 0 always): past that the least
/// recently seen flow ends (an empty `.end` block), so every file below stays a valid capture; if that flow goes on it
/// is a new file. A record holds at most 262144 captured bytes, the snapshot length of the header (libpcap refuses
/// longer records); a longer block is cut to it, its wire length kept, and counted.
///
/// No allocation per block: the header and the record are built in a scratch buffer that grows only when a larger
/// block arrives, and the blocks handed on are views of it, valid for the length of the push (as every block is).
public final class Pcap: SpaceBoundFilter, FlushingFilter, MakesBlocks {
    public struct Settings: Equatable, Sendable {
        public var flows = false
        public var connections = 65_536
        public var tags = 1 << 20
        public init() {}
    }

    /// A connection: its protocol and its direction-independent addresses and ports.
    struct ConnectionKey: Hashable {
        var canonical: FlowKey
        var proto: UInt8
    }

    public let settings: Settings
    private let text: String

    /// The most captured bytes a record holds: the snapshot length of `LinkType.pcapFileHeader`, above which
    /// libpcap refuses a record.
    static let maxCaptured = 262_144

    /// The file header at 0..<24, the record (16-byte header and bytes) from 24.
    private var scratch: UnsafeMutableRawPointer
    private var scratchCapacity: Int
    /// The file header of the link type last written (rebuilt when another link type arrives).
    private var fileHeader: [UInt8]
    private var fileHeaderType: LinkType

    /// Flows whose file header went out, and the class of each flow's last block (its end goes on with it).
    private var headers: FlowLRU<UInt32>
    private var headerClass: [UInt32] = []
    private var zeroHeader = false

    /// `flows`: the connections, with their numbers in `FlowTable.shared` and the key of direction 0, by slot.
    private var connections: FlowLRU<ConnectionKey>
    private var connectionNumber: [UInt32] = []
    private var connectionKey: [FlowKey] = []

    /// How it hands on the blocks it makes (`MakesBlocks`).
    public var blockOutput = FilterOutput()

    // Statistics.
    private(set) var records: UInt64 = 0
    private(set) var bytesIn: UInt64 = 0
    private(set) var bytesOut: UInt64 = 0
    private(set) var fileHeaders: UInt64 = 0
    private(set) var truncated: UInt64 = 0
    private(set) var flowsEvicted: UInt64 = 0
    private(set) var connectionsTotal: UInt64 = 0
    private(set) var connectionsEvicted: UInt64 = 0
    private(set) var untagged: UInt64 = 0

    static let want = "want flows, connections=N or tags=N"

    init(_ arguments: String) throws(FilterError) {
        var s = Settings()
        var limitsGiven: [String] = []
        for item in arguments.split(separator: " ", omittingEmptySubsequences: true) {
            if item == "flows" {
                s.flows = true
                continue
            }
            let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2, kv[0] == "connections" || kv[0] == "tags" else {
                throw FilterError("pcap: unknown argument '\(item)' (\(Pcap.want))")
            }
            guard let v = UnTCP.size(kv[1]), v > 0 else {
                throw FilterError("pcap: \(kv[0]) wants a positive number (K and M suffixes allowed), got '\(kv[1])'")
            }
            guard v <= 1 << 24 else { throw FilterError("pcap: \(kv[0]) is at most \(1 << 24), got \(v)") }
            if kv[0] == "connections" {
                s.connections = v
                limitsGiven.append("connections")
            } else {
                s.tags = v
            }
        }
        if !s.flows, !limitsGiven.isEmpty {
            throw FilterError("pcap: connections= applies to 'pcap flows' only (without flows the input's flow tags are kept)")
        }
        settings = s
        text = arguments
        headers = FlowLRU(capacity: s.tags)
        connections = FlowLRU(capacity: s.connections)
        scratchCapacity = 2048
        scratch = .allocate(byteCount: scratchCapacity, alignment: 16)
        fileHeaderType = .ethernet
        fileHeader = LinkType.ethernet.pcapFileHeader
    }

    deinit {
        retireAll()
        scratch.deallocate()
    }

    public var arguments: String { text }

    public func bind(space: Space, node: Node) throws(FilterError) {
        blockOutput.owner = Unmanaged.passUnretained(node)
    }

    public func outputLinkType(_ input: LinkType?) -> LinkType? { .user }

    // MARK: the data path

    public func process(_ block: inout Block) -> UInt32 {
        blockOutput.begin()
        bytesIn &+= UInt64(block.count)
        let c = block.classValue == 0 ? 1 : block.classValue
        var tag = block.flow
        var marks = block.flowMarks
        var owned = false
        if settings.flows, block.count > 0 {
            if let t = assign(&block) {
                tag = t
                marks = []
                owned = true
            } else {
                untagged &+= 1
            }
        }
        if block.count == 0 && marks.contains(.end) {
            forget(tag)
            emit(nil, tag, marks, c, block)
            return 0
        }
        let captured = min(block.count, Pcap.maxCaptured)
        if captured < block.count { truncated &+= 1 }
        if scratchCapacity < 40 + captured { grow(40 + captured) }
        var recordMarks = marks
        if headerDue(tag, c, block) {
            if block.linkType.fileValue != fileHeaderType.fileValue {
                fileHeaderType = block.linkType
                fileHeader = block.linkType.pcapFileHeader  // once per change of link type, not per block
            }
            fileHeader.withUnsafeBytes { scratch.copyMemory(from: $0.baseAddress!, byteCount: 24) }
            fileHeaders &+= 1
            emit(UnsafeRawBufferPointer(start: scratch, count: 24), tag, owned ? .start : marks.intersection(.start), c, block)
            recordMarks.remove(.start)
        }
        // The record: seconds, microseconds, captured and wire length, in host order as the file header's magic says.
        let r = scratch + 24
        r.storeBytes(of: UInt32(truncatingIfNeeded: block.seconds), as: UInt32.self)
        r.storeBytes(of: UInt32(truncatingIfNeeded: max(0, block.nanoseconds) / 1000), toByteOffset: 4, as: UInt32.self)
        r.storeBytes(of: UInt32(truncatingIfNeeded: captured), toByteOffset: 8, as: UInt32.self)
        r.storeBytes(of: UInt32(truncatingIfNeeded: max(block.wireLength, block.count)), toByteOffset: 12, as: UInt32.self)
        if captured > 0, let b = block.bytes.baseAddress { (r + 16).copyMemory(from: b, byteCount: captured) }
        records &+= 1
        emit(UnsafeRawBufferPointer(start: r, count: 16 + captured), tag, recordMarks, c, block)
        if marks.contains(.end) { forget(tag) }
        return 0
    }

    /// Whether the flow's file header is due (its first block): remembers that it went out, ending the least recently
    /// seen flow when the table is full. Records the class its end will go on with.
    @inline(__always)
    private func headerDue(_ tag: UInt32, _ c: UInt32, _ from: Block) -> Bool {
        if tag == 0 {
            if zeroHeader { return false }
            zeroHeader = true
            return true
        }
        if let s = headers.find(tag) {
            headers.touch(s)
            headerClass[Int(s)] = c
            return false
        }
        if headers.isFull {
            let o = headers.oldest
            let old = headers.key(o), oc = headerClass[Int(o)]
            headers.remove(o)
            flowsEvicted &+= 1
            emit(nil, old, .end, oc, from)
        }
        let s = headers.insert(tag)
        if Int(s) == headerClass.count { headerClass.append(c) } else { headerClass[Int(s)] = c }
        return true
    }

    /// Forgets a flow's header: a later block with its tag starts a new file. Returns the class of its last block, or
    /// nil if it had none.
    @discardableResult
    private func forget(_ tag: UInt32) -> UInt32? {
        if tag == 0 {
            defer { zeroHeader = false }
            return zeroHeader ? 1 : nil
        }
        guard let s = headers.find(tag) else { return nil }
        let c = headerClass[Int(s)]
        headers.remove(s)
        return c
    }

    /// `flows`: the tag of a TCP or UDP packet's connection direction, registering the connection if it is new; nil
    /// for other packets.
    @inline(__always)
    private func assign(_ block: inout Block) -> UInt32? {
        guard let (sport, dport) = block.ports() else { return nil }
        let l = block.layers
        guard l.transportProtocol == 6 || l.transportProtocol == 17, let base = block.bytes.baseAddress else { return nil }
        let n = Int(l.network)
        let v6 = l.networkType == etherTypeIPv6
        // The transport header starts after the addresses (IPv4: 20 bytes at least, IPv6: 40), so they were captured.
        guard n >= 0, n + (v6 ? 40 : 20) <= Int(l.transport) else { return nil }
        let key = FlowKey(source: FlowAddress(base + n + (v6 ? 8 : 12), count: v6 ? 16 : 4),
                          destination: FlowAddress(base + n + (v6 ? 24 : 16), count: v6 ? 16 : 4),
                          sourcePort: sport, destinationPort: dport, v6: v6)
        let ck = ConnectionKey(canonical: UnTCP.canonical(key), proto: UInt8(l.transportProtocol))
        let s: Int32
        if let known = connections.find(ck) {
            s = known
            connections.touch(s)
        } else {
            if connections.isFull {
                connectionsEvicted &+= 1
                endConnection(connections.oldest, block)
            }
            s = connections.insert(ck)
            let number = FlowTable.shared.register(key)
            if Int(s) == connectionNumber.count {
                connectionNumber.append(number)
                connectionKey.append(key)
            } else {
                connectionNumber[Int(s)] = number
                connectionKey[Int(s)] = key
            }
            connectionsTotal &+= 1
        }
        return FlowTable.tag(connection: connectionNumber[Int(s)], direction: connectionKey[Int(s)] == key ? 0 : 1)
    }

    /// Ends a connection `flows` tagged: each direction that had a record gets its end, and its tags are retired.
    private func endConnection(_ s: Int32, _ from: Block) {
        let number = connectionNumber[Int(s)]
        for dir: UInt32 in 0...1 {
            let tag = FlowTable.tag(connection: number, direction: dir)
            if let c = forget(tag) { emit(nil, tag, .end, c, from) }
        }
        FlowTable.shared.retire(number)
        connections.remove(s)
    }

    private func grow(_ needed: Int) {
        var n = scratchCapacity
        while n < needed { n <<= 1 }
        scratch.deallocate()
        scratch = .allocate(byteCount: n, alignment: 16)
        scratchCapacity = n
    }

    /// One block out: `bytes` (nil: an empty end mark) with the flow's tag and marks.
    @inline(__always)
    private func emit(_ bytes: UnsafeRawBufferPointer?, _ tag: UInt32, _ marks: FlowMarks, _ c: UInt32, _ from: Block) {
        let view = bytes ?? UnsafeRawBufferPointer(start: nil, count: 0)
        var b = Block(bytes: view, wireLength: view.count, seconds: from.seconds, nanoseconds: from.nanoseconds, linkType: .user)
        b.flow = tag
        b.flowMarks = marks
        bytesOut &+= UInt64(view.count)
        blockOutput.hand(&b, c, from: from)
    }

    /// The input ended: with `flows`, every connection ends (its directions get their end marks).
    public func endOfStream() {
        guard settings.flows else { return }
        let none = Block(bytes: UnsafeRawBufferPointer(start: nil, count: 0), linkType: .user)
        blockOutput.begin()
        while connections.oldest >= 0 { endConnection(connections.oldest, none) }
    }

    /// Retires the connections still registered (without end marks: nothing goes on from here).
    private func retireAll() {
        while connections.oldest >= 0 {
            let s = connections.oldest
            FlowTable.shared.retire(connectionNumber[Int(s)])
            connections.remove(s)
        }
    }

    public func shutdown() { retireAll() }

    public func statistics() -> [(String, String)] {
        var s = [("pcap_records", "\(records)"), ("pcap_bytes_in", "\(bytesIn)"), ("pcap_bytes_out", "\(bytesOut)"),
                 ("pcap_file_headers", "\(fileHeaders)"), ("pcap_truncated", "\(truncated)"),
                 ("pcap_flows", "\(headers.count + (zeroHeader ? 1 : 0))"), ("pcap_flows_evicted", "\(flowsEvicted)")]
        if settings.flows {
            s += [("pcap_connections", "\(connections.count)"), ("pcap_connections_total", "\(connectionsTotal)"),
                  ("pcap_connections_evicted", "\(connectionsEvicted)"), ("pcap_not_tcp_udp", "\(untagged)")]
        }
        return s
    }

    public static let descriptor = FilterDescriptor(
        name: "pcap", summary: "wraps blocks as pcap records; each flow's stream is a pcap file of its own",
        usage: "pcap [flows] [connections=N] [tags=N]", structuralClass: .rewriting
    ) { a throws(FilterError) in try Pcap(a) }
}
