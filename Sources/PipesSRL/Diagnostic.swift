/// A refused request: where, what is wrong, and what was expected.
///
/// `description` reads like a compiler's:
///
///     1:12: expected a filter name after '|', found '|'
///     rx | tcp | | http
///                ^
public struct SRLError: Error, Equatable, Sendable, CustomStringConvertible {
    public var location: SourceLocation
    /// Scalars the caret line underlines (at least 1).
    public var length: Int
    public var message: String
    /// The line of the request the error is on (tabs kept, so the caret lines up).
    public var sourceLine: String

    public init(_ message: String, at range: SourceRange, in text: String) {
        self.message = message
        location = range.start
        length = max(1, range.length)
        sourceLine = SRLError.line(range.start.line, of: text)
    }

    /// `LINE:COLUMN: MESSAGE`.
    public var summary: String { "\(location): \(message)" }

    /// The summary, the source line and a caret (`^~~~`) under the offending text.
    public var description: String {
        var caret = ""
        var col = 1
        for ch in sourceLine.unicodeScalars {
            if col >= location.column { break }
            caret.append(ch == "\t" ? "\t" : " ")
            col += 1
        }
        caret += "^" + String(repeating: "~", count: max(0, length - 1))
        return "\(summary)\n\(sourceLine)\n\(caret)"
    }

    static func line(_ n: Int, of text: String) -> String {
        var current = 1
        var out = String.UnicodeScalarView()
        for ch in text.unicodeScalars {
            if ch == "\n" {
                if current == n { break }
                current += 1
                continue
            }
            if current == n { out.append(ch) }
        }
        return String(out)
    }
}
