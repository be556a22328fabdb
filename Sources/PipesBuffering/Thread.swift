#if canImport(Glibc)
import Glibc
#endif

private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Starts a detached POSIX thread running `body` (sources use one each). `name` shows in `top -H`.
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    let ctx = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { arg in
        let b = Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue()
        b.body()
        return nil
    }, ctx)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    _ = name  // pthread_setname_np is not exported by Glibc here; names are informational only
    pthread_detach(tid)
}
