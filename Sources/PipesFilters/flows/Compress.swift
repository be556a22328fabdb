import CZlib
import CZstd
import PipesRuntime

/// `compress`: compresses each flow's byte stream on its own (§6.1, the rewriting class; §4.2's `rx | ip | tcp | pcap
/// | compress | files`). A flow (`Block.flow`; flow 0 is one flow too) is one gzip member (`compress`,
/// `compress=gzip[:LEVEL]`: zlib's deflate with a gzip header and trailer) or one zstd frame (`compress=zstd[:LEVEL]`),
/// and what goes on for it are blocks of compressed bytes with its tag: written one flow per file (`files`), each file
/// is a `.gz` or `.zst` file that decompresses to exactly the flow's bytes.
///
/// One compressor per live flow. A compressor holds what it has not yet compressed (a deflate block, a zstd block),
/// so output goes on when the compressor hands it out, in blocks that are views of the filter's 128 KiB output buffer
/// (valid for the push): when the buffer fills, and after each input block for what it produced. A flow's `.end` (an
/// empty block, or its last bytes) finishes its stream: the trailer goes on with the `.end` mark. At the end of the
/// input every stream is finished so. At most `streams` flows have a compressor, fewer if their memory (about 256 KiB
/// for gzip, from 1.4 MiB for zstd level 1 to 94 MiB for level 19) would pass `memory`: beyond that the least recently
/// active flow's stream is finished (its trailer goes on, without an end mark: the flow goes on) and counted, and the
/// flow's next block starts a new member or frame. gzip and zstd both decompress concatenated members (frames) as one
/// stream, so the flow's bytes still come back exactly. Compressors are reset and reused: a new flow allocates only
/// while fewer than the maximum exist.
///
/// Blocks have link type `user`, the input's flow tag and class; a flow's first output block carries the `.start`
/// of its input.
public final class Compress: SpaceBoundFilter, FlushingFilter, MakesBlocks {
    public enum Codec: String, Sendable { case gzip, zstd }

    public struct Settings: Equatable, Sendable {
        public var codec = Codec.gzip
        public var level = 6
        public var streams = 1024
        public var memory = 256 << 20
        public init() {}
    }

    /// A compressor: zlib's stream (allocated, since zlib checks that its state points back at the stream's address)
    /// or a zstd context.
    struct Context {
        var z: UnsafeMutablePointer<z_stream>?
        var zstd: OpaquePointer?
    }

    public let settings: Settings
    /// What one compressor takes (zlib: its fixed allocation; zstd: measured once for the level) and how many flows
    /// may have one at once.
    public let streamMemory: Int
    public let maxStreams: Int
    private let text: String

    static let outputCapacity = 128 << 10
    private let output = UnsafeMutableRawPointer.allocate(byteCount: Compress.outputCapacity, alignment: 64)
    private var used = 0

    /// Live flows, their compressors, the class of their last block and whether their input's `.start` is still to
    /// go on, by slot.
    private var flows: FlowLRU<UInt32>
    private var contexts: [Context] = []
    private var flowClass: [UInt32] = []
    private var startDue: [Bool] = []
    /// Compressors between streams, ready for the next one.
    private var idle: [Context] = []
    private var made = 0

    /// How it hands on the blocks it makes (`MakesBlocks`).
    public var blockOutput = FilterOutput()

    // Statistics.
    private(set) var bytesIn: UInt64 = 0
    private(set) var bytesOut: UInt64 = 0
    private(set) var streamsTotal: UInt64 = 0
    private(set) var evictions: UInt64 = 0
    private(set) var errors: UInt64 = 0

    static let want = "want gzip[:LEVEL], zstd[:LEVEL], streams=N or memory=SIZE"

