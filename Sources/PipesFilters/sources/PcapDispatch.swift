import CPcap
import PipesRuntime

/// Runs libpcap's callback loop (`pcap_dispatch`) into the graph: shared by the capture-file and live sources.
/// The caller holds the space lock. Handles must use nanosecond timestamp precision.
final class PcapDispatcher {
    let space: Unmanaged<Space>
    let node: Unmanaged<Node>
    let linkType: LinkType
    var count = 0
    /// Set when a lossless tap asked the producer to wait: the loop breaks after the current packet.
    var drained = false
    private var handle: OpaquePointer?

    init(space: Space, node: Node, linkType: LinkType) {
        self.space = .passUnretained(space)
        self.node = .passUnretained(node)
        self.linkType = linkType
    }

    /// Pushes up to `max` packets. Returns pcap_dispatch's result (packets, 0 at end of file, -1 error, -2 break).
    func dispatch(_ handle: OpaquePointer, max: Int32) -> Int32 {
        count = 0
        drained = false
        self.handle = handle
        return withExtendedLifetime(self) {
            pcap_dispatch(handle, max, { user, hdr, data in
                guard let user, let hdr, let data else { return }
                // Unmanaged and guaranteed references all the way: no reference counting per packet.
                Unmanaged<PcapDispatcher>.fromOpaque(user)._withUnsafeGuaranteedRef { d in
                    // With nanosecond precision tv_usec holds nanoseconds; a damaged file may hold >= 1e9.
                    let frac = Int64(UInt32(truncatingIfNeeded: hdr.pointee.ts.tv_usec))
                    var b = Block(bytes: UnsafeRawBufferPointer(start: data, count: Int(hdr.pointee.caplen)),
                                  wireLength: Int(hdr.pointee.len),
                                  seconds: Int64(hdr.pointee.ts.tv_sec) &+ frac / 1_000_000_000,
                                  nanoseconds: Int32(frac % 1_000_000_000), linkType: d.linkType)
                    d.count += 1
                    d.space._withUnsafeGuaranteedRef { s in
                        s.push(d.node, &b)
                        if s.needsDrain {
                            d.drained = true
                            pcap_breakloop(d.handle)  // pcap_dispatch returns PCAP_ERROR_BREAK after this packet
                        }
                    }
                }
            }, Unmanaged.passUnretained(self).toOpaque().assumingMemoryBound(to: UInt8.self))
        }
    }
}
