#if canImport(Glibc)
import Glibc
#endif
import PipesRuntime

/// `inspect`: turns each block into one line of text, like a terse `tcpdump -n -tt` line (Table I "rewriting"):
///
///     1700000000.000123000 ethernet 74 IP 10.0.0.1.1024 > 192.0.2.1.80: tcp [S] seq 3049230413 len 0
///     1700000000.000201000 user 18 "GET / HTTP/1.1\r\n"
///
/// Timestamp (seconds and nine digits of nanoseconds), link type, wire length (and `cap N` when fewer bytes were
/// captured), then what decodes: IPv4 or IPv6 source and destination, ports, the protocol, TCP flags (as tcpdump
/// prints them), sequence and acknowledgement numbers, ICMP type and code, the payload length the IP header
/// declares; `fragment` for a later fragment, `truncated` where the capture ends early, `ethertype 0xHHHH` for other
/// network layers. A `user` block (application data) shows its length and its first 64 bytes, quoted and escaped.
///
/// The line is written into a buffer the filter owns (allocated once, when it is made) and the block's view is
/// moved onto it, so it is valid for the rest of the push, like any block; the output link type is `user`.
/// Headers are read through `Block.decodeTransport` and `Layers`; every read is bounds-checked.
public final class Inspect: Filter {
    /// Room for the longest line (two IPv6 addresses and ports, the TCP fields, a 64-byte escaped prefix).
    public static let capacity = 1024
    /// How many bytes of a `user` block the line shows.
    public static let prefixLength = 64
    private let line: UnsafeMutablePointer<UInt8>

    public init() {
        line = .allocate(capacity: Inspect.capacity)
        line.initialize(repeating: 0, count: Inspect.capacity)
    }

    deinit { line.deallocate() }

