/// Parses the request language (§4.2). Recursive descent over a lexer it pulls tokens from; every error carries
/// the position of the offending text and what was expected there.
///
///     script     = { request ( ";" | newline ) }
///     request    = sequence
///     sequence   = parallel { pipe parallel }
///     pipe       = "|" [ selector ]                      (no space between "|" and the selector)
///     selector   = [ "!" ] item { "," item } | "all"
///     item       = value [ ":" value ]
///     value      = number | "0x" hex | name
///     parallel   = unary { ( "+" | "++" | "+*" ) unary }  (one operator kind per level)
///     unary      = "!" unary | primary
///     primary    = filter | "(" sequence ")"
///     filter     = name { argument | option }
///     argument   = word | key "=" word | quoted
///     option     = "--name=" tag | "--space=" number
///
/// A line break ends a request in a script unless it follows an operator or is inside parentheses; in a single
/// request (`SRL.parse`) line breaks are blanks.
public enum SRL {
    /// The longest request text accepted, in Unicode scalars.
    public static let maxLength = 1 << 16
    /// The deepest nesting of parentheses and negations accepted.
    public static let maxDepth = 200

    /// Parses one request.
    public static func parse(_ text: String) throws(SRLError) -> Request {
        var p = try Parser(text, script: false)
        let e = try p.request()
        guard case .end = p.token.kind else {
            throw p.fail("one request expected; found \(p.token.kind.name) after it (use a script for several)", p.token.range)
        }
        let r = Request(expression: e, text: text)
        try Checks.tags(r)
        return r
    }

    /// Parses requests separated by `;` or line breaks; blank lines and `#` comments are skipped.
    public static func parseScript(_ text: String) throws(SRLError) -> [Request] {
        var p = try Parser(text, script: true)
        var out: [Request] = []
        while true {
            while p.token.kind == .newline || p.token.kind == .semicolon { try p.advance() }
            if case .end = p.token.kind { break }
            let e = try p.request()
            switch p.token.kind {
            case .end, .newline, .semicolon: break
            default: throw p.fail("expected the end of the request, found \(p.token.kind.name)", p.token.range)
            }
            let r = Request(expression: e, text: text)
            try Checks.tags(r)
            out.append(r)
        }
        return out
    }
}

struct Parser {
    private var lexer: Lexer
    private(set) var token: Token
    private let script: Bool
    /// Nesting of parentheses and negations (a bound on recursion), and of parentheses alone (line breaks and
    /// ')' depend on it).
    private var depth = 0
    private var parens = 0
    let text: String

    init(_ text: String, script: Bool) throws(SRLError) {
        self.text = text
        self.script = script
        lexer = Lexer(text)
        let count = lexer.scalars.count
        if count > SRL.maxLength {
            throw SRLError("request too long: \(count) characters (at most \(SRL.maxLength))",
                           at: SourceRange(SourceLocation(line: 1, column: 1, offset: 0), length: 1), in: text)
        }
        token = Token(kind: .end, range: SourceRange(SourceLocation(line: 1, column: 1, offset: 0), length: 1))
        try advance()
    }

    func fail(_ message: String, _ range: SourceRange) -> SRLError { SRLError(message, at: range, in: text) }

    mutating func advance() throws(SRLError) {
        token = try lexer.next()
    }

    /// Line breaks are blanks in a single request, inside parentheses, and after an operator.
    private mutating func skipBreaks(force: Bool = false) throws(SRLError) {
        if !script || parens > 0 || force {
            while token.kind == .newline { try advance() }
        }
    }

    mutating func request() throws(SRLError) -> Expression {
        try skipBreaks()
        if case .end = token.kind { throw fail("empty request: expected a filter name (e.g. rx | ip | count)", token.range) }
        return try sequence()
    }

    private var startsOperand: Bool {
        switch token.kind {
        case .word, .open, .bang: true
        default: false
        }
    }

    private mutating func sequence() throws(SRLError) -> Expression {
        var stages = [try parallel()]
        var pipes: [PipeSelector] = []
        while case .pipe(let sel) = token.kind {
            let pipeToken = token
            let selector = try checkedSelector(sel, pipeToken.range)
            try advance()
            try skipBreaks(force: true)
            guard startsOperand else {
                throw fail("expected a filter after '|\(sel)', found \(token.kind.name)", token.range)
            }
            pipes.append(selector)
            stages.append(try parallel())
        }
        return stages.count == 1 ? stages[0] : .sequence(stages: stages, pipes: pipes)
    }

    private mutating func parallel() throws(SRLError) -> Expression {
        let first = try unary()
        var kind: Parallel?
        var kindToken: Token?
        var items = [first]
        while let k = token.kind.parallel {
            if let kind, kind != k, let kt = kindToken {
                throw fail("'\(k.rawValue)' after '\(kind.rawValue)' (at \(kt.range.start)): mixing them needs parentheses, e.g. (a \(kind.rawValue) b) \(k.rawValue) c",
                           token.range)
            }
            kind = k
            if kindToken == nil { kindToken = token }
            let opToken = token
            try advance()
            try skipBreaks(force: true)
            guard startsOperand else {
                throw fail("expected a filter after '\(opToken.kind.name.dropFirst().dropLast())', found \(token.kind.name)", token.range)
            }
            items.append(try unary())
        }
        guard let kind else { return first }
        return .parallel(kind, items, range: first.range)
    }

