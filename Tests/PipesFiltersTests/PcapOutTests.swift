#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesControl
@testable import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("pcapout")
struct PcapOutTests {
    /// Runs blocks (bytes, link type, seconds, nanoseconds, wire length) through a filter.
    func feed(_ f: any Filter, _ blocks: [([UInt8], LinkType, Int64, Int32, Int?)]) -> [UInt32] {
        blocks.map { bytes, lt, s, ns, wire in
            bytes.withUnsafeBytes { raw in
                var b = Block(bytes: raw, wireLength: wire, seconds: s, nanoseconds: ns, linkType: lt)
                return f.process(&b)
            }
        }
    }

    /// A pcapout filter writing to a fresh temporary path (the caller removes it), attached to a stream of
    /// `attachedTo` when given.
    func pcapout(_ name: String, attachedTo linkType: LinkType? = nil) throws -> (filter: any Filter, path: String) {
        let path = temporaryPath(name)
        let f = try make("pcapout", path)
        if let linkType { try f.attach(streamLinkType: linkType) }
        return (f, path)
    }

    @Test("writes a file that libpcap reads back: link type, timestamps, lengths and bytes")
    func roundTrip() throws {
        let (f, path) = try pcapout("out.pcap", attachedTo: .ethernet)
        defer { unlink(path) }
        let a = Pkt.ethTCP4(Array("one".utf8))
        let b = Pkt.ethUDP6(Array("two".utf8))
        let classes = feed(f, [(a, .ethernet, 1_700_000_000, 123_456_789, nil),
                               (b, .ethernet, 1_700_000_001, 999_999_999, 1514)])
        #expect(classes == [1, 1], "pcapout forwards everything")
        f.shutdown()

        let (r, records) = readRecords(path)
        #expect(r.openError == nil, "libpcap refused the file: \(r.openError ?? "")")
        #expect(r.readError == nil)
        #expect(r.linkType == 1)
        #expect(records == [
            PcapRecord(seconds: 1_700_000_000, micros: 123_456, captured: a.count, wire: a.count, bytes: a),
            PcapRecord(seconds: 1_700_000_001, micros: 999_999, captured: b.count, wire: 1514, bytes: b),
        ])
    }

    @Test("without attach the first block's link type goes into the header; other link types are skipped")
    func linkTypeFromFirstBlock() throws {
        let (f, path) = try pcapout("raw.pcap")
        defer { unlink(path) }
        let raw = Pkt.rawTCP4()
        let classes = feed(f, [(raw, .raw, 1, 0, nil), (Pkt.ethTCP4(), .ethernet, 2, 0, nil), (raw, .raw, 3, 0, nil)])
        #expect(classes == [1, 1, 1], "a skipped record is still forwarded")
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["file"] == path)
        #expect(stats["records_written"] == "2")
        #expect(stats["records_skipped_linktype"] == "1")
        f.shutdown()
        let (r, records) = readRecords(path)
        #expect(r.linkType == DLT_RAW, "LINKTYPE_RAW in the file; libpcap reports it as DLT_RAW")
        #expect(records.map(\.seconds) == [1, 3])
        #expect(records.allSatisfy { $0.bytes == raw })
    }

    @Test("an existing file is emptied: after sync it holds the header and the new records only")
    func replacesExistingFile() throws {
        let path = temporaryPath("existing.pcap")
        defer { unlink(path) }
        let old = [UInt8](repeating: 0xEE, count: 3 << 20)  // 3 MB of something else
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(old.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == old.count)
        close(fd)
        let f = try make("pcapout", path)
        try f.attach(streamLinkType: .ethernet)
        _ = feed(f, [([1, 2, 3, 4], .ethernet, 1, 0, nil), ([5, 6], .ethernet, 2, 0, nil)])
        if case .failure(let e)? = f.control("sync", "") { Issue.record("sync: \(e.message)") }
        var st = stat()
        #expect(stat(path, &st) == 0 && Int(st.st_size) == 24 + 16 + 4 + 16 + 2, "size \(st.st_size)")
        let (r, records) = readRecords(path)
        #expect(r.openError == nil && r.readError == nil)
        #expect(records.map(\.bytes) == [[1, 2, 3, 4], [5, 6]])
        f.shutdown()
    }

    @Test("the class travels through")
    func classPassThrough() throws {
        let (f, path) = try pcapout("class.pcap")
        defer { unlink(path) }
        #expect(classify(f, Pkt.ethTCP4(), classValue: 80) == 80)
        f.shutdown()
    }

    @Test("'sync' flushes, so a reader sees records before the filter is closed")
    func sync() throws {
        let (f, path) = try pcapout("sync.pcap", attachedTo: .ethernet)
        defer { unlink(path) }
        _ = feed(f, [(Pkt.ethARP(), .ethernet, 5, 0, nil)])
        guard case .success? = f.control("sync", "") else {
            Issue.record("sync should succeed")
            return
        }
        let (r, records) = readRecords(path)
        #expect(r.readError == nil)
        #expect(records.count == 1)
        #expect(f.control("nonsense", "") == nil)
        f.shutdown()
    }

    @Test("an out-of-range nanosecond field does not crash the writer",
          .bug(id: "negative nanoseconds", "PcapOut.swift:44 traps in UInt32(block.nanoseconds / 1000) when nanoseconds <= -1000"))
    func outOfRangeNanoseconds() async {
        // PcapFileSource turns a nanosecond field of 0x80000000 (timestamp_invalid_nano.pcap) into Int32.min.
        let path = temporaryPath("ns.pcap")
        defer { unlink(path) }
        await #expect(processExitsWith: .success) { [path = path as String] in
            guard let f = try? FilterLibrary.byName["pcapout"]!.make(path) else { exit(2) }
            let frame = Pkt.ethTCP4()
            frame.withUnsafeBytes { raw in
                var b = Block(bytes: raw, seconds: 1, nanoseconds: Int32.min, linkType: .ethernet)
                _ = f.process(&b)
            }
            f.shutdown()
            exit(readRecords(path).1.count == 1 ? 0 : 3)
        }
    }

    @Test("a path that cannot be created gives the errno and the reason")
    func createErrors() throws {
        let e = try #require(makeError("pcapout", "/nonexistent-dir-\(getpid())/x.pcap"))
        #expect(e.errno == ENOENT)
        #expect(e.message.contains("cannot create"))
        #expect(e.message.contains("No such file or directory"))
        #expect(makeError("pcapout", "")?.message.contains("needs a file path") == true)
        let (f, path) = try pcapout("keep.pcap")
        defer { unlink(path); f.shutdown() }
        #expect(makeError("pcapout", "/nonexistent-dir-\(getpid())/y.pcap")?.message.contains("cannot create") == true)
    }

    // MARK: the writer thread

    @Test("in the graph: 20000 records from a lossless source all reach the file, in order; rmdir closes it")
    func throughTheGraph() throws {
        let path = temporaryPath("graph.pcap")
        defer { unlink(path) }
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=1000,count=20000")
        let out = try c.makeDirectory(in: gen, named: "pcapout=\(path)")
        let genSource = try #require(gen.filter as? GeneratorSource)
        #expect(eventually(within: 60) { genSource.finished })
        let stats = c.statsText(out)
        #expect(stats.contains("records_written: 20000"), "\(stats)")
        #expect(stats.contains("records_dropped: 0"))
        let pcapout = try #require(out.filter as? PcapOut)
        try c.removeDirectory(in: gen, named: "pcapout=\(path)")
        #expect(pcapout.waitUntilStopped(timeoutNanoseconds: 30_000_000_000))
        let (r, records) = readRecords(path)
        #expect(r.openError == nil && r.readError == nil)
        #expect(r.linkType == LinkType.user.rawValue)
        #expect(records.count == 20000)
        let inOrder = records.enumerated().allSatisfy { i, rec in
            rec.bytes.count == 1000 && rec.bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } == UInt64(i).littleEndian
        }
        #expect(inOrder, "every record, in order")
    }

    @Test("below live capture: written + dropped = pushed, exactly, and the file holds the written records in order (staged and direct appends)")
    func lossyBelowLive() throws {
        let path = temporaryPath("live.pcap")
        defer { unlink(path) }
        let c = Controller()
        let src = Node(id: c.space.allocateID(), name: "live", descriptor: stubSourceDescriptor, filter: StubSource(live: true))
        c.space.lock.withLock {
            c.space.attach(src, under: nil)
            c.space.refresh()
        }
        let out = try c.makeDirectory(in: src, named: "pcapout=\(path)")
        // Every third record is larger than the staging buffer (appended directly); the rest are staged. About
        // 76 MB pushed as fast as possible, past the queue's 64 MiB: the writer may fall behind, and whatever it
        // cannot take is dropped and counted, never waited for (live capture cannot wait).
        let pushed = 3000
        let batch = Batch()
        var frame = [UInt8](repeating: 0x55, count: 70_000)
        var total = 0
        for i in 0..<pushed {
            frame.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(i).littleEndian, as: UInt64.self) }
            let size = i % 3 == 0 ? 70_000 : 3000
            frame.withUnsafeBytes { raw in
                var b = Block(bytes: UnsafeRawBufferPointer(rebasing: raw[0..<size]), linkType: .ethernet)
                c.space.begin(batch)
                c.space.push(src, &b)
                total += 1
                if i % 7 != 6 {  // most batches carry it three times: staged together
                    c.space.push(src, &b)
                    c.space.push(src, &b)
                    total += 2
                }
                c.space.end()
            }
            c.space.finishBatch(batch, mayWait: false)
        }
        let stats = c.statsText(out)
        func figure(_ name: String) -> Int { Int(stats.split(separator: "\n").first { $0.hasPrefix(name + ": ") }?.dropFirst(name.count + 2) ?? "") ?? -1 }
        let written = figure("records_written"), dropped = figure("records_dropped")
        #expect(written + dropped == total, "\(stats)")
        let pcapout = try #require(out.filter as? PcapOut)
        try c.removeDirectory(in: src, named: "pcapout=\(path)")
        #expect(pcapout.waitUntilStopped(timeoutNanoseconds: 60_000_000_000))
        c.shutdown()
        let (r, records) = readRecords(path)
        #expect(r.openError == nil && r.readError == nil)
        #expect(records.count == written)
        var last = -1, ordered = true
        for rec in records {
            let i = Int(UInt64(littleEndian: rec.bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }))
            if i < last || rec.bytes.count != (i % 3 == 0 ? 70_000 : 3000) { ordered = false; break }
            last = i
        }
        #expect(ordered, "records in push order, each whole")
    }

    @Test("records staged by a push made with the plain lock go on with the next producer's batch")
    func plainLockPushThenBatch() throws {
        let path = temporaryPath("plain.pcap")
        defer { unlink(path) }
        let c = Controller()
        defer { c.shutdown() }
        let src = Node(id: c.space.allocateID(), name: "s", descriptor: stubSourceDescriptor, filter: StubSource(live: false))
        c.space.lock.withLock {
            c.space.attach(src, under: nil)
            c.space.refresh()
        }
        let out = try c.makeDirectory(in: src, named: "pcapout=\(path)")
        let frame = [UInt8](repeating: 7, count: 100)
        frame.withUnsafeBytes { raw in
            var a = Block(bytes: raw, linkType: .ethernet)
            c.space.lock.withLock { c.space.push(src, &a) }  // no finishBatch: staged in the default batch
            let batch = Batch()
            var b = Block(bytes: raw, linkType: .ethernet)
            c.space.begin(batch)
            c.space.push(src, &b)
            c.space.end()
            c.space.finishBatch(batch, mayWait: false)
        }
        let stats = c.statsText(out)
        #expect(stats.contains("records_written: 2"), "both records left staging when the batch ended: \(stats)")
    }

    @Test("unmount waits until the queue is in the file")
    func unmountWaits() throws {
        let path = temporaryPath("unmount.pcap")
        defer { unlink(path) }
        let c = Controller()
        let gen = try c.addSource("g=gen:size=4000,count=5000")
        _ = try c.makeDirectory(in: gen, named: "pcapout=\(path)")
        let genSource = try #require(gen.filter as? GeneratorSource)
        #expect(eventually(within: 60) { genSource.finished })
        c.shutdown()
        #expect(readRecords(path).1.count == 5000)
    }

    @Test("a write error (ENOSPC on /dev/full) is reported once and counted; sync says so")
    func writeError() throws {
        let fd = open("/dev/full", O_WRONLY | O_CLOEXEC)
        try #require(fd >= 0)
        let sink = WriterSink(fd: fd, path: "/dev/full")
        let lines = Locked<[String]>([])
        FileWriter.shared.register(sink)
        FileWriter.shared.setReporter(sink) { l in lines.update { $0.append(l) } }
        let chunk = [UInt8](repeating: 7, count: 300_000)
        for _ in 0..<8 { _ = chunk.withUnsafeBytes { sink.queue.append(header: nil, body: $0) } }
        FileWriter.shared.wake()
        #expect(FileWriter.shared.sync(sink, upTo: 8 * 300_000, timeoutNanoseconds: 10_000_000_000))
        let p = FileWriter.shared.published(sink)
        #expect(p.error == ENOSPC)
        #expect(p.bytesWritten == 0)
        #expect(p.bytesLost == 8 * 300_000)
        #expect(lines.value.count == 1, "reported once: \(lines.value)")
        #expect(lines.value.first?.contains("No space left on device") == true)
        FileWriter.shared.close(sink)
        #expect(FileWriter.shared.waitClosed(sink, timeoutNanoseconds: 10_000_000_000))
    }

    @Test("URing writes and reads at offsets, through io_uring and through the pread/pwrite fallback",
          arguments: [false, true])
    func uring(fallback: Bool) throws {
        let u = URing(entries: 4, pread: fallback)
        #expect(u.usesIOURing == !fallback, "\(u.fallbackReason ?? "")")
        let path = temporaryPath("uring")
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        defer { close(fd); unlink(path) }
        let a = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        let b = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { a.deallocate(); b.deallocate() }
        memset(a, 0x41, 8192)
        memset(b, 0x42, 8192)
        u.write(fd, a, 8192, at: 8192, tag: 1)
        u.write(fd, b, 100, at: 0, tag: 2)
        u.submit()
        var results: [UInt64: Int32] = [:]
        for _ in 0..<2 { let (t, r) = u.complete(); results[t] = r }
        #expect(results == [1: 8192, 2: 100])
        memset(a, 0, 8192)
        u.read(fd, a, 8192, at: 8100, tag: 3)
        u.submit()
        let (t, r) = u.complete()
        #expect(t == 3 && r == 8192)
        #expect(a.load(fromByteOffset: 91, as: UInt8.self) == 0x00, "the hole between the writes")
        #expect(a.load(fromByteOffset: 92, as: UInt8.self) == 0x41)
        u.read(fd, a, 8192, at: 16384, tag: 4)
        u.submit()
        #expect(u.complete().result == 0, "end of file")
        u.write(-1, a, 10, at: 0, tag: 5)
        u.submit()
        #expect(u.complete().result == -EBADF)
    }
}
