#if canImport(Glibc)
import Glibc
#endif
import CZlib
import CZstd
import Foundation
import PipesControl
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

/// Decompresses concatenated gzip members (as `gzip -dc` does): the bytes and how many members, or nil if the data is
/// not a sequence of complete members.
func gunzip(_ data: [UInt8]) -> (bytes: [UInt8], members: Int)? {
    let z = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    z.initialize(to: z_stream())
    defer { z.deallocate() }
    guard pipes_inflate_init_gzip(z) == Z_OK else { return nil }
    defer { inflateEnd(z) }
    var out: [UInt8] = []
    var members = 0
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    let ok = data.withUnsafeBytes { raw -> Bool in
        var offset = 0
        while offset < raw.count {
            z.pointee.next_in = UnsafeMutablePointer(mutating: (raw.baseAddress! + offset).assumingMemoryBound(to: UInt8.self))
            z.pointee.avail_in = UInt32(raw.count - offset)
            var rc: Int32 = Z_OK
            while rc == Z_OK {
                buffer.withUnsafeMutableBytes { b in
                    z.pointee.next_out = b.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    z.pointee.avail_out = UInt32(b.count)
                    rc = inflate(z, Z_NO_FLUSH)
                    out += b[0..<(b.count - Int(z.pointee.avail_out))]
                }
            }
            guard rc == Z_STREAM_END else { return false }
            members += 1
            offset = raw.count - Int(z.pointee.avail_in)
            inflateReset(z)
        }
        return true
    }
    return ok ? (out, members) : nil
}

/// Decompresses concatenated zstd frames (as `zstd -dc` does): the bytes and how many frames, or nil.
func unzstd(_ data: [UInt8]) -> (bytes: [UInt8], members: Int)? {
    guard let d = ZSTD_createDStream() else { return nil }
    defer { ZSTD_freeDStream(d) }
    var out: [UInt8] = []
    var frames = 0
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    let ok = data.withUnsafeBytes { raw -> Bool in
        var offset = 0
        while offset < raw.count {
            let n = ZSTD_findFrameCompressedSize(raw.baseAddress! + offset, raw.count - offset)
            if ZSTD_isError(n) != 0 { return false }
            _ = ZSTD_DCtx_reset(d, ZSTD_reset_session_only)
            var ib = ZSTD_inBuffer(src: raw.baseAddress! + offset, size: n, pos: 0)
            var left = 1
            while left != 0 {
                var produced = 0
                buffer.withUnsafeMutableBytes { b in
                    var ob = ZSTD_outBuffer(dst: b.baseAddress, size: b.count, pos: 0)
                    left = ZSTD_decompressStream(d, &ob, &ib)
                    produced = ob.pos
                    out += b[0..<ob.pos]
                }
                if ZSTD_isError(left) != 0 || (left != 0 && produced == 0 && ib.pos == ib.size) { return false }
            }
            frames += 1
            offset += n
        }
        return true
    }
    return ok ? (out, frames) : nil
}

func decompress(_ codec: Compress.Codec, _ data: [UInt8]) -> (bytes: [UInt8], members: Int)? {
    codec == .gzip ? gunzip(data) : unzstd(data)
}

/// Compressible bytes: words from a small vocabulary.
func text(_ n: Int, _ rng: inout SplitMix) -> [UInt8] {
    let words = ["GET ", "/index.html ", "HTTP/1.1\r\n", "Host: example.com\r\n", "Accept: */*\r\n", "200 OK ", "\r\n"]
    var out: [UInt8] = []
    out.reserveCapacity(n + 32)
    while out.count < n { out += Array(words[rng.below(words.count)].utf8) }
    return Array(out.prefix(n))
}

