#if canImport(Glibc)
import Glibc
#endif
import CPcap
import PipesBuffering
import PipesRuntime

/// A second implementation of one shape of request (§7.1: a filter may have several, and the control plane picks
/// the best): `pcapin FILE | stateless filters | pcapout OUT`, run by `pipesfs exec` as a batch job.
///
/// The graph runtime is built for live, changing graphs: locks, batches, taps, a queue and a writer thread per
/// file. A capture file filtered into another one needs none of that. This runs the filters on one thread by
/// direct calls, over records read in 1 MiB chunks and handed over in place (`PcapFileReader`, as the graph's
/// source reads them, so the copy out of the page cache leaves them in this CPU's caches). Records that pass are
/// gathered into 1 MiB buffers that a kernel worker writes out (io_uring, IOSQE_ASYNC) while the next one fills.
///
/// The output is the graph path's, byte for byte: the same file header, the same record headers
/// (`PcapOut.recordHeader`), records of another framing skipped and counted. Damage ends the run with libpcap's
/// words after the records before it, as in the graph path. 21-exec-request compares both with tcpdump.
public final class CaptureBatch {
    public struct Result: Sendable {
        public var packetsRead: UInt64 = 0
        public var written: UInt64 = 0
        public var skipped: UInt64 = 0
        public var bytesOnFile: UInt64 = 0
        /// The input's damage, in libpcap's words; nil if it was read to its end.
        public var damage: String?
        /// The first failed write (what follows it is lost), or why the output could not be emptied.
        public var writeError: Int32 = 0
        /// "io_uring", or "pwrite (why)".
        public var io = "io_uring"
        /// Why the input was read with pread (nil: io_uring).
        public var readFallback: String?
    }

    /// Runs `filters` (made, not yet attached) over the capture `input` into `output`. Nil when the input is not
    /// one this reads in place (pcapng, link types libpcap rewrites): the caller uses the graph. Throws what the
    /// graph's source, filters and sink would refuse with (a file that cannot be read or created, an expression
    /// that does not compile for the link type).
    public static func run(input: String, filters: [any Filter], output: String) throws(FilterError) -> Result? {
        let h = try PcapFileSource.open(input)
        let sourceType = LinkType(rawValue: pcap_datalink(h))
        pcap_close(h)
        guard let reader = PcapFileReader(path: input, linkType: sourceType) else { return nil }
        var stream: LinkType? = sourceType
        for f in filters {
            try f.attach(streamLinkType: stream)
            stream = f.outputLinkType(stream)
        }
        let fileType = stream ?? .ethernet  // as pcapout's header
        let fd = try PcapOut.open(output)
        defer { close(fd) }
        let out = Output(fd: fd)
        defer { out.release() }
        // Emptying an existing file frees its blocks (milliseconds for tens of megabytes): on a thread of its
        // own, waited for before the first write.
        final class Failure: @unchecked Sendable { var errno: Int32 = 0 }
        let truncateFailure = Failure()
        let truncation = JoinableThread()
        truncation.start(name: "truncate") { if ftruncate(fd, 0) != 0 { truncateFailure.errno = errno } }
        out.beforeFirstWrite = {
            _ = truncation.join(timeoutNanoseconds: Int64.max / 4)
            return truncateFailure.errno
        }

        fileType.pcapFileHeader.withUnsafeBytes { out.append($0) }

        // The filters as the graph's hot path holds them: their type and an unretained instance.
        let chain = UnsafeMutableBufferPointer<(type: any Filter.Type, instance: UnsafeMutableRawPointer)>.allocate(capacity: filters.count)
        defer { chain.deallocate() }
        for (i, f) in filters.enumerated() {
            (chain.baseAddress! + i).initialize(to: (type(of: f), Unmanaged<AnyObject>.passUnretained(f).toOpaque()))
        }
        var result = Result()
        result.readFallback = reader.ioFallbackReason
        result.io = out.ring.usesIOURing ? "io_uring" : "pwrite (\(out.ring.fallbackReason ?? ""))"
        var skipped: UInt64 = 0, written: UInt64 = 0
        loop: while true {
            reader.prepareIO()
            var n = 0
            let status = reader.walk(max: Int.max, count: &n) { b, _ in
                b.classValue = 1  // what the source node passes on
                var i = 0
                while i < chain.count {
                    let c = chain[i].type.process(unretained: chain[i].instance, &b)
                    if c == 0 { return false }
                    b.classValue = c
                    i += 1
                }
                if !b.linkType.sameFraming(fileType) {
                    skipped &+= 1
                    return false
                }
                var r = PcapOut.recordHeader(b)
                withUnsafeBytes(of: &r) { out.append($0) }
                out.append(b.bytes)
                written &+= 1
                return false
            }
            result.packetsRead &+= UInt64(n)
            switch status {
            case .more: continue
            case .end: break loop
            case .failed(let why): result.damage = why; break loop
            }
        }
        out.finish()
        result.written = written
        result.skipped = skipped
        result.bytesOnFile = out.bytesWritten
        result.writeError = out.error
        for f in filters { f.shutdown() }
        return result
    }

