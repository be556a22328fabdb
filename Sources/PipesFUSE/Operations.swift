#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import PipesBuffering
import PipesControl
import PipesFS

// The low-level operation callbacks. Kept out of main.swift (see notes: top-level closures escape Swift 6's
// isolation checks). Each replies exactly once.

@inline(__always)
func bridge(_ req: fuse_req_t?) -> FUSEBridge {
    Unmanaged<FUSEBridge>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

@inline(__always)
func name(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }

func replyEntry(_ req: fuse_req_t?, _ b: FUSEBridge, _ a: Attributes) {
    var e = b.entry(a)
    fuse_reply_entry(req, &e)
}

/// A request handle that crosses threads: it is answered exactly once, from whichever thread completes it.
struct Request: @unchecked Sendable {
    let req: fuse_req_t
    init(_ req: fuse_req_t) { self.req = req }
}

/// getxattr/listxattr replies: the size when asked for it (size 0), ERANGE when the buffer is too small.
func replyXattr(_ req: fuse_req_t?, _ v: [UInt8], _ size: Int) {
    if size == 0 {
        fuse_reply_xattr(req, v.count)
    } else if size < v.count {
        fuse_reply_err(req, ERANGE)
    } else {
        v.withUnsafeBytes { _ = fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
    }
}

func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()

    ops.`init` = { userdata, conn in
        guard let conn else { return }
        // Large writes for injection; no async reads reordering parked requests.
        conn.pointee.max_write = 1 << 20
        if conn.pointee.capable & UInt32(FUSE_CAP_ASYNC_READ) != 0 {
            conn.pointee.want &= ~UInt32(FUSE_CAP_ASYNC_READ)
        }
    }

    ops.lookup = { req, parent, n in
        let b = bridge(req)
        do throws(FSError) { replyEntry(req, b, try b.tree.lookup(UInt64(parent), name(n))) } catch { fuse_reply_err(req, error.errno) }
    }

    ops.getattr = { req, ino, _ in
        let b = bridge(req)
        do throws(FSError) {
            var st = b.stat(try b.tree.getattr(UInt64(ino)))
            fuse_reply_attr(req, &st, b.timeout)
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.setattr = { req, ino, attr, toSet, fi in
        let b = bridge(req)
        do throws(FSError) {
            let a = try b.tree.getattr(UInt64(ino))
            let forbidden = Int32(FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)
            if toSet & forbidden != 0 { fuse_reply_err(req, EPERM); return }
            if toSet & Int32(FUSE_SET_ATTR_SIZE) != 0 && a.kind != .file { fuse_reply_err(req, EISDIR); return }
            // Truncation (shell '>' redirections) and time changes are accepted and have no effect.
            var st = b.stat(a)
            fuse_reply_attr(req, &st, b.timeout)
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.readlink = { req, ino in
        let b = bridge(req)
        do throws(FSError) { fuse_reply_readlink(req, try b.tree.readlink(UInt64(ino))) } catch { fuse_reply_err(req, error.errno) }
    }

    ops.mknod = { req, _, n, _, _ in
        let b = bridge(req)
        b.tree.controller.errors.append("mknod \(name(n)): files cannot be created here; mkdir makes filters (EPERM)")
        fuse_reply_err(req, EPERM)
    }

    ops.create = { req, _, n, _, _ in
        let b = bridge(req)
        b.tree.controller.errors.append("create \(name(n)): files cannot be created here; mkdir makes filters (EPERM)")
        fuse_reply_err(req, EPERM)
    }

    ops.mkdir = { req, parent, n, _ in
        let b = bridge(req)
        do throws(FSError) { replyEntry(req, b, try b.tree.mkdir(UInt64(parent), name(n), caller: FUSEBridge.caller(req))) } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    ops.rmdir = { req, parent, n in
        let b = bridge(req)
        do throws(FSError) { try b.tree.rmdir(UInt64(parent), name(n)); fuse_reply_err(req, 0) } catch { fuse_reply_err(req, error.errno) }
    }

    ops.unlink = { req, parent, n in
        let b = bridge(req)
        do throws(FSError) { try b.tree.unlink(UInt64(parent), name(n)); fuse_reply_err(req, 0) } catch { fuse_reply_err(req, error.errno) }
    }

    ops.symlink = { req, text, parent, n in
        let b = bridge(req)
        do throws(FSError) { replyEntry(req, b, try b.tree.symlink(name(text), UInt64(parent), name(n))) } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    ops.rename = { req, parent, n, newParent, newName, flags in
        let b = bridge(req)
        do throws(FSError) {
            try b.tree.rename(UInt64(parent), name(n), UInt64(newParent), name(newName), flags: flags)
            fuse_reply_err(req, 0)
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.link = { req, _, _, _ in fuse_reply_err(req, EPERM) }

    ops.open = { req, ino, fi in
        let b = bridge(req)
        guard let fi else { fuse_reply_err(req, EINVAL); return }
        do throws(FSError) {
            let f = try b.tree.open(UInt64(ino), flags: fi.pointee.flags, caller: FUSEBridge.caller(req))
            fi.pointee.direct_io = 1
            if f.isStream { fi.pointee.nonseekable = 1 }
            fi.pointee.fh = FUSEBridge.handle(f)
            if fuse_reply_open(req, fi) != 0 {
                // The opener went away (interrupted): undo.
                FUSEBridge.releaseHandle(fi)?.release()
            }
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.read = { req, _, size, off, fi in
        let b = bridge(req)
        guard let req, let fi, let f = FUSEBridge.file(fi) else { fuse_reply_err(req, EBADF); return }
        let id = b.requestID()
        let nonBlocking = (fi.pointee.flags & O_NONBLOCK) != 0
        let stream = f.isStream
        if stream { b.track(id, f, req) }
        // The interrupt check runs under the tap's lock just before parking; after this call `req` may be gone.
        f.read(size: Int(size), offset: Int(off), requestID: id, nonBlocking: nonBlocking,
               interrupted: { fuse_req_interrupted(req) != 0 }) { outcome in
            if stream { b.untrack(id) }
            reply(req, outcome)
        }
    }

    ops.write = { req, _, buf, size, off, fi in
        let b = bridge(req)
        guard let req, let fi, let f = FUSEBridge.file(fi) else { fuse_reply_err(req, EBADF); return }
        let id = b.requestID()
        let nonBlocking = (fi.pointee.flags & O_NONBLOCK) != 0
        let stream = f.isStream
        if stream { b.track(id, f, req) }
        // A write that waits for lagging readers is parked (its bytes copied) and answered later: no thread waits.
        let r = Request(req)
        f.write(UnsafeRawBufferPointer(start: buf, count: size), offset: Int(off), requestID: id, nonBlocking: nonBlocking,
                interrupted: { fuse_req_interrupted(req) != 0 }) { result in
            if stream { b.untrack(id) }
            switch result {
            case .success(let n): fuse_reply_write(r.req, n)
            case .failure(let e): fuse_reply_err(r.req, e.errno)
            }
        }
    }

    ops.flush = { req, _, _ in fuse_reply_err(req, 0) }

    ops.release = { req, _, fi in
        FUSEBridge.releaseHandle(fi)?.release()
        fuse_reply_err(req, 0)
    }

    ops.fsync = { req, _, _, _ in fuse_reply_err(req, 0) }

    ops.opendir = { req, ino, fi in
        let b = bridge(req)
        do throws(FSError) {
            let a = try b.tree.getattr(UInt64(ino))
            if a.kind != .directory { fuse_reply_err(req, ENOTDIR); return }
            fuse_reply_open(req, fi)
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.readdir = { req, ino, size, off, _ in
        let b = bridge(req)
        do throws(FSError) {
            let entries = try b.tree.readdir(UInt64(ino))
            var buf = [CChar](repeating: 0, count: size)
            var used = 0
            var i = Int(off)
            while i < entries.count {
                let e = entries[i]
                var st = Glibc.stat()
                st.st_ino = ino_t(e.inode)
                switch e.kind {
                case .directory: st.st_mode = Glibc.S_IFDIR
                case .file: st.st_mode = Glibc.S_IFREG
                case .symlink: st.st_mode = Glibc.S_IFLNK
                }
                let need = buf.withUnsafeMutableBufferPointer { p in
                    fuse_add_direntry(req, p.baseAddress! + used, size - used, e.name, &st, off_t(i + 1))
                }
                if used + need > size { break }
                used += need
                i += 1
            }
            buf.withUnsafeBufferPointer { p in _ = fuse_reply_buf(req, p.baseAddress, used) }
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.releasedir = { req, _, _ in fuse_reply_err(req, 0) }

    ops.statfs = { req, _ in
        var s = statvfs()
        s.f_bsize = 1 << 20
        s.f_namemax = 255
        fuse_reply_statfs(req, &s)
    }

    ops.access = { req, _, _ in fuse_reply_err(req, 0) }

    // Extended attributes: `user.pipes.ring` on stream files tells the client library where to map the ring.
    ops.getxattr = { req, ino, n, size in
        let b = bridge(req)
        do throws(FSError) {
            let v = Array(try b.tree.getxattr(UInt64(ino), name(n)).utf8)
            replyXattr(req, v, size)
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.listxattr = { req, ino, size in
        let b = bridge(req)
        do throws(FSError) {
            var v: [UInt8] = []
            for a in try b.tree.listxattr(UInt64(ino)) { v += Array(a.utf8) + [0] }
            replyXattr(req, v, size)
        } catch { fuse_reply_err(req, error.errno) }
    }

    ops.setxattr = { req, _, _, _, _, _ in fuse_reply_err(req, ENOTSUP) }
    ops.removexattr = { req, _, _ in fuse_reply_err(req, ENOTSUP) }

    ops.poll = { req, _, fi, ph in
        guard let f = FUSEBridge.file(fi) else { fuse_reply_err(req, EBADF); return }
        var notify: (@Sendable () -> Void)?
        if let ph {
            let box = PollBox()
            box.replace(ph)
            notify = { box.fire() }
        }
        let readable = f.poll(notify: notify)
        fuse_reply_poll(req, UInt32((readable ? POLLIN : 0) | POLLOUT))
    }

    return ops
}
