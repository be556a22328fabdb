#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesRingABI
import PipesRuntime

/// A fast reader for classic pcap files: the file is read in 1 MiB chunks into two buffers, the next chunk
/// through io_uring while the graph works on the current one (`pread` where io_uring is refused), and records are
/// handed to the graph in place, with none of libpcap's two `fread` calls per record. It does not map the file:
/// a capture truncated while it is played must give an error, not SIGBUS. pcapng and anything unusual go through
/// libpcap instead. Damage is reported the way libpcap reports it (truncated record, impossible length).
///
/// No read waits under the space lock: `dispatch` only polls for the chunk in flight and returns early when it
/// is not there yet; the source thread waits for it in `prepareIO`, between batches.
final class PcapFileReader {
    enum Status { case more, end, failed(String) }

    private let fd: Int32
    static let chunk = 1 << 20
    /// Room before each chunk for the start of a record that continues in it (a record is at most 16 + 262144).
    private static let carryRoom = 266_240
    private let buffers: [UnsafeMutableRawPointer]
    /// The buffer `window` lies in; the other one receives the chunk being read.
    private var current = 0
    /// The window: file bytes [windowStart, windowStart + windowLength) at `window`.
    private var window: UnsafeMutableRawPointer
    private var windowStart = 24
    private var windowLength = 0
    private var offset = 24
    /// Where the next chunk starts in the file; whether it is being read, and its result once read.
    private var nextRead = 24
    private var reading = false
    private var readResult: Int?
    private var atEnd = false
    /// Set when `dispatch` stopped for want of the chunk in flight: `prepareIO` waits for it.
    private var starved = false
    /// A read failed (EIO...): reported instead of a truncation.
    private var readError: Int32 = 0
    private let io: URing
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

