#if canImport(Glibc)
import Glibc
#endif
import CPcap
import CPipesBPF
@testable import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

/// The threaded interpreter (`CPipesBPF`) against libpcap's `bpf_filter`: for every expression below, every
/// packet of the corpus and of a synthetic mix, cut at every captured length, both must return the same value.
@Suite("bpf: the threaded interpreter returns what libpcap's bpf_filter returns")
struct BPFEngineTests {
    /// Expressions that between them use every kind of instruction pcap_compile emits for Ethernet: absolute
    /// and indirect loads of every size, the IP header length load (msh), lengths, scratch memory, every ALU
    /// operation with constants and with X (division and shift by a zero or large X), all jumps, and the
    /// backward jumps of `ip6 protochain`.
    static let expressions = [
        "tcp dst port 80", "tcp[tcpflags] & tcp-syn != 0", "ip[2:2] > 500", "len > 100", "less 64", "greater 1000",
        "ether[0] & 1 = 0", "vlan", "vlan 100 and tcp", "ip6", "ip6 and tcp", "icmp", "icmp6", "ip6 protochain 6",
        "ip protochain 17", "tcp port 80 and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)",
        "portrange 20-30", "net 10.0.0.0/8", "udp[8:4] = 0x12345678", "arp", "ip[0] * 3 / 2 % 7 = 1", "ip[1] ^ 0xff = 0",
        "ip[0] << 2 = 20", "ip[0] >> ip[9] = 0", "ip[0] << ip[8] = 0", "ip[0] / ip[1] = 1", "ip[0] % ip[1] = 0",
        "-ip[0] = 0 - ip[0]", "ip[0] | ip[1] = 0x45", "ether host 00:11:22:33:44:55", "host 10.0.0.1 or host 10.0.0.2",
        "tcp and not port 22", "ip multicast", "ether broadcast", "tcp[13] = 2", "udp port 53 and udp[10] & 0x80 = 0",
        "ip[ip[0] & 0xf] = 4", "tcp[tcp[12] >> 4] > 0", "len - 14 > ip[2:2]", "ip and udp[4:2] < 20", "ip6[6] = 58",
        "ether proto 0x88cc", "pppoes and ip", "mpls", "ip[6:2] & 0x1fff != 0", "ip[4:4] = ip[12:4]",
    ]

    /// Synthetic Ethernet frames: IPv4 and IPv6 with TCP, UDP and ICMP, options, fragments, VLAN tags, PPPoE,
    /// and random bytes; a fixed seed.
    static func synthetic() -> [[UInt8]] {
        var rng = SplitMix(seed: 7)
        var out: [[UInt8]] = []
        for i in 0..<600 {
            var f = [UInt8](repeating: 0, count: 14 + 60 + Int(rng.next() % 200))
            for j in 0..<f.count { f[j] = UInt8(truncatingIfNeeded: rng.next()) }
            switch i % 6 {
            case 0, 1:  // IPv4, a varied header length and protocol
                f[12] = 0x08; f[13] = 0x00
                f[14] = 0x40 | UInt8(5 + rng.next() % 3)
                f[23] = [6, 17, 1, 6][Int(rng.next() % 4)]
                if rng.next() % 4 == 0 { f[20] = 0; f[21] = 0 }  // not a fragment
                if rng.next() % 3 == 0 { f[34 + 2] = 0; f[34 + 3] = 80 }
                if rng.next() % 5 == 0 { f[26] = 10 }
            case 2:  // IPv6 with a next header chain
                f[12] = 0x86; f[13] = 0xdd
                f[14] = 0x60
                f[20] = [6, 17, 58, 0, 43, 60][Int(rng.next() % 6)]
            case 3:  // 802.1Q
                f[12] = 0x81; f[13] = 0x00
                f[16] = 0x08; f[17] = 0x00
                f[18] = 0x45
            case 4:  // PPPoE session carrying IP
                f[12] = 0x88; f[13] = 0x64
                f[20] = 0x00; f[21] = 0x21
                f[22] = 0x45
            default:
                break  // random
            }
            out.append(f)
        }
        return out
    }

