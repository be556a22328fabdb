#if canImport(Glibc)
import Glibc
#endif
import PipesRuntime

/// `pcapout=PATH`: appends the stream to a classic pcap file (microsecond timestamps); forwards everything.
/// The file is created (truncated) when the filter is created; its header carries the stream's link type.
public final class PcapOut: Filter {
    private var file: UnsafeMutablePointer<FILE>?
    private let path: String
    private var linkType: LinkType?
    public private(set) var written: UInt64 = 0
    public private(set) var skipped: UInt64 = 0

    init(_ path: String) throws(FilterError) {
        guard !path.isEmpty else { throw FilterError("pcapout: needs a file path, as in pcapout=/tmp/out.pcap") }
        self.path = path
        file = try PcapOut.open(path)
    }

    /// Opens (creates, truncates) a regular file. Writes happen under the space lock, so anything that can make
    /// a write wait indefinitely is refused up front: FIFOs, devices and sockets (opened non-blocking, so a FIFO
    /// without a reader does not wait either), and files inside a PipesFS mount this process serves.
    static func open(_ path: String) throws(FilterError) -> UnsafeMutablePointer<FILE> {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0o644)
        if fd < 0 {
            let e = errno
            if e == ENXIO { throw FilterError("pcapout: '\(path)' is a FIFO; only regular files can be written", errno: EINVAL) }
            throw FilterError("pcapout: cannot create '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        var st = stat()
        if fstat(fd, &st) != 0 || (st.st_mode & S_IFMT) != S_IFREG {
            Glibc.close(fd)
            throw FilterError("pcapout: '\(path)' is not a regular file (FIFOs, devices and sockets could stall the graph)")
        }
        if LocalMounts.contains(fd: fd) {
            Glibc.close(fd)
            throw FilterError("pcapout: '\(path)' is inside this PipesFS mount; write to a file outside it (or read all.pcap)")
        }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        guard ftruncate(fd, 0) == 0, let f = fdopen(fd, "w") else {
            let e = errno
            Glibc.close(fd)
            throw FilterError("pcapout: cannot create '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        return f
    }

    public func attach(streamLinkType: LinkType?) throws(FilterError) {
        if linkType == nil { writeHeader(streamLinkType ?? .ethernet) }
    }

    private func writeHeader(_ lt: LinkType) {
        linkType = lt
        var h: (UInt32, UInt16, UInt16, Int32, UInt32, UInt32, UInt32) = (0xA1B2_C3D4, 2, 4, 0, 0, 262_144, lt.fileValue)
        withUnsafeBytes(of: &h) { _ = fwrite($0.baseAddress, 1, 24, file) }
        fflush(file)
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        if linkType == nil { writeHeader(block.linkType) }
        if let lt = linkType, block.linkType.sameFraming(lt), let f = file {
            var r: (UInt32, UInt32, UInt32, UInt32) = (UInt32(truncatingIfNeeded: block.seconds), UInt32(truncatingIfNeeded: max(0, block.nanoseconds) / 1000),
                                                       UInt32(block.count), UInt32(truncatingIfNeeded: block.wireLength))
            withUnsafeBytes(of: &r) { _ = fwrite($0.baseAddress, 1, 16, f) }
            fwrite(block.bytes.baseAddress, 1, block.count, f)
            written &+= 1
        } else {
            skipped &+= 1
        }
        return block.classValue == 0 ? 1 : block.classValue
    }

    /// Flushes buffered records (called by `stats` and `sync` in ctl).
    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        guard command == "sync" else { return nil }
        fflush(file)
        return .success(())
    }

    public var arguments: String { path }

    public func statistics() -> [(String, String)] {
        fflush(file)
        return [("file", path), ("records_written", "\(written)"), ("records_skipped_linktype", "\(skipped)")]
    }

    public func shutdown() {
        if let f = file { fclose(f) }
        file = nil
    }

    public static let descriptor = FilterDescriptor(
        name: "pcapout", summary: "writes the stream to a pcap file", usage: "pcapout=PATH", structuralClass: .sink
    ) { a throws(FilterError) in try PcapOut(a) }
}