    /// Opens `path` if it is a classic pcap file this reader reads exactly as libpcap does; nil otherwise (use
    /// libpcap). `linkType` is libpcap's DLT value for the file (`pcap_datalink`); nil asks libpcap.
    init?(path: String, linkType dlt: LinkType? = nil, pread usePread: Bool = false) {
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
        var header = [UInt8](repeating: 0, count: 24)
        guard pread(fd, &header, 24, 0) == 24 else { close(fd); return nil }
        func u32(_ at: Int) -> UInt32 { header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) } }
        func u16(_ at: Int) -> UInt16 { header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt16.self) } }
        switch u32(0) {
        case 0xA1B2_C3D4: (swapped, nanoseconds) = (false, false)
        case 0xA1B2_3C4D: (swapped, nanoseconds) = (false, true)
        case 0xD4C3_B2A1: (swapped, nanoseconds) = (true, false)
        case 0x4D3C_B2A1: (swapped, nanoseconds) = (true, true)
        default: close(fd); return nil
        }
        // Only version 2.4 is read here; older variants (swapped length fields) go through libpcap.
        let vmaj = swapped ? u16(4).byteSwapped : u16(4), vmin = swapped ? u16(6).byteSwapped : u16(6)
        guard vmaj == 2, vmin == 4 else { close(fd); return nil }
        let snap = swapped ? u32(16).byteSwapped : u32(16)
        snapshot = snap == 0 || snap > 262_144 ? 262_144 : snap
        if swapped && Self.swappedPseudoHeaders.contains(lt.rawValue) { close(fd); return nil }
        self.fd = fd
        buffers = (0..<2).map { _ in .allocate(byteCount: Self.carryRoom + Self.chunk, alignment: 4096) }
        window = buffers[0] + Self.carryRoom
        io = URing(entries: 2, pread: usePread)
        // Blocks carry libpcap's DLT value (LINKTYPE_* in the file maps to DLT_*, e.g. 100 to 11, 101 to 12).
        linkType = lt
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
    }

    deinit {
        if reading && readResult == nil { _ = io.complete() }  // the kernel must be done with the buffer
        for b in buffers { b.deallocate() }
        close(fd)
    }

    private var readFailure: String { "read error: \(String(cString: strerror(readError)))" }

    /// Why reads go through `pread` (nil: io_uring).
    var ioFallbackReason: String? { io.fallbackReason }

    /// Starts reading the next chunk into the free buffer if none is in flight.
    private func startRead() {
        if reading || atEnd { return }
        reading = true
        readResult = nil
        io.read(fd, buffers[1 - current] + Self.carryRoom, Self.chunk, at: nextRead, tag: 0, )
        io.submit()
    }

    /// Between batches, without the space lock: starts the next read and, if `dispatch` ran out of data, waits
    /// for it.
    func prepareIO() {
        startRead()
        if starved && reading && readResult == nil { readResult = Int(io.complete().result) }
        starved = false
    }

    /// Makes file bytes [offset, offset + n) present in the window as far as the file has them; returns how many,
    /// or nil when they are in a chunk still being read.
    @inline(__always)
    private func fill(_ n: Int) -> Int? {
        while offset + n > windowStart + windowLength {
            if atEnd { return windowStart + windowLength - offset }
            // Under the space lock only io_uring may start a read (it does not wait); pread waits for prepareIO.
            if io.usesIOURing { startRead() }
            if readResult == nil, let c = io.poll() { readResult = Int(c.result) }
            guard let r = readResult else { return nil }
            if r < 0 {
                readError = Int32(-r)
                atEnd = true
                reading = false
                return windowStart + windowLength - offset
            }
            // Move the unread tail in front of the new chunk, and make that buffer the window.
            let keep = windowStart + windowLength - offset
            let next = 1 - current
            let dest = buffers[next] + Self.carryRoom - keep
            if keep > 0 { dest.copyMemory(from: window + (offset - windowStart), byteCount: keep) }
            window = dest
            windowStart = offset
            windowLength = keep + r
            current = next
            nextRead += r
            reading = false
            readResult = nil
            if r == 0 { atEnd = true } else if io.usesIOURing { startRead() }
        }
        return n
    }

    @inline(__always)
    private func u32(_ at: Int) -> UInt32 {
        let v = UnsafeRawPointer(window).loadUnaligned(fromByteOffset: at - windowStart, as: UInt32.self)
        return swapped ? v.byteSwapped : v
    }

    /// How far ahead of the record being read a line is asked for, once per record. The walk learns where the next
    /// record starts only from this one's header, so each record's first line that is not in a near cache (the
    /// chunk is 1 MiB) is a miss it would wait for in turn. One hint per record, a few records ahead, starts those
    /// transfers early and sets the hardware prefetcher going; a hint for every line cost more than it saved.
    /// (`pipesfs exec` on a 308 MB capture: 99-107 ms with it, 110-115 ms without; hyperfine, 40 runs each.)
    private static let prefetchDistance = 4096

    @inline(__always)
    private func prefetchAhead() {
        let at = offset - windowStart + Self.prefetchDistance
        if at < windowLength { pipes_prefetch_read(window + at) }
    }

    /// Pushes up to `max` records into `node`. The space lock must be held. Returns how many and whether more
    /// follow. Stops early (status `.more`) when a lossless reader lags.
    func dispatch(space: Space, node: Unmanaged<Node>, max: Int, count: inout Int) -> Status {
        walk(max: max, count: &count) { b, n in
            space.push(node, &b)
            // A lossless reader that lags ends the batch; asked every 8 records (a call into the runtime per record
            // cost ~3% of the walk): the batch overshoots the reader's mark by at most 7 records.
            return n & 7 == 0 && space.needsDrain
        }
    }

    /// Hands up to `max` records to `body` in file order, each as a block pointing into the read buffer (valid
    /// during the call); `body` gets the count so far and returns true to stop early. Returns `.more` when it
    /// stopped early, reached `max` or must wait for the chunk being read (`prepareIO` waits for it), `.end` at
    /// the end of the file, `.failed` with libpcap's words for damage.
    @inline(__always)
    func walk(max: Int, count: inout Int, _ body: (inout Block, Int) -> Bool) -> Status {
        count = 0
        while count < max {
            guard let have = fill(16) else { starved = true; return .more }
            prefetchAhead()
            if have == 0 { return readError != 0 ? .failed(readFailure) : .end }
            if have < 16 {
                if readError != 0 { return .failed(readFailure) }
                return .failed("truncated dump file; tried to read 16 header bytes, only got \(have)")
            }
            let sec = u32(offset), frac = u32(offset + 4), caplen = u32(offset + 8), len = u32(offset + 12)
            if caplen > maxCaptureLength {
                return .failed(caplen > snapshot
                    ? "invalid packet capture length \(caplen), bigger than snaplen of \(snapshot)"
                    : "invalid packet capture length \(caplen), bigger than maximum of \(maxCaptureLength)")
            }
            guard let filled = fill(16 + Int(caplen)) else { starved = true; return .more }
            let got = filled - 16
            if got < Int(caplen) {
                if readError != 0 { return .failed(readFailure) }
                return .failed("truncated dump file; tried to read \(caplen) captured bytes, only got \(got)")
            }
            // As libpcap: a record longer than the file's snapshot length is cut to it.
            let seen = min(caplen, snapshot)
            let ns = nanoseconds ? Int64(frac) : Int64(frac) * 1000
            // libpcap 1.10 reads ts_sec as signed 32 bits.
            var b = Block(bytes: UnsafeRawBufferPointer(start: window + (offset + 16 - windowStart), count: Int(seen)),
                          wireLength: Int(len),
                          seconds: Int64(Int32(bitPattern: sec)) &+ ns / 1_000_000_000, nanoseconds: Int32(ns % 1_000_000_000),
                          linkType: linkType)
            offset += 16 + Int(caplen)
            count += 1
            if body(&b, count) { return .more }
        }
        return .more
    }
}
