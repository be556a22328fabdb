#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesRuntime

/// `pcapout=PATH`: appends the stream to a classic pcap file (microsecond timestamps); forwards everything.
/// The file is created (truncated) when the filter is created; its header carries the stream's link type.
///
/// No file I/O under the space lock: `process` only queues the record (header and bytes) in the sink's queue, a
/// `TapRing`, and `FileWriter`'s thread writes the queue out in writes of up to 1 MiB through io_uring (`pwrite`
/// where io_uring is refused). Once bound to its node, records go into the queue through a private tap node, so
/// the queue is part of the producer's batch: past its high-water mark a capture file, gen or exec upstream waits
/// for the writer (lossless, as the file source promises), while live capture, which cannot wait, fills the queue
/// up to 64 MiB and then drops and counts (`records_dropped`). Injected writes do not wait for it either (they
/// wait for readers' taps only) and are dropped the same way. A write error (ENOSPC, EIO) is reported once in
/// `.errors`; later records are counted as lost. `rmdir` and unmount close the file once the queue is written
/// (no fsync); unmount waits for that.
public final class PcapOut: SpaceBoundFilter, DrainingFilter {
    private let path: String
    private let sink: WriterSink
    private var linkType: LinkType?
    /// Records queued for the file (all of them reach it unless a write fails).
    public private(set) var written: UInt64 = 0
    public private(set) var skipped: UInt64 = 0
    /// Bytes queued so far (header included), for `sync`.
    private var appended: UInt64 = 0
    /// Records the queue refused before the filter was bound (bound: the inlet's drop count).
    private var unboundDrops: UInt64 = 0
    /// The space and a private node whose one tap is the sink's queue; set by `bind`, used under the space lock.
    private unowned(unsafe) var space: Space?
    /// The node the filter runs as (its execution space runs the inlet's tap too), and the inlet, unretained.
    private var owner: Unmanaged<Node>?
    private let inletRef: Unmanaged<Node>
    private let inlet: Node
    private var shut = false

    init(_ path: String) throws(FilterError) {
        guard !path.isEmpty else { throw FilterError("pcapout: needs a file path, as in pcapout=/tmp/out.pcap") }
        self.path = path
        sink = WriterSink(fd: try PcapOut.open(path), path: path)
        inlet = Node(id: 0, name: "pcapout-queue", descriptor: ClassSelection.descriptor, filter: ClassSelection())
        inletRef = Unmanaged.passUnretained(inlet)
        FileWriter.shared.register(sink)
    }

    deinit {
        if !shut { FileWriter.shared.close(sink) }
    }

