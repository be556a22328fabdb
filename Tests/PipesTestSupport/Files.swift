#if canImport(Glibc)
import Glibc
#endif

/// Why a test helper could not do its work (a file it could not write).
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A fresh path under the system temporary directory (`TMPDIR`, else /tmp); the caller removes the file.
public func temporaryPath(_ name: String) -> String {
    let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    return "\(dir)/pipesfs-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))-\(name)"
}

/// Writes bytes to a file, replacing it.
public func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    guard let f = fopen(path, "w") else { throw TestSupportError("cannot create \(path)") }
    defer { fclose(f) }
    let n = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
    guard n == bytes.count else { throw TestSupportError("short write to \(path)") }
}
