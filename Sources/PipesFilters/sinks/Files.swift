#if canImport(Glibc)
import Glibc
#endif
import PipesRuntime

/// `files=DIR`: writes each flow of a stream (`Block.flow`, as `untcp` tags them) to a file of its own in DIR, named
/// as tcpflow names them (`SRCIP.SPORT-DSTIP.DPORT`, zero-padded; a later connection on the same ports gets `c1`,
/// `c2`, … appended), so results compare with tcpflow's directly. Forwards everything.
///
/// Each flow's bytes gather in a buffer (up to 64 KiB; 64 MiB over all flows, past which bytes go straight to
/// their file) that is written when full, when the flow ends (`.end`), and at the end of the input. At most 256 files are open at once: the least recently written is closed and opened again
/// (appending) when its flow goes on. Blocks without a flow tag go to `unflowed` in DIR. The writes are made by the
/// producer's thread (a full buffer at a time); a failed write is reported once in `.errors` and counted in
/// `files_write_errors`, and that flow's later bytes are dropped (counted in `files_lost_bytes`).
public final class Files: SpaceBoundFilter, FlushingFilter {
    static let bufferSize = 64 << 10
    static let maxOpen = 256
    /// What the buffers of all flows may take together: past it, a flow's bytes go to its file as they come.
    static let bufferBudget = 64 << 20

    final class FlowFile {
        let name: String
        var fd: Int32 = -1
        var created = false
        var failed = false
        /// Grows from 4 KiB to `bufferSize` as the flow needs (most flows are a few kilobytes).
        var buffer: UnsafeMutableRawPointer?
        var capacity = 0
        var used = 0
        var lastUse: UInt64 = 0
        init(name: String) { self.name = name }
        deinit { buffer?.deallocate() }

        /// Room for `n` more bytes: the bytes the buffer grew by (0: it had room), or nil if it cannot hold them
        /// (past `bufferSize`, or growing by more than `spare`).
        func reserve(_ n: Int, spare: Int) -> Int? {
            if used + n <= capacity { return 0 }
            if used + n > Files.bufferSize { return nil }
            var c = max(4096, capacity)
            while c < used + n { c *= 2 }
            c = min(c, Files.bufferSize)
            if c - capacity > spare { return nil }
            let grown = c - capacity
            let b = UnsafeMutableRawPointer.allocate(byteCount: c, alignment: 64)
            if let old = buffer {
                b.copyMemory(from: old, byteCount: used)
                old.deallocate()
            }
            buffer = b
            capacity = c
            return grown
        }
    }

    private let directory: String
    private let dirfd: Int32
    private var flows: [UInt32: FlowFile] = [:]
    /// Names given so far, with how many connections had each (tcpflow's `cN` suffixes).
    private var names: [String: Int] = [:]
    private var openFiles = 0
    /// Bytes held by all flows' buffers (their capacity).
    private var buffered = 0
    /// Open files, oldest first (closed ones are dropped as they come up).
    private var opened: [FlowFile] = []
    private var unflowedMade = false
    private var clock: UInt64 = 0
    private unowned(unsafe) var space: Space?

    private(set) var filesMade: UInt64 = 0
    private(set) var bytesWritten: UInt64 = 0
    private(set) var writeErrors: UInt64 = 0
    private(set) var lostBytes: UInt64 = 0
    private var firstError: String?

    init(_ path: String) throws(FilterError) {
        guard !path.isEmpty else { throw FilterError("files: needs a directory, as in files=/tmp/flows") }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            let e = errno
            throw FilterError("files: cannot create directory '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            throw FilterError("files: cannot open directory '\(path)': \(String(cString: strerror(e)))", errno: e)
        }
        directory = path
        dirfd = fd
    }

    deinit {
        flushAll()
        close(dirfd)
    }

    public var arguments: String { directory }

    public func bind(space: Space, node: Node) throws(FilterError) { self.space = space }

    public func process(_ block: inout Block) -> UInt32 {
        let c = block.classValue == 0 ? 1 : block.classValue
        let f: FlowFile
        if let known = flows[block.flow] {
            f = known
        } else {
            if block.count == 0 { return c }  // the end of a flow that brought no bytes: no file
            f = FlowFile(name: name(for: block.flow))
            flows[block.flow] = f
        }
        clock &+= 1
        f.lastUse = clock
        if block.count > 0 { append(f, block.bytes) }
        if block.flowMarks.contains(.end) {
            flush(f)
            closeFile(f)
            buffered -= f.capacity
            flows.removeValue(forKey: block.flow)
        }
        return c
    }

