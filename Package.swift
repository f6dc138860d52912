// swift-tools-version: 6.1
import PackageDescription

// Linux only (Glibc, Debian's libgrpc, /proc): no platforms line claims otherwise.
let package = Package(
    name: "Shoal",
    products: [
        .executable(name: "shoal", targets: ["shoal"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        // SIMD kernels with per-function ISA attributes and a runtime CPUID choice:
        // Swift cannot select an instruction set per function (docs/kernels.md).
        .target(
            name: "CShoalKernels",
            cSettings: [.unsafeFlags(["-O3", "-ffp-contract=fast"])]
        ),
        // The gRPC C core (Debian libgrpc-dev 1.51): a module map that links grpc and gpr, not
        // pkg-config, whose abseil flags SwiftPM rejects (docs/grpc-core.md).
        .systemLibrary(name: "CGRPCCore", providers: [.apt(["libgrpc-dev"])]),
        // Channels, servers, calls, deadlines, TLS over the C core: bytes in, bytes out.
        .target(name: "ShoalRPC", dependencies: ["CGRPCCore"]),
        // A cluster's certificate authority and its nodes' identities (X.509 in Swift), loaded as
        // the RPC layer's mutual-TLS settings.
        .target(
            name: "ShoalCertificates",
            dependencies: [
                "ShoalRPC",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The wire contract: messages generated from Protos/ (scripts/generate-protos), their
        // method paths and transport payloads, the activation codec, and validation of every
        // field a peer sends.
        .target(name: "ShoalProtocol", dependencies: ["ShoalRPC", "ShoalTensor", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        // Linux calls Glibc's Swift module leaves out (thread affinity), as thin C wrappers.
        .target(name: "CShoalOS"),
        // Storage, dtypes, safetensors, the compute pool and the kernels' Swift surface.
        .target(name: "ShoalTensor", dependencies: ["CShoalKernels", "CShoalOS"]),
        // SentencePiece BPE and the Mistral v1 chat format; the model file through messages
        // generated from Protos/sentencepiece (scripts/generate-protos).
        .target(name: "ShoalTokenizer", dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        // Config, weight loading, the Mixtral forward pass, experts, sampler, generation.
        .target(name: "ShoalModel", dependencies: ["ShoalTensor", "ShoalTokenizer"]),
        // The cluster: the worker's service over local experts, and the coordinator's remote
        // experts (hello, placement, per-layer fan-out).
        .target(
            name: "ShoalCluster",
            dependencies: [
                "ShoalModel", "ShoalProtocol", "ShoalRPC", "ShoalTensor",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // The HTTP/1.1 server: Hummingbird's event-loop core (SwiftNIO), optionally over TLS, with
        // per-client connection shares and head/body timeouts; each request's handler runs on a
        // thread of its own and streams its answer with backpressure.
        .target(
            name: "ShoalHTTP",
            dependencies: [
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The coordinator as a service: the continuous-batching scheduler, the OpenAI HTTP API,
        // the gRPC prompt API and the Prometheus metrics.
        .target(
            name: "ShoalServe",
            dependencies: [
                "ShoalCluster", "ShoalHTTP", "ShoalModel", "ShoalProtocol", "ShoalRPC", "ShoalTensor", "ShoalTokenizer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The prompt API's client (`shoal generate/chat --coordinator`): the generated messages over
        // the RPC layer, without the scheduler or the cluster.
        .target(
            name: "ShoalClient",
            dependencies: [
                "ShoalModel", "ShoalProtocol", "ShoalRPC", "ShoalTokenizer",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // The subcommands, as a library so tests can drive them.
        .target(
            name: "ShoalCLI",
            dependencies: [
                "ShoalCertificates", "ShoalClient", "ShoalCluster", "ShoalHTTP", "ShoalModel", "ShoalProtocol", "ShoalRPC", "ShoalServe",
                "ShoalTensor", "ShoalTokenizer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "shoal", dependencies: ["ShoalCLI"]),
        // Test helpers shared by the test targets: the fixtures and their reference outputs, the
        // built `shoal` binary, in-process workers.
        .target(
            name: "ShoalTestSupport",
            dependencies: ["ShoalCluster", "ShoalModel", "ShoalProtocol", "ShoalRPC", "ShoalTensor",
                           .product(name: "Logging", package: "swift-log")],
            path: "Tests/ShoalTestSupport"
        ),
        .testTarget(name: "ShoalTensorTests", dependencies: ["ShoalTensor", "ShoalTestSupport"]),
        .testTarget(name: "ShoalRPCTests", dependencies: ["ShoalRPC", "ShoalCertificates"]),
        .testTarget(name: "ShoalProtocolTests", dependencies: ["ShoalProtocol", "ShoalTensor"]),
        .testTarget(name: "ShoalTokenizerTests", dependencies: ["ShoalTokenizer", "ShoalTensor"]),
        .testTarget(name: "ShoalModelTests", dependencies: ["ShoalModel", "ShoalTestSupport"]),
        // The commands as users run them: the `shoal` binary in processes, and ShoalCLI's parsing.
        .testTarget(name: "ShoalCLITests", dependencies: ["ShoalCLI", "ShoalModel", "ShoalTensor", "ShoalTestSupport"]),
        .testTarget(
            name: "ShoalClusterTests",
            dependencies: ["ShoalCertificates", "ShoalCluster", "ShoalModel", "ShoalProtocol", "ShoalRPC", "ShoalTensor",
                           "ShoalTestSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "ShoalHTTPTests", dependencies: ["ShoalHTTP", "ShoalTestSupport"]),
        .testTarget(
            name: "ShoalServeTests",
            dependencies: ["ShoalServe", "ShoalClient", "ShoalCertificates", "ShoalCluster", "ShoalModel", "ShoalTokenizer", "ShoalHTTP",
                           "ShoalTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
