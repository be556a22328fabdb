import PipesRuntime

/// The filter library: every filter `mkdir` and SRL can name. Adding a filter: one file, one line here, one test.
public enum FilterLibrary {
    public static let filters: [FilterDescriptor] = [
        Eth.descriptor, IP.descriptor, IP6.descriptor, IPProto.descriptor, Defrag.descriptor,
        TCP.descriptor, UDP.descriptor, ICMP.descriptor, SPort.descriptor, DPort.descriptor,
        BPF.descriptor, Count.descriptor, Match.descriptor, AhoCorasick.descriptor, Payload.descriptor, PcapOut.descriptor, UnTCP.descriptor, Pcap.descriptor, Compress.descriptor, Files.descriptor, HTTP.descriptor, Get.descriptor,
        Union.descriptor, Intersect.descriptor, Difference.descriptor, Veto.descriptor,
        Dedup.descriptor, Sample.descriptor, Histogram.descriptor, Inspect.descriptor, RegexMatch.descriptor,
    ]

    /// Sources, named by the scheme of a `--source NAME=SCHEME:SPEC` option.
    public static let sources: [String: FilterDescriptor] = [
        "pcap": PcapFileSource.descriptor, "live": LiveSource.descriptor, "inject": Tx.descriptor,
        "gen": GeneratorSource.descriptor,
    ]

    /// Filters that run a Unix process (§4.1); apart from `filters`, which the packet corpus runs every packet through.
    public static let processes: [FilterDescriptor] = [Exec.descriptor]

    public static let byName: [String: FilterDescriptor] = Dictionary(uniqueKeysWithValues: (filters + processes).map { ($0.name, $0) })

    public static let junction = Junction.descriptor
}
