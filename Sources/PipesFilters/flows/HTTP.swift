import PipesRuntime

/// `http`: HTTP/1.x over reassembled streams (`untcp`'s output, one flow per connection direction). Hands on the
/// head of each message — the request or status line and the header fields, up to and including the empty line —
/// as one block, with the flow's tag, classed by method: `get` 1, `head` 2, `post` 3, `put` 4, `delete` 5,
/// `connect` 6, `options` 7, `trace` 8, `patch` 9, any other method 10, a response 16 (`http/get`, `http/1:10` for
/// every request, `http/response`). Bodies are skipped by their length (Content-Length, chunked transfer coding;
/// a response without either runs to the end of its flow) and counted. Pipelined messages each give a block.
///
/// A head that lies in one block goes on as a view of it (no copy); one cut across blocks is gathered in the
/// flow's buffer (at most `HTTP.maxHead` bytes: longer heads are counted in `http_oversized` and the flow is
/// given up on). A flow whose bytes do not start like an HTTP message is given up on (`http_not_http`) until its
/// end. Responses to HEAD, 1xx, 204 and 304 carry no body. At most 65536 flows are followed; past that the
/// one that started first is forgotten (`http_evicted`).
public final class HTTP: SpaceBoundFilter, ClassReporting, MakesBlocks {
    public static let maxHead = 16 << 10
    static let maxFlows = 1 << 16
    static let methods: [(String, UInt32)] = [
        ("GET", 1), ("HEAD", 2), ("POST", 3), ("PUT", 4), ("DELETE", 5), ("CONNECT", 6), ("OPTIONS", 7), ("TRACE", 8), ("PATCH", 9),
    ]
    public static let classNames: [String: UInt32] = {
        var d = Dictionary(uniqueKeysWithValues: methods.map { ($0.0.lowercased(), $0.1) })
        d["other"] = 10
        d["response"] = 16
        return d
    }()
    static let responseClass: UInt32 = 16

    final class Flow {
        enum Mode { case head, body(Int), chunkSize, chunkData(Int), chunkDataEnd(Int), trailers, rest, ignored }
        var mode = Mode.head
        /// The part of a head cut across blocks.
        var head: [UInt8] = []
        var lastUse: UInt64 = 0
        /// When it was made (tells it from a later flow with the same tag in the eviction queue).
        var born: UInt64 = 0
        /// The part of a chunk-size or trailer line cut across blocks.
        var line: [UInt8] = []
    }

    private var flows: [UInt32: Flow] = [:]
    /// Methods of the requests per connection (tag >> 1) not answered yet, oldest first (at most 64), so a response
    /// to HEAD is known to have no body.
    private var pendingMethods: [UInt32: [UInt32]] = [:]
    private var clock: UInt64 = 0
    private var order: [(UInt32, UInt64)] = []
    private var orderHead = 0
    /// How it hands on the blocks it makes (`MakesBlocks`).
    public var blockOutput = FilterOutput()

    private(set) var messages = [UInt64](repeating: 0, count: 17)
    private(set) var bodyBytes: UInt64 = 0
    private(set) var notHTTP: UInt64 = 0
    private(set) var oversized: UInt64 = 0
    private(set) var evicted: UInt64 = 0
    private(set) var malformedBodies: UInt64 = 0

    public init() {}

    public func bind(space: Space, node: Node) throws(FilterError) { blockOutput.owner = Unmanaged.passUnretained(node) }
    public func outputLinkType(_ input: LinkType?) -> LinkType? { .user }

    public func seenClassNames() -> [String] {
        var out: [String] = []
        for (name, c) in HTTP.classNames.sorted(by: { $0.value < $1.value }) where messages[Int(c)] > 0 { out.append(name) }
        return out
    }