    /// The buffer the lines are written into (a block's view after `process` lies inside it).
    public var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: line, count: Inspect.capacity) }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        var w = LineWriter(base: line, limit: Inspect.capacity - 1)
        w.signed(block.seconds)
        w.byte(UInt8(ascii: "."))
        if block.nanoseconds >= 0 && block.nanoseconds < 1_000_000_000 {
            w.decimal(UInt64(block.nanoseconds), width: 9)
        } else {
            w.signed(Int64(block.nanoseconds))  // a damaged capture's fraction, shown as it is
        }
        w.byte(UInt8(ascii: " "))
        w.linkType(block.linkType)
        w.byte(UInt8(ascii: " "))
        w.signed(Int64(block.wireLength))
        if block.count < block.wireLength {
            w.text(" cap ")
            w.decimal(UInt64(block.count))
        }
        if block.linkType == .user {
            w.byte(UInt8(ascii: " "))
            w.quoted(block.bytes, prefix: Inspect.prefixLength)
        } else {
            Inspect.describe(&block, &w)
        }
        let n = w.finish()
        block.bytes = UnsafeRawBufferPointer(start: line, count: n)
        block.wireLength = n
        block.linkType = .user
        block.layers = Layers()
        return block.classValue == 0 ? 1 : block.classValue
    }

    /// The network and transport part of a packet's line.
    @inline(__always)
    static func describe(_ block: inout Block, _ w: inout LineWriter) {
        block.decodeTransport()
        let l = block.layers
        guard l.network >= 0 else { return }
        let n = Int(l.network)
        let v6: Bool
        switch l.networkType {
        case etherTypeIPv4:
            guard let v = block.u8(n), v >> 4 == 4, n + 20 <= block.count else { return w.text(" IP truncated") }
            v6 = false
            w.text(" IP ")
        case etherTypeIPv6:
            guard let v = block.u8(n), v >> 4 == 6, n + 40 <= block.count else { return w.text(" IP6 truncated") }
            v6 = true
            w.text(" IP6 ")
        default:
            w.text(" ethertype 0x")
            w.hex(UInt64(l.networkType), digits: 4)
            return
        }
        let ports = block.ports()
        w.address(block.bytes, at: v6 ? n + 8 : n + 12, v6: v6)
        if let ports {
            w.byte(UInt8(ascii: "."))
            w.decimal(UInt64(ports.source))
        }
        w.text(" > ")
        w.address(block.bytes, at: v6 ? n + 24 : n + 16, v6: v6)
        if let ports {
            w.byte(UInt8(ascii: "."))
            w.decimal(UInt64(ports.destination))
        }
        w.byte(UInt8(ascii: ":"))
        let proto = l.transportProtocol
        guard proto >= 0 else { return w.text(" undecodable") }
        switch proto {
        case 6: w.text(" tcp")
        case 17: w.text(" udp")
        case 1: w.text(" icmp")
        case 58: w.text(" icmp6")
        case 132: w.text(" sctp")
        default:
            w.text(" proto ")
            w.decimal(UInt64(proto))
        }
        if l.laterFragment { return w.text(" fragment") }
        let t = Int(l.transport)
        guard t >= 0 else { return w.text(" truncated") }
        switch proto {
        case 6:
            guard let flags = block.u8(t + 13), let seq = block.u32(t + 4), let ack = block.u32(t + 8) else {
                return w.text(" truncated")
            }
            w.text(" [")
            w.tcpFlags(flags)
            w.text("] seq ")
            w.decimal(UInt64(seq))
            if flags & 0x10 != 0 {
                w.text(" ack ")
                w.decimal(UInt64(ack))
            }
        case 1, 58:
            guard let type = block.u8(t), let code = block.u8(t + 1) else { return w.text(" truncated") }
            w.text(" type ")
            w.decimal(UInt64(type))
            w.text(" code ")
            w.decimal(UInt64(code))
        default:
            break
        }
        guard l.payload >= 0 else { return w.text(" truncated") }
        // The length the IP header declares (as tcpdump's "length"), not what was captured.
        let end: Int
        if v6 {
            let plen = Int(block.u16(n + 4) ?? 0)
            end = plen != 0 ? n + 40 + plen : block.count
        } else {
            let total = Int(block.u16(n + 2) ?? 0)
            end = total >= Int(block.u8(n)! & 0x0F) * 4 ? n + total : block.count
        }
        w.text(" len ")
        w.decimal(UInt64(max(0, end - Int(l.payload))))
    }

    public func outputLinkType(_ input: LinkType?) -> LinkType? { .user }

    public static let descriptor = FilterDescriptor(
        name: "inspect", summary: "one line of text per block (time, link, length, addresses, ports, TCP flags)",
        usage: "inspect", structuralClass: .rewriting
    ) { a throws(FilterError) in try requireNoArguments(a); return Inspect() }
}

/// Appends ASCII to a fixed buffer without allocating. What does not fit is cut; the last byte of the buffer is
/// kept for the newline `finish` adds.
struct LineWriter {
    let base: UnsafeMutablePointer<UInt8>
    let limit: Int
    var count = 0

    @inline(__always)
    mutating func byte(_ b: UInt8) {
        guard count < limit else { return }
        base[count] = b
        count += 1
    }

    @inline(__always)
    mutating func text(_ s: StaticString) {
        let p = s.utf8Start
        for i in 0..<s.utf8CodeUnitCount { byte(p[i]) }
    }

    /// Ends the line; returns its length.
    mutating func finish() -> Int {
        base[count] = 10
        count += 1
        return count
    }

    /// `v` in decimal, zero-padded to `width` digits.
    @inline(__always)
    mutating func decimal(_ v: UInt64, width: Int = 1) {
        var digits = 1
        var x = v
        while x >= 10 {
            x /= 10
            digits += 1
        }
        for _ in digits..<max(digits, width) { byte(UInt8(ascii: "0")) }
        var p = 1 as UInt64
        for _ in 1..<digits { p *= 10 }
        x = v
        while p > 0 {
            byte(UInt8(ascii: "0") + UInt8(x / p))
            x %= p
            p /= 10
        }
    }

