import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

@Suite("http and get")
struct HTTPTests {
    final class Out {
        var heads: [(flow: UInt32, cls: UInt32, text: String)] = []
        var views: [UnsafeRawBufferPointer] = []
    }

    func make() throws -> (HTTP, Out) {
        let f = try #require(try FilterLibrary.byName["http"]!.make("") as? HTTP)
        let o = Out()
        f.unboundOutput = { b in
            o.heads.append((b.flow, b.classValue, String(decoding: b.bytes, as: UTF8.self)))
            o.views.append(b.bytes)
        }
        return (f, o)
    }

    /// Feeds `text` as one flow's stream, cut at `cuts`.
    func feed(_ f: HTTP, flow: UInt32, _ text: String, cuts: [Int] = [], end: Bool = false) {
        let bytes = Array(text.utf8)
        let bounds = [0] + cuts + [bytes.count]
        for i in 0..<(bounds.count - 1) {
            let piece = Array(bytes[bounds[i]..<bounds[i + 1]])
            piece.withUnsafeBytes { raw in
                var b = Block(bytes: raw, linkType: .user)
                b.flow = flow
                if end && i == bounds.count - 2 { b.flowMarks = .end }
                #expect(f.process(&b) == 0)
            }
        }
    }

    static let get1 = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    static let post = "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello=world"
    static let get2 = "GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"

    @Test("pipelined requests: one head each, classed by method, bodies skipped")
    func pipelined() throws {
        let (f, o) = try make()
        feed(f, flow: 2, HTTPTests.get1 + HTTPTests.post + HTTPTests.get2)
        #expect(o.heads.map(\.cls) == [1, 3, 1])
        #expect(o.heads[0].text == HTTPTests.get1)
        #expect(o.heads[1].text == "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
        #expect(o.heads[2].text == HTTPTests.get2)
        #expect(o.heads.allSatisfy { $0.flow == 2 })
        let s = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(s["http_get"] == "2" && s["http_post"] == "1" && s["http_body_bytes"] == "11")
        #expect(f.seenClassNames() == ["get", "post"])
    }

    @Test("the same stream cut at every byte gives the same heads", arguments: [1, 7, 29, 30, 45, 60, 83, 90])
    func cuts(at: Int) throws {
        let (f, o) = try make()
        let text = HTTPTests.get1 + HTTPTests.post + HTTPTests.get2
        feed(f, flow: 4, text, cuts: [at, min(at + 13, text.utf8.count - 1)])
        #expect(o.heads.map(\.text) == [HTTPTests.get1, "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", HTTPTests.get2])
    }

    @Test("a head within one block goes on as a view of it")
    func zeroCopy() throws {
        let (f, o) = try make()
        let bytes = Array(HTTPTests.get1.utf8)
        bytes.withUnsafeBytes { raw in
            var b = Block(bytes: raw, linkType: .user)
            b.flow = 6
            _ = f.process(&b)
            #expect(o.views.first?.baseAddress == raw.baseAddress)
        }
    }

    @Test("responses: Content-Length, chunked across blocks, no body after HEAD, 204 and 304")
    func responses() throws {
        let (f, o) = try make()
        feed(f, flow: 8, "HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")  // client side of connection 4
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10;x=y\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n"
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  // to the HEAD: no body follows
            + chunked + "HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.0 200 OK\r\n\r\nrest of the flow"
        feed(f, flow: 9, text, cuts: [50, 70, 95, 96, 120])
        let responses = o.heads.filter { $0.cls == 16 }
        #expect(responses.count == 5)
        #expect(responses.map { $0.text.split(separator: " ")[1] } == ["200", "200", "304", "204", "200"])
        #expect(Dictionary(uniqueKeysWithValues: f.statistics())["http_body_bytes"] == "\(5 + 16 + "rest of the flow".count)")
    }

    @Test("a flow that does not start like HTTP is given up on; its end frees it")
    func notHTTP() throws {
        let (f, o) = try make()
        feed(f, flow: 10, "\u{16}\u{03}\u{01} binary TLS hello GET / HTTP/1.1\r\n\r\n", end: true)
        #expect(o.heads.isEmpty)
        let s = Dictionary(uniqueKeysWithValues: f.statistics())
        #expect(s["http_not_http"] == "1" && s["http_flows"] == "0")
    }

    @Test("get passes GET heads only")
    func get() throws {
        let g = try #require(FilterLibrary.byName["get"]).make("")
        #expect(classify(g, Array(HTTPTests.get1.utf8), .user, classValue: 1) == 1)
        #expect(classify(g, Array(HTTPTests.post.utf8), .user, classValue: 3) == 0)
        #expect(classify(g, Array("GETX / HTTP/1.1\r\n".utf8), .user) == 0)
        #expect(classify(g, Pkt.ethTCP4(dport: 80, Array(HTTPTests.get1.utf8))) == 1, "a packet's payload")
        #expect(makeError("get", "x")?.message == "takes no arguments (got 'x')")
    }
}