    public func process(_ block: inout Block) -> UInt32 {
        let bytes = block.linkType == .user ? block.bytes : block.payloadBytes()
        blockOutput.begin()
        let f: Flow
        if let known = flows[block.flow] {
            f = known
        } else {
            if bytes.isEmpty { return 0 }
            // Past the limit the flow that started first goes (a queue of the tags in the order they came; tags that
            // ended since are skipped as they come up).
            while flows.count >= HTTP.maxFlows, orderHead < order.count {
                let (tag, born) = order[orderHead]
                orderHead += 1
                if let old = flows[tag], old.born == born {
                    flows.removeValue(forKey: tag)
                    pendingMethods.removeValue(forKey: tag >> 1)
                    evicted &+= 1
                }
            }
            if orderHead > 4096 && orderHead * 2 > order.count {
                order.removeFirst(orderHead)
                orderHead = 0
            }
            clock &+= 1
            f = Flow()
            f.born = clock
            flows[block.flow] = f
            order.append((block.flow, clock))
        }
        clock &+= 1
        f.lastUse = clock
        if !bytes.isEmpty { consume(f, bytes, block) }
        if block.flowMarks.contains(.end) {
            flows.removeValue(forKey: block.flow)
            // Either direction's end ends what the connection's requests wait for.
            pendingMethods.removeValue(forKey: block.flow >> 1)
        }
        return 0
    }

    /// Walks the bytes of one block of a flow through its messages.
    private func consume(_ f: Flow, _ bytes: UnsafeRawBufferPointer, _ block: Block) {
        var i = 0
        let n = bytes.count
        while i < n {
            switch f.mode {
            case .ignored:
                return
            case .rest:
                bodyBytes &+= UInt64(n - i)
                return
            case .body(let left):
                let k = min(left, n - i)
                bodyBytes &+= UInt64(k)
                i += k
                f.mode = left - k == 0 ? .head : .body(left - k)
            case .chunkData(let left):
                let k = min(left, n - i)
                bodyBytes &+= UInt64(k)
                i += k
                f.mode = left - k == 0 ? .chunkDataEnd(2) : .chunkData(left - k)
            case .chunkDataEnd(let left):
                i += 1
                f.mode = left == 1 ? .chunkSize : .chunkDataEnd(left - 1)
            case .chunkSize, .trailers:
                // A line at a time (a chunk size, or a trailer field; an empty trailer line ends the body).
                let c = bytes[i]
                i += 1
                if c != 10 {
                    if f.line.count < 1024 { f.line.append(c) } else { malformedBodies &+= 1; f.mode = .ignored }
                    continue
                }
                var line = f.line
                f.line.removeAll(keepingCapacity: true)
                if line.last == 13 { line.removeLast() }
                if case .trailers = f.mode {
                    if line.isEmpty { f.mode = .head }
                    continue
                }
                let hex = line.prefix { $0 != UInt8(ascii: ";") && $0 != UInt8(ascii: " ") }
                guard !hex.isEmpty, hex.count <= 15, let size = Int(String(decoding: hex, as: UTF8.self), radix: 16) else {
                    malformedBodies &+= 1
                    f.mode = .ignored
                    return
                }
                f.mode = size == 0 ? .trailers : .chunkData(size)
            case .head:
                // Skip the CRLFs some clients send between messages.
                if f.head.isEmpty && (bytes[i] == 13 || bytes[i] == 10) {
                    i += 1
                    continue
                }
                let start = i
                guard let end = HTTP.headEnd(bytes, from: i, carried: f.head) else {
                    // The head goes on in the next block: keep what there is of it.
                    if f.head.count + (n - i) > HTTP.maxHead {
                        oversized &+= 1
                        f.head = []
                        f.mode = .ignored
                        return
                    }
                    if f.head.isEmpty && !HTTP.plausibleStart(UnsafeRawBufferPointer(rebasing: bytes[i..<n])) {
                        notHTTP &+= 1
                        f.mode = .ignored
                        return
                    }
                    f.head += bytes[i..<n]
                    return
                }
                i = end
                if f.head.isEmpty {
                    message(f, UnsafeRawBufferPointer(rebasing: bytes[start..<end]), block)
                } else {
                    f.head += bytes[start..<end]
                    let head = f.head
                    f.head = []
                    head.withUnsafeBytes { message(f, $0, block) }
                }
            }
        }
    }

