import CPcap
import CPipesBPF
import PipesBuffering
import PipesRuntime

/// Serializes calls into libpcap's compiler.
let pcapCompilerLock = ConditionLock()

/// A compiled BPF program for one link type (owned; freed on deinit), with its decoded form for the threaded
/// interpreter (`CPipesBPF`; nil when it refused the program: libpcap's `bpf_filter` runs it then).
final class BPFProgram {
    var program = bpf_program()
    let linkType: LinkType
    private(set) var decoded: UnsafeMutablePointer<pipes_bpf_prog>?

    init(expression: String, linkType: LinkType, snaplen: Int32 = 262_144) throws(FilterError) {
        self.linkType = linkType
        let result: String? = pcapCompilerLock.withLock {
            guard let dead = pcap_open_dead(linkType.dltValue, snaplen) else { return "pcap_open_dead failed" }
            defer { pcap_close(dead) }
            if pcap_compile(dead, &program, expression, 1, PCAP_NETMASK_UNKNOWN) != 0 {
                return String(cString: pcap_geterr(dead))
            }
            return nil
        }
        if let e = result { throw FilterError("bpf: '\(expression)': \(e) (link type \(linkType))") }
        decoded = pipes_bpf_decode(program.bf_insns, program.bf_len)
    }

    deinit {
        pipes_bpf_free(decoded)
        pcap_freecode(&program)
    }

    @inline(__always)
    func matches(_ block: Block) -> Bool {
        guard let base = block.bytes.baseAddress else { return false }
        return BPF.run(decoded, program.bf_insns, base.assumingMemoryBound(to: UInt8.self),
                       UInt32(truncatingIfNeeded: block.wireLength), UInt32(block.count)) != 0
    }
}

/// `bpf=EXPR`: packets matching a tcpdump/libpcap filter expression, compiled by `pcap_compile` for the
/// stream's link type and run by the threaded interpreter of `CPipesBPF` (libpcap's semantics, about twice as
/// fast), or by libpcap's `bpf_filter` for a program it does not take.
public final class BPF: Filter {
    private let expression: String
    private var programs: [BPFProgram]
    /// The program for the link type seen last, as plain values (hot path: one compare, no lookup, and no
    /// reference counting: `programs` keeps the instructions alive).
    private var currentLinkType: LinkType
    private var currentInsns: UnsafeMutablePointer<bpf_insn>?
    private var currentDecoded: UnsafeMutablePointer<pipes_bpf_prog>?

    init(_ expression: String) throws(FilterError) {
        let e = expression.trimmingCharacters(in: " ")
        if e.isEmpty { throw FilterError("bpf: needs an expression, as in 'bpf=tcp dst port 80'") }
        let p = try BPFProgram(expression: e, linkType: .ethernet)
        self.expression = e
        programs = [p]
        currentLinkType = p.linkType
        currentInsns = p.program.bf_insns
        currentDecoded = p.decoded
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        if currentLinkType != block.linkType { if !select(block.linkType) { return 0 } }
        guard let base = block.bytes.baseAddress else { return 0 }
        let hit = BPF.run(currentDecoded, currentInsns, base.assumingMemoryBound(to: UInt8.self),
                          UInt32(truncatingIfNeeded: block.wireLength), UInt32(block.count)) != 0
        return hit ? (block.classValue == 0 ? 1 : block.classValue) : 0
    }

    /// Runs a program: decoded, by the threaded interpreter; otherwise by libpcap.
    @inline(__always)
    static func run(_ decoded: UnsafeMutablePointer<pipes_bpf_prog>?, _ insns: UnsafeMutablePointer<bpf_insn>?,
                    _ p: UnsafePointer<UInt8>, _ wireLength: UInt32, _ captured: UInt32) -> UInt32 {
        if let d = decoded { return pipes_bpf_run(d, p, wireLength, captured) }
        return bpf_filter(insns, p, wireLength, captured)
    }

    /// Finds or compiles the program for a link type (once per link type; not on the steady-state path).
    private var uncompilable: [LinkType] = []

    private func select(_ lt: LinkType) -> Bool {
        if let p = programs.first(where: { $0.linkType == lt }) { use(p); return true }
        if uncompilable.contains(lt) { return false }
        guard let p = try? BPFProgram(expression: expression, linkType: lt) else { uncompilable.append(lt); return false }
        programs.append(p)
        use(p)
        return true
    }

    private func use(_ p: BPFProgram) {
        currentLinkType = p.linkType
        currentInsns = p.program.bf_insns
        currentDecoded = p.decoded
    }

    public func attach(streamLinkType: LinkType?) throws(FilterError) {
        guard let lt = streamLinkType, lt != .user else { return }
        if programs.contains(where: { $0.linkType == lt }) { _ = select(lt); return }
        let p = try BPFProgram(expression: expression, linkType: lt)
        programs.append(p)
        use(p)
    }

    public var arguments: String { expression }

    public static let descriptor = FilterDescriptor(
        name: "bpf", summary: "packets matching a pcap-filter(7) expression",
        usage: "bpf=EXPRESSION (tcpdump syntax, e.g. 'bpf=tcp dst port 80')", structuralClass: .filtering
    ) { a throws(FilterError) in try BPF(a) }
}

extension String {
    func trimmingCharacters(in c: Character) -> String {
        var s = Substring(self)
        while s.first == c || s.first == "\t" { s = s.dropFirst() }
        while s.last == c || s.last == "\t" || s.last == "\n" { s = s.dropLast() }
        return String(s)
    }
}