/// Several TCP connections between 10.0.0.1 (clients, ports 7000 on) and 10.0.0.2:80, their packets interleaved
/// (each connection's in order), with distinct timestamps; and the records each direction's capture must hold, by
/// tcpflow's file name.
func interleavedCapture(connections: Int, seed: UInt64) -> (frames: [(bytes: [UInt8], seconds: Int64, nanoseconds: Int32)],
                                                             expected: [String: [PcapRecord]]) {
    var rng = SplitMix(seed: seed)
    var queues: [[(bytes: [UInt8], fromClient: Bool)]] = []
    for k in 0..<connections {
        let c = Conversation(client: UInt32(1000 * k), server: UInt32(50_000 + k), sport: UInt16(7000 + k))
        var q: [(bytes: [UInt8], fromClient: Bool)] = [(c.syn(), true), (c.synAck(), false)]
        var sent = [0, 0]
        for _ in 0..<(3 + rng.below(8)) {
            let fromClient = rng.below(2) == 0
            let data = rng.below(3) == 0 ? randomBytes(1 + rng.below(1400), &rng) : text(1 + rng.below(1400), &rng)
            q.append((c.data(fromClient: fromClient, at: sent[fromClient ? 0 : 1], data), fromClient))
            sent[fromClient ? 0 : 1] += data.count
        }
        q.append((c.fin(fromClient: true, at: sent[0]), true))
        q.append((c.fin(fromClient: false, at: sent[1]), false))
        queues.append(q)
    }
    var frames: [(bytes: [UInt8], seconds: Int64, nanoseconds: Int32)] = []
    var expected: [String: [PcapRecord]] = [:]
    var next = [Int](repeating: 0, count: connections)
    var i = 0
    while true {
        let open = (0..<connections).filter { next[$0] < queues[$0].count }
        if open.isEmpty { break }
        let k = open[rng.below(open.count)]
        let (bytes, fromClient) = queues[k][next[k]]
        next[k] += 1
        let seconds = Int64(1_700_000_000 + i), nanos = Int32(i * 1000 + 999)
        frames.append((bytes, seconds, nanos))
        let client = "010.000.000.001.0\(7000 + k)-010.000.000.002.00080", server = "010.000.000.002.00080-010.000.000.001.0\(7000 + k)"
        expected[fromClient ? client : server, default: []]
            .append(PcapRecord(seconds: Int(seconds), micros: i, captured: bytes.count, wire: bytes.count, bytes: bytes))
        i += 1
    }
    return (frames, expected)
}

@Suite("compress")
struct CompressTests {
    func make(_ args: String = "") throws -> Compress {
        try #require(try FilterLibrary.byName["compress"]!.make(args) as? Compress)
    }

    func stats(_ f: any Filter) -> [String: String] { Dictionary(uniqueKeysWithValues: f.statistics()) }

    @Test("interleaved flows: each flow's blocks decompress to exactly its bytes, one member or frame per flow",
          arguments: ["", "gzip", "gzip:1", "gzip:9", "zstd", "zstd:1", "zstd:9"])
    func roundTrip(spec: String) throws {
        let f = try make(spec)
        let out = Output()
        f.unboundOutput = out.take
        var rng = SplitMix(seed: 42)
        var input: [UInt32: [UInt8]] = [:]
        let tags: [UInt32] = [0, 2, 3, 5, 8]
        // A large incompressible block first: its output fills the 128 KiB buffer more than once.
        let big = randomBytes(300_000, &rng)
        push(f, big, flow: 2, marks: .start, classValue: 3)
        input[2] = big
        for _ in 0..<150 {
            let tag = tags[rng.below(tags.count)]
            let n = rng.below(8) == 0 ? rng.below(150_000) : rng.below(2000)
            let bytes = rng.below(2) == 0 ? randomBytes(n, &rng) : text(n, &rng)
            push(f, bytes, flow: tag, marks: input[tag] == nil ? .start : [], classValue: tag + 1)
            input[tag, default: []] += bytes
        }
        push(f, [1, 2, 3], flow: 3, marks: .end, classValue: 4)  // an end with bytes
        input[3]! += [1, 2, 3]
        push(f, [], flow: 5, marks: .end, classValue: 6)  // an empty end
        #expect(stats(f)["compress_streams"] == "3")
        f.endOfStream()  // the others end here
        let codec = f.settings.codec
        for tag in tags {
            let got = try #require(decompress(codec, out.bytes[tag] ?? []), "flow \(tag) is a complete \(codec) stream")
            #expect(got.bytes == input[tag], "flow \(tag) decompresses to its bytes")
            #expect(got.members == 1)
            let marks = out.marks(tag)
            #expect(marks.first?.contains(.start) == true, "flow \(tag): its first output carries the start")
            #expect(marks.last == .end && marks.dropLast().allSatisfy { !$0.contains(.end) }, "flow \(tag): one end, last")
            #expect(out.blocks.filter { $0.flow == tag }.allSatisfy { $0.classValue == tag + 1 && $0.linkType == .user })
        }
        #expect(out.blocks.contains { $0.bytes.count == 128 << 10 }, "a full buffer goes on as it fills")
        let s = stats(f)
        let totalIn = input.values.map(\.count).reduce(0, +), totalOut = out.blocks.map(\.bytes.count).reduce(0, +)
        #expect(s["compress_bytes_in"] == "\(totalIn)" && s["compress_bytes_out"] == "\(totalOut)")
        #expect(s["compress_streams"] == "0" && s["compress_streams_total"] == "5" && s["compress_evictions"] == "0")
        #expect(s["compress_errors"] == "0")
        #expect(s["compress_codec"] == (spec.isEmpty || spec == "gzip" ? "gzip:6" : spec == "zstd" ? "zstd:3" : spec))
        #expect(Double(s["compress_ratio"]!)! > 1, "text compresses")
    }

