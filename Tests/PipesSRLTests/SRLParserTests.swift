import PipesSRL
import Testing

/// The graph of `text` as sorted "from -> to [selector] (veto)" lines with node names (ids dropped), for
/// structural comparison independent of numbering.
func arcs(_ text: String) throws -> [String] {
    let g = try RequestGraph(SRL.parse(text))
    return g.edges.map { e in
        "\(g.nodes[e.from].label) -> \(g.nodes[e.to].label)" + (e.selector.isEmpty ? "" : " [\(e.selector)]") + (e.role == .veto ? " (veto)" : "")
    }.sorted()
}

extension RequestGraph.Node {
    var label: String {
        if case .filter(let f) = kind { return f.argumentText.isEmpty ? f.name : "\(f.name)(\(f.argumentText))" }
        return name
    }
}

@Suite("SRL: the paper's requests")
struct SRLPaperTests {
    @Test("rx | tcp | http | files: a chain")
    func chain() throws {
        #expect(try arcs("rx | tcp | http | files") == ["http -> files", "rx -> tcp", "tcp -> http"])
        let g = try RequestGraph(SRL.parse("rx | tcp | http | files"))
        #expect(g.heads.map { g.nodes[$0].name } == ["rx"])
        #expect(g.outputs.map { g.nodes[$0].name } == ["files"])
    }

