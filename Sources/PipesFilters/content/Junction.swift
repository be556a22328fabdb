import PipesRuntime

/// A junction: a named top-level directory that passes through whatever flows into it or is written to its
/// `all` (the paper's `httpclean`). Its argument names the link type of written data (default: `user`).
public final class Junction: Filter, InjectionLinkType {
    public let injectedLinkType: LinkType
    init(_ a: String) throws(FilterError) { injectedLinkType = try Junction.parse(a) }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 { block.classValue == 0 ? 1 : block.classValue }

    public var arguments: String {
        switch injectedLinkType {
        case .user: ""
        case .ethernet: "ethernet"
        case .raw, .dltRaw12, .dltRaw14: "raw"
        case .linuxSLL: "sll"
        case .linuxSLL2: "sll2"
        default: "\(injectedLinkType.rawValue)"
        }
    }

    static func parse(_ a: String) throws(FilterError) -> LinkType {
        switch a.lowercased() {
        case "", "user": return .user
        case "ethernet", "eth", "en10mb": return .ethernet
        case "raw", "ip": return .raw
        case "linux-sll", "sll": return .linuxSLL
        case "linux-sll2", "sll2": return .linuxSLL2
        default:
            if let n = Int32(a), n >= 0 { return LinkType(rawValue: n) }
            throw FilterError("junction: unknown link type '\(a)' (ethernet, raw, sll, sll2, user or a LINKTYPE number)")
        }
    }

    public static let descriptor = FilterDescriptor(
        name: "junction", summary: "named junction: passes through what flows or is written into it",
        usage: "/pipes/NAME[=LINKTYPE]", structuralClass: .passThrough
    ) { a throws(FilterError) in try Junction(a) }
}
