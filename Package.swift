// swift-tools-version:6.0
// PipesFS: the Streamline I/O architecture (de Bruijn, Bos, Bal; TOCS 2011) in Swift.
// Targets follow the paper: buffering (§5), processing (§6), control (§7), interfaces (§4).
import PackageDescription

/// The per-block path is guarded by the space lock; dynamic exclusivity checks there cost ~10% for nothing.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "PipesFS",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "pipesfs", targets: ["pipesfs"]),
        .library(name: "PipesRuntime", targets: ["PipesRuntime"]),
        // The client library: map a tap's ring and read it with no FUSE round trip. For C, libpipes is built by
        // `make -C examples` (plain C, no Swift runtime); for Swift, this product.
        .library(name: "PipesClient", targets: ["PipesClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // C shims: module maps and tiny headers, no logic.
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CPcap", pkgConfig: "libpcap", providers: [.apt(["libpcap-dev"])]),
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "CPcre2", pkgConfig: "libpcre2-8", providers: [.apt(["libpcre2-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        // §5 the ring ABI: one C header for the runtime, the client library and the kernel module.
        .target(name: "PipesRingABI"),
        // The baselines `pipesfs bench ipc` measures against (a minimal SPSC ring, pipe loops), in C.
        .target(name: "CIPCBaseline", linkerSettings: [.linkedLibrary("pcap")]),
        // Classic BPF run by a threaded interpreter (libpcap's semantics; bpf_filter stays the fallback).
        .target(name: "CPipesBPF"),
        // §5 buffering: rings, tap buffers, locks.
        .target(name: "PipesBuffering", dependencies: ["PipesRingABI"], swiftSettings: hotPath),
        // §6 processing: blocks, the filter protocol, graph, execution by function calls.
        .target(name: "PipesRuntime", dependencies: ["PipesBuffering", "PipesRingABI"], swiftSettings: hotPath),
        .target(name: "PipesSRL"),
        // §6.1 the filter library, one file per filter.
        .target(
            name: "PipesFilters",
            dependencies: ["PipesRuntime", "PipesBuffering", "PipesRingABI", "CPcap", "CPipesBPF", "CURing", "CPcre2", "CZlib", "CZstd"],
            swiftSettings: hotPath),
        // §7 control: validated, undoable changes to the graph.
        .target(name: "PipesControl", dependencies: ["PipesRuntime", "PipesFilters", "PipesBuffering", "PipesSRL"]),
        // §4.1 the graph as a node tree (no FUSE types; unit-testable without a mount).
        .target(name: "PipesFS", dependencies: ["PipesControl", "PipesRuntime", "PipesBuffering", "PipesFilters"]),
        // The libfuse3 low-level wire layer, bridging to PipesFS.
        .target(name: "PipesFUSE", dependencies: ["PipesFS", "PipesRuntime", "CFuse3"]),
        // §4 the client library (C): open a tap by path, map its ring, peek and read; plain read() as fallback.
        .target(name: "CPipesClient", dependencies: ["PipesRingABI"]),
        // The same for Swift.
        .target(name: "PipesClient", dependencies: ["CPipesClient", "PipesRingABI"]),
        .executableTarget(
            name: "pipesfs",
            dependencies: [
                "PipesFUSE", "PipesFS", "PipesControl", "PipesFilters", "PipesRuntime", "PipesBuffering", "PipesRingABI", "CIPCBaseline", "PipesClient", "PipesSRL",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(name: "PipesTestSupport", dependencies: ["PipesRuntime", "PipesBuffering"], path: "Tests/PipesTestSupport"),
        .testTarget(name: "PipesBufferingTests", dependencies: ["PipesBuffering", "PipesTestSupport"]),
        .testTarget(name: "PipesRuntimeTests", dependencies: ["PipesRuntime", "PipesBuffering", "PipesTestSupport"]),
        .testTarget(name: "PipesSRLTests", dependencies: ["PipesSRL"]),
        .testTarget(
            name: "PipesFiltersTests", dependencies: ["PipesFilters", "PipesRuntime", "PipesControl", "CPcap", "CZlib", "CZstd", "PipesTestSupport", "PipesSRL"],
            resources: [.copy("Resources")]
        ),
        .testTarget(name: "PipesFSTests", dependencies: ["PipesFS", "PipesControl", "PipesFilters", "PipesRuntime", "PipesBuffering", "PipesTestSupport"]),
    ]
)