    @inline(__always)
    mutating func signed(_ v: Int64) {
        if v < 0 { byte(UInt8(ascii: "-")) }
        decimal(v.magnitude)
    }

    @inline(__always)
    mutating func hex(_ v: UInt64, digits: Int) {
        var shift = digits * 4
        while shift > 0 {
            shift -= 4
            byte(LineWriter.hexDigit(UInt8(truncatingIfNeeded: v >> UInt64(shift)) & 0x0F))
        }
    }

    @inline(__always)
    static func hexDigit(_ d: UInt8) -> UInt8 { d < 10 ? UInt8(ascii: "0") + d : UInt8(ascii: "a") + d - 10 }

    /// An IPv4 address (dotted quad) or an IPv6 address (as inet_ntop writes it, as tcpdump prints it) at `at`.
    @inline(__always)
    mutating func address(_ bytes: UnsafeRawBufferPointer, at: Int, v6: Bool) {
        if !v6 {
            guard at >= 0, at + 4 <= bytes.count else { return }
            for i in 0..<4 {
                if i > 0 { byte(UInt8(ascii: ".")) }
                decimal(UInt64(bytes[at + i]))
            }
            return
        }
        guard at >= 0, at + 16 <= bytes.count, let src = bytes.baseAddress, limit - count >= 46 else { return }
        let out = UnsafeMutableRawPointer(base + count).assumingMemoryBound(to: CChar.self)
        guard inet_ntop(AF_INET6, src + at, out, 46) != nil else { return }
        count += strlen(out)
    }

    /// TCP flags as tcpdump prints them: F S R P . U E W in that order, `none` for none.
    @inline(__always)
    mutating func tcpFlags(_ f: UInt8) {
        if f == 0 { return text("none") }
        if f & 0x01 != 0 { byte(UInt8(ascii: "F")) }
        if f & 0x02 != 0 { byte(UInt8(ascii: "S")) }
        if f & 0x04 != 0 { byte(UInt8(ascii: "R")) }
        if f & 0x08 != 0 { byte(UInt8(ascii: "P")) }
        if f & 0x10 != 0 { byte(UInt8(ascii: ".")) }
        if f & 0x20 != 0 { byte(UInt8(ascii: "U")) }
        if f & 0x40 != 0 { byte(UInt8(ascii: "E")) }
        if f & 0x80 != 0 { byte(UInt8(ascii: "W")) }
    }

    /// The first `prefix` bytes in double quotes, escaped (`\"`, `\\`, `\n`, `\r`, `\t`, `\xHH` for other bytes
    /// outside printable ASCII), then `...` when there were more.
    @inline(__always)
    mutating func quoted(_ bytes: UnsafeRawBufferPointer, prefix: Int) {
        byte(UInt8(ascii: "\""))
        let n = min(bytes.count, prefix)
        for i in 0..<n {
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                byte(UInt8(ascii: "\\"))
                byte(c)
            case 10: text("\\n")
            case 13: text("\\r")
            case 9: text("\\t")
            case 0x20...0x7E: byte(c)
            default:
                text("\\x")
                hex(UInt64(c), digits: 2)
            }
        }
        byte(UInt8(ascii: "\""))
        if bytes.count > n { text("...") }
    }

    /// A link type's name, as `LinkType.description` gives it.
    @inline(__always)
    mutating func linkType(_ t: LinkType) {
        switch t {
        case .null: text("null")
        case .ethernet: text("ethernet")
        case .ppp: text("ppp")
        case .raw, .dltRaw12, .dltRaw14: text("raw")
        case .loop: text("loop")
        case .linuxSLL: text("linux-sll")
        case .linuxSLL2: text("linux-sll2")
        case .ipv4: text("ipv4")
        case .ipv6: text("ipv6")
        case .user: text("user")
        default:
            text("linktype-")
            signed(Int64(t.rawValue))
        }
    }
}
