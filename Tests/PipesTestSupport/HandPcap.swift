/// A classic pcap file written field by field, in either byte order.
///
/// `bytes` may be edited directly to damage a file (cut records, replace the magic) or, with `withoutFileHeader()`,
/// hold records alone: the stream a pcap tap delivers after the header its reader was given at open.
public struct HandPcap {
    public var bigEndian: Bool
    public var bytes: [UInt8] = []

    /// The 24-byte file header; microsecond timestamps, version 2.4, Ethernet unless said otherwise.
    public init(bigEndian: Bool = false, nanoseconds: Bool = false, major: UInt16 = 2, minor: UInt16 = 4,
                snaplen: UInt32 = 65535, linkType: UInt32 = 1) {
        self.bigEndian = bigEndian
        u32(nanoseconds ? 0xA1B2_3C4D : 0xA1B2_C3D4)  // magic: nanosecond or microsecond timestamps
        u16(major)  // version major
        u16(minor)  // version minor
        u32(0)  // thiszone
        u32(0)  // sigfigs
        u32(snaplen)  // snaplen
        u32(linkType)  // link type (LINKTYPE_)
    }

    private init(recordsOnly bigEndian: Bool) { self.bigEndian = bigEndian }

    /// No file header: records alone.
    public static func withoutFileHeader(bigEndian: Bool = false) -> HandPcap { HandPcap(recordsOnly: bigEndian) }

    public mutating func u16(_ v: UInt16) {
        let b = [UInt8(v & 0xFF), UInt8(v >> 8)]
        bytes += bigEndian ? b.reversed() : b
    }

    public mutating func u32(_ v: UInt32) {
        let b = [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)]
        bytes += bigEndian ? b.reversed() : b
    }

    /// A record: header fields as given (caplen and len default to the data's length), then `data`.
    public mutating func record(seconds: UInt32, fraction: UInt32, data: [UInt8], caplen: UInt32? = nil, wire: UInt32? = nil) {
        u32(seconds)  // ts_sec
        u32(fraction)  // ts_usec, or ts_nsec in a nanosecond file
        u32(caplen ?? UInt32(data.count))  // caplen
        u32(wire ?? UInt32(data.count))  // len (the wire length)
        bytes += data
    }

    /// Writes the file to a fresh temporary path (ending in `name`) and returns it; the caller removes it.
    public func write(_ name: String) throws -> String {
        let path = temporaryPath(name)
        try writeFile(path, bytes)
        return path
    }
}