    static func corpusPackets() -> [(bytes: [UInt8], wire: UInt32, linkType: Int32)] {
        var out: [(bytes: [UInt8], wire: UInt32, linkType: Int32)] = []
        for name in Corpus.files {
            var lt: Int32 = 0
            var packets: [([UInt8], UInt32)] = []
            let r = readCapture(Corpus.path(name)) { bytes, h in packets.append((Array(bytes), h.len)) }
            lt = r.linkType
            for (b, w) in packets { out.append((b, w, lt)) }
        }
        return out
    }

    @Test("every expression decodes, and on every packet cut at every length both engines agree")
    func sameAsLibpcap() throws {
        let corpus = Self.corpusPackets()
        #expect(corpus.count > 100, "the corpus is there")
        var checked = 0
        var disagreements: [String] = []
        for linkType in [LinkType.ethernet] + Array(Set(corpus.map { LinkType(rawValue: $0.linkType) })).filter({ $0 != .ethernet }) {
            var packets: [(bytes: [UInt8], wire: UInt32)] = corpus.filter { $0.linkType == linkType.rawValue }.map { ($0.bytes, $0.wire) }
            if linkType == .ethernet { packets += Self.synthetic().map { ($0, UInt32($0.count)) } }
            for e in Self.expressions {
                guard let p = try? BPFProgram(expression: e, linkType: linkType) else { continue }  // not for this link type
                let insns = p.program.bf_insns
                if linkType == .ethernet {
                    #expect(p.decoded != nil, "'\(e)' was not decoded")
                }
                guard let d = p.decoded else { continue }
                for (bytes, wire) in packets {
                    bytes.withUnsafeBufferPointer { buf in
                        // Whole, and cut short at every length up to 80 bytes (the loads' bounds checks).
                        for cut in [bytes.count] + Array(0..<min(bytes.count, 80)) {
                            let a = bpf_filter(insns, buf.baseAddress, wire, UInt32(cut))
                            let b = pipes_bpf_run(d, buf.baseAddress!, wire, UInt32(cut))
                            checked += 1
                            if a != b && disagreements.count < 10 { disagreements.append("'\(e)' (\(linkType)), \(cut) of \(bytes.count) bytes: libpcap \(a), ours \(b)") }
                        }
                    }
                }
            }
        }
        #expect(disagreements.isEmpty, "\(disagreements)")
        #expect(checked > 1_000_000, "checked \(checked)")
    }

    @Test("programs the interpreter does not take are refused, and the filter then runs libpcap's")
    func refusals() throws {
        // A jump past the end, an unknown opcode, a memory slot out of range, a program that does not return.
        func prog(_ insns: [(UInt16, UInt8, UInt8, UInt32)]) -> UnsafeMutablePointer<pipes_bpf_prog>? {
            var raw = insns.map { bpf_insn(code: $0.0, jt: $0.1, jf: $0.2, k: $0.3) }
            return raw.withUnsafeMutableBufferPointer { pipes_bpf_decode($0.baseAddress, UInt32($0.count)) }
        }
        let ret: UInt16 = 0x06, jeq: UInt16 = 0x15, ldmem: UInt16 = 0x60, ldhAbs: UInt16 = 0x28, ja: UInt16 = 0x05
        #expect(prog([(ret, 0, 0, 1)]) != nil)
        #expect(prog([(ldhAbs, 0, 0, 12), (jeq, 0, 5, 0x800), (ret, 0, 0, 1), (ret, 0, 0, 0)]) == nil, "jf past the end")
        #expect(prog([(0xff, 0, 0, 0), (ret, 0, 0, 0)]) == nil, "unknown opcode")
        #expect(prog([(ldmem, 0, 0, 16), (ret, 0, 0, 0)]) == nil, "memory slot 16")
        #expect(prog([(ldhAbs, 0, 0, 12)]) == nil, "falls off the end")
        #expect(prog([(ja, 0, 0, UInt32(bitPattern: -5)), (ret, 0, 0, 0)]) == nil, "a backward jump before the start")
        #expect(prog([]) == nil)
        let b = try make("bpf", "tcp dst port 80")
        var frame = [UInt8](repeating: 0, count: 60)
        frame[12] = 0x08; frame[14] = 0x45; frame[23] = 6; frame[36] = 0; frame[37] = 80
        #expect(frame.withUnsafeBytes { raw in var blk = Block(bytes: raw, linkType: .ethernet); return b.process(&blk) } == 1)
    }
}

