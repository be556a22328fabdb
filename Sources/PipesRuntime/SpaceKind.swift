/// Where an execution space sits in the machine (§7.1): spaces are stacked from dedicated peripherals at the
/// bottom (NICs, GPUs) through the kernel to software-isolated applications at the top. The control plane pushes
/// processing down: it runs a filter in the deepest space that implements it, and a path only climbs from its
/// sources towards its sinks, never back down (no ping-pong between levels, so transport cost stays minimal).
///
/// Today every space is a user-level thread; a kernel space (a kernel module) and device spaces are deeper ones
/// to come. A graph may label a space as one of them (`Space(kinds:)`) to plan for it: the data path is the
/// same, only the control plane's choices differ.
public enum SpaceKind: Int, Sendable, Comparable, CaseIterable, CustomStringConvertible {
    /// A peripheral's own logic (a NIC's CAM or FPGA): the deepest.
    case device = 0
    case kernel = 1
    /// A user-level execution space (a pinned thread of the daemon): the top.
    case user = 2

    /// Lower is deeper.
    public var level: Int { rawValue }
    public static func < (a: SpaceKind, b: SpaceKind) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        switch self {
        case .device: "device"
        case .kernel: "kernel"
        case .user: "user"
        }
    }
}

/// The execution spaces a control plane may place filters in (discovery, §7.1): what each is, by index, the
/// same index `ctl space K` and SRL's `--space=K` use. A value, so a plan can be made without a running graph
/// (`pipesfs explain`).
public struct SpaceCatalog: Sendable, Equatable {
    public struct Entry: Sendable, Equatable, Hashable, CustomStringConvertible {
        public var index: Int
        public var kind: SpaceKind
        public init(index: Int, kind: SpaceKind) {
            self.index = index
            self.kind = kind
        }
        /// `user0`, `kernel2`: the kind and the space's index.
        public var name: String { "\(kind)\(index)" }
        public var description: String { name }
    }

    public var entries: [Entry]

    public init(_ kinds: [SpaceKind]) {
        entries = kinds.enumerated().map { Entry(index: $0.offset, kind: $0.element) }
    }

    /// `count` user spaces (what `pipesfs mount --spaces N` runs).
    public static func user(_ count: Int) -> SpaceCatalog { SpaceCatalog([SpaceKind](repeating: .user, count: max(1, count))) }

    public var count: Int { entries.count }

    /// The spaces that offer an implementation of `d`, in index order.
    public func implementations(of d: FilterDescriptor) -> [Entry] {
        entries.filter { d.implementations.contains($0.kind) }
    }

    /// `user0 user1`: the names, for messages.
    public var names: String { entries.map(\.name).joined(separator: " ") }
}