    @Test("past streams=N the least recently active flow's stream is finished (no end mark) and counted; its next bytes start a new member, and the whole still decompresses exactly",
          arguments: ["gzip streams=2", "zstd:1 streams=2"])
    func eviction(spec: String) throws {
        let f = try make(spec)
        #expect(f.maxStreams == 2)
        let out = Output()
        f.unboundOutput = out.take
        var rng = SplitMix(seed: 7)
        var input: [UInt32: [UInt8]] = [:]
        for round in 0..<40 {
            let tag = UInt32(2 + round % 5)
            let bytes = text(100 + rng.below(3000), &rng)
            push(f, bytes, flow: tag, marks: input[tag] == nil ? .start : [])
            input[tag, default: []] += bytes
        }
        f.endOfStream()
        for (tag, bytes) in input {
            let got = try #require(decompress(f.settings.codec, out.bytes[tag]!))
            #expect(got.bytes == bytes)
            #expect(got.members == 8, "flow \(tag): evicted at each turn but the last, which the end of input finishes")
            // Eviction is not the flow's end: only the two flows live at the end of the input get theirs then.
            #expect(out.marks(tag).filter { $0.contains(.end) }.count == (tag == 5 || tag == 6 ? 1 : 0))
            #expect(out.marks(tag).filter { $0.contains(.start) }.count == 1)
        }
        let s = stats(f)
        #expect(s["compress_evictions"] == "38" && s["compress_streams_total"] == "40")
        #expect(s["compress_compressors"] == "2", "compressors are reused, never more than the limit")
    }

