#if canImport(Glibc)
import Glibc
#endif
import CPcre2
import PipesRuntime

/// `regex=PATTERN`: packets whose transport payload (the whole block for user data) matches a PCRE2 pattern.
///
/// The pattern is compiled once, in byte mode (no UTF: binary payloads match byte for byte), and JIT-compiled when
/// the library has a JIT; the match data, match context and JIT stack are allocated once per instance, so a block
/// costs one `pcre2_jit_match` (or `pcre2_match`) and no allocation. Each payload is matched on its own: a match
/// never spans blocks. Blocks with no payload do not match.
public final class RegexMatch: Filter {
    private let text: String
    private let code: OpaquePointer
    private let matchData: OpaquePointer
    private let context: OpaquePointer
    private let jitStack: OpaquePointer?
    /// True when the pattern runs JIT-compiled (`regex_jit` in stats).
    public let jit: Bool
    /// Why the JIT is not used, when it is not.
    private let jitReason: String
    public private(set) var matches: UInt64 = 0
    /// Matches that ended in an error (a match or JIT stack limit): the block is dropped.
    public private(set) var errors: UInt64 = 0
    private var lastError: Int32 = 0

    /// True when the PCRE2 library was built with a JIT compiler for this machine.
    public static let jitAvailable: Bool = {
        var yes: UInt32 = 0
        return pcre2_config_8(UInt32(PCRE2_CONFIG_JIT), &yes) >= 0 && yes == 1
    }()

    init(_ arguments: String) throws(FilterError) {
        if arguments.isEmpty { throw FilterError("regex: needs a pattern, as in regex=^GET (PCRE2 syntax)") }
        text = arguments
        var error: Int32 = 0
        var offset = 0
        let pattern = Array(arguments.utf8)
        let compiled = pattern.withUnsafeBufferPointer {
            pcre2_compile_8($0.baseAddress, $0.count, 0, &error, &offset, nil)
        }
        guard let c = compiled else {
            throw FilterError("regex: bad pattern '\(arguments)' at offset \(offset): \(RegexMatch.message(error))")
        }
        let jitRC: Int32 = RegexMatch.jitAvailable ? pcre2_jit_compile_8(c, UInt32(PCRE2_JIT_COMPLETE)) : 1
        // 32 KiB to start, up to 1 MiB: deep backtracking fails the match (counted) rather than the stack.
        let stack = jitRC == 0 ? pcre2_jit_stack_create_8(32 << 10, 1 << 20, nil) : nil
        let md = pcre2_match_data_create_8(1, nil)
        let mc = pcre2_match_context_create_8(nil)
        guard let md, let mc, jitRC != 0 || stack != nil else {
            if let stack { pcre2_jit_stack_free_8(stack) }
            if let mc { pcre2_match_context_free_8(mc) }
            if let md { pcre2_match_data_free_8(md) }
            pcre2_code_free_8(c)
            throw FilterError("regex: out of memory for the pattern's match data", errno: ENOMEM)
        }
        code = c
        matchData = md
        context = mc
        jitStack = stack
        jit = jitRC == 0
        jitReason = !RegexMatch.jitAvailable ? "PCRE2 has no JIT for this machine"
            : jitRC == 0 ? "" : RegexMatch.message(jitRC)
        if let s = stack { pcre2_jit_stack_assign_8(mc, nil, UnsafeMutableRawPointer(s)) }
    }

    deinit {
        if let s = jitStack { pcre2_jit_stack_free_8(s) }
        pcre2_match_context_free_8(context)
        pcre2_match_data_free_8(matchData)
        pcre2_code_free_8(code)
    }

    /// PCRE2's text for an error code.
    static func message(_ code: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = pcre2_get_error_message_8(code, &buffer, buffer.count)
        return n > 0 ? String(decoding: buffer[0..<Int(n)], as: UTF8.self) : "PCRE2 error \(code)"
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        let subject = block.payloadBytes()
        guard subject.count > 0, let s = subject.baseAddress else { return 0 }
        let p = s.assumingMemoryBound(to: UInt8.self)
        let rc = jit
            ? pcre2_jit_match_8(code, p, subject.count, 0, 0, matchData, context)
            : pcre2_match_8(code, p, subject.count, 0, 0, matchData, context)
        if rc >= 0 {
            matches &+= 1
            return block.classValue == 0 ? 1 : block.classValue
        }
        if rc != PCRE2_ERROR_NOMATCH {
            errors &+= 1
            lastError = rc
        }
        return 0
    }

    public var arguments: String { text }

    public func statistics() -> [(String, String)] {
        var s = [("regex_jit", jit ? "yes" : "no (\(jitReason))"), ("regex_matches", "\(matches)"),
                 ("regex_errors", "\(errors)")]
        if errors > 0 { s.append(("regex_last_error", RegexMatch.message(lastError))) }
        return s
    }

    public static let descriptor = FilterDescriptor(
        name: "regex", summary: "packets whose payload matches a PCRE2 regular expression (JIT-compiled)",
        usage: "regex=PATTERN (PCRE2 syntax; write / as \\x2f)", structuralClass: .filtering
    ) { a throws(FilterError) in try RegexMatch(a) }
}