    private func name(for tag: UInt32) -> String {
        let base = tag == 0 ? "unflowed" : FlowTable.shared.info(tag)?.key.tcpflowName ?? "flow-\(tag)"
        let seen = names[base, default: 0]
        names[base] = seen + 1
        return seen == 0 || tag == 0 ? base : "\(base)c\(seen)"
    }

    @inline(__always)
    private func append(_ f: FlowFile, _ bytes: UnsafeRawBufferPointer) {
        if f.failed {
            lostBytes &+= UInt64(bytes.count)
            return
        }
        if let g = f.reserve(bytes.count, spare: Files.bufferBudget - buffered) {
            buffered += g
        } else {
            flush(f)
            guard let g = f.reserve(bytes.count, spare: Files.bufferBudget - buffered) else {
                write(f, bytes)  // no room in the budget (or a block past bufferSize): straight to the file
                return
            }
            buffered += g
        }
        (f.buffer! + f.used).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        f.used += bytes.count
    }

    private func flush(_ f: FlowFile) {
        guard f.used > 0, let b = f.buffer else { return }
        write(f, UnsafeRawBufferPointer(start: b, count: f.used))
        f.used = 0
    }

    private func write(_ f: FlowFile, _ bytes: UnsafeRawBufferPointer) {
        if f.failed { lostBytes &+= UInt64(bytes.count); return }
        if f.fd < 0 && !openFile(f) { lostBytes &+= UInt64(bytes.count); return }
        var off = 0
        while off < bytes.count {
            let n = Glibc.write(f.fd, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                fail(f, "write to '\(directory)/\(f.name)' failed: \(String(cString: strerror(n < 0 ? errno : EIO)))")
                lostBytes &+= UInt64(bytes.count - off)
                return
            }
            off += n
        }
        bytesWritten &+= UInt64(bytes.count)
    }

    private func openFile(_ f: FlowFile) -> Bool {
        // Past `maxOpen` the file opened first goes (a queue of open files; closed ones are skipped).
        while openFiles >= Files.maxOpen, let old = opened.first {
            opened.removeFirst()
            if old.fd >= 0 { closeFile(old) }
        }
        // A file opened again, and `unflowed` (whose flows come and go), append to what this filter wrote there.
        let again = f.created || (f.name == "unflowed" && unflowedMade)
        let flags = O_WRONLY | O_CREAT | O_CLOEXEC | (again ? O_APPEND : O_TRUNC)
        if f.name == "unflowed" { unflowedMade = true }
        let fd = openat(dirfd, f.name, flags, 0o644)
        if fd < 0 {
            fail(f, "cannot create '\(directory)/\(f.name)': \(String(cString: strerror(errno)))")
            return false
        }
        if !f.created { filesMade &+= 1 }
        f.created = true
        f.fd = fd
        openFiles += 1
        opened.append(f)
        if opened.count > 4 * Files.maxOpen { opened.removeAll { $0.fd < 0 } }
        return true
    }

    private func closeFile(_ f: FlowFile) {
        if f.fd < 0 { return }
        close(f.fd)
        f.fd = -1
        openFiles -= 1
    }

    private func fail(_ f: FlowFile, _ message: String) {
        f.failed = true
        writeErrors &+= 1
        if firstError == nil {
            firstError = message
            space?.reportError("files: \(message)")
        }
    }

    private func flushAll() {
        for f in flows.values {
            flush(f)
            closeFile(f)
        }
        flows.removeAll()
        buffered = 0
    }

    /// The input ended: every flow's buffer goes to its file.
    public func endOfStream() { flushAll() }

    public func shutdown() { flushAll() }

    public func statistics() -> [(String, String)] {
        var s = [("files_made", "\(filesMade)"), ("files_open", "\(openFiles)"), ("files_flows", "\(flows.count)"),
                 ("files_buffered_bytes", "\(buffered)"),
                 ("files_bytes_written", "\(bytesWritten)"), ("files_write_errors", "\(writeErrors)"),
                 ("files_lost_bytes", "\(lostBytes)")]
        if let e = firstError { s.append(("files_first_error", e)) }
        return s
    }

    public static let descriptor = FilterDescriptor(
        name: "files", summary: "writes each flow to its own file, named as tcpflow names them", usage: "files=DIR",
        structuralClass: .sink
    ) { a throws(FilterError) in try Files(a) }
}