    /// The output file: 1 MiB buffers written through io_uring by a kernel worker, up to four in flight, at
    /// explicit offsets in file order.
    final class Output {
        static let size = 1 << 20
        static let count = 4
        let fd: Int32
        let ring = URing(entries: UInt32(Output.count))
        private var buffers: [UnsafeMutableRawPointer]
        private var lengths: [Int]
        private var offsets: [Int]
        private var free: [Int]
        private var current = 0
        private var used = 0
        private var offset = 0
        var bytesWritten: UInt64 = 0
        var error: Int32 = 0
        var beforeFirstWrite: (() -> Int32)?

        init(fd: Int32) {
            self.fd = fd
            buffers = (0..<Output.count).map { _ in .allocate(byteCount: Output.size, alignment: 4096) }
            lengths = [Int](repeating: 0, count: Output.count)
            offsets = [Int](repeating: 0, count: Output.count)
            free = Array(1..<Output.count)
        }

        func release() {
            while ring.inFlight > 0 { collect() }  // the kernel must be done with the buffers
            for b in buffers { b.deallocate() }
            buffers = []
        }

        @inline(__always)
        func append(_ bytes: UnsafeRawBufferPointer) {
            guard let base = bytes.baseAddress else { return }
            var from = 0
            while from < bytes.count {
                let n = min(bytes.count - from, Output.size - used)
                (buffers[current] + used).copyMemory(from: base + from, byteCount: n)
                used += n
                from += n
                if used == Output.size { submitCurrent() }
            }
        }

        /// Writes what is buffered and waits for every write.
        func finish() {
            if used > 0 || beforeFirstWrite != nil { submitCurrent() }
            while ring.inFlight > 0 { collect() }
        }

        private func submitCurrent() {
            if let first = beforeFirstWrite {
                beforeFirstWrite = nil
                let e = first()
                if e != 0 && error == 0 { error = e }
            }
            let i = current
            lengths[i] = used
            offsets[i] = offset
            offset += used
            used = 0
            if error == 0 && lengths[i] > 0 {
                ring.write(fd, buffers[i], lengths[i], at: offsets[i], tag: UInt64(i), async: true)
                ring.submit()
            } else {
                free.append(i)
            }
            while free.isEmpty { collect() }
            current = free.removeLast()
        }

        /// Waits for one write; finishes a short one synchronously.
        private func collect() {
            let (tag, res) = ring.complete()
            let i = Int(tag)
            var r = Int(res)
            while r >= 0 && r < lengths[i] {
                let w = pwrite(fd, buffers[i] + r, lengths[i] - r, off_t(offsets[i] + r))
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { r = w == 0 ? -Int(EIO) : -Int(errno); break }
                r += w
            }
            if r < 0 {
                if error == 0 { error = Int32(-r) }
            } else {
                bytesWritten &+= UInt64(lengths[i])
            }
            free.append(i)
        }
    }
}
