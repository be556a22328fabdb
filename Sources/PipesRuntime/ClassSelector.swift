/// An edge's class constraint (§4.2): which class values a child receives from its parent.
///
/// Syntax (directory names and SRL pipe annotations): `80`, `22:23` (range), `!80` (negation), `ssh` or
/// `ssh:telnet` (names the parent filter defines), and comma lists `80,443`. The default edge accepts every
/// non-zero class.
public struct ClassSelector: Equatable, Sendable, CustomStringConvertible {
    public var ranges: [ClosedRange<UInt32>]
    public var negated: Bool
    public let text: String

    public static let any = ClassSelector(ranges: [], negated: true, text: "")
    /// Accepts no class: the hot form of a dormant edge (built, not yet activated).
    static let nothing = ClassSelector(ranges: [], negated: false, text: "(dormant)")

    init(ranges: [ClosedRange<UInt32>], negated: Bool, text: String) {
        self.ranges = ranges
        self.negated = negated
        self.text = text
    }

    @inline(__always)
    public func matches(_ c: UInt32) -> Bool {
        if c == 0 { return false }
        var hit = false
        for r in ranges where r.contains(c) { hit = true; break }
        return hit != negated
    }

    public var isAny: Bool { negated && ranges.isEmpty }
    public var description: String { text }

    /// Parses a selector. `names` are the parent filter's class names.
    public static func parse(_ text: String, names: [String: UInt32]) throws(FilterError) -> ClassSelector {
        var body = Substring(text)
        var negated = false
        if body.hasPrefix("!") { negated = true; body = body.dropFirst() }
        if body.isEmpty { throw FilterError("empty class selector '\(text)'") }
        var ranges: [ClosedRange<UInt32>] = []
        for item in body.split(separator: ",", omittingEmptySubsequences: false) {
            let ends = item.split(separator: ":", omittingEmptySubsequences: false)
            guard ends.count == 1 || ends.count == 2 else { throw FilterError("bad class range '\(item)' in '\(text)'") }
            let lo = try value(ends[0], names, text)
            let hi = ends.count == 2 ? try value(ends[1], names, text) : lo
            guard lo <= hi else { throw FilterError("empty class range '\(item)' in '\(text)': \(lo) > \(hi)") }
            ranges.append(lo...hi)
        }
        return ClassSelector(ranges: ranges, negated: negated, text: text)
    }

    private static func value(_ s: Substring, _ names: [String: UInt32], _ whole: String) throws(FilterError) -> UInt32 {
        if s.isEmpty { throw FilterError("empty class value in '\(whole)'") }
        if let v = names[String(s).lowercased()] { return v }
        if s.hasPrefix("0x") || s.hasPrefix("0X") {
            guard let v = UInt32(s.dropFirst(2), radix: 16) else { throw FilterError("bad hex class value '\(s)' in '\(whole)'") }
            return v
        }
        if s.first!.isNumber {
            guard let v = UInt32(s) else { throw FilterError("class value '\(s)' in '\(whole)' is not a number in 0...\(UInt32.max)") }
            return v
        }
        throw FilterError("unknown class name '\(s)' in '\(whole)'")
    }
}
