#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import PipesFS
import PipesRuntime

/// Mounts a `Tree` with libfuse3 and serves it until unmounted or signalled (SIGINT, SIGTERM, SIGHUP).
public enum FUSEServer {
    public struct MountError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Mounts, optionally daemonizes, calls `started` (start source threads here: after the fork), serves
    /// requests on a multi-threaded loop, calls `stopping` once the loop ended (stop every thread that could
    /// still answer a request: nothing may reply once the session is gone), then unmounts. Returns the loop's
    /// status.
    public static func serve(tree: Tree, mountPoint: String, options: [String], foreground: Bool,
                             started: () -> Void, stopping: () -> Void) throws -> Int32 {
        var args = fuse_args()
        fuse_opt_add_arg(&args, "pipesfs")
        for o in options {
            fuse_opt_add_arg(&args, "-o")
            fuse_opt_add_arg(&args, o)
        }
        defer { fuse_opt_free_args(&args) }
        var ops = makeOperations()
        let bridge = FUSEBridge(tree: tree)
        let userdata = Unmanaged.passRetained(bridge).toOpaque()
        guard let se = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata) else {
            throw MountError(description: "cannot start a FUSE session with options \(options.joined(separator: ","))")
        }
        defer { fuse_session_destroy(se) }
        // A daemon started in the background inherits SIGINT ignored; libfuse only installs handlers for signals at
        // their default, so reset them: SIGINT, SIGTERM and SIGHUP always unmount cleanly.
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        signal(SIGHUP, SIG_DFL)
        if fuse_set_signal_handlers(se) != 0 { throw MountError(description: "cannot install signal handlers") }
        defer { fuse_remove_signal_handlers(se) }
        if fuse_session_mount(se, mountPoint) != 0 {
            throw MountError(description: "cannot mount at \(mountPoint) (does it exist, and is /dev/fuse usable?)")
        }
        defer { fuse_session_unmount(se) }
        fuse_daemonize(foreground ? 1 : 0)
        LocalMounts.register(mountPoint: mountPoint)
        started()
        let cfg = fuse_loop_cfg_create()
        defer { fuse_loop_cfg_destroy(cfg) }
        fuse_loop_cfg_set_clone_fd(cfg, 0)
        fuse_loop_cfg_set_max_threads(cfg, 64)
        fuse_loop_cfg_set_idle_threads(cfg, 4)
        let rc = fuse_session_loop_mt(se, cfg)
        stopping()
        return rc
    }
}
