#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering

/// The devices of the file systems this process serves. A filter that writes files (a sink) refuses a file on
/// one of them: writing into our own mount from inside the graph would wait for the graph itself.
public enum LocalMounts {
    private static let lock = ConditionLock()
    nonisolated(unsafe) private static var devices: Set<UInt64> = []

    /// Records the device of a mount point once it is mounted. Reads /proc/self/mountinfo rather than stat(2):
    /// the mount's own requests are not being served yet when this runs.
    public static func register(mountPoint: String) {
        let real = realpath(mountPoint, nil).map { p in defer { free(p) }; return String(cString: p) } ?? mountPoint
        guard let f = fopen("/proc/self/mountinfo", "r") else { return }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>?
        var cap = 0
        defer { free(line) }
        var found: UInt64?
        while getline(&line, &cap, f) > 0, let l = line {
            // ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ... (spaces in paths are escaped as \040)
            let fields = String(cString: l).split(separator: " ")
            guard fields.count > 4, unescape(fields[4]) == real else { continue }
            let mm = fields[2].split(separator: ":")
            if mm.count == 2, let major = UInt32(mm[0]), let minor = UInt32(mm[1]) {
                found = makeDevice(UInt64(major), UInt64(minor))  // the last match is the newest mount there
            }
        }
        if let d = found { lock.withLock { _ = devices.insert(d) } }
    }

    /// glibc's makedev(3) encoding of a device number.
    static func makeDevice(_ major: UInt64, _ minor: UInt64) -> UInt64 {
        ((major & 0xFFFF_F000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFF_FF00) << 12) | (minor & 0xFF)
    }

    /// Undoes mountinfo's octal escapes (a backslash and three octal digits, e.g. 040 for a space).
    static func unescape(_ s: Substring) -> String {
        let b = Array(s.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 4 <= b.count,
               let v = UInt8(String(decoding: b[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// True if `fd` is a file on a file system this process serves.
    public static func contains(fd: Int32) -> Bool {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        return lock.withLock { devices.contains(UInt64(st.st_dev)) }
    }
}
