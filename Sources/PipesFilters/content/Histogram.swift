import PipesRuntime

/// `histogram`: forwards everything (Table I "pass-through") and keeps two histograms in power-of-two buckets: of
/// the blocks' wire lengths, and of the gaps between their timestamps in microseconds; with count, minimum, maximum
/// and mean of each. `stats` shows them, `reset` in `ctl` clears them. Fixed tables: nothing allocated per block.
public final class Histogram: Filter {
    /// Bucket 0 holds 0, bucket k (1...64) holds 2^(k-1) ... 2^k - 1.
    static let bucketCount = 65

    private let sizeBuckets: UnsafeMutablePointer<UInt64>
    private let gapBuckets: UnsafeMutablePointer<UInt64>
    public private(set) var blocks: UInt64 = 0
    private var sizeMin: UInt64 = .max
    private var sizeMax: UInt64 = 0
    private var sizeSum: UInt64 = 0
    /// Gaps in nanoseconds; a gap to an earlier timestamp is only counted (`negativeGaps`).
    public private(set) var gaps: UInt64 = 0
    public private(set) var negativeGaps: UInt64 = 0
    private var gapMin: UInt64 = .max
    private var gapMax: UInt64 = 0
    private var gapSum: UInt64 = 0
    /// The previous block's timestamp in nanoseconds.
    private var last: Int64 = 0

    public init() {
        sizeBuckets = .allocate(capacity: Histogram.bucketCount)
        sizeBuckets.initialize(repeating: 0, count: Histogram.bucketCount)
        gapBuckets = .allocate(capacity: Histogram.bucketCount)
        gapBuckets.initialize(repeating: 0, count: Histogram.bucketCount)
    }

    deinit {
        sizeBuckets.deallocate()
        gapBuckets.deallocate()
    }

    @inline(__always)
    static func bucket(_ v: UInt64) -> Int { 64 - v.leadingZeroBitCount }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        let size = UInt64(max(0, block.wireLength))
        sizeBuckets[Histogram.bucket(size)] &+= 1
        sizeMin = min(sizeMin, size)
        sizeMax = max(sizeMax, size)
        sizeSum &+= size
        // Wrapping arithmetic: a damaged capture's timestamps must not trap.
        let t = block.seconds &* 1_000_000_000 &+ Int64(block.nanoseconds)
        if blocks > 0 {
            let gap = t &- last
            if gap < 0 {
                negativeGaps &+= 1
            } else {
                let g = UInt64(gap)
                gapBuckets[Histogram.bucket(g / 1000)] &+= 1
                gaps &+= 1
                gapMin = min(gapMin, g)
                gapMax = max(gapMax, g)
                gapSum &+= g
            }
        }
        last = t
        blocks &+= 1
        return block.classValue == 0 ? 1 : block.classValue
    }

    /// A bucket's range: `0`, `1`, `2-3`, `4-7`, ...
    static func label(_ k: Int) -> String {
        if k <= 1 { return "\(k)" }
        let lo: UInt64 = 1 << UInt64(k - 1)
        return "\(lo)-\(lo - 1 + lo)"
    }

    /// `sum / count` with `places` decimals, rounded (integer arithmetic: exact for any count).
    static func decimal(_ sum: UInt64, _ count: UInt64, places: Int) -> String {
        var scale: UInt64 = 1
        for _ in 0..<places { scale *= 10 }
        var whole = sum / count
        let rest = sum % count
        // (rest * scale + count / 2) / count in 128 bits; rest < count, so the quotient is at most scale.
        let (hi, lo) = rest.multipliedFullWidth(by: scale)
        let (sum2, carry) = lo.addingReportingOverflow(count / 2)
        var frac = count.dividingFullWidth((hi + (carry ? 1 : 0), sum2)).quotient
        if frac >= scale {
            whole += 1
            frac -= scale
        }
        let digits = String(frac)
        return places == 0 ? "\(whole)" : "\(whole)." + String(repeating: "0", count: places - digits.count) + digits
    }

    /// Nanoseconds as microseconds with three decimals.
    static func micros(_ ns: UInt64) -> String { decimal(ns, 1000, places: 3) }

    public func statistics() -> [(String, String)] {
        var s: [(String, String)] = [("histogram_blocks", "\(blocks)")]
        if blocks > 0 {
            s += [("histogram_size_min", "\(sizeMin)"), ("histogram_size_max", "\(sizeMax)"),
                  ("histogram_size_mean", Histogram.decimal(sizeSum, blocks, places: 1))]
        }
        for k in 0..<Histogram.bucketCount where sizeBuckets[k] > 0 {
            s.append(("histogram_size_\(Histogram.label(k))", "\(sizeBuckets[k])"))
        }
        s.append(("histogram_gaps", "\(gaps)"))
        s.append(("histogram_gaps_negative", "\(negativeGaps)"))
        if gaps > 0 {
            s += [("histogram_gap_min_us", Histogram.micros(gapMin)),
                  ("histogram_gap_max_us", Histogram.micros(gapMax)),
                  ("histogram_gap_mean_us", Histogram.decimal(gapSum, gaps * 1000, places: 3))]
        }
        for k in 0..<Histogram.bucketCount where gapBuckets[k] > 0 {
            s.append(("histogram_gap_us_\(Histogram.label(k))", "\(gapBuckets[k])"))
        }
        return s
    }

    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        guard command == "reset" else { return nil }
        if !argument.isEmpty { return .failure(FilterError("histogram: reset takes no argument (got '\(argument)')")) }
        sizeBuckets.update(repeating: 0, count: Histogram.bucketCount)
        gapBuckets.update(repeating: 0, count: Histogram.bucketCount)
        blocks = 0
        sizeMin = .max
        sizeMax = 0
        sizeSum = 0
        gaps = 0
        negativeGaps = 0
        gapMin = .max
        gapMax = 0
        gapSum = 0
        last = 0
        return .success(())
    }

    public static let descriptor = FilterDescriptor(
        name: "histogram", summary: "histograms of block sizes and inter-arrival times (see stats; 'reset' in ctl)",
        usage: "histogram", structuralClass: .passThrough
    ) { a throws(FilterError) in try requireNoArguments(a); return Histogram() }
}
