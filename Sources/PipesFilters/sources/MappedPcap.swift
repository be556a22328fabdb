#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesRuntime

/// A zero-copy reader for classic pcap files: the file is mapped and records are handed to the graph in place,
/// with none of libpcap's per-record `fread` copies. pcapng and anything unusual go through libpcap instead.
/// Damage is reported the way libpcap reports it (truncated record, impossible capture length).
final class MappedPcapReader {
    enum Status { case more, end, failed(String) }

    private let fd: Int32
    private let base: UnsafeRawPointer
    private let size: Int
    private var offset = 24
    private let swapped: Bool
    private let nanoseconds: Bool
    let linkType: LinkType
    /// libpcap's limit on a record's captured length (MAXIMUM_SNAPLEN), and the file's snapshot length.
    private let maxCaptureLength: UInt32 = 262_144
    private let snapshot: UInt32

    /// Link types whose records libpcap rewrites or whose capture-length limit is not 262144: read via libpcap.
    private static let libpcapOnly: Set<Int32> = [117, 189, 220, 231, 239, 249, 279]
    /// Link types whose pseudo-headers libpcap byte-swaps in files of the other byte order.
    private static let swappedPseudoHeaders: Set<Int32> = [113, 276, 189, 220, 239]

    /// Maps `path` if it is a classic pcap file this reader reads exactly as libpcap does; nil otherwise (use
    /// libpcap). `linkType` is libpcap's DLT value for the file (`pcap_datalink`); nil asks libpcap.
    init?(path: String, linkType dlt: LinkType? = nil) {
        var libpcapType = dlt
        if libpcapType == nil {
            var err = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
            guard let h = pcap_open_offline(path, &err) else { return nil }
            libpcapType = LinkType(rawValue: pcap_datalink(h))
            pcap_close(h)
        }
        guard let lt = libpcapType, !Self.libpcapOnly.contains(lt.rawValue) else { return nil }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 24,
              let m = mmap(nil, Int(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED
        else { close(fd); return nil }
        let magic = m.loadUnaligned(as: UInt32.self)
        switch magic {
        case 0xA1B2_C3D4: (swapped, nanoseconds) = (false, false)
        case 0xA1B2_3C4D: (swapped, nanoseconds) = (false, true)
        case 0xD4C3_B2A1: (swapped, nanoseconds) = (true, false)
        case 0x4D3C_B2A1: (swapped, nanoseconds) = (true, true)
        default:
            munmap(m, Int(st.st_size)); close(fd); return nil
        }
        // Only version 2.4 is read here; older variants (swapped length fields) go through libpcap.
        var vmaj = m.loadUnaligned(fromByteOffset: 4, as: UInt16.self), vmin = m.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
        if swapped { vmaj = vmaj.byteSwapped; vmin = vmin.byteSwapped }
        guard vmaj == 2, vmin == 4 else { munmap(m, Int(st.st_size)); close(fd); return nil }
        var snap = m.loadUnaligned(fromByteOffset: 16, as: UInt32.self)
        if swapped { snap = snap.byteSwapped }
        snapshot = snap == 0 || snap > 262_144 ? 262_144 : snap
        self.fd = fd
        base = UnsafeRawPointer(m)
        size = Int(st.st_size)
        if swapped && Self.swappedPseudoHeaders.contains(lt.rawValue) {
            munmap(m, Int(st.st_size)); close(fd); return nil
        }
        // Blocks carry libpcap's DLT value (LINKTYPE_* in the file maps to DLT_*, e.g. 100 to 11, 101 to 12).
        linkType = lt
        madvise(m, size, MADV_SEQUENTIAL)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: base), size)
        close(fd)
    }

    func rewind() { offset = 24 }

    @inline(__always)
    private func u32(_ at: Int) -> UInt32 {
        let v = base.loadUnaligned(fromByteOffset: at, as: UInt32.self)
        return swapped ? v.byteSwapped : v
    }

    /// Pushes up to `max` records into `node`. The space lock must be held. Returns how many and whether more
    /// follow. Stops early (status `.more`) when a lossless reader lags.
    func dispatch(space: Space, node: Unmanaged<Node>, max: Int, count: inout Int) -> Status {
        // A file that shrank under the mapping would fault: check once per batch.
        var st = stat()
        if fstat(fd, &st) == 0 && Int(st.st_size) < size { return .failed("the file shrank while it was being read") }
        count = 0
        while count < max {
            if offset == size { return .end }
            if size - offset < 16 {
                return .failed("truncated dump file; tried to read 16 header bytes, only got \(size - offset)")
            }
            let sec = u32(offset), frac = u32(offset + 4), caplen = u32(offset + 8), len = u32(offset + 12)
            if caplen > maxCaptureLength {
                return .failed(caplen > snapshot
                    ? "invalid packet capture length \(caplen), bigger than snaplen of \(snapshot)"
                    : "invalid packet capture length \(caplen), bigger than maximum of \(maxCaptureLength)")
            }
            let data = offset + 16
            if size - data < Int(caplen) {
                return .failed("truncated dump file; tried to read \(caplen) captured bytes, only got \(size - data)")
            }
            // As libpcap: a record longer than the file's snapshot length is cut to it.
            let seen = min(caplen, snapshot)
            let ns = nanoseconds ? Int64(frac) : Int64(frac) * 1000
            // libpcap 1.10 reads ts_sec as signed 32 bits.
            var b = Block(bytes: UnsafeRawBufferPointer(start: base + data, count: Int(seen)), wireLength: Int(len),
                          seconds: Int64(Int32(bitPattern: sec)) &+ ns / 1_000_000_000, nanoseconds: Int32(ns % 1_000_000_000),
                          linkType: linkType)
            offset = data + Int(caplen)
            count += 1
            space.push(node, &b)
            if space.needsDrain { return .more }
        }
        return .more
    }
}