    /// The index just past the empty line that ends a head starting at `from` (with `carried` bytes of it from
    /// earlier blocks), or nil if it does not end in these bytes.
    static func headEnd(_ b: UnsafeRawBufferPointer, from: Int, carried: [UInt8]) -> Int? {
        var i = from
        // The CRLFCRLF (or LFLF) may straddle the cut: look at the carried tail too.
        var last3: (UInt8, UInt8, UInt8) = (0, 0, 0)
        let c = carried.count
        if c >= 1 { last3.2 = carried[c - 1] }
        if c >= 2 { last3.1 = carried[c - 2] }
        if c >= 3 { last3.0 = carried[c - 3] }
        while i < b.count {
            let x = b[i]
            if x == 10 && (last3.2 == 10 || (last3.2 == 13 && last3.1 == 10)) { return i + 1 }
            last3 = (last3.1, last3.2, x)
            i += 1
        }
        return nil
    }

    /// True when the bytes could begin a request line or a status line (a token of capitals then a space, or
    /// `HTTP/`), as far as they go.
    static func plausibleStart(_ b: UnsafeRawBufferPointer) -> Bool {
        let http = Array("HTTP/".utf8)
        if b.count > 0 && b[0] == UInt8(ascii: "H") {
            var all = true
            for k in 0..<min(5, b.count) where b[k] != http[k] { all = false }
            if all { return true }
        }
        var k = 0
        while k < b.count && k < 16 {
            let x = b[k]
            if x == UInt8(ascii: " ") { return k > 0 }
            if !(x >= UInt8(ascii: "A") && x <= UInt8(ascii: "Z")) && x != UInt8(ascii: "-") && x != UInt8(ascii: "_") { return false }
            k += 1
        }
        return k == b.count
    }

    /// One complete head: classify it, hand it on, and set up skipping its body.
    private func message(_ f: Flow, _ head: UnsafeRawBufferPointer, _ block: Block) {
        guard HTTP.plausibleStart(UnsafeRawBufferPointer(rebasing: head[0..<min(head.count, 17)])) else {
            notHTTP &+= 1
            f.mode = .ignored
            return
        }
        let isResponse = head.count >= 5 && head[0] == UInt8(ascii: "H") && head[4] == UInt8(ascii: "/")
        var c: UInt32 = HTTP.responseClass
        var status = 0
        if isResponse {
            // HTTP/1.1 200 ...
            var k = 0
            while k < head.count && head[k] != UInt8(ascii: " ") { k += 1 }
            var digits = 0
            k += 1
            while k < head.count && digits < 3, head[k] >= 48 && head[k] <= 57 {
                status = status * 10 + Int(head[k] - 48)
                digits += 1
                k += 1
            }
        } else {
            c = 10
            for (m, v) in HTTP.methods where HTTP.startsWith(head, m) { c = v; break }
            if block.flow != 0 && pendingMethods[block.flow >> 1, default: []].count < 64 {
                pendingMethods[block.flow >> 1, default: []].append(c)
            }
        }
        messages[Int(c)] &+= 1
        // The body that follows.
        let length = HTTP.field(head, "content-length").flatMap { Int(String(decoding: $0, as: UTF8.self)) }
        let chunked = HTTP.field(head, "transfer-encoding").map { String(decoding: $0, as: UTF8.self).lowercased().contains("chunked") } ?? false
        if isResponse {
            var headRequest = false
            if block.flow != 0, var q = pendingMethods[block.flow >> 1], !q.isEmpty {
                // 1xx responses are interim: the request stays unanswered.
                if !(100..<200).contains(status) { headRequest = q.removeFirst() == 2 }
                pendingMethods[block.flow >> 1] = q
            }
            if headRequest || (100..<200).contains(status) || status == 204 || status == 304 {
                f.mode = .head
            } else if chunked {
                f.mode = .chunkSize
            } else if let l = length, l >= 0 {
                f.mode = l == 0 ? .head : .body(l)
            } else {
                f.mode = .rest
            }
        } else if chunked {
            f.mode = .chunkSize
        } else if let l = length, l > 0 {
            f.mode = .body(l)
        } else {
            f.mode = .head
        }
        var b = Block(bytes: head, wireLength: head.count, seconds: block.seconds, nanoseconds: block.nanoseconds, linkType: .user)
        b.flow = block.flow
        blockOutput.hand(&b, c, from: block)
    }

