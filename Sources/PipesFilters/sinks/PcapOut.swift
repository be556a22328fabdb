#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesRuntime

/// `pcapout=PATH`: appends the stream to a classic pcap file (microsecond timestamps); forwards everything.
/// The file is created when the filter is created and emptied by the writer thread before its first write (a
/// `sync` returns once that happened); its header carries the stream's link type.
///
/// No file I/O under the space lock: `process` only queues the record (header and bytes) for the sink's queue, a
/// `TapRing`, and `FileWriter`'s thread writes the queue out in writes of up to 1 MiB through io_uring (`pwrite`
/// where io_uring is refused). Once bound to its node, records are gathered in a staging buffer of the filter's
/// own (a plain copy, no lock) and go into the queue a chunk at a time (64 KiB, and whatever is left as the
/// producer's batch ends: `BatchStaged`), so the queue's lock, and the cache lines its writer thread reads on
/// another CPU, are taken once per chunk rather than once per record. The append joins the producer's batch: past
/// the queue's high-water mark a capture file, gen or exec upstream waits for the writer (lossless, as the file
/// source promises), while live capture, which cannot wait, fills the queue up to 64 MiB and then drops, a chunk
/// at a time, and counts each record (`records_dropped`). Injected writes do not wait for it either (they wait for
/// readers' taps only) and are dropped the same way. A write error (ENOSPC, EIO) is reported once in
/// `.errors`; later records are counted as lost. `rmdir` and unmount close the file once the queue is written
/// (no fsync); unmount waits for that.
public final class PcapOut: SpaceBoundFilter, DrainingFilter, BatchStaged {
    private let path: String
    private let sink: WriterSink
    private var linkType: LinkType?
    /// Records queued for the file (all of them reach it unless a write fails).
    public private(set) var written: UInt64 = 0
    public private(set) var skipped: UInt64 = 0
    /// Bytes queued so far (header included), for `sync`.
    private var appended: UInt64 = 0
    /// Records the queue refused.
    private var dropped: UInt64 = 0
    /// Set by `bind`, used under the space lock.
    private unowned(unsafe) var space: Space?
    /// The node the filter runs as, unretained: its execution space's producer batch is where staged records are
    /// published.
    private var owner: Unmanaged<Node>?
    private var shut = false
    /// Records (pcap header and bytes) gathered since the last append to the queue, and whether this filter is
    /// registered with the current batch. Space lock held.
    private static let stagingCapacity = 64 << 10
    private let staging = UnsafeMutableRawPointer.allocate(byteCount: PcapOut.stagingCapacity, alignment: 64)
    private var stagedBytes = 0
    private var stagedRecords: UInt64 = 0
    private var inBatch = false

    init(_ path: String) throws(FilterError) {
        guard !path.isEmpty else { throw FilterError("pcapout: needs a file path, as in pcapout=/tmp/out.pcap") }
        self.path = path
        sink = WriterSink(fd: try PcapOut.open(path), path: path, truncate: true)
        FileWriter.shared.register(sink)
    }

    deinit {
        if !shut { _ = appendStaged(); FileWriter.shared.close(sink) }
        staging.deallocate()
    }

