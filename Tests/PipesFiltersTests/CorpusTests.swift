#if canImport(Glibc)
import Glibc
#endif
import CPcap
import Foundation
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

/// The tcpdump test captures copied into Resources/corpus (BSD licence alongside).
enum Corpus {
    static var directory: String? {
        Bundle.module.url(forResource: "Resources", withExtension: nil)?.appendingPathComponent("corpus").path
    }

    /// Capture file names (`*.pcap*`), sorted.
    static let files: [String] = {
        guard let dir = directory, let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.filter { $0.contains(".pcap") }.sorted()
    }()

    static func path(_ name: String) -> String { directory! + "/" + name }
}

/// Every filter of the library, made with arguments that let it run.
func everyFilter(pcapOutPath: String) throws -> [(String, any Filter)] {
    var out: [(String, any Filter)] = []
    for d in FilterLibrary.filters {
        let args: String
        switch d.name {
        case "bpf": args = "tcp port 80 or udp or icmp or ip6"
        case "match": args = "GET"
        case "ac": args = "GET,HTTP/1.,\\x00\\x00\\x00\\x00 nocase flows=64"
        case "intersect": args = "2"
        case "pcapout": args = pcapOutPath
        case "files": args = pcapOutPath + "-files"
        case "sample": args = "3"
        case "regex": args = "^(GET|POST) |HTTP/1\\.[01]|\\x00\\xff"
        case "pcap": args = "flows connections=64"
        case "compress": args = "zstd:1 streams=8"
        default: args = ""
        }
        out.append((d.name, try d.make(args)))
    }
    out.append(("junction", try FilterLibrary.junction.make("")))
    out.append(("class", ClassSelection()))
    return out
}