    @Test("compressors are reset and reused: a hundred flows one after another make one")
    func reuse() throws {
        for spec in ["gzip", "zstd"] {
            let f = try make(spec)
            let out = Output()
            f.unboundOutput = out.take
            var rng = SplitMix(seed: 3)
            var input: [UInt32: [UInt8]] = [:]
            for tag in UInt32(1)...100 {
                let bytes = text(10 + rng.below(500), &rng)
                push(f, bytes, flow: tag * 2, marks: .start)
                push(f, [], flow: tag * 2, marks: .end)
                input[tag * 2] = bytes
            }
            for (tag, bytes) in input { #expect(decompress(f.settings.codec, out.bytes[tag]!)?.bytes == bytes) }
            #expect(stats(f)["compress_compressors"] == "1" && stats(f)["compress_streams_total"] == "100")
        }
    }

    @Test("memory= bounds how many flows have a compressor, by what one takes at the level")
    func memoryBound() throws {
        let gz = try make("gzip memory=1M")
        #expect(gz.maxStreams == (1 << 20) / gz.streamMemory && gz.maxStreams == 3)
        #expect(try make("zstd:7 streams=10 memory=1G").maxStreams == 10)
        let z19 = try make("zstd:19")
        #expect(z19.streamMemory > 50 << 20, "level 19 takes tens of MiB per stream")
        #expect(z19.maxStreams == max(1, (256 << 20) / z19.streamMemory))
        #expect(try make("gzip memory=1K").maxStreams == 1, "always one")
        let out = Output()
        z19.unboundOutput = out.take
        push(z19, Array("level nineteen ".utf8), flow: 4)
        z19.endOfStream()
        #expect(unzstd(out.bytes[4]!)?.bytes == Array("level nineteen ".utf8))
        #expect(stats(z19)["compress_stream_memory"] == "\(z19.streamMemory)")
    }

    @Test("an end without a stream goes on as an empty end; empty blocks without one give nothing")
    func emptyBlocks() throws {
        let f = try make()
        let out = Output()
        f.unboundOutput = out.take
        push(f, [], flow: 9, marks: .end, classValue: 2)
        #expect(out.blocks.count == 1 && out.blocks[0].bytes.isEmpty && out.blocks[0].marks == .end && out.blocks[0].classValue == 2)
        push(f, [], flow: 9)
        push(f, [], flow: 11, marks: .start)
        #expect(out.blocks.count == 1)
        #expect(stats(f)["compress_streams"] == "0")
    }

    @Test("arguments: codec, level, streams and memory; anything else is refused with a reason")
    func arguments() throws {
        let z = try make("zstd:7 streams=10")
        #expect(z.settings.codec == .zstd && z.settings.level == 7 && z.settings.streams == 10)
        let g = try make()
        #expect(g.settings.codec == .gzip && g.settings.level == 6 && g.settings.streams == 1024 && g.settings.memory == 256 << 20)
        #expect(try make("zstd").settings.level == 3)
        #expect(try make("streams=3 gzip:2").settings.level == 2)
        #expect(makeError("compress", "lz4")?.message == "compress: unknown codec 'lz4' (want gzip or zstd)")
        #expect(makeError("compress", "lz4:3")?.message == "compress: unknown codec 'lz4' (want gzip or zstd)")
        #expect(makeError("compress", "gzip:0")?.message == "compress: gzip level must be 1 to 9, got '0'")
        #expect(makeError("compress", "gzip:10")?.message == "compress: gzip level must be 1 to 9, got '10'")
        #expect(makeError("compress", "gzip:")?.message == "compress: gzip level must be 1 to 9, got ''")
        #expect(makeError("compress", "zstd:23")?.message == "compress: zstd level must be 1 to 22, got '23'")
        #expect(makeError("compress", "zstd:-1")?.message == "compress: zstd level must be 1 to 22, got '-1'")
        #expect(makeError("compress", "zstd:fast")?.message == "compress: zstd level must be 1 to 22, got 'fast'")
        #expect(makeError("compress", "gzip zstd")?.message == "compress: one codec only (got 'gzip' and 'zstd')")
        #expect(makeError("compress", "streams=0")?.message == "compress: streams wants a positive number, got '0'")
        #expect(makeError("compress", "streams=2000000")?.message == "compress: streams is at most 1048576, got 2000000")
        #expect(makeError("compress", "memory=lots")?.message == "compress: memory wants a positive size (K, M and G suffixes allowed), got 'lots'")
        #expect(makeError("compress", "level=3")?.message
                == "compress: unknown argument 'level=3' (want gzip[:LEVEL], zstd[:LEVEL], streams=N or memory=SIZE)")
        #expect(FilterLibrary.byName["compress"]?.structuralClass == .rewriting)
        #expect(FilterLibrary.byName["pcap"]?.structuralClass == .rewriting)
    }

