/// The Streamline request language (SRL, paper §4.2): the syntax tree of a request.
///
///     rx | tcp | dport |80 http | files
///     tcp | http + ssh + rtsp | inspect
///     rx ++ tx | ip | mpeg +* !http
///     a --name=X | b | a --name=X
///
/// Precedence, loosest first: `|` (sequence, optionally annotated with a class selector: `|22`, `|!80`,
/// `|22:23`, `|ssh:telnet`, `|all`), then `+` (split-join), `++` (union), `+*` (intersection) — one kind per
/// level unless parenthesised —, then prefix `!` (negation), then a filter or a parenthesised request.

/// A place in the request text: 1-based line and column (in Unicode scalars), and the offset in scalars.
public struct SourceLocation: Equatable, Sendable, CustomStringConvertible {
    public var line: Int
    public var column: Int
    public var offset: Int
    public init(line: Int, column: Int, offset: Int) {
        self.line = line
        self.column = column
        self.offset = offset
    }
    public var description: String { "\(line):\(column)" }
}

/// A span of the request text.
public struct SourceRange: Equatable, Sendable {
    public var start: SourceLocation
    /// Scalars covered (at least 1 for a caret).
    public var length: Int
    public init(_ start: SourceLocation, length: Int) {
        self.start = start
        self.length = length
    }
}

/// One argument of a filter: a word, a quoted string, or `key=value`.
public struct FilterArgument: Equatable, Sendable {
    /// Set for `key=value` (unquoted key).
    public var key: String?
    public var value: String
    /// True when the value was quoted (it is taken literally: spaces, operators).
    public var quoted: Bool
    public var range: SourceRange

    /// The argument as it reads in a directory name (`key=value` or the value).
    public var text: String { key.map { "\($0)=\(value)" } ?? value }
}

/// A filter mention: its name, arguments and options.
public struct FilterCall: Equatable, Sendable {
    public var name: String
    /// The word as written: `name`, or a directory name `NAME=ARGS` (then `ARGS` is the first argument).
    public var written: String
    public var arguments: [FilterArgument]
    /// `--name=X`: mentions with the same tag are one instance (cycles and joins, §4.2).
    public var tag: String?
    /// `--space=K`: run it in execution space K (a placement hint for the control plane).
    public var space: Int?
    public var range: SourceRange

    /// The filter's argument text as a directory name carries it after `=` (arguments joined by spaces).
    public var argumentText: String { arguments.map(\.text).joined(separator: " ") }
}

/// The class selector written on a pipe (`|22`, `|!80`, `|22:23`, `|ssh:telnet`, `|80,443`, `|all`). Names are
/// resolved against the upstream filter's class names when the request is built.
public struct PipeSelector: Equatable, Sendable {
    /// The text after `|`; empty for a plain pipe (every class but 0).
    public var text: String
    public var range: SourceRange
    /// True for a plain pipe or `|all`.
    public var isAll: Bool { text.isEmpty || text == "all" }
    /// Where the selector text is (after the `|`).
    public var selectorRange: SourceRange {
        var at = range.start
        at.column += 1
        at.offset += 1
        return SourceRange(at, length: max(1, range.length - 1))
    }
}

/// The kinds of parallel composition.
public enum Parallel: String, Equatable, Sendable {
    /// `+`: split-join; every branch's output goes on.
    case split = "+"
    /// `++`: union; a block that several branches pass goes on once.
    case union = "++"
    /// `+*`: intersection; a block goes on only if every branch passes it.
    case intersect = "+*"
}

/// A request expression.
public indirect enum Expression: Equatable, Sendable {
    case filter(FilterCall)
    /// `e0 |s1 e1 |s2 e2 ...`: `pipes[i]` joins `stages[i]` to `stages[i + 1]`.
    case sequence(stages: [Expression], pipes: [PipeSelector])
    case parallel(Parallel, [Expression], range: SourceRange)
    /// `!e`: what `e` does not pass of its input.
    case negation(Expression, range: SourceRange)

    /// Where the expression starts (for messages).
    public var range: SourceRange {
        switch self {
        case .filter(let f): f.range
        case .sequence(let s, _): s[0].range
        case .parallel(_, _, let r): r
        case .negation(_, let r): r
        }
    }
}

/// One parsed request, with the text it came from (for messages).
public struct Request: Equatable, Sendable {
    public var expression: Expression
    public var text: String
}
