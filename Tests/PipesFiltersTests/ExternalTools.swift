#if canImport(Glibc)
import Glibc
#endif
import Foundation
import PipesTestSupport
import Testing

// Reference tools for the tests that compare a filter with them: editcap (wireshark-common), tcpdump, and the
// project's own capture generator (`pipesfs mkpcap`). tools/deps installs them.

/// What a program did: its exit status (-1 if it did not exit normally), standard output and standard error.
struct ToolRun {
    var status: Int32
    var output: String
    var errors: String
}

/// Runs `argv` (the program looked up in PATH, then /usr/sbin and /usr/bin) and waits for it.
func runTool(_ argv: [String]) throws -> ToolRun {
    let out = temporaryPath("tool-out")
    let err = temporaryPath("tool-err")
    defer {
        unlink(out)
        unlink(err)
    }
    var fa = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&fa)
    defer { posix_spawn_file_actions_destroy(&fa) }
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let path = (getenv("PATH").map { String(cString: $0) } ?? "") + ":/usr/sbin:/usr/bin"
    let env = ["PATH=\(path)", "LC_ALL=C", "TZ=UTC"]
    var cargv = argv.map { strdup($0) } + [nil]
    var cenv = env.map { strdup($0) } + [nil]
    defer { for p in cargv + cenv { free(p) } }
    var pid = pid_t()
    let candidates = argv[0].contains("/") ? [argv[0]] : path.split(separator: ":").map { "\($0)/\(argv[0])" }
    let rc = candidates.first { access($0, X_OK) == 0 }.map { posix_spawn(&pid, $0, &fa, nil, &cargv, &cenv) } ?? ENOENT
    guard rc == 0 else { throw TestSupportError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let exited = status & 0x7F == 0
    return ToolRun(status: exited ? (status >> 8) & 0xFF : -1,
                   output: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                   errors: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
}

/// The pipesfs executable built next to the test bundle (`swift build --build-tests` builds it), or nil.
func pipesfsExecutable() -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let slash = exe.lastIndex(of: "/") else { return nil }
    let path = String(exe[..<slash]) + "/pipesfs"
    return access(path, X_OK) == 0 ? path : nil
}

/// A synthetic capture written by `pipesfs mkpcap` (HTTP, TLS-like, SSH-like, DNS, IPv6, ARP, fragments, with
/// reordered and duplicated segments) at a fresh temporary path; the caller removes it.
func syntheticCapture(flows: Int, seed: UInt64, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
    let exe = try #require(pipesfsExecutable(), "pipesfs is not built next to the tests (swift build --build-tests)",
                           sourceLocation: sourceLocation)
    let path = temporaryPath("synthetic.pcap")
    let run = try runTool([exe, "mkpcap", path, "--flows", "\(flows)", "--seed", "\(seed)"])
    try #require(run.status == 0, "pipesfs mkpcap failed: \(run.errors)", sourceLocation: sourceLocation)
    return path
}