    private mutating func unary() throws(SRLError) -> Expression {
        if case .bang = token.kind {
            let bang = token
            try enter(bang)
            defer { depth -= 1 }
            try advance()
            try skipBreaks(force: true)
            guard startsOperand else {
                throw fail("expected a filter or '(' after '!', found \(token.kind.name)", token.range)
            }
            return .negation(try unary(), range: bang.range)
        }
        return try primary()
    }

    private mutating func enter(_ t: Token) throws(SRLError) {
        depth += 1
        if depth > SRL.maxDepth { throw fail("nested more than \(SRL.maxDepth) deep", t.range) }
    }

    private mutating func primary() throws(SRLError) -> Expression {
        switch token.kind {
        case .open:
            let open = token
            try enter(open)
            parens += 1
            try advance()
            try skipBreaks()
            if case .close = token.kind { throw fail("empty parentheses: expected a filter name inside", token.range) }
            guard startsOperand else { throw fail("expected a filter after '(', found \(token.kind.name)", token.range) }
            let e = try sequence()
            try skipBreaks()
            guard case .close = token.kind else {
                throw fail("expected ')' to close the '(' at \(open.range.start), found \(token.kind.name)", token.range)
            }
            depth -= 1
            parens -= 1
            try advance()
            try expectOperatorOrEnd(after: "')'")
            return e
        case .word(let w):
            return try filter(w)
        case .option(let k, _):
            throw fail("expected a filter name, found the option --\(k): options follow the filter they belong to", token.range)
        default:
            throw fail("expected a filter name, found \(token.kind.name)", token.range)
        }
    }

    /// After an operand: an operator, ')' inside parentheses, or the end of the request.
    private mutating func expectOperatorOrEnd(after what: String) throws(SRLError) {
        switch token.kind {
        case .pipe, .plus, .union, .intersect, .end: return
        case .close where parens > 0: return
        case .newline: return
        case .semicolon where script: return
        case .close: throw fail("unexpected ')': no '(' is open", token.range)
        case .bang:
            throw fail("expected '|', '+', '++' or '+*' after \(what), found '!' ('!' starts a negation; quote it to pass it as an argument: \"!x\")",
                       token.range)
        default:
            throw fail("expected '|', '+', '++', '+*' or the end of the request after \(what), found \(token.kind.name)", token.range)
        }
    }