    @Test("rx | tcp | dport |80 http | files: a selector on one arc")
    func selectorArc() throws {
        #expect(try arcs("rx | tcp | dport |80 http | files")
                == ["dport -> http [80]", "http -> files", "rx -> tcp", "tcp -> dport"])
    }

    @Test("tcp | http + ssh + rtsp | inspect: split-join; '+' binds tighter than '|'")
    func splitJoin() throws {
        #expect(try arcs("tcp | http + ssh + rtsp | inspect") == [
            "http -> inspect", "rtsp -> inspect", "ssh -> inspect", "tcp -> http", "tcp -> rtsp", "tcp -> ssh",
        ])
        let g = try RequestGraph(SRL.parse("tcp | http + ssh + rtsp | inspect"))
        #expect(g.nodes.count == 5, "split-join adds no node")
    }

    @Test("a --name=X | b | a --name=X: one node for both mentions, a cycle")
    func cycle() throws {
        let g = try RequestGraph(SRL.parse("a --name=X | b | a --name=X"))
        #expect(g.nodes.count == 2)
        #expect(try arcs("a --name=X | b | a --name=X") == ["a -> b", "b -> a"])
        #expect(g.heads.isEmpty, "every node has an input in a cycle")
    }

    @Test("arc constraints: |22, |!80, |22:23, |ssh:telnet, |80,443, |all")
    func constraints() throws {
        #expect(try arcs("dport |22 ssh") == ["dport -> ssh [22]"])
        #expect(try arcs("dport |!80 ids") == ["dport -> ids [!80]"])
        #expect(try arcs("dport |22:23 log") == ["dport -> log [22:23]"])
        #expect(try arcs("dport |ssh:telnet log") == ["dport -> log [ssh:telnet]"])
        #expect(try arcs("dport |80,443 web") == ["dport -> web [80,443]"])
        #expect(try arcs("dport |0x50 web") == ["dport -> web [0x50]"])
        #expect(try arcs("buffer txport53 |all tx") == ["buffer(txport53) -> tx"], "|all is a plain pipe")
    }

    @Test("rx ++ tx | ip | mpeg +* !http: union, intersection and negation as join nodes")
    func boolean() throws {
        let g = try RequestGraph(SRL.parse("rx ++ tx | ip | mpeg +* !http"))
        #expect(g.nodes.map(\.name).sorted() == ["difference", "http", "intersect", "ip", "mpeg", "rx", "tx", "union"])
        #expect(try arcs("rx ++ tx | ip | mpeg +* !http") == [
            "difference -> intersect",
            "http -> difference (veto)",
            "ip -> difference",
            "ip -> http",
            "ip -> mpeg",
            "mpeg -> intersect",
            "rx -> union",
            "tx -> union",
            "union -> ip",
        ])
        #expect(g.outputs.map { g.nodes[$0].name } == ["intersect"])
        // The veto arc into the difference node comes before the pass arc, so the verdict is known first.
        let diff = try #require(g.nodes.first { $0.kind == .difference })
        #expect(g.inputs(of: diff.id).map(\.role) == [.veto, .data])
    }

    @Test("rx | ip | tcp | pcap | compress | files: connection handling is a plain chain")
    func connections() throws {
        #expect(try arcs("rx | ip | tcp | pcap | compress | files").count == 5)
    }

    @Test("rx + tx | bpf \"tcp\" | user: a quoted argument")
    func quotedArgument() throws {
        #expect(try arcs("rx + tx | bpf \"tcp\" | user") == ["bpf(tcp) -> user", "rx -> bpf(tcp)", "tx -> bpf(tcp)"])
        let r = try SRL.parse("pcapin F | bpf \"tcp dst port 80\" | pcapout O")
        guard case .sequence(let stages, _) = r.expression, case .filter(let bpf) = stages[1] else {
            Issue.record("not a sequence")
            return
        }
        #expect(bpf.arguments.count == 1 && bpf.arguments[0].quoted && bpf.arguments[0].key == nil)
        #expect(bpf.argumentText == "tcp dst port 80")
    }

    @Test("sockets: rx | udp | dport |53 socket export=yes name=rxport53; buffer txport53 |all tx")
    func sockets() throws {
        let r = try SRL.parse("rx | udp | dport |53 socket export=yes name=rxport53")
        let g = try RequestGraph(r)
        guard case .filter(let socket) = g.nodes[g.outputs[0]].kind else { Issue.record("no socket"); return }
        #expect(socket.arguments.map(\.key) == ["export", "name"])
        #expect(socket.arguments.map(\.value) == ["yes", "rxport53"])
        #expect(try arcs("rx | udp | dport |53 socket export=yes name=rxport53")
                == ["dport -> socket(export=yes name=rxport53) [53]", "rx -> udp", "udp -> dport"])
    }

    @Test("parentheses override precedence; !(a | b) negates a pipeline")
    func parentheses() throws {
        #expect(try arcs("a | (b | c) + d | e") == ["a -> b", "a -> d", "b -> c", "c -> e", "d -> e"])
        #expect(try arcs("ip | !(tcp | dport |80 x)") == [
            "dport -> x [80]", "ip -> difference", "ip -> tcp", "tcp -> dport", "x -> difference (veto)",
        ])
        #expect(try arcs("(a ++ b) + c | d") == ["a -> union", "b -> union", "c -> d", "union -> d"])
    }

    @Test("a filter may be written as its directory name: bpf=tcp is bpf with the argument tcp")
    func directoryNames() throws {
        #expect(try arcs("rx | bpf=tcp | match=GET") == ["bpf(tcp) -> match(GET)", "rx -> bpf(tcp)"])
        let r = try SRL.parse("j=raw | ip")
        guard case .sequence(let s, _) = r.expression, case .filter(let j) = s[0] else { Issue.record("shape"); return }
        #expect(j.name == "j" && j.written == "j=raw" && j.argumentText == "raw")
    }

    @Test("options: --space=K is kept for placement; a tag's later mention may omit the arguments")
    func options() throws {
        let g = try RequestGraph(SRL.parse("rx | match GET --name=m --space=1 | count | match --name=m"))
        let m = try #require(g.nodes.first { $0.name == "match" })
        guard case .filter(let f) = m.kind else { Issue.record("not a filter"); return }
        #expect(f.space == 1 && f.tag == "m" && f.argumentText == "GET")
        #expect(g.nodes.count == 3)
    }

    @Test("scripts: requests separated by ';' or line breaks; comments; a break after an operator continues")
    func scripts() throws {
        let rs = try SRL.parseScript("""
            # the web
            rx | ip | tcp | dport |80 count; rx | ip | udp

            rx | ip |
                tcp | dport |22 count   # ssh
            (a
             | b)
            """)
        #expect(rs.count == 4)
        #expect(try RequestGraph(rs[2]).edges.count == 4)
        #expect(try RequestGraph(rs[3]).edges.count == 1)
        // In one request, line breaks are blanks.
        #expect(try arcs("rx\n| ip\n| count") == ["ip -> count", "rx -> ip"])
    }

    @Test("messages carry line:column, the source line and a caret under the offending text")
    func caret() {
        do {
            _ = try SRL.parse("rx | tcp | | http")
            Issue.record("accepted")
        } catch {
            #expect(error.description == """
                1:12: expected a filter after '|', found '|'
                rx | tcp | | http
                           ^
                """)
        }
        do {
            _ = try SRL.parseScript("rx | ip\nrx | dport |22:x:y ssh")
            Issue.record("accepted")
        } catch {
            #expect(error.description == """
                2:13: '22:x:y' in the class selector '22:x:y': a range has two ends, e.g. 22:23
                rx | dport |22:x:y ssh
                            ^~~~~~
                """)
        }
    }
}

/// A malformed request, the line:column of its error and a fragment of the message.
struct Malformed: CustomTestStringConvertible, Sendable {
    var text: String
    var at: String
    var says: String
    var script = false
    var testDescription: String { text.debugDescription }
}

@Suite("SRL: malformed requests")
struct SRLErrorTests {
    static let cases: [Malformed] = [
        Malformed(text: "", at: "1:1", says: "empty request: expected a filter name"),
        Malformed(text: "   # only a comment", at: "1:20", says: "empty request"),
        Malformed(text: "| ip", at: "1:1", says: "expected a filter name, found '|'"),
        Malformed(text: "rx |", at: "1:5", says: "expected a filter after '|', found the end of the request"),
        Malformed(text: "rx | | ip", at: "1:6", says: "expected a filter after '|', found '|'"),
        Malformed(text: "rx | tcp |80", at: "1:13", says: "expected a filter after '|80'"),
        Malformed(text: "rx |22 |23 b", at: "1:8", says: "expected a filter after '|22', found '|23'"),
        Malformed(text: "a +", at: "1:4", says: "expected a filter after '+'"),
        Malformed(text: "+ a", at: "1:1", says: "expected a filter name, found '+'"),
        Malformed(text: "a ++", at: "1:5", says: "expected a filter after '++'"),
        Malformed(text: "a +* | b", at: "1:6", says: "expected a filter after '+*', found '|'"),
        Malformed(text: "a + b ++ c", at: "1:7", says: "'++' after '+' (at 1:3): mixing them needs parentheses"),
        Malformed(text: "a +* b + c", at: "1:8", says: "'+' after '+*' (at 1:3)"),
        Malformed(text: "!", at: "1:2", says: "expected a filter or '(' after '!', found the end of the request"),
        Malformed(text: "ip | !", at: "1:7", says: "expected a filter or '(' after '!'"),
        Malformed(text: "ip | ! | b", at: "1:8", says: "after '!', found '|'"),
        Malformed(text: "(a | b", at: "1:7", says: "expected ')' to close the '(' at 1:1, found the end of the request"),
        Malformed(text: "a | b)", at: "1:6", says: "unexpected ')': no '(' is open"),
        Malformed(text: "()", at: "1:2", says: "empty parentheses"),
        Malformed(text: "( | a)", at: "1:3", says: "expected a filter after '(', found '|'"),
        Malformed(text: "(a) b", at: "1:5", says: "expected '|', '+', '++', '+*' or the end of the request after ')', found 'b'"),
        Malformed(text: "a \"open", at: "1:3", says: "unterminated string: the double quote here has no partner"),
        Malformed(text: "a 'open", at: "1:3", says: "unterminated string: the single quote"),
        Malformed(text: "a \"bad \\q\"", at: "1:8", says: "unknown escape '\\q'"),
        Malformed(text: "a \"x\\x4\"", at: "1:5", says: "\\x wants two hex digits"),
        Malformed(text: "a |! b", at: "1:4", says: "empty class selector after '|!'"),
        Malformed(text: "a |22: b", at: "1:4", says: "expected a class value on both sides of ':'"),
        Malformed(text: "a |:22 b", at: "1:4", says: "expected a class value on both sides of ':'"),
        Malformed(text: "a |22,,23 b", at: "1:4", says: "empty item in the class selector"),
        Malformed(text: "a |99999999999 b", at: "1:4", says: "class value '99999999999' in '99999999999' is not a number from 0 to 4294967295"),
        Malformed(text: "a |0xZZ b", at: "1:4", says: "class value '0xZZ'"),
        Malformed(text: "a |22-23 b", at: "1:4", says: "class value '22-23' in '22-23' is not a number"),
        Malformed(text: "a |h@ck b", at: "1:4", says: "is neither a number nor a class name"),
        Malformed(text: "a |!all b", at: "1:4", says: "'|!all' would pass nothing"),
        Malformed(text: "a --name", at: "1:3", says: "--name needs a value: --name=X"),
        Malformed(text: "a --name=", at: "1:3", says: "--name needs a value"),
        Malformed(text: "a --name=9x", at: "1:3", says: "--name=9x: a name starts with a letter"),
        Malformed(text: "a --name=X --name=Y", at: "1:12", says: "--name given twice for a (already --name=X)"),
        Malformed(text: "a --frob=1", at: "1:3", says: "unknown option --frob (options: --name=X, --space=K)"),
        Malformed(text: "a --", at: "1:3", says: "'--' alone is not an option"),
        Malformed(text: "a --space=x", at: "1:3", says: "--space wants a space number 0 to 63"),
        Malformed(text: "a --space=64", at: "1:3", says: "--space wants a space number"),
        Malformed(text: "--name=X a", at: "1:1", says: "found the option --name: options follow the filter"),
        Malformed(text: "a --name=X | b --name=X", at: "1:14", says: "--name=X is a at 1:1; here it names b"),
        Malformed(text: "a x --name=X | b | a y --name=X", at: "1:20", says: "--name=X has the arguments 'x' at 1:1; here 'y'"),
        Malformed(text: "a --name=X --space=1 | a --name=X --space=2", at: "1:24", says: "placed in space 1 at 1:1; here in 2"),
        Malformed(text: "1abc | b", at: "1:1", says: "'1abc' is not a filter name"),
        Malformed(text: "a | b=", at: "1:5", says: "'b=': nothing after '='"),
        Malformed(text: "a | 9=c", at: "1:5", says: "'9' is not a filter name"),
        Malformed(text: "a | ünï", at: "1:5", says: "'ünï' is not a filter name"),
        Malformed(text: "a =x", at: "1:3", says: "argument '=x' has no key before '='"),
        Malformed(text: "a key=", at: "1:3", says: "argument 'key=' has no value after '='"),
        Malformed(text: "match ! foo", at: "1:7", says: "found '!' ('!' starts a negation; quote it"),
        Malformed(text: "a\u{01}b", at: "1:2", says: "unexpected control character U+0001"),
        Malformed(text: "a \"x\u{7F}\"", at: "1:5", says: "unexpected control character U+007F in a string"),
        Malformed(text: "a ; b", at: "1:3", says: "found ';'"),
        Malformed(text: "a | b\n| c", at: "2:1", says: "expected a filter name, found '|'", script: true),
        Malformed(text: "a |\n\n", at: "3:1", says: "expected a filter after '|', found the end of the request", script: true),
        Malformed(text: "(a\n| b", at: "2:4", says: "expected ')' to close the '(' at 1:1", script: true),
        Malformed(text: String(repeating: "(", count: 201) + "a" + String(repeating: ")", count: 201), at: "1:201", says: "nested more than 200 deep"),
        Malformed(text: String(repeating: "!", count: 300) + "a", at: "1:201", says: "nested more than 200 deep"),
        Malformed(text: "a |\"x\" b", at: "1:4", says: "expected a filter after '|', found the string \"x\""),
        Malformed(text: "!a", at: "1:1", says: "a negation needs an input"),
    ]

    @Test("each malformed request is refused at its position with its message", arguments: cases)
    func refused(_ m: Malformed) {
        do {
            if m.script {
                _ = try SRL.parseScript(m.text)
            } else {
                _ = try RequestGraph(SRL.parse(m.text))
            }
            Issue.record("accepted: \(m.text.debugDescription)")
        } catch {
            #expect(error.location.description == m.at, "\(error.description)")
            #expect(error.message.contains(m.says), "\(error.description)")
        }
    }

    @Test("at least 40 malformed requests are covered, all distinct")
    func coverage() {
        #expect(SRLErrorTests.cases.count >= 40)
        #expect(Set(SRLErrorTests.cases.map(\.text)).count == SRLErrorTests.cases.count)
    }

    @Test("a request longer than the limit is refused without being parsed")
    func tooLong() {
        let text = String(repeating: "a | ", count: SRL.maxLength / 4) + "b"
        do {
            _ = try SRL.parse(text)
            Issue.record("accepted")
        } catch {
            #expect(error.message.hasPrefix("request too long"))
        }
    }
}