/// Runs every filter over every packet of one capture, with blocks made exactly as `PcapFileSource` makes them.
/// Returns the problems found (empty: it survived). Runs in a child process, so a crash fails only this file.
/// `outPath` is where the pcapout filter writes (the caller removes it, also after a crash).
func runEveryFilter(over path: String, outPath: String) -> [String] {
    var problems: [String] = []
    let filters: [(String, any Filter)]
    do { filters = try everyFilter(pcapOutPath: outPath) } catch { return ["cannot make the filters: \(error)"] }
    let (handle, reason) = openCapture(path, nanoseconds: true)  // as the pcap file source opens it
    guard let h = handle else { return ["libpcap refuses it: \(reason)"] }
    defer { pcap_close(h) }
    let linkType = LinkType(rawValue: pcap_datalink(h))
    for (_, f) in filters { try? f.attach(streamLinkType: linkType) }
    // What defrag and untcp hand on goes on down a chain, defrag → untcp → ac and files, checked on the way.
    let untcp = filters.first { $0.0 == "untcp" }!.1 as! UnTCP
    let defrag = filters.first { $0.0 == "defrag" }!.1 as! Defrag
    let files = filters.first { $0.0 == "files" }!.1
    let ac = filters.first { $0.0 == "ac" }!.1
    var handedOn = 0
    untcp.unboundOutput = { b in
        var copy = b
        handedOn += 1
        if copy.linkType != .user || copy.flow == 0 { problems.append("untcp handed on a block without its flow") }
        var scanned = b
        _ = ac.process(&scanned)
        _ = files.process(&copy)
    }
    defrag.unboundOutput = { b in
        var copy = b
        copy.decodeTransport()
        if copy.layers.laterFragment { problems.append("defrag handed on a fragment") }
        _ = untcp.process(&copy)
    }
    defer {
        let dir = outPath + "-files"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] { unlink(dir + "/" + name) }
        rmdir(dir)
    }
    // pcap flows → compress on a chain of their own: every packet becomes a record of its connection's capture, and
    // each flow's compressed stream gives that capture back exactly.
    guard let chainPcap = try? FilterLibrary.byName["pcap"]!.make("flows connections=16") as? Pcap,
          let chainCompress = try? FilterLibrary.byName["compress"]!.make("gzip:1 streams=4") as? Compress else {
        return ["cannot make the pcap → compress chain"]
    }
    var wrapped: [UInt32: [UInt8]] = [:], compressed: [UInt32: [UInt8]] = [:]
    chainPcap.unboundOutput = { b in
        var copy = b
        wrapped[b.flow, default: []] += Array(b.bytes)
        _ = chainCompress.process(&copy)
    }
    chainCompress.unboundOutput = { b in
        if b.linkType != .user { problems.append("compress handed on a block of link type \(b.linkType)") }
        compressed[b.flow, default: []] += Array(b.bytes)
    }
    let payload = filters.first { $0.0 == "payload" }!.1
    let match = filters.first { $0.0 == "match" }!.1
    let inspect = filters.first { $0.0 == "inspect" }!.1
    let inspectBuffer = (inspect as! Inspect).buffer
    let regex = filters.first { $0.0 == "regex" }!.1

    var records = 0
    var forwardedByCount = 0
    while true {
        var hdr: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        guard pcap_next_ex(h, &hdr, &data) == 1, let hdr, let data else { break }
        records += 1
        let bytes = UnsafeRawBufferPointer(start: data, count: Int(hdr.pointee.caplen))
        func block() -> Block {
            // As PcapFileSource.run() builds it.
            Block(bytes: bytes, wireLength: Int(hdr.pointee.len), seconds: Int64(hdr.pointee.ts.tv_sec),
                  nanoseconds: Int32(truncatingIfNeeded: hdr.pointee.ts.tv_usec), linkType: linkType)
        }
        for (fname, f) in filters {
            var b = block()
            let c = f.process(&b)
            if fname == "count" && c != 0 { forwardedByCount += 1 }
            if let inspect = f as? Inspect {
                // A rewriting filter: its view is one line of printable text in its own buffer.
                if let problem = checkLine(b, c, in: inspect.buffer) {
                    problems.append("inspect, record \(records): \(problem)")
                }
                continue
            }
            // Whatever a filter left in the block must still be inside the captured bytes.
            if b.count > 0, let base = bytes.baseAddress, let nb = b.bytes.baseAddress,
               nb < base || nb + b.count > base + bytes.count {
                problems.append("\(fname), record \(records): the view left the packet")
            }
        }
        // The decoder's results stay within the bytes.
        var b = block()
        if b.ports() != nil, !(b.layers.transport >= 0 && Int(b.layers.transport) + 4 <= bytes.count) {
            problems.append("record \(records): ports outside the packet")
        }
        if b.payloadBytes().count > bytes.count { problems.append("record \(records): payload longer than the packet") }
        var wrap = block()
        _ = chainPcap.process(&wrap)
        // A chain: the payload, then a match in it.
        var chained = block()
        if payload.process(&chained) != 0 { _ = match.process(&chained) }
        // Chains on user data: the payload as a line; a regex over the packet's line.
        var text = block()
        if payload.process(&text) != 0 {
            let c = inspect.process(&text)
            if let problem = checkLine(text, c, in: inspectBuffer) {
                problems.append("payload/inspect, record \(records): \(problem)")
            }
        }
        var line = block()
        if inspect.process(&line) != 0 { _ = regex.process(&line) }
    }
    untcp.endOfStream()
    chainPcap.endOfStream()
    chainCompress.endOfStream()
    var wrappedRecords = 0
    for (flow, stream) in wrapped {
        if gunzip(compressed[flow] ?? [])?.bytes != stream { problems.append("compress: flow \(flow) does not decompress to its bytes") }
        // The stream: a file header, then records; count them.
        var at = 24
        while at + 16 <= stream.count {
            at += 16 + stream.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self)) }
            wrappedRecords += 1
        }
        if stream.count < 24 || at != stream.count { problems.append("pcap: flow \(flow) is not a header and whole records") }
    }
    if wrappedRecords != records { problems.append("pcap wrapped \(wrappedRecords) of \(records) records") }
    for (_, f) in filters { f.shutdown() }
    if forwardedByCount != records { problems.append("count forwarded \(forwardedByCount) of \(records)") }

    // The pcapout copy holds every record, readable by libpcap.
    let (r, copy) = readRecords(outPath)
    if let e = r.openError { problems.append("pcapout wrote a file libpcap refuses: \(e)") }
    if copy.count != records { problems.append("pcapout copy has \(copy.count) of \(records) records") }
    return problems
}

