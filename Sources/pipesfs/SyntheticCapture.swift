#if canImport(Glibc)
import Glibc
#endif

/// Writes deterministic synthetic captures (classic pcap, Ethernet, microseconds) for the demo, tests and
/// benchmarks: interleaved HTTP (GETs, some with '..'), TLS-like, SSH-like TCP connections with handshakes and
/// FINs, a share of reordered and retransmitted segments, UDP DNS, a few IPv6 TCP flows, ARP, and IPv4 fragments.
enum SyntheticCapture {
    struct Summary: CustomStringConvertible {
        var packets = 0
        var bytes = 0
        var httpGets = 0
        var dotdotGets = 0
        /// Of `httpGets`, those over IPv6 (`ip` filters keep IPv4 only).
        var ipv6Gets = 0
        var description: String {
            "{\"packets\": \(packets), \"bytes\": \(bytes), \"http_gets\": \(httpGets), \"http_gets_dotdot\": \(dotdotGets), "
                + "\"http_gets_ipv6\": \(ipv6Gets)}"
        }
    }

    struct WriteError: Error, CustomStringConvertible { var description: String }

    /// SplitMix64: small, fast, deterministic.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
        mutating func chance(_ p: Double) -> Bool { Double(next() % 1_000_000) < p * 1_000_000 }
    }

    @discardableResult
    static func write(to path: String, flows: Int, seed: UInt64, reorder: Double = 0.02, duplicate: Double = 0.01) throws -> Summary {
        guard let f = fopen(path, "w") else { throw WriteError(description: "cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        var out: [UInt8] = []
        out.reserveCapacity(1 << 20)
        func u32le(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u16le(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        u32le(0xA1B2_C3D4); u16le(2); u16le(4); u32le(0); u32le(0); u32le(262_144); u32le(1)

        var rng = Random(state: seed)
        var summary = Summary()
        var sec: UInt32 = 1_700_000_000
        var usec: UInt32 = 0

        func emit(_ frame: [UInt8]) {
            usec += UInt32(1 + rng.below(200))
            if usec >= 1_000_000 { sec += 1; usec -= 1_000_000 }
            u32le(sec); u32le(usec); u32le(UInt32(frame.count)); u32le(UInt32(frame.count))
            out.append(contentsOf: frame)
            summary.packets += 1
            summary.bytes += frame.count
            if out.count >= 1 << 20 {
                out.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, f) }
                out.removeAll(keepingCapacity: true)
            }
        }

        // Build connections as packet lists, then interleave them.
        var active: [[[UInt8]]] = []
        var made = 0
        let concurrency = 32
        while made < flows || !active.isEmpty {
            while active.count < concurrency && made < flows {
                active.append(connection(index: made, rng: &rng, summary: &summary, reorder: reorder, duplicate: duplicate))
                made += 1
            }
            let i = rng.below(active.count)
            emit(active[i].removeFirst())
            if active[i].isEmpty { active.remove(at: i) }
        }
        out.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, f) }
        if ferror(f) != 0 { throw WriteError(description: "write to \(path) failed") }
        return summary
    }

    static let paths = ["/index.html", "/api/v1/items?id=", "/static/app.js", "/img/logo.png", "/../../etc/passwd", "/a/../b"]

    static func connection(index i: Int, rng: inout Random, summary: inout Summary, reorder: Double, duplicate: Double) -> [[UInt8]] {
        let kinds = [80, 80, 80, 80, 80, 443, 443, 443, 22, 53, 53, 6, 7, 8]  // 6: IPv6 web, 7: ARP, 8: fragments
        let kind = kinds[rng.below(kinds.count)]
        let client: [UInt8] = [10, UInt8((i >> 16) & 255), UInt8((i >> 8) & 255), UInt8(i & 255)]
        let server: [UInt8] = [192, 0, 2, UInt8(1 + i % 200)]
        let cport = UInt16(1024 + i % 60000)
        switch kind {
        case 53:
            var q: [UInt8] = [UInt8((i >> 8) & 255), UInt8(i & 255), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
            q += [7] + Array("example".utf8) + [3] + Array("com".utf8) + [0, 0, 1, 0, 1]
            var r = q
            r[2] = 0x81; r[3] = 0x80; r[7] = 1
            r += [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4, 192, 0, 2, 1]
            return [ipv4(client, server, 17, udp(client, server, cport, 53, q), id: i),
                    ipv4(server, client, 17, udp(server, client, 53, cport, r), id: i + 1)]
        case 7:
            var arp: [UInt8] = [0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1] + client + [0, 0, 0, 0, 0, 0] + server
            arp += [UInt8](repeating: 0, count: 18)
            return [[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 2, 0, 0, 0, 0, 1, 0x08, 0x06] + arp]
        case 8:
            // An IPv4 TCP segment to port 80 split into two fragments (the second has no TCP header).
            let data = [UInt8](repeating: 0x41, count: 64)
            let seg = tcp(client, server, cport, 80, seq: 1, ack: 1, flags: 0x18, data)
            let first = Array(seg[0..<24])
            let second = Array(seg[24...])
            return [ipv4(client, server, 6, first, id: i, fragment: 0x2000),
                    ipv4(client, server, 6, second, id: i, fragment: 3)]
        default:
            let port = UInt16(kind == 6 ? 80 : kind)
            var cs = UInt32(truncatingIfNeeded: rng.next()), ss = UInt32(truncatingIfNeeded: rng.next())
            var pk: [(Bool, UInt8, [UInt8])] = []  // (fromClient, flags, data)
            pk.append((true, 0x02, [])); pk.append((false, 0x12, [])); pk.append((true, 0x10, []))
            if port == 80 {
                let p = paths[rng.below(paths.count)] + (rng.chance(0.5) ? "\(i)" : "")
                let req = "GET \(p) HTTP/1.1\r\nHost: example.com\r\nUser-Agent: pipesfs-synth\r\n\r\n"
                summary.httpGets += 1
                if p.contains("..") { summary.dotdotGets += 1 }
                if kind == 6 { summary.ipv6Gets += 1 }
                pk.append((true, 0x18, Array(req.utf8)))
                let body = [UInt8](repeating: UInt8(ascii: "x"), count: 200 + rng.below(3000))
                let resp = Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
                var o = 0
                while o < resp.count { let n = min(1448, resp.count - o); pk.append((false, 0x18, Array(resp[o..<o + n]))); o += n }
            } else {
                for _ in 0..<(2 + rng.below(6)) {
                    pk.append((rng.chance(0.5), 0x18, (0..<(40 + rng.below(1200))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
                }
            }
            pk.append((true, 0x11, [])); pk.append((false, 0x11, [])); pk.append((true, 0x10, []))
            var frames: [[UInt8]] = []
            var cseq = cs, sseq = ss
            for (fromClient, flags, data) in pk {
                let (src, dst, sp, dp) = fromClient ? (client, server, cport, port) : (server, client, port, cport)
                let seq = fromClient ? cseq : sseq
                let ack = fromClient ? sseq : cseq
                let segment = tcp(src, dst, sp, dp, seq: seq, ack: flags & 0x10 != 0 ? ack : 0, flags: flags, data)
                if kind == 6 {
                    frames.append(ipv6(src, dst, segment))
                } else {
                    frames.append(ipv4(src, dst, 6, segment, id: i &+ frames.count))
                }
                // Heavy duplication (0.1 and up) also re-sends the second half of some data segments: overlaps.
                if duplicate >= 0.1 && data.count >= 8 && rng.chance(duplicate) {
                    let half = data.count / 2
                    let again = tcp(src, dst, sp, dp, seq: seq &+ UInt32(half), ack: ack, flags: 0x10, Array(data[half...]))
                    frames.append(kind == 6 ? ipv6(src, dst, again) : ipv4(src, dst, 6, again, id: i &+ frames.count))
                }
                let adv = UInt32(data.count) + (flags & 0x03 != 0 ? 1 : 0)
                if fromClient { cseq &+= adv } else { sseq &+= adv }
            }
            _ = (cs, ss)
            cs = 0; ss = 0
            if frames.count > 4 && rng.chance(reorder * 10) {
                let k = 3 + rng.below(frames.count - 4)
                frames.swapAt(k, k + 1)
            }
            if rng.chance(duplicate * 10) {
                let k = 3 + rng.below(frames.count - 3)
                frames.insert(frames[k], at: k + 1)
            }
            // Heavy settings (0.1 and up, for reassembly tests) add more: every later pair may swap, every later frame
            // may come twice. The defaults leave captures as they always were.
            if reorder >= 0.1 {
                var k = 3
                while k + 1 < frames.count {
                    if rng.chance(reorder) { frames.swapAt(k, k + 1); k += 1 }
                    k += 1
                }
            }
            if duplicate >= 0.1 {
                var k = frames.count - 1
                while k >= 3 {
                    if rng.chance(duplicate) { frames.insert(frames[k], at: k + 1) }
                    k -= 1
                }
            }
            return frames
        }
    }

    static func checksum(_ b: [UInt8], _ initial: UInt32 = 0) -> UInt16 {
        var s = initial
        var i = 0
        while i + 1 < b.count { s += UInt32(b[i]) << 8 | UInt32(b[i + 1]); i += 2 }
        if i < b.count { s += UInt32(b[i]) << 8 }
        while s >> 16 != 0 { s = (s & 0xFFFF) + (s >> 16) }
        return ~UInt16(s)
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 255)] }
    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 255), UInt8((v >> 8) & 255), UInt8(v & 255)] }

    static let eth4: [UInt8] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]
    static let eth6: [UInt8] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xDD]

    static func ipv4(_ src: [UInt8], _ dst: [UInt8], _ proto: UInt8, _ payload: [UInt8], id: Int, fragment: UInt16 = 0x4000) -> [UInt8] {
        var h: [UInt8] = [0x45, 0] + be16(UInt16(20 + payload.count)) + be16(UInt16(truncatingIfNeeded: id)) + be16(fragment)
        h += [64, proto, 0, 0] + src + dst
        let c = checksum(h)
        h[10] = UInt8(c >> 8); h[11] = UInt8(c & 255)
        return eth4 + h + payload
    }

    static func ipv6(_ src4: [UInt8], _ dst4: [UInt8], _ segment: [UInt8]) -> [UInt8] {
        let src: [UInt8] = [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 8) + src4
        let dst: [UInt8] = [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 1] + [UInt8](repeating: 0, count: 4) + dst4
        return eth6 + [0x60, 0, 0, 0] + be16(UInt16(segment.count)) + [6, 64] + src + dst + segment
    }

    static func tcp(_ src: [UInt8], _ dst: [UInt8], _ sp: UInt16, _ dp: UInt16, seq: UInt32, ack: UInt32, flags: UInt8, _ data: [UInt8]) -> [UInt8] {
        var h = be16(sp) + be16(dp) + be32(seq) + be32(ack) + [0x50, flags] + be16(65535) + [0, 0, 0, 0]
        if src.count == 4 {
            let pseudo = src + dst + [0, 6] + be16(UInt16(h.count + data.count))
            let c = checksum(pseudo + h + data)
            h[16] = UInt8(c >> 8); h[17] = UInt8(c & 255)
        }
        return h + data
    }

    static func udp(_ src: [UInt8], _ dst: [UInt8], _ sp: UInt16, _ dp: UInt16, _ data: [UInt8]) -> [UInt8] {
        var h = be16(sp) + be16(dp) + be16(UInt16(8 + data.count)) + [0, 0]
        let pseudo = src + dst + [0, 17] + be16(UInt16(8 + data.count))
        var c = checksum(pseudo + h + data)
        if c == 0 { c = 0xFFFF }
        h[6] = UInt8(c >> 8); h[7] = UInt8(c & 255)
        return h + data
    }
}

