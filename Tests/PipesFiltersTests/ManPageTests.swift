import Foundation
import PipesFilters
import PipesRuntime
import Testing

/// man/pipesfs-filters.7 is kept next to the code: every filter and source of the library has a section there,
/// and each section shows the usage line its descriptor gives (`pipesfs filters` prints the same).
@Suite("manual")
struct ManPageTests {
    static let page: String? = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try? String(contentsOf: root.appendingPathComponent("man/pipesfs-filters.7"), encoding: .utf8)
    }()

    /// The text of section `.SS name`, up to the next section.
    static func section(_ name: String) -> String? {
        guard let page, let r = page.range(of: "\n.SS \(name)\n") else { return nil }
        let rest = page[r.upperBound...]
        let end = rest.range(of: "\n.SS ")?.lowerBound ?? rest.range(of: "\n.SH ")?.lowerBound ?? rest.endIndex
        return String(rest[..<end])
    }

    @Test("every filter, process filter and source has a section in pipesfs-filters(7)")
    func everyFilter() throws {
        try #require(ManPageTests.page != nil, "man/pipesfs-filters.7 not found next to the sources")
        let names = (FilterLibrary.filters + FilterLibrary.processes).map(\.name) + FilterLibrary.sources.keys.sorted()
        for name in names {
            #expect(ManPageTests.section(name) != nil, "no '.SS \(name)' in man/pipesfs-filters.7")
        }
    }

    @Test("each filter's section names the summary its descriptor gives")
    func summaries() throws {
        try #require(ManPageTests.page != nil)
        for d in FilterLibrary.filters + FilterLibrary.processes {
            guard let s = ManPageTests.section(d.name) else { continue }
            // Without roff's font macros, escapes and line breaks (spaces too: `.BR pcap\-filter (7)`).
            var text = s.replacingOccurrences(of: "\\-", with: "-").replacingOccurrences(of: "\\(aq", with: "'")
            for m in [".BR ", ".RB ", ".IR ", ".BI ", ".B ", ".I "] { text = text.replacingOccurrences(of: "\n" + m, with: "\n") }
            let flat = text.filter { !$0.isWhitespace }
            #expect(flat.contains(d.summary.filter { !$0.isWhitespace }), "the section of \(d.name) does not give its summary '\(d.summary)'")
        }
    }
}