    @Test("pcap flows | compress | files: each file decompresses to a capture of exactly its connection direction's packets, in order",
          arguments: ["gzip", "zstd:5", "zstd streams=2"])
    func pipeline(spec: String) throws {
        let (frames, expected) = interleavedCapture(connections: 5, seed: 11)
        let dir = temporaryPath("pcap-compress-files")
        defer { removeDirectory(dir) }
        let pcap = try #require(try FilterLibrary.byName["pcap"]!.make("flows") as? Pcap)
        let compress = try make(spec)
        let files = try FilterLibrary.byName["files"]!.make(dir)
        let toCompress = Output(), toFiles = Output()
        toCompress.then = { b in _ = compress.process(&b) }
        toFiles.then = { b in _ = files.process(&b) }
        pcap.unboundOutput = toCompress.take
        compress.unboundOutput = toFiles.take
        for fr in frames { push(pcap, fr.bytes, linkType: .ethernet, seconds: fr.seconds, nanoseconds: fr.nanoseconds) }
        // The end of the input, upstream first, as the runtime calls it.
        pcap.endOfStream()
        compress.endOfStream()
        (files as! Files).endOfStream()
        try checkFlowFiles(dir, expected, codec: compress.settings.codec)
        if spec.contains("streams=2") { #expect(Int(stats(compress)["compress_evictions"]!)! > 0) }
        #expect(stats(pcap)["pcap_connections_total"] == "5")
    }

    @Test("in a graph across two execution spaces, a capture file's connections each land in a compressed capture file")
    func graph() throws {
        let (frames, expected) = interleavedCapture(connections: 4, seed: 5)
        var cap = HandPcap()
        for fr in frames { cap.record(seconds: UInt32(fr.seconds), fraction: UInt32(fr.nanoseconds / 1000), data: fr.bytes) }
        let path = try cap.write("flows.pcap")
        defer { unlink(path) }
        let dir = temporaryPath("graph-flows")
        defer { removeDirectory(dir) }
        let c = Controller(space: Space(spaces: 2))
        defer { c.shutdown() }
        let source = try c.addSource("cap=pcap:\(path),paused")
        let lib = FilterLibrary.byName
        let pcapNode = try c.makeFilter(lib["pcap"]!, arguments: "flows", in: source, named: "pcap=flows")
        let compressNode = try c.makeFilter(lib["compress"]!, arguments: "zstd", in: pcapNode, named: "compress=zstd", inSpace: 1)
        let filesNode = try c.makeFilter(lib["files"]!, arguments: dir, in: compressNode, named: "files")
        try c.control(source, "start")
        #expect(eventually { c.space.lock.withLock { filesNode.ended } }, "the stream ends below files")
        try checkFlowFiles(dir, expected, codec: .zstd)
        #expect(c.statsText(pcapNode).contains("pcap_connections_total: 4"))
        #expect(c.statsText(compressNode).contains("compress_streams_total: 8"))
        #expect(c.statsText(compressNode).contains("compress_errors: 0"))
    }

    /// Every expected file is in `dir`, decompresses (in-process, and with the codec's tool where installed) and
    /// holds exactly the expected records, read by libpcap.
    func checkFlowFiles(_ dir: String, _ expected: [String: [PcapRecord]], codec: Compress.Codec,
                        sourceLocation: SourceLocation = #_sourceLocation) throws {
        let found = filesIn(dir)
        #expect(Set(found.keys) == Set(expected.keys), sourceLocation: sourceLocation)
        for (name, records) in expected {
            let data = try #require(found[name], sourceLocation: sourceLocation)
            let plain = try #require(decompress(codec, data), "\(name) is a complete \(codec) stream", sourceLocation: sourceLocation)
            let tool = codec == .gzip ? "gzip" : "zstd"
            if let (status, viaTool) = try runTool(tool, ["-dc", dir + "/" + name]) {
                #expect(status == 0 && viaTool == plain.bytes, "\(tool) -dc \(name)", sourceLocation: sourceLocation)
            }
            let capture = temporaryPath("flow.pcap")
            defer { unlink(capture) }
            try writeFile(capture, plain.bytes)
            let (r, got) = readRecords(capture)
            #expect(r.openError == nil && r.readError == nil, "\(name): \(r.openError ?? r.readError ?? "")", sourceLocation: sourceLocation)
            #expect(r.linkType == 1, sourceLocation: sourceLocation)
            #expect(got == records, "\(name) holds its direction's packets in order", sourceLocation: sourceLocation)
        }
    }
}