    static func startsWith(_ b: UnsafeRawBufferPointer, _ method: String) -> Bool {
        let m = Array(method.utf8)
        guard b.count > m.count, b[m.count] == UInt8(ascii: " ") else { return false }
        for k in 0..<m.count where b[k] != m[k] { return false }
        return true
    }

    /// The value of header field `name` (lowercase), trimmed, or nil.
    static func field(_ head: UnsafeRawBufferPointer, _ name: String) -> ArraySlice<UInt8>? {
        let want = Array(name.utf8)
        var i = 0
        // Skip the start line.
        while i < head.count && head[i] != 10 { i += 1 }
        i += 1
        while i < head.count {
            var e = i
            while e < head.count && head[e] != 10 { e += 1 }
            if e - i > want.count, head[i + want.count] == UInt8(ascii: ":") {
                var same = true
                for k in 0..<want.count {
                    var x = head[i + k]
                    if x >= 65 && x <= 90 { x += 32 }
                    if x != want[k] { same = false; break }
                }
                if same {
                    var s = i + want.count + 1, t = e
                    while s < t && (head[s] == 32 || head[s] == 9) { s += 1 }
                    while t > s && (head[t - 1] == 13 || head[t - 1] == 32 || head[t - 1] == 9) { t -= 1 }
                    return Array(head[s..<t])[...]
                }
            }
            i = e + 1
        }
        return nil
    }

    public func statistics() -> [(String, String)] {
        var s: [(String, String)] = []
        for (name, c) in HTTP.classNames.sorted(by: { $0.value < $1.value }) { s.append(("http_\(name)", "\(messages[Int(c)])")) }
        s += [("http_body_bytes", "\(bodyBytes)"), ("http_not_http", "\(notHTTP)"), ("http_oversized", "\(oversized)"),
              ("http_malformed_bodies", "\(malformedBodies)"), ("http_flows", "\(flows.count)"), ("http_evicted", "\(evicted)")]
        return s
    }

    public func shutdown() {
        flows.removeAll()
        pendingMethods.removeAll()
    }

    public static let descriptor = FilterDescriptor(
        name: "http", summary: "HTTP/1.x message heads of reassembled streams, classed by method",
        usage: "http", structuralClass: .rewriting, classNames: HTTP.classNames, classifying: true
    ) { a throws(FilterError) in try requireNoArguments(a); return HTTP() }
}

/// `get`: HTTP GET requests — blocks (heads from `http`, or any application data) that start with `GET `.
public final class Get: Filter {
    public init() {}
    public func process(_ block: inout Block) -> UInt32 {
        let b = block.linkType == .user ? block.bytes : block.payloadBytes()
        return HTTP.startsWith(b, "GET") ? (block.classValue == 0 ? 1 : block.classValue) : 0
    }
    public static let descriptor = FilterDescriptor(
        name: "get", summary: "HTTP GET requests (blocks that start with 'GET ')", usage: "get", structuralClass: .filtering
    ) { a throws(FilterError) in try requireNoArguments(a); return Get() }
}
