#if canImport(Glibc)
import Glibc
#endif
import CURing
import PipesBuffering

/// A process started with `posix_spawn(3)` whose stdin, stdout and stderr are pipes held by the daemon.
///
/// The child gets its own process group (so that a signal reaches what `sh -c` starts too), no other file
/// descriptor of the daemon (`/dev/fuse`, capture files and other children's pipes stay out of it), an empty
/// signal mask and the default disposition for the signals a daemon or a background job ignores (SIGPIPE above
/// all: `grep | head` relies on it).
struct ChildProcess {
    let pid: pid_t
    /// Our ends: the child's stdin (write, non-blocking), stdout and stderr (read, non-blocking). Close-on-exec.
    let stdin: Int32
    let stdout: Int32
    let stderr: Int32

    /// Signals reset to their default action in the child.
    private static let defaulted: [Int32] = [SIGPIPE, SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM,
                                             SIGTSTP, SIGTTIN, SIGTTOU, SIGXFSZ]

    /// Starts `executable` with `argv` and the daemon's environment. Returns the errno `posix_spawn` reports
    /// (ENOENT, EACCES, ENOEXEC...) on failure; nothing is left open then.
    static func spawn(_ executable: String, _ argv: [String]) -> Result<ChildProcess, Errno32> {
        var fds: [Int32] = []
        func closeAll() { for f in fds { close(f) } }
        var p: (Int32, Int32) = (-1, -1), o: (Int32, Int32) = (-1, -1), e: (Int32, Int32) = (-1, -1)
        for i in 0..<3 {
            var pair: [Int32] = [-1, -1]
            if pipe2(&pair, O_CLOEXEC) != 0 { let err = errno; closeAll(); return .failure(Errno32(err)) }
            fds += pair
            switch i {
            case 0: p = (pair[0], pair[1])
            case 1: o = (pair[0], pair[1])
            default: e = (pair[0], pair[1])
            }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, p.0, 0)
        posix_spawn_file_actions_adddup2(&actions, o.1, 1)
        posix_spawn_file_actions_adddup2(&actions, e.1, 2)
        posix_spawn_file_actions_addclosefrom_np(&actions, 3)

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in defaulted { sigaddset(&defaults, s) }
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        var pid = pid_t()
        let rc = cargs.withUnsafeBufferPointer { a in
            posix_spawn(&pid, executable, &actions, &attr, a.baseAddress!, environ)
        }
        // The child's ends are its own now (or nobody's).
        close(p.0)
        close(o.1)
        close(e.1)
        if rc != 0 {
            close(p.1)
            close(o.0)
            close(e.0)
            return .failure(Errno32(rc))
        }
        for f in [p.1, o.0, e.0] { _ = fcntl(f, F_SETFL, fcntl(f, F_GETFL) | O_NONBLOCK) }
        return .success(ChildProcess(pid: pid, stdin: p.1, stdout: o.0, stderr: e.0))
    }
}

/// An errno as an `Error` (for `Result`).
struct Errno32: Error {
    let code: Int32
    init(_ code: Int32) { self.code = code }
    var message: String { String(cString: strerror(code)) }
}

/// What `waitpid` reported, in words: "exited with status 1", "killed by SIGTERM".
func describeWaitStatus(_ status: Int32) -> String {
    let sig = status & 0x7f
    if sig == 0 { return "exited with status \((status >> 8) & 0xff)" }
    let name: String
    switch sig {
    case SIGTERM: name = "SIGTERM"
    case SIGKILL: name = "SIGKILL"
    case SIGPIPE: name = "SIGPIPE"
    case SIGINT: name = "SIGINT"
    case SIGSEGV: name = "SIGSEGV"
    case SIGABRT: name = "SIGABRT"
    default: name = "signal \(sig)"
    }
    return "killed by \(name)" + (status & 0x80 != 0 ? " (core dumped)" : "")
}
