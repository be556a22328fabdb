/// How a filter that makes blocks of its own (reassembly, defragmentation, message heads, compression) hands them
/// on: as its node's output, each a block of its own to the joins below, in the space its node runs in (§6.1,
/// reordering and rewriting). The filter returns 0 for the block it was given and calls `hand` for each it makes.
/// A struct the filter keeps as a stored property: nothing is retained or allocated per block.
public struct FilterOutput {
    /// The node whose output the blocks are: set when the filter is bound (`SpaceBoundFilter.bind`).
    public var owner: Unmanaged<Node>?
    /// Where blocks go while the filter has no node (tests drive filters directly).
    public var unbound: ((Block) -> Void)?
    /// Blocks handed on since `begin`: the first keeps the serial of the block it came from, the others get new
    /// ones (a join below must not take them for copies of one block).
    public var handedOn = 0

    public init() {}

    /// A new input block: what is handed on next is its first.
    @inline(__always)
    public mutating func begin() { handedOn = 0 }

    /// Hands on `b`, made from input block `from`, with class `c`. The space lock of the owner's space is held (the
    /// filter runs under it).
    @inline(__always)
    public mutating func hand(_ b: inout Block, _ c: UInt32, from: Block) {
        if let o = owner {
            if handedOn == 0 { b.serial = from.serial } else { Node.stamp(&b, inSpaceOf: o) }
            handedOn += 1
            Node.forward(o, inSpaceOf: o, c, &b)
        } else {
            handedOn += 1
            b.classValue = c
            unbound?(b)
        }
    }
}

/// A filter that hands on blocks of its own through a `FilterOutput` it keeps (`untcp`, `defrag`, `http`, `pcap`,
/// `compress`). Its `bind` sets `blockOutput.owner`.
public protocol MakesBlocks: AnyObject {
    var blockOutput: FilterOutput { get set }
}

extension MakesBlocks {
    /// Where blocks go while the filter has no node (tests drive it directly; in a graph they go to its node).
    public var unboundOutput: ((Block) -> Void)? {
        get { blockOutput.unbound }
        set { blockOutput.unbound = newValue }
    }
}
