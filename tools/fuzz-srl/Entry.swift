// libFuzzer entry for the request language: every input, as UTF-8 (invalid sequences replaced), must parse or
// be refused with an SRLError whose position lies inside the text — never crash, hang or overflow the stack.
// Built and run by tools/fuzz-srl/run (swiftc -sanitize=fuzzer,address).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let scalars = text.unicodeScalars.count
    do {
        for r in try SRL.parseScript(text) {
            do {
                let g = try RequestGraph(r)
                _ = g.description
                precondition(g.edges.allSatisfy { $0.from < g.nodes.count && $0.to < g.nodes.count })
            } catch {
                check(error, scalars)
            }
        }
    } catch {
        check(error, scalars)
    }
    do {
        let r = try SRL.parse(text)
        _ = try? RequestGraph(r)
    } catch {
        check(error, scalars)
    }
    return 0
}

func check(_ e: SRLError, _ scalars: Int) {
    precondition(e.location.offset >= 0 && e.location.offset <= scalars, "error offset \(e.location.offset) outside 0...\(scalars)")
    precondition(e.location.line >= 1 && e.location.column >= 1)
    precondition(!e.message.isEmpty)
    _ = e.description
}