/// What is wrong with a line `inspect` made (class `c`, the block `b`), or nil: it must be forwarded, lie in the
/// filter's buffer, have link type user, and be printable ASCII ending in its only newline.
func checkLine(_ b: Block, _ c: UInt32, in buffer: UnsafeRawBufferPointer) -> String? {
    if c == 0 { return "dropped the block" }
    guard let nb = b.bytes.baseAddress, let base = buffer.baseAddress, nb >= base, nb + b.count <= base + buffer.count
    else { return "the view is not in its buffer" }
    if b.linkType != .user || b.wireLength != b.count { return "link type \(b.linkType), wire length \(b.wireLength)" }
    let text = Array(b.bytes)
    guard text.last == 10, text.dropLast().allSatisfy({ (0x20...0x7E).contains($0) }) else {
        return "not one printable line: \(String(decoding: text, as: UTF8.self).debugDescription)"
    }
    return nil
}

/// `runEveryFilter` in a child process: writes each problem to standard error, then exits (1 if there were any).
func runEveryFilterAndExit(over path: String, outPath: String) -> Never {
    let problems = runEveryFilter(over: path, outPath: outPath)
    for p in problems {
        let line = Array("problem: \(p)\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
    exit(problems.isEmpty ? 0 : 1)
}

@Suite("corpus")
struct CorpusTests {
    @Test("the corpus is in the test bundle, with its licence")
    func corpusPresent() throws {
        let dir = try #require(Corpus.directory, "Resources not found in Bundle.module")
        #expect(FileManager.default.fileExists(atPath: dir + "/LICENSE"))
        #expect(Corpus.files.count >= 24, "found \(Corpus.files.count) captures in \(dir)")
        for known in ["bigtcp-ipv4.pcap", "empty.pcapng", "LINKTYPE_RAW_ipv6.pcap", "loopback.pcap", "tcp-handshake-nano.pcap"] {
            #expect(Corpus.files.contains(known), "\(known) missing")
        }
    }

    @Test("every filter survives every packet of every capture", arguments: Corpus.files)
    func survival(file: String) async throws {
        let path = Corpus.path(file)

        // What libpcap thinks of the file, first: only its refusal may skip the file.
        let (probe, reason) = openCapture(path, nanoseconds: true)
        guard let probe else {
            Issue.record("skipped \(file): libpcap refuses it: \(reason)", severity: .warning)
            try Test.cancel("libpcap refuses \(file): \(reason)")
        }
        pcap_close(probe)
        let read = readCapture(path) { _, _ in }
        if let e = read.readError {
            Issue.record("\(file): libpcap stops reading after \(read.records) records: \(e)", severity: .warning)
        }

        // The run happens in a child process: a crash fails this file, not the whole test run.
        let outPath = temporaryPath("corpus-\(file)")
        defer { unlink(outPath) }
        let survived = await #expect(processExitsWith: .success, observing: [\.standardErrorContent],
                                   "every filter must survive \(file)") { [path = path as String, outPath = outPath as String] in
            runEveryFilterAndExit(over: path, outPath: outPath)
        }
        if survived == nil {
            // It failed: run it again only to collect what the child said (problems, or the crash site).
            let again = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) { [path = path as String, outPath = outPath as String] in
                runEveryFilterAndExit(over: path, outPath: outPath)
            }
            let err = String(decoding: again?.standardErrorContent ?? [], as: UTF8.self)
            let relevant = err.split(separator: "\n").filter {
                $0.contains("problem:") || $0.contains("Fatal error") || $0.contains("/Sources/")
            }.prefix(12)
            Issue.record("\(file) in the child process:\n\(relevant.joined(separator: "\n"))")
        }
    }
}