    private mutating func filter(_ word: String) throws(SRLError) -> Expression {
        let nameToken = token
        // A filter may be written as its directory name, NAME=ARGS (as `mkdir` names it).
        var name = word
        var inline: FilterArgument?
        if let eq = word.firstIndex(of: "="), eq != word.startIndex {
            name = String(word[..<eq])
            let rest = String(word[word.index(after: eq)...])
            if rest.isEmpty { throw fail("'\(word)': nothing after '=' (write the filter alone, or NAME=ARGS)", nameToken.range) }
            inline = FilterArgument(key: nil, value: rest, quoted: false, range: nameToken.range)
        }
        guard let first = name.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII,
              name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" || $0 == ".") })
        else {
            throw fail("'\(name)' is not a filter name: names start with a letter and hold letters, digits, '_', '-' and '.'", nameToken.range)
        }
        var call = FilterCall(name: name, written: word, arguments: inline.map { [$0] } ?? [], tag: nil, space: nil, range: nameToken.range)
        try advance()
        while true {
            try skipBreaks()
            switch token.kind {
            case .word(let w):
                call.arguments.append(try argument(w, token.range))
            case .quoted(let q):
                call.arguments.append(FilterArgument(key: nil, value: q, quoted: true, range: token.range))
            case .option(let k, let v):
                try option(k, v, &call)
            default:
                try expectOperatorOrEnd(after: "\(name)\(call.arguments.isEmpty ? "" : "'s arguments")")
                return .filter(call)
            }
            try advance()
        }
    }

    private func argument(_ w: String, _ range: SourceRange) throws(SRLError) -> FilterArgument {
        guard let eq = w.firstIndex(of: "=") else { return FilterArgument(key: nil, value: w, quoted: false, range: range) }
        let key = w[..<eq]
        let value = w[w.index(after: eq)...]
        if key.isEmpty { throw fail("argument '\(w)' has no key before '='", range) }
        guard Parser.isIdentifier(key) else {
            // Not key=value (e.g. a path with '=' in it): a plain word.
            return FilterArgument(key: nil, value: w, quoted: false, range: range)
        }
        if value.isEmpty { throw fail("argument '\(w)' has no value after '=' (quote an empty one: \(key)=\"\")", range) }
        return FilterArgument(key: String(key), value: String(value), quoted: false, range: range)
    }

    private func option(_ k: String, _ v: String?, _ call: inout FilterCall) throws(SRLError) {
        let r = token.range
        switch k {
        case "name":
            guard let v, !v.isEmpty else { throw fail("--name needs a value: --name=X", r) }
            guard Parser.isIdentifier(Substring(v)) else {
                throw fail("--name=\(v): a name starts with a letter or '_' and holds letters, digits, '_', '-' and '.'", r)
            }
            if let t = call.tag { throw fail("--name given twice for \(call.name) (already --name=\(t))", r) }
            call.tag = v
        case "space":
            guard let v, let k = Int(v), (0...63).contains(k) else { throw fail("--space wants a space number 0 to 63: --space=1", r) }
            if call.space != nil { throw fail("--space given twice for \(call.name)", r) }
            call.space = k
        default:
            throw fail("unknown option --\(k) (options: --name=X, --space=K)", r)
        }
    }

    static func isIdentifier(_ s: Substring) -> Bool {
        guard let f = s.unicodeScalars.first, f.isASCII, f.properties.isAlphabetic || f == "_" else { return false }
        return s.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" || $0 == ".") }
    }

    /// Checks a pipe's selector for shape (names are resolved when the request is built).
    private func checkedSelector(_ sel: String, _ pipeRange: SourceRange) throws(SRLError) -> PipeSelector {
        let s = PipeSelector(text: sel, range: pipeRange)
        if sel.isEmpty || sel == "all" { return s }
        var at = pipeRange.start
        at.column += 1
        at.offset += 1
        func err(_ m: String) -> SRLError { fail(m, SourceRange(at, length: sel.unicodeScalars.count)) }
        var body = Substring(sel)
        if body.hasPrefix("!") { body = body.dropFirst() }
        if body.isEmpty { throw err("empty class selector after '|!': expected a class, e.g. |!80") }
        if body == "all" { throw err("'|!all' would pass nothing: remove the pipe's selector or the filter") }
        for item in body.split(separator: ",", omittingEmptySubsequences: false) {
            if item.isEmpty { throw err("empty item in the class selector '\(sel)' (e.g. |80,443)") }
            let ends = item.split(separator: ":", omittingEmptySubsequences: false)
            if ends.count > 2 { throw err("'\(item)' in the class selector '\(sel)': a range has two ends, e.g. 22:23") }
            for e in ends {
                if e.isEmpty { throw err("'\(item)' in the class selector '\(sel)': expected a class value on both sides of ':'") }
                if e.first!.isNumber || e.hasPrefix("0x") || e.hasPrefix("0X") {
                    let ok = e.hasPrefix("0x") || e.hasPrefix("0X") ? UInt32(e.dropFirst(2), radix: 16) != nil : UInt32(e) != nil
                    if !ok { throw err("class value '\(e)' in '\(sel)' is not a number from 0 to \(UInt32.max)") }
                } else if !Parser.isIdentifier(e) {
                    throw err("class value '\(e)' in '\(sel)' is neither a number nor a class name")
                }
            }
        }
        return s
    }
}

extension Token.Kind {
    var parallel: Parallel? {
        switch self {
        case .plus: .split
        case .union: .union
        case .intersect: .intersect
        default: nil
        }
    }

    /// How a message names the token.
    var name: String {
        switch self {
        case .pipe(let s): "'|\(s)'"
        case .plus: "'+'"
        case .union: "'++'"
        case .intersect: "'+*'"
        case .bang: "'!'"
        case .open: "'('"
        case .close: "')'"
        case .word(let w): "'\(w)'"
        case .quoted(let q): "the string \"\(q)\""
        case .option(let k, let v): "'--\(k)\(v.map { "=\($0)" } ?? "")'"
        case .semicolon: "';'"
        case .newline: "the end of the line"
        case .end: "the end of the request"
        }
    }
}

/// Checks that need the whole request.
enum Checks {
    /// Every mention of a `--name` tag is the same filter: the same name, and the same arguments when it repeats
    /// them (a later mention may leave them out).
    static func tags(_ r: Request) throws(SRLError) {
        var seen: [String: FilterCall] = [:]
        func walk(_ e: Expression) throws(SRLError) {
            switch e {
            case .filter(let f):
                guard let t = f.tag else { return }
                if let first = seen[t] {
                    if first.name != f.name {
                        throw SRLError("--name=\(t) is \(first.name) at \(first.range.start); here it names \(f.name): one tag, one filter",
                                       at: f.range, in: r.text)
                    }
                    if !f.arguments.isEmpty && first.argumentText != f.argumentText {
                        throw SRLError("--name=\(t) has the arguments '\(first.argumentText)' at \(first.range.start); here '\(f.argumentText)' (repeat them or leave them out)",
                                       at: f.range, in: r.text)
                    }
                    if let s = f.space, s != first.space {
                        throw SRLError("--name=\(t) is placed in space \(first.space.map(String.init) ?? "(default)") at \(first.range.start); here in \(s)",
                                       at: f.range, in: r.text)
                    }
                } else {
                    seen[t] = f
                }
            case .sequence(let s, _): for x in s { try walk(x) }
            case .parallel(_, let xs, _): for x in xs { try walk(x) }
            case .negation(let x, _): try walk(x)
            }
        }
        try walk(r.expression)
    }
}
