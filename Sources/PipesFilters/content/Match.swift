#if canImport(Glibc)
import Glibc
#endif
import PipesRuntime

/// `match=TEXT`: packets whose transport payload contains TEXT (the whole block for injected data).
/// Escapes in TEXT: `\n`, `\r`, `\t`, `\\`, `\xHH`.
public final class Match: Filter {
    private let needle: [UInt8]
    private let text: String

    init(_ arguments: String) throws(FilterError) {
        needle = try Match.decode(arguments)
        text = arguments
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        let hay = block.payloadBytes()
        guard hay.count >= needle.count, let h = hay.baseAddress else { return 0 }
        let found = needle.withUnsafeBytes { n in Match.search(h, hay.count, n.baseAddress!, n.count) }
        return found ? (block.classValue == 0 ? 1 : block.classValue) : 0
    }

    /// memchr for the first byte, memcmp for the rest (glibc's memmem is not exported without _GNU_SOURCE).
    @inline(__always)
    static func search(_ h: UnsafeRawPointer, _ hn: Int, _ n: UnsafeRawPointer, _ nn: Int) -> Bool {
        let first = Int32(n.load(as: UInt8.self))
        var p = h
        var left = hn
        while left >= nn {
            guard let q = memchr(p, first, left - nn + 1) else { return false }
            let qr = UnsafeRawPointer(q)
            if memcmp(qr, n, nn) == 0 { return true }
            left -= (qr - p) + 1
            p = qr + 1
        }
        return false
    }

    public var arguments: String { text }

    static func decode(_ s: String) throws(FilterError) -> [UInt8] {
        var out: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            guard c == UInt8(ascii: "\\") else { out.append(c); continue }
            guard let e = it.popFirst() else { throw FilterError("match: trailing backslash in '\(s)'") }
            switch e {
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "\\"): out.append(92)
            case UInt8(ascii: "x"):
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) else {
                    throw FilterError("match: bad \\x escape in '\(s)' (want two hex digits)")
                }
                out.append(v)
                it = it.dropFirst(2)
            default: throw FilterError("match: unknown escape '\\\(Character(UnicodeScalar(e)))' in '\(s)'")
            }
        }
        if out.isEmpty { throw FilterError("match: needs the text to look for, as in match=GET") }
        return out
    }

    public static let descriptor = FilterDescriptor(
        name: "match", summary: "packets whose payload contains a byte string",
        usage: "match=TEXT (escapes: \\n \\r \\t \\\\ \\xHH)", structuralClass: .filtering
    ) { a throws(FilterError) in try Match(a) }
}