    /// Opens (creates, truncates) a regular file. Anything that can make a write wait indefinitely is refused up
    /// front: FIFOs, devices and sockets (opened non-blocking, so a FIFO without a reader does not wait either),
    /// and files inside a PipesFS mount this process serves.
    static func open(_ path: String) throws(FilterError) -> Int32 {
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
        guard ftruncate(fd, 0) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw FilterError("pcapout: cannot create '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        return fd
    }

    /// Queues records through the space from now on. Space lock held.
    public func bind(space: Space, node: Node) throws(FilterError) {
        if linkType == nil { writeHeader(.ethernet) }
        self.space = space
        owner = Unmanaged.passUnretained(node)
        space.addTap(inlet, sink.queue, .pcap(linkType!))
        FileWriter.shared.setReporter(sink) { [space] line in space.reportError(line) }
    }

    public func attach(streamLinkType: LinkType?) throws(FilterError) {
        if linkType == nil { writeHeader(streamLinkType ?? .ethernet) }
    }

    private func writeHeader(_ lt: LinkType) {
        linkType = lt
        var h: (UInt32, UInt16, UInt16, Int32, UInt32, UInt32, UInt32) = (0xA1B2_C3D4, 2, 4, 0, 0, 262_144, lt.fileValue)
        let r = withUnsafeBytes(of: &h) { sink.queue.append(header: nil, body: UnsafeRawBufferPointer(rebasing: $0[0..<24])) }
        if r.contains(.stored) { appended &+= 24 }
        FileWriter.shared.wake()
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        if linkType == nil { writeHeader(block.linkType) }
        if let lt = linkType, block.linkType.sameFraming(lt) {
            if let o = owner {
                let before = inlet.stats.tapDrops
                var b = block
                Node.forward(inletRef, inSpaceOf: o, 1, &b)  // the tap writes the record header and joins the producer's batch
                if inlet.stats.tapDrops == before {
                    written &+= 1
                    appended &+= 16 &+ UInt64(block.count)
                }
            } else {
                queueUnbound(block)
            }
        } else {
            skipped &+= 1
        }
        return block.classValue == 0 ? 1 : block.classValue
    }

    /// Before `bind` (a filter driven by hand): the record goes into the queue directly.
    private func queueUnbound(_ block: Block) {
        var r: (UInt32, UInt32, UInt32, UInt32) = (UInt32(truncatingIfNeeded: block.seconds), UInt32(truncatingIfNeeded: max(0, block.nanoseconds) / 1000),
                                                   UInt32(block.count), UInt32(truncatingIfNeeded: block.wireLength))
        let res = withUnsafeBytes(of: &r) { sink.queue.append(header: $0, body: block.bytes) }
        if res.contains(.stored) {
            written &+= 1
            appended &+= 16 &+ UInt64(block.count)
        } else {
            unboundDrops &+= 1
        }
        if res.contains(.becameReadable) { FileWriter.shared.wake() }
    }

    /// `sync`: waits (at most 5 s) until every record queued so far is in the file. The writer never takes the
    /// space lock, so this wait cannot deadlock; it is as long as writing what is queued takes.
    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        guard command == "sync" else { return nil }
        if !FileWriter.shared.sync(sink, upTo: appended, timeoutNanoseconds: 5_000_000_000) {
            return .failure(FilterError("sync: the writer has not caught up within 5 s (\(sink.queue.available) bytes queued); try again", errno: EAGAIN))
        }
        let p = FileWriter.shared.published(sink)
        if p.error != 0 { return .failure(FilterError("sync: writing '\(path)' failed: \(String(cString: strerror(p.error)))", errno: p.error)) }
        return .success(())
    }

    public var arguments: String { path }

    public func statistics() -> [(String, String)] {
        let p = FileWriter.shared.published(sink)
        var lines = [("file", path), ("records_written", "\(written)"), ("records_skipped_linktype", "\(skipped)"),
                     ("records_dropped", "\(space == nil ? unboundDrops : inlet.stats.tapDrops)"),
                     ("bytes_on_file", "\(p.bytesWritten)"), ("bytes_queued", "\(sink.queue.available)"),
                     ("io", FileWriter.shared.method)]
        if p.error != 0 { lines.append(("write_error", "\(String(cString: strerror(p.error))) (\(p.bytesLost) bytes lost)")) }
        return lines
    }

    /// Asks the writer to write what is queued and close the file; never waits when bound (it may run under the
    /// space lock: unmount waits in `waitUntilStopped`). A filter that was never bound waits here.
    public func shutdown() {
        if shut { return }
        shut = true
        FileWriter.shared.close(sink)
        if space == nil { _ = FileWriter.shared.waitClosed(sink, timeoutNanoseconds: 10_000_000_000) }
    }

    public func waitUntilStopped(timeoutNanoseconds: Int64) -> Bool {
        FileWriter.shared.waitClosed(sink, timeoutNanoseconds: timeoutNanoseconds)
    }

    public static let descriptor = FilterDescriptor(
        name: "pcapout", summary: "writes the stream to a pcap file", usage: "pcapout=PATH", structuralClass: .sink
    ) { a throws(FilterError) in try PcapOut(a) }
}
