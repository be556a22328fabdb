import PipesRuntime

/// `sample=N`: passes one block in N, the first of every N (deterministic: blocks 1, N+1, 2N+1, ...).
/// `sample=N,random[,seed=S]`: passes each block with probability 1/N, drawn from a SplitMix64 generator seeded
/// with S (without a seed, one from the system's generator, shown in `stats`), so a seed repeats a selection.
public final class Sample: Filter {
    public static let maxN: UInt64 = 4_294_967_295

    public let n: UInt64
    public let random: Bool
    /// The generator's seed (random sampling only).
    public let seed: UInt64
    private let text: String
    private var state: UInt64
    /// Blocks since the last one passed, in deterministic sampling.
    private var phase: UInt64 = 0
    public private(set) var seen: UInt64 = 0
    public private(set) var passed: UInt64 = 0

    init(_ arguments: String) throws(FilterError) {
        let parts = arguments.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let first = parts.first, !first.isEmpty else {
            throw FilterError("sample: needs N, as in sample=100 (one block in 100) or sample=100,random")
        }
        guard first.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), let v = UInt64(first),
              (1...Sample.maxN).contains(v) else {
            throw FilterError("sample: N must be a whole number from 1 to \(Sample.maxN) (got '\(first)')")
        }
        var random = false
        var seed: UInt64?
        for o in parts.dropFirst() {
            if o == "random" {
                if random { throw FilterError("sample: 'random' is given twice") }
                random = true
            } else if o.hasPrefix("seed=") {
                if seed != nil { throw FilterError("sample: seed is given twice") }
                let s = o.dropFirst(5)
                guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                      let value = UInt64(s) else {
                    throw FilterError("sample: seed must be a whole number from 0 to \(UInt64.max) (got '\(s)')")
                }
                seed = value
            } else {
                throw FilterError("sample: unknown option '\(o)' (after N: random, seed=S)")
            }
        }
        if seed != nil && !random {
            throw FilterError("sample: seed=S applies to random sampling only (sample=\(v),random,seed=S)")
        }
        n = v
        self.random = random
        self.seed = seed ?? UInt64.random(in: 0...UInt64.max)
        state = self.seed
        text = arguments
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        seen &+= 1
        let pass: Bool
        if random {
            // SplitMix64; the modulo's bias is below N / 2^64.
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            pass = (z ^ (z >> 31)) % n == 0
        } else {
            pass = phase == 0
            phase += 1
            if phase == n { phase = 0 }
        }
        guard pass else { return 0 }
        passed &+= 1
        return block.classValue == 0 ? 1 : block.classValue
    }

    public var arguments: String { text }

    public func statistics() -> [(String, String)] {
        var s = [("sample_seen", "\(seen)"), ("sample_passed", "\(passed)")]
        if random { s.append(("sample_seed", "\(seed)")) }
        return s
    }

    public static let descriptor = FilterDescriptor(
        name: "sample", summary: "passes one block in N (the first of every N, or at random with probability 1/N)",
        usage: "sample=N[,random[,seed=S]] (N: 1 to 4294967295)", structuralClass: .filtering
    ) { a throws(FilterError) in try Sample(a) }
}
