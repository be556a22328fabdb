/// The paper's structural filter classes (Table I).
public enum StructuralClass: String, Sendable {
    case source, passThrough = "pass-through", inspection, filtering, reordering, rewriting, sink
}

/// An error from parsing a filter's arguments or a class selector: a one-line reason, shown to the user.
public struct FilterError: Error, Equatable, CustomStringConvertible, Sendable {
    public var message: String
    /// The errno a file operation reports for it (EINVAL unless said otherwise).
    public var errno: Int32
    public init(_ message: String, errno: Int32 = 22) {
        self.message = message
        self.errno = errno
    }
    public var description: String { message }
}

/// A filter: a small object with per-instance state whose one hot method classifies a block (§6.1).
///
/// `process` returns the block's class value; 0 means "do not forward". It may narrow the block's view
/// (`bytes`) or annotate its metadata; it must not allocate. Filters parse their own argument text (as in
/// Click). Everything except `process` runs on the control path.
public protocol Filter: AnyObject {
    /// Classifies (and may annotate) one block. Called with the space lock held, once per block.
    func process(_ block: inout Block) -> UInt32

    /// The hot-path entry: `process` on an unretained instance. Calling an instance method through an
    /// existential retains and releases the instance around every call; dispatching through the metatype with
    /// a borrowed pointer does not. Do not implement: the default below is the only one.
    static func process(unretained instance: UnsafeMutableRawPointer, _ block: inout Block) -> UInt32

    /// The current argument text, as the descriptor's `make` accepts it. New arguments (`ctl args`, a rename)
    /// make a new instance: filters never change their arguments in place.
    var arguments: String { get }

    /// Extra `name: value` lines for the `stats` file.
    func statistics() -> [(String, String)]

    /// Handles a control command that is not `args` (e.g. `reset` for count). Returns nil if unknown.
    func control(_ command: String, _ argument: String) -> Result<Void, FilterError>?

    /// Called on the control path once the filter has a place in the graph, with the link type of the
    /// stream it will see (nil if mixed or unknown). Throws to refuse the attachment (e.g. a BPF
    /// expression that does not compile for that link type).
    func attach(streamLinkType: LinkType?) throws(FilterError)

    /// The link type of what it outputs, given that of its input (nil: mixed or unknown). Filters that turn
    /// frames into application data (`payload`) return `.user`.
    func outputLinkType(_ input: LinkType?) -> LinkType?

    /// Called when the filter leaves the graph (close files, stop threads).
    func shutdown()
}

extension Filter {
    @inlinable @inline(__always)
    public static func process(unretained instance: UnsafeMutableRawPointer, _ block: inout Block) -> UInt32 {
        Unmanaged<Self>.fromOpaque(instance)._withUnsafeGuaranteedRef { $0.process(&block) }
    }

    public var arguments: String { "" }
    public func statistics() -> [(String, String)] { [] }
    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? { nil }
    public func attach(streamLinkType: LinkType?) throws(FilterError) {}
    public func outputLinkType(_ input: LinkType?) -> LinkType? { input }
    public func shutdown() {}
}

/// A classifying filter that reports the class names it has seen so far, so that its directory shows a class
/// directory for each as it appears (as the original httpplus did: `http/` shows `get/`, `post/`, …). Called on the
/// control path with the graph lock held.
public protocol ClassReporting: Filter {
    func seenClassNames() -> [String]
}

/// What the runtime knows about a filter kind before instantiating it: its manual entry and its constructor.
public struct FilterDescriptor: Sendable {
    public let name: String
    public let summary: String
    public let usage: String
    public let structuralClass: StructuralClass
    /// Class names the filter defines for class selectors (`ipproto/tcp` → 6; `dport/ssh` → 22).
    public let classNames: [String: UInt32]
    /// True when class directories apply below it (its class value carries information: a port, a protocol).
    public let classifying: Bool
    /// The kinds of execution space that implement it (discovery, §7.1): a filter written in Swift runs in any
    /// user space; a kernel or device implementation would add its kind. Sources are bound to the space their
    /// thread feeds, whatever this says.
    public let implementations: Set<SpaceKind>
    public let make: @Sendable (String) throws(FilterError) -> any Filter

    public init(name: String, summary: String, usage: String, structuralClass: StructuralClass,
                classNames: [String: UInt32] = [:], classifying: Bool = false, implementations: Set<SpaceKind> = [.user],
                make: @escaping @Sendable (String) throws(FilterError) -> any Filter) {
        self.name = name
        self.summary = summary
        self.usage = usage
        self.structuralClass = structuralClass
        self.classNames = classNames
        self.classifying = classifying
        self.implementations = implementations
        self.make = make
    }
}

/// Filters that take no arguments reject any.
@inline(__always)
public func requireNoArguments(_ a: String) throws(FilterError) {
    if !a.isEmpty { throw FilterError("takes no arguments (got '\(a)')") }
}
