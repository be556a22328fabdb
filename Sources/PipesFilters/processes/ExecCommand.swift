#if canImport(Glibc)
import Glibc
#endif
import PipesRuntime

/// The command an `exec` filter runs: its words, split as a shell splits plain words and quotes, and the
/// executable they name, found in `PATH`.
///
/// There is no shell: no variables, globs, redirections, pipes or `~`. Shell syntax outside quotes is refused
/// with its position rather than passed on as an argument, so `exec=grep foo | wc -l` does not quietly become
/// `grep` with the arguments `foo`, `|`, `wc` and `-l`; `exec=sh -c '...'` is how to ask for a shell.
public struct ExecCommand: Equatable, Sendable {
    /// The words: `argv[0]` as written, then the arguments.
    public let argv: [String]
    /// The file that runs: `argv[0]` itself when it contains a slash, else the first match in `PATH`.
    public let executable: String

    public init(_ text: String, path: String? = ExecCommand.searchPath) throws(FilterError) {
        argv = try ExecCommand.split(text)
        guard let name = argv.first else {
            throw FilterError("exec: needs a command, e.g. exec=grep -a foo or exec=sh -c 'tr a-z A-Z | rev'")
        }
        executable = try ExecCommand.resolve(name, path: path)
    }

    /// The daemon's `PATH`, or the shell's default when it has none.
    public static var searchPath: String {
        getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
    }

    /// Splits `text` into words like a POSIX shell splits a simple command made of plain words: blanks separate
    /// words; `'...'` is literal; in `"..."` a backslash quotes `"`, `\`, `$`, `` ` `` and newline; outside quotes
    /// a backslash quotes the next character. Throws for unterminated quotes and for unquoted shell syntax
    /// (`| & ; < > ( ) $ ``), which would need a shell.
    public static func split(_ text: String) throws(FilterError) -> [String] {
        enum Quote { case none, single, double }
        let b = Array(text.utf8)
        var words: [String] = []
        var word: [UInt8] = []
        var inWord = false
        var quote = Quote.none
        var quoteStart = 0
        var i = 0
        func shellSyntax(_ at: Int) -> FilterError {
            FilterError("exec: '\(Character(Unicode.Scalar(b[at])))' at position \(at + 1) is shell syntax, and exec runs one "
                        + "command without a shell (quote it, or use exec=sh -c '...')")
        }
        while i < b.count {
            let c = b[i]
            switch quote {
            case .single:
                if c == UInt8(ascii: "'") { quote = .none } else { word.append(c) }
            case .double:
                if c == UInt8(ascii: "\"") {
                    quote = .none
                } else if c == UInt8(ascii: "\\"), i + 1 < b.count, "\"\\$`\n".utf8.contains(b[i + 1]) {
                    i += 1
                    if b[i] != UInt8(ascii: "\n") { word.append(b[i]) }
                } else if c == UInt8(ascii: "`") || (c == UInt8(ascii: "$") && i + 1 < b.count && expands(b[i + 1])) {
                    throw shellSyntax(i)
                } else {
                    word.append(c)
                }
            case .none:
                switch c {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"):
                    if inWord { words.append(String(decoding: word, as: UTF8.self)); word = []; inWord = false }
                case UInt8(ascii: "'"), UInt8(ascii: "\""):
                    quote = c == UInt8(ascii: "'") ? .single : .double
                    quoteStart = i
                    inWord = true
                case UInt8(ascii: "\\"):
                    guard i + 1 < b.count else { throw FilterError("exec: a backslash at the end has nothing to quote") }
                    i += 1
                    if b[i] != UInt8(ascii: "\n") { word.append(b[i]); inWord = true }
                case UInt8(ascii: "|"), UInt8(ascii: "&"), UInt8(ascii: ";"), UInt8(ascii: "<"), UInt8(ascii: ">"),
                     UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "`"), UInt8(ascii: "$"):
                    throw shellSyntax(i)
                default:
                    word.append(c)
                    inWord = true
                }
            }
            i += 1
        }
        if quote != .none {
            throw FilterError("exec: unterminated \(quote == .single ? "'" : "\"") quote starting at position \(quoteStart + 1)")
        }
        if inWord { words.append(String(decoding: word, as: UTF8.self)) }
        return words
    }

    /// True when a shell would expand `$` followed by `c` (a name, a brace, a parenthesis, a digit or a special
    /// parameter); `$` before anything else is literal, as in `"a$"`.
    private static func expands(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
            || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || "_{(@*#?$!-".utf8.contains(c)
    }

    /// Finds the executable `name` names, as `execvp` would: a name with a slash as it is, else each `PATH`
    /// directory in turn. Throws ENOENT when nothing is found, EACCES when only non-executable files are.
    public static func resolve(_ name: String, path: String?) throws(FilterError) -> String {
        if name.contains("/") {
            if let reason = unusable(name) { throw reason }
            return name
        }
        let dirs = (path ?? "").split(separator: ":", omittingEmptySubsequences: false).map { $0.isEmpty ? "." : String($0) }
        var refused: FilterError?
        for d in dirs {
            let candidate = d.hasSuffix("/") ? d + name : d + "/" + name
            guard let reason = unusable(candidate) else { return candidate }
            if reason.errno != ENOENT && refused == nil { refused = reason }
        }
        if let r = refused { throw r }
        throw FilterError("exec: '\(name)': command not found in PATH (\(path ?? ""))", errno: ENOENT)
    }

    /// Why `file` cannot be run (nil: it can).
    private static func unusable(_ file: String) -> FilterError? {
        var st = stat()
        if stat(file, &st) != 0 {
            let e = errno
            return FilterError("exec: '\(file)': \(String(cString: strerror(e)))", errno: e)
        }
        if st.st_mode & S_IFMT == S_IFDIR { return FilterError("exec: '\(file)' is a directory", errno: EACCES) }
        if access(file, X_OK) != 0 { return FilterError("exec: '\(file)' is not executable", errno: EACCES) }
        return nil
    }

    /// The words as one line a shell would split back into them (for `args` and `stats`).
    public var text: String {
        argv.map { w in
            let plain = !w.isEmpty && w.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || "-_./=:,+%@^".utf8.contains(c)
            }
            return plain ? w : "'" + w.replacingAll("'", with: "'\\''") + "'"
        }.joined(separator: " ")
    }
}

extension String {
    fileprivate func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for ch in self { if ch == target { out += replacement } else { out.append(ch) } }
        return out
    }
}