    init(_ arguments: String) throws(FilterError) {
        var s = Settings()
        var codecGiven: String?
        for item in arguments.split(separator: " ", omittingEmptySubsequences: true) {
            let word = String(item)
            if !word.contains("=") {
                if let first = codecGiven {
                    throw FilterError("compress: one codec only (got '\(first)' and '\(word)')")
                }
                codecGiven = word
                let parts = word.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                guard let codec = Codec(rawValue: parts[0]) else {
                    throw FilterError("compress: unknown codec '\(parts[0])' (want gzip or zstd)")
                }
                s.codec = codec
                let range = Compress.levels(codec)
                s.level = codec == .gzip ? 6 : 3
                if parts.count == 2 {
                    guard let l = Int(parts[1]), range.contains(l) else {
                        throw FilterError("compress: \(codec.rawValue) level must be \(range.lowerBound) to \(range.upperBound), got '\(parts[1])'")
                    }
                    s.level = l
                }
                continue
            }
            let kv = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            switch kv[0] {
            case "streams":
                guard let v = Int(kv[1]), v > 0 else { throw FilterError("compress: streams wants a positive number, got '\(kv[1])'") }
                guard v <= 1 << 20 else { throw FilterError("compress: streams is at most \(1 << 20), got \(v)") }
                s.streams = v
            case "memory":
                guard let v = UnTCP.size(kv[1]), v > 0 else {
                    throw FilterError("compress: memory wants a positive size (K, M and G suffixes allowed), got '\(kv[1])'")
                }
                s.memory = v
            default:
                throw FilterError("compress: unknown argument '\(word)' (\(Compress.want))")
            }
        }
        settings = s
        text = arguments
        streamMemory = try Compress.measure(s)
        maxStreams = max(1, min(s.streams, s.memory / streamMemory))
        flows = FlowLRU(capacity: maxStreams)
    }

    deinit {
        freeAll()
        output.deallocate()
    }

    /// The levels a codec takes: gzip's 1 to 9, zstd's 1 to its maximum (22).
    static func levels(_ c: Codec) -> ClosedRange<Int> {
        c == .gzip ? 1...9 : 1...Int(ZSTD_maxCLevel())
    }

