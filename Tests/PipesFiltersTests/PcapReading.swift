import CPcap
import PipesRuntime

/// One record as libpcap read it back.
struct PcapRecord: Equatable {
    var seconds: Int
    var micros: Int
    var captured: Int
    var wire: Int
    var bytes: [UInt8]
}

/// The outcome of reading a capture with libpcap (pcap_open_offline / pcap_next_ex).
struct PcapReadResult {
    /// libpcap's reason when it refused to open the file.
    var openError: String?
    /// libpcap's reason when a record could not be read (the file is damaged after `records`).
    var readError: String?
    var linkType: Int32 = -1
    var records = 0
}

/// Opens `path` with libpcap: with microsecond timestamps (pcap_open_offline), or with nanosecond ones as the pcap
/// file source opens it. Nil and libpcap's reason when it refuses the file.
func openCapture(_ path: String, nanoseconds: Bool = false) -> (OpaquePointer?, String) {
    var err = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
    let h = nanoseconds
        ? pcap_open_offline_with_tstamp_precision(path, UInt32(PCAP_TSTAMP_PRECISION_NANO), &err)
        : pcap_open_offline(path, &err)
    return (h, String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
}

/// Opens `path` with libpcap (see `openCapture`) and calls `body` for every record, with the bytes valid during the call.
@discardableResult
func readCapture(_ path: String, nanoseconds: Bool = false, _ body: (UnsafeRawBufferPointer, pcap_pkthdr) -> Void) -> PcapReadResult {
    var result = PcapReadResult()
    let (handle, reason) = openCapture(path, nanoseconds: nanoseconds)
    guard let h = handle else {
        result.openError = reason
        return result
    }
    defer { pcap_close(h) }
    result.linkType = pcap_datalink(h)
    while true {
        var hdr: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        let rc = pcap_next_ex(h, &hdr, &data)
        if rc == 1, let hdr, let data {
            body(UnsafeRawBufferPointer(start: data, count: Int(hdr.pointee.caplen)), hdr.pointee)
            result.records += 1
        } else if rc == PCAP_ERROR_BREAK {
            break
        } else {
            result.readError = String(cString: pcap_geterr(h))
            break
        }
    }
    return result
}

/// Every record of a capture, copied.
func readRecords(_ path: String) -> (PcapReadResult, [PcapRecord]) {
    var out: [PcapRecord] = []
    let r = readCapture(path) { bytes, h in
        out.append(PcapRecord(seconds: Int(h.ts.tv_sec), micros: Int(h.ts.tv_usec), captured: Int(h.caplen),
                              wire: Int(h.len), bytes: Array(bytes)))
    }
    return (r, out)
}
