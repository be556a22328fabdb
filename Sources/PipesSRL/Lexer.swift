/// Splits request text into tokens. Pulled by the parser one token at a time, so the first error in the text
/// is the one reported.
struct Token: Equatable {
    enum Kind: Equatable {
        /// `|` with the selector text that follows it without a space (empty for a plain pipe).
        case pipe(String)
        case plus, union, intersect, bang, open, close
        case word(String)
        case quoted(String)
        /// `--key=value` (value nil for `--key`).
        case option(String, String?)
        case semicolon, newline, end
    }
    var kind: Kind
    var range: SourceRange
}

struct Lexer {
    let scalars: [Unicode.Scalar]
    let text: String
    private var i = 0
    private var line = 1
    private var column = 1

    init(_ text: String) {
        self.text = text
        scalars = Array(text.unicodeScalars)
    }

    private var here: SourceLocation { SourceLocation(line: line, column: column, offset: i) }

    private mutating func advance() {
        if scalars[i] == "\n" {
            line += 1
            column = 1
        } else {
            column += 1
        }
        i += 1
    }

    private func peekScalar(_ k: Int = 0) -> Unicode.Scalar? { i + k < scalars.count ? scalars[i + k] : nil }

    private func fail(_ message: String, _ start: SourceLocation, _ length: Int = 1) -> SRLError {
        SRLError(message, at: SourceRange(start, length: length), in: text)
    }

    static func isSpace(_ c: Unicode.Scalar) -> Bool { c == " " || c == "\t" || c == "\r" }

    /// Characters that end a word (and a pipe's selector).
    static func endsWord(_ c: Unicode.Scalar) -> Bool {
        isSpace(c) || c == "\n" || c == "|" || c == "(" || c == ")" || c == "\"" || c == "'" || c == ";" || c == "+"
    }

    static func isControl(_ c: Unicode.Scalar) -> Bool {
        (c.value < 0x20 && c != "\t" && c != "\n" && c != "\r") || c.value == 0x7F
    }

    static func describe(_ c: Unicode.Scalar) -> String {
        let h = String(c.value, radix: 16, uppercase: true)
        return "U+" + String(repeating: "0", count: max(0, 4 - h.count)) + h
    }

    mutating func next() throws(SRLError) -> Token {
        // Blanks and comments.
        while let c = peekScalar() {
            if Lexer.isSpace(c) {
                advance()
            } else if c == "#" {
                while let d = peekScalar(), d != "\n" { advance() }
            } else {
                break
            }
        }
        let start = here
        guard let c = peekScalar() else { return Token(kind: .end, range: SourceRange(start, length: 1)) }
        if Lexer.isControl(c) { throw fail("unexpected control character \(Lexer.describe(c))", start) }
        switch c {
        case "\n", ";", "(", ")", "!":
            advance()
            let kind: Token.Kind = switch c {
            case "\n": .newline
            case ";": .semicolon
            case "(": .open
            case ")": .close
            default: .bang
            }
            return Token(kind: kind, range: SourceRange(start, length: 1))
        case "+":
            advance()
            if peekScalar() == "+" { advance(); return Token(kind: .union, range: SourceRange(start, length: 2)) }
            if peekScalar() == "*" { advance(); return Token(kind: .intersect, range: SourceRange(start, length: 2)) }
            return Token(kind: .plus, range: SourceRange(start, length: 1))
        case "|":
            advance()
            let sel = try scanWord()
            return Token(kind: .pipe(String(sel)), range: SourceRange(start, length: 1 + sel.count))
        case "\"", "'":
            return try quoted(c, start)
        default:
            let w = try scanWord()
            let word = String(w)
            let range = SourceRange(start, length: w.count)
            if word.hasPrefix("--") {
                let body = word.dropFirst(2)
                if body.isEmpty { throw fail("'--' alone is not an option (options: --name=X, --space=K)", start, 2) }
                if let eq = body.firstIndex(of: "=") {
                    return Token(kind: .option(String(body[..<eq]), String(body[body.index(after: eq)...])), range: range)
                }
                return Token(kind: .option(String(body), nil), range: range)
            }
            return Token(kind: .word(word), range: range)
        }
    }

    /// The scalars up to the next blank or operator (a word, or a pipe's selector).
    private mutating func scanWord() throws(SRLError) -> String.UnicodeScalarView {
        var w = String.UnicodeScalarView()
        while let d = peekScalar(), !Lexer.endsWord(d) {
            if Lexer.isControl(d) { throw fail("unexpected control character \(Lexer.describe(d))", here) }
            w.append(d)
            advance()
        }
        return w
    }

    /// A string in double quotes (escapes `\\ \" \n \t \r \xHH`) or single quotes (literal).
    private mutating func quoted(_ q: Unicode.Scalar, _ start: SourceLocation) throws(SRLError) -> Token {
        advance()
        var out = String.UnicodeScalarView()
        while true {
            guard let c = peekScalar(), c != "\n" else {
                throw fail("unterminated string: the \(q == "\"" ? "double" : "single") quote here has no partner on this line", start)
            }
            if c == q {
                advance()
                break
            }
            if Lexer.isControl(c) { throw fail("unexpected control character \(Lexer.describe(c)) in a string", here) }
            if c == "\\" && q == "\"" {
                let at = here
                advance()
                guard let e = peekScalar(), e != "\n" else { throw fail("unterminated string: '\\' at its end", at) }
                switch e {
                case "\\": out.append("\\")
                case "\"": out.append("\"")
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "x":
                    advance()
                    var hex = ""
                    for _ in 0..<2 {
                        guard let h = peekScalar(), h.properties.isASCIIHexDigit else {
                            throw fail("bad escape: \\x wants two hex digits (\\x41)", at, 2 + hex.count)
                        }
                        hex.unicodeScalars.append(h)
                        advance()
                    }
                    out.append(Unicode.Scalar(UInt8(hex, radix: 16)!))
                    continue
                default:
                    throw fail("unknown escape '\\\(e)' in a string (escapes: \\\\ \\\" \\n \\t \\r \\xHH)", at, 2)
                }
                advance()
                continue
            }
            out.append(c)
            advance()
        }
        return Token(kind: .quoted(String(out)), range: SourceRange(start, length: i - start.offset))
    }
}

