import Foundation
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("files")
struct FilesTests {
    /// A fresh directory for one test (removed with its files afterwards).
    final class Directory {
        let path = temporaryPath("files-\(UInt64.random(in: 0..<UInt64.max))")
        deinit {
            for n in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] { unlink(path + "/" + n) }
            rmdir(path)
        }
        func read(_ name: String) -> [UInt8]? { FileManager.default.contents(atPath: path + "/" + name).map { Array($0) } }
        var names: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }
    }

    /// A connection between 10.0.0.1:sport and 192.0.2.7:80, registered as untcp registers them: its two tags.
    static func connection(sport: UInt16) -> (UInt32, UInt32) {
        let key = FlowKey(source: FlowAddress(high: 0, low: 0x0A00_0001), destination: FlowAddress(high: 0, low: 0xC000_0207),
                          sourcePort: sport, destinationPort: 80, v6: false)
        let c = FlowTable.shared.register(key)
        return (FlowTable.tag(connection: c, direction: 0), FlowTable.tag(connection: c, direction: 1))
    }

    @discardableResult
    static func feed(_ f: any Filter, _ bytes: [UInt8], flow: UInt32, marks: FlowMarks = []) -> UInt32 {
        bytes.withUnsafeBytes { raw in
            var b = Block(bytes: raw, linkType: .user)
            b.flow = flow
            b.flowMarks = marks
            b.classValue = 2
            return f.process(&b)
        }
    }

    @Test("each direction to a file named as tcpflow names it; a later connection on the same ports gets c1")
    func names() throws {
        let d = Directory()
        let f = try #require(FilterLibrary.byName["files"]).make(d.path)
        let (a0, a1) = FilesTests.connection(sport: 1024)
        #expect(FilesTests.feed(f, Array("GET /".utf8), flow: a0) == 2, "forwards with the class it got")
        FilesTests.feed(f, Array(" HTTP/1.1\r\n".utf8), flow: a0)
        FilesTests.feed(f, Array("HTTP/1.1 200".utf8), flow: a1)
        FilesTests.feed(f, [], flow: a0, marks: .end)
        FilesTests.feed(f, [], flow: a1, marks: .end)
        let (b0, _) = FilesTests.connection(sport: 1024)
        FilesTests.feed(f, Array("again".utf8), flow: b0, marks: .end)
        FilesTests.feed(f, Array("no tag".utf8), flow: 0)
        f.shutdown()
        #expect(d.names == ["010.000.000.001.01024-192.000.002.007.00080", "010.000.000.001.01024-192.000.002.007.00080c1",
                            "192.000.002.007.00080-010.000.000.001.01024", "unflowed"])
        #expect(d.read("010.000.000.001.01024-192.000.002.007.00080") == Array("GET / HTTP/1.1\r\n".utf8))
        #expect(d.read("192.000.002.007.00080-010.000.000.001.01024") == Array("HTTP/1.1 200".utf8))
        #expect(d.read("010.000.000.001.01024-192.000.002.007.00080c1") == Array("again".utf8))
        #expect(d.read("unflowed") == Array("no tag".utf8))
        let stats = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(stats["files_made"] == "4" && stats["files_write_errors"] == "0" && stats["files_open"] == "0")
    }

    @Test("more flows than open files and than the buffer budget: every file still holds its flow's bytes in order")
    func manyFlows() throws {
        let d = Directory()
        let f = try #require(FilterLibrary.byName["files"]).make(d.path)
        // 1200 flows, 20 rounds of 3000 bytes each, interleaved: 60 KB per flow, 72 MB in all (past the 64 MiB budget),
        // with 1200 files open at once if nothing were closed.
        let tags = (0..<1200).map { FilesTests.connection(sport: UInt16(2000 + $0)).0 }
        var maxBuffered = 0
        for round in 0..<20 {
            for (i, t) in tags.enumerated() {
                FilesTests.feed(f, [UInt8](repeating: UInt8(truncatingIfNeeded: i &+ round), count: 3000), flow: t)
            }
            maxBuffered = max(maxBuffered, Int(Dictionary(uniqueKeysWithValues: f.statistics())["files_buffered_bytes"]!)!)
        }
        try #require(f as? any FlushingFilter).endOfStream()
        #expect(maxBuffered <= 64 << 20, "buffers over all flows: \(maxBuffered)")
        #expect(d.names.count == 1200)
        for (i, t) in tags.enumerated() where i % 97 == 0 {
            let name = try #require(FlowTable.shared.info(t)?.key.tcpflowName)
            let want = (0..<20).flatMap { r in [UInt8](repeating: UInt8(truncatingIfNeeded: i &+ r), count: 3000) }
            #expect(d.read(name) == want, "flow \(i)")
        }
        #expect(Dictionary(uniqueKeysWithValues: f.statistics())["files_write_errors"] == "0")
    }

    @Test("a directory that cannot be made is refused with its reason and errno")
    func refusals() throws {
        let e = try #require(makeError("files", "/proc/no/such/dir"))
        #expect(e.message.hasPrefix("files: cannot create directory '/proc/no/such/dir': "))
        #expect(e.errno == ENOENT)
        #expect(makeError("files", "")?.message == "files: needs a directory, as in files=/tmp/flows")
    }
}