    /// Opens (creates) a regular file; the writer thread empties it. Anything that can make a write wait
    /// indefinitely is refused up front: FIFOs, devices and sockets (opened non-blocking, so a FIFO without a reader
    /// does not wait either), and files inside a PipesFS mount this process serves.
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
        // Emptied by the writer thread before its first write (`WriterSink.truncatePending`): not here, where
        // freeing a large file's blocks would delay the filter's creation.
        return fd
    }

    /// Stages records per batch from now on. Space lock held.
    public func bind(space: Space, node: Node) throws(FilterError) {
        if linkType == nil { writeHeader(.ethernet) }
        self.space = space
        owner = Unmanaged.passUnretained(node)
        FileWriter.shared.setReporter(sink) { [space] line in space.reportError(line) }
    }

    public func attach(streamLinkType: LinkType?) throws(FilterError) {
        if linkType == nil { writeHeader(streamLinkType ?? .ethernet) }
    }

    private func writeHeader(_ lt: LinkType) {
        linkType = lt
        let r = lt.pcapFileHeader.withUnsafeBytes { sink.queue.append(header: nil, body: $0) }
        if r.contains(.stored) { appended &+= 24 }
        FileWriter.shared.wake()
    }

    @inline(__always)
    public func process(_ block: inout Block) -> UInt32 {
        if linkType == nil { writeHeader(block.linkType) }
        if let lt = linkType, block.linkType.sameFraming(lt) {
            if let o = owner {
                stage(block, o)
            } else {
                queueUnbound(block)
            }
        } else {
            skipped &+= 1
        }
        return block.classValue == 0 ? 1 : block.classValue
    }

    /// Adds the record to the staging buffer (appending what is there first when it is full); a record larger
    /// than the buffer goes into the queue directly. Space lock held.
    @inline(__always)
    private func stage(_ block: Block, _ o: Unmanaged<Node>) {
        let n = 16 &+ block.count
        if stagedBytes &+ n > PcapOut.stagingCapacity, let (ring, r) = appendStaged() {
            Node.note(ring, r, inSpaceOf: o)
        }
        if n > PcapOut.stagingCapacity {
            var h = PcapOut.recordHeader(block)
            let r = withUnsafeBytes(of: &h) { sink.queue.append(header: $0, body: block.bytes) }
            count(r, records: 1, bytes: n)
            Node.note(sink.queue, r, inSpaceOf: o)
            return
        }
        var h = PcapOut.recordHeader(block)
        withUnsafeBytes(of: &h) { (staging + stagedBytes).copyMemory(from: $0.baseAddress!, byteCount: 16) }
        if let b = block.bytes.baseAddress, block.count > 0 { (staging + stagedBytes + 16).copyMemory(from: b, byteCount: block.count) }
        stagedBytes &+= n
        stagedRecords &+= 1
        if !inBatch {
            inBatch = true
            Node.stage(self, inSpaceOf: o)
        }
    }

    /// The batch ends: what is staged goes into the queue. Space lock held.
    public func publishStaged() -> (TapRing, AppendResult)? {
        inBatch = false
        return appendStaged()
    }

    /// Appends the staging buffer to the queue in one piece and counts its records written or dropped.
    private func appendStaged() -> (TapRing, AppendResult)? {
        if stagedBytes == 0 { return nil }
        let r = sink.queue.append(header: nil, body: UnsafeRawBufferPointer(start: staging, count: stagedBytes))
        count(r, records: stagedRecords, bytes: stagedBytes)
        stagedBytes = 0
        stagedRecords = 0
        return (sink.queue, r)
    }

    @inline(__always)
    private func count(_ r: AppendResult, records: UInt64, bytes: Int) {
        if r.contains(.stored) {
            written &+= records
            appended &+= UInt64(bytes)
        } else {
            dropped &+= records
        }
    }

    /// A record's pcap header: seconds, microseconds, captured and wire length (the file's byte order).
    @inline(__always)
    static func recordHeader(_ block: Block) -> (UInt32, UInt32, UInt32, UInt32) {
        (UInt32(truncatingIfNeeded: block.seconds), UInt32(truncatingIfNeeded: max(0, block.nanoseconds) / 1000),
         UInt32(block.count), UInt32(truncatingIfNeeded: block.wireLength))
    }

    /// Before `bind` (a filter driven by hand): the record goes into the queue directly.
    private func queueUnbound(_ block: Block) {
        var r = PcapOut.recordHeader(block)
        let res = withUnsafeBytes(of: &r) { sink.queue.append(header: $0, body: block.bytes) }
        count(res, records: 1, bytes: 16 &+ block.count)
        if res.contains(.becameReadable) { FileWriter.shared.wake() }
    }

    /// `sync`: waits (at most 5 s) until every record queued so far is in the file. The writer never takes the
    /// space lock, so this wait cannot deadlock; it is as long as writing what is queued takes.
    public func control(_ command: String, _ argument: String) -> Result<Void, FilterError>? {
        guard command == "sync" else { return nil }
        _ = appendStaged()  // (empty between batches; a push made with the plain lock may have left some)
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
                     ("records_dropped", "\(dropped)"),
                     ("bytes_on_file", "\(p.bytesWritten)"), ("bytes_queued", "\(sink.queue.available + stagedBytes)"),
                     ("io", FileWriter.shared.method)]
        if p.error != 0 { lines.append(("write_error", "\(String(cString: strerror(p.error))) (\(p.bytesLost) bytes lost)")) }
        return lines
    }

    /// Asks the writer to write what is queued and close the file; never waits when bound (it may run under the
    /// space lock: unmount waits in `waitUntilStopped`). A filter that was never bound waits here.
    public func shutdown() {
        if shut { return }
        shut = true
        _ = appendStaged()
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
