#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

// Running library filters by hand, and sources below a controller.

/// Runs one block through a filter and returns its class (and the block as the filter left it).
@discardableResult
func classify(_ filter: any Filter, _ bytes: [UInt8], _ linkType: LinkType = .ethernet, classValue: UInt32 = 0,
              wireLength: Int? = nil, inspect: (inout Block) -> Void = { _ in }) -> UInt32 {
    bytes.withUnsafeBytes { raw in
        var b = Block(bytes: raw, wireLength: wireLength, linkType: linkType)
        b.classValue = classValue
        let c = filter.process(&b)
        inspect(&b)
        return c
    }
}

/// Instantiates a library filter by name.
func make(_ name: String, _ args: String = "", sourceLocation: SourceLocation = #_sourceLocation) throws -> any Filter {
    let d = try #require(FilterLibrary.byName[name], "no filter '\(name)' in the library", sourceLocation: sourceLocation)
    return try d.make(args)
}

/// The FilterError a construction throws, or nil.
func makeError(_ name: String, _ args: String) -> FilterError? {
    guard let d = FilterLibrary.byName[name] ?? FilterLibrary.sources[name] ?? (name == "junction" ? FilterLibrary.junction : nil) else {
        return FilterError("no such descriptor")
    }
    return filterError { _ = try d.make(args) }
}

/// Runs `body` with a controller whose one source, `name`, reads `file` (written to a temporary path) with
/// `options` (",paused"); the controller is shut down and the file removed afterwards.
func withCaptureSource(_ file: HandPcap, named name: String = "cap", options: String = "",
                       _ body: (_ c: Controller, _ node: Node, _ path: String) throws -> Void) throws {
    let path = try file.write("\(name).pcap")
    defer { unlink(path) }
    let c = Controller()
    defer { c.shutdown() }
    try body(c, try c.addSource("\(name)=pcap:\(path)\(options)"), path)
}

/// Opens taps on `node` as readers of all or all.pcap open them: added under the space lock, then demand refreshed
/// once, so a source that starts flowing finds every one of them in place.
func openTaps(_ c: Controller, _ node: Node, _ formats: [TapFormat], capacity: Int = 1 << 16) -> [TapRing] {
    let rings = formats.map { _ in TapRing(capacity: capacity, policy: .block) }
    c.space.lock.withLock {
        for (ring, format) in zip(rings, formats) { c.space.addTap(node, ring, format) }
        c.space.refresh()
    }
    return rings
}

/// Opens one tap on `node` (see `openTaps`).
func openTap(_ c: Controller, _ node: Node, _ format: TapFormat = .raw, capacity: Int = 1 << 16) -> TapRing {
    openTaps(c, node, [format], capacity: capacity)[0]
}