    /// What one compressor takes. zlib allocates a fixed amount at init (a 64 KiB window, 64 KiB each of hash chain,
    /// hash heads and pending output at memLevel 8, and its state); zstd's depends on the level and is allocated on
    /// first use, so one is made and used once to see.
    static func measure(_ s: Settings) throws(FilterError) -> Int {
        if s.codec == .gzip { return 4 * 65_536 + 6 * 1024 }
        guard let c = ZSTD_createCStream() else { throw FilterError("compress: cannot create a zstd context (out of memory)", errno: 12) }
        defer { ZSTD_freeCStream(c) }
        guard configure(c, s.level) else { throw FilterError("compress: zstd refuses level \(s.level)") }
        var byte: UInt8 = 0
        var sink = [UInt8](repeating: 0, count: 64)
        let r = withUnsafeBytes(of: &byte) { i in
            sink.withUnsafeMutableBytes { o in
                var ib = ZSTD_inBuffer(src: i.baseAddress, size: 1, pos: 0)
                var ob = ZSTD_outBuffer(dst: o.baseAddress, size: o.count, pos: 0)
                return ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_flush)
            }
        }
        if ZSTD_isError(r) != 0 {
            throw FilterError("compress: zstd: \(String(cString: ZSTD_getErrorName(r))) (level \(s.level))", errno: 12)
        }
        return max(1, ZSTD_sizeof_CStream(c))
    }

    /// Level and checksum (as the zstd tool writes frames) on a fresh or reset zstd context.
    static func configure(_ c: OpaquePointer, _ level: Int) -> Bool {
        ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, Int32(level))) == 0
            && ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1)) == 0
    }

    public var arguments: String { text }

    public func bind(space: Space, node: Node) throws(FilterError) {
        blockOutput.owner = Unmanaged.passUnretained(node)
    }

    public func outputLinkType(_ input: LinkType?) -> LinkType? { .user }

    // MARK: the data path

    public func process(_ block: inout Block) -> UInt32 {
        blockOutput.begin()
        bytesIn &+= UInt64(block.count)
        let c = block.classValue == 0 ? 1 : block.classValue
        let tag = block.flow
        let end = block.flowMarks.contains(.end)
        if block.count == 0 && !end { return 0 }
        let s: Int32
        if let known = flows.find(tag) {
            s = known
            flows.touch(s)
        } else {
            if block.count == 0 {
                // The end of a flow without a stream (it brought no bytes, or its stream was finished by eviction).
                emit(UnsafeRawBufferPointer(start: nil, count: 0), tag, block.flowMarks, c, block)
                return 0
            }
            guard let opened = open(tag, block) else {
                errors &+= 1
                return 0
            }
            s = opened
        }
        flowClass[Int(s)] = c
        if block.flowMarks.contains(.start) { startDue[Int(s)] = true }
        run(s, block.bytes, finish: end, endMark: end, block)
        if end { close(s) }
        return 0
    }

    /// A stream for a new flow: an idle compressor, a new one, or the least recently active flow's (whose stream is
    /// finished first). Nil if a compressor cannot be made.
    private func open(_ tag: UInt32, _ from: Block) -> Int32? {
        if flows.isFull {
            let o = flows.oldest
            evictions &+= 1
            run(o, UnsafeRawBufferPointer(start: nil, count: 0), finish: true, endMark: false, from)
            close(o)
        }
        guard let ctx = idle.popLast() ?? makeContext() else { return nil }
        let s = flows.insert(tag)
        if Int(s) == contexts.count {
            contexts.append(ctx)
            flowClass.append(1)
            startDue.append(false)
        } else {
            contexts[Int(s)] = ctx
            startDue[Int(s)] = false
        }
        streamsTotal &+= 1
        return s
    }

    private func makeContext() -> Context? {
        switch settings.codec {
        case .gzip:
            let z = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
            z.initialize(to: z_stream())
            if pipes_deflate_init_gzip(z, Int32(settings.level)) != Z_OK {
                z.deallocate()
                return nil
            }
            made += 1
            return Context(z: z, zstd: nil)
        case .zstd:
            guard let c = ZSTD_createCStream() else { return nil }
            if !Compress.configure(c, settings.level) {
                ZSTD_freeCStream(c)
                return nil
            }
            made += 1
            return Context(z: nil, zstd: c)
        }
    }

    /// The flow's stream is over: its compressor, reset, waits for the next flow.
    private func close(_ s: Int32) {
        idle.append(contexts[Int(s)])
        contexts[Int(s)] = Context()
        flows.remove(s)
    }

    /// Compresses `input` into flow `s`'s stream (`finish`: and ends the stream), handing output on as the buffer
    /// fills and what is left at the end, the last block with `.end` if `endMark`.
    private func run(_ s: Int32, _ input: UnsafeRawBufferPointer, finish: Bool, endMark: Bool, _ from: Block) {
        let tag = flows.key(s)
        let ctx = contexts[Int(s)]
        var failed = false
        if let z = ctx.z {
            z.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: UInt8.self))
            z.pointee.avail_in = UInt32(input.count)
            while true {
                if used == Compress.outputCapacity { handOn(s, tag, [], from) }
                z.pointee.next_out = (output + used).assumingMemoryBound(to: UInt8.self)
                z.pointee.avail_out = UInt32(Compress.outputCapacity - used)
                let rc = deflate(z, finish ? Z_FINISH : Z_NO_FLUSH)
                used = Compress.outputCapacity - Int(z.pointee.avail_out)
                if rc == Z_STREAM_END { break }
                if rc != Z_OK && rc != Z_BUF_ERROR { failed = true; break }
                if !finish && z.pointee.avail_in == 0 && z.pointee.avail_out != 0 { break }
                if rc == Z_BUF_ERROR && z.pointee.avail_out != 0 { failed = true; break }  // no progress possible: never with input or Z_FINISH
            }
            z.pointee.next_in = nil
            z.pointee.avail_in = 0
            if finish || failed { deflateReset(z) }
        } else if let c = ctx.zstd {
            var ib = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
            while true {
                if used == Compress.outputCapacity { handOn(s, tag, [], from) }
                var ob = ZSTD_outBuffer(dst: output + used, size: Compress.outputCapacity - used, pos: 0)
                let r = ZSTD_compressStream2(c, &ob, &ib, finish ? ZSTD_e_end : ZSTD_e_continue)
                used += ob.pos
                if ZSTD_isError(r) != 0 { failed = true; break }
                if finish ? r == 0 : ib.pos == ib.size { break }
            }
            if failed { _ = ZSTD_CCtx_reset(c, ZSTD_reset_session_only) }
        }
        if failed {
            // Never seen (deflate and zstd fail only on misuse or memory): the stream is cut, counted, and begun again.
            errors &+= 1
            used = 0
            return
        }
        if used > 0 || endMark { handOn(s, tag, endMark ? .end : [], from) }
    }

    /// Hands on the output buffer as flow `s`'s next block.
    @inline(__always)
    private func handOn(_ s: Int32, _ tag: UInt32, _ marks: FlowMarks, _ from: Block) {
        var m = marks
        if startDue[Int(s)] {
            m.insert(.start)
            startDue[Int(s)] = false
        }
        emit(UnsafeRawBufferPointer(start: output, count: used), tag, m, flowClass[Int(s)], from)
        used = 0
    }

    /// One block out.
    @inline(__always)
    private func emit(_ view: UnsafeRawBufferPointer, _ tag: UInt32, _ marks: FlowMarks, _ c: UInt32, _ from: Block) {
        var b = Block(bytes: view, wireLength: view.count, seconds: from.seconds, nanoseconds: from.nanoseconds, linkType: .user)
        b.flow = tag
        b.flowMarks = marks
        bytesOut &+= UInt64(view.count)
        blockOutput.hand(&b, c, from: from)
    }

    /// The input ended: every stream is finished, its trailer handed on with the flow's end mark.
    public func endOfStream() {
        let none = Block(bytes: UnsafeRawBufferPointer(start: nil, count: 0), linkType: .user)
        blockOutput.begin()
        while flows.oldest >= 0 {
            let s = flows.oldest
            run(s, UnsafeRawBufferPointer(start: nil, count: 0), finish: true, endMark: true, none)
            close(s)
        }
    }

    /// Frees every compressor (streams still open are not finished: nothing goes on from here).
    private func freeAll() {
        while flows.oldest >= 0 { close(flows.oldest) }
        for ctx in idle {
            if let z = ctx.z {
                deflateEnd(z)
                z.deallocate()
            }
            if let c = ctx.zstd { ZSTD_freeCStream(c) }
        }
        idle.removeAll()
        made = 0
    }

    public func shutdown() { freeAll() }

    public func statistics() -> [(String, String)] {
        // The ratio of bytes in to bytes out, two decimals (what has gone on so far; open streams hold some back).
        var ratio = "0"
        if bytesOut > 0 {
            let r = bytesIn &* 100 / bytesOut
            let cents = r % 100
            ratio = "\(r / 100).\(cents < 10 ? "0" : "")\(cents)"
        }
        return [("compress_codec", "\(settings.codec.rawValue):\(settings.level)"), ("compress_bytes_in", "\(bytesIn)"),
                ("compress_bytes_out", "\(bytesOut)"), ("compress_ratio", ratio),
                ("compress_streams", "\(flows.count)"), ("compress_streams_max", "\(maxStreams)"),
                ("compress_streams_total", "\(streamsTotal)"), ("compress_evictions", "\(evictions)"),
                ("compress_stream_memory", "\(streamMemory)"), ("compress_compressors", "\(made)"),
                ("compress_errors", "\(errors)")]
    }

    public static let descriptor = FilterDescriptor(
        name: "compress", summary: "compresses each flow's stream on its own (gzip members or zstd frames)",
        usage: "compress[=gzip[:LEVEL]|zstd[:LEVEL]] [streams=N] [memory=SIZE]", structuralClass: .rewriting
    ) { a throws(FilterError) in try Compress(a) }
}
