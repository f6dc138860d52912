import Foundation
import Logging
import ShoalCluster
import ShoalHTTP
import ShoalModel
import ShoalRPC
import ShoalTensor

/// The coordinator as a service: one scheduler over the engine, the OpenAI HTTP API and the
/// gRPC prompt API in front of it, and the metrics all three report to.
public final class PromptServer: @unchecked Sendable {
    /// Where to listen and what to call the model; `shoal serve`'s options.
    public struct Options: Sendable {
        /// HTTP `host:port`; port 0 picks a free one. Nil: no HTTP API.
        public var http: String? = "127.0.0.1:8080"
        /// gRPC `host:port`; port 0 picks a free one. Nil: no gRPC API.
        public var grpc: String? = "127.0.0.1:7000"
        /// A second HTTP listener serving only /metrics and /health, without keys; nil: none.
        public var metrics: String?
        /// The id clients name the model by (`/v1/models`).
        public var modelName = "mixtral"
        public var scheduler = Scheduler.Options()
        /// Who may call the HTTP API (keys, hosts, web origins); the keys guard gRPC too.
        public var access = HTTPAccess()
        /// TLS of the gRPC prompt API (server certificate only); nil: plaintext.
        public var grpcSecurity: RPCSecurity?
        /// The HTTP API's certificate and key (HTTPS); nil: plain HTTP. The metrics listener
        /// stays plain: it is for a scraper on the same host.
        public var httpTLS: HTTPServerTLS?
        /// The cluster's status as JSON for `GET /v1/cluster`; nil: from the engine's remote
        /// experts when it has them (fixed placement).
        public var clusterJSON: (@Sendable () -> Data)?

        public init() {}
    }

    public let scheduler: Scheduler
    public let metrics: ServeMetrics
    private let http: HTTPServer?
    private let metricsHTTP: HTTPServer?
    private let grpc: RPCServer?

    /// Starts serving `engine`: the scheduler's thread first, then the listeners.
    /// - Throws: `ServeError.badAddress` for an unusable `host:port`, or the listener's
    ///   own error when it cannot bind; nothing keeps running then.
    /// - Parameter remote: the engine's experts when they are on workers (its metrics, health
    ///   and idle probes come from them); nil for experts in this process.
    public init(engine: Engine, cluster remote: RemoteExperts? = nil, options: Options,
                log: Logger = Logger(label: "shoal.serve")) throws {
        let config = engine.model.config
        metrics = ServeMetrics(layers: config.layers, experts: config.experts,
                               workers: remote?.workers.map(\.address) ?? [])
        if let remote {
            // Per call records would grow without end in a server; metrics take over.
            remote.stats.isRecording = false
            let metrics = self.metrics
            remote.stats.observer = { call in metrics.fanOut(seconds: call.elapsed.seconds) }
            remote.callObserver = { worker, elapsed, failed, sent, received in
                metrics.workerCall(worker: worker, seconds: elapsed.seconds, failed: failed,
                                   sentBytes: sent, receivedBytes: received)
            }
        }
        let coverage = remote?.coverage
        let clusterJSON: (@Sendable () -> Data)? = options.clusterJSON ?? remote.map { remote in
            let (view, coverage) = (remote.view, remote.coverage)
            return {
                ClusterStatus(placement: "fixed", workers: view.workers, complete: coverage.isComplete,
                              layers: config.layers, experts: config.experts).json()
            }
        }
        scheduler = Scheduler(
            engine: engine, options: options.scheduler, metrics: metrics,
            isReady: { coverage?.isComplete ?? true }, probe: remote.map { remote in { remote.probe() } },
            log: log)
        scheduler.start()
        let metrics = self.metrics, scheduler = self.scheduler
        do {
            http = try options.http.map { address in
                let (host, port) = try Self.split(address)
                var access = options.access
                if access.allowedHosts == nil {
                    access.allowedHosts = HTTPAccess.defaultHosts(listening: host, extra: [])
                }
                let api = OpenAIAPI(service: scheduler, modelName: options.modelName, access: access,
                                    metricsText: { metrics.render() }, clusterJSON: clusterJSON, log: log)
                return try HTTPServer.start(host: host, port: port, tls: options.httpTLS) { request, responder in
                    api.handle(request, responder)
                }
            }
        } catch {
            scheduler.shutdown(grace: .zero)
            throw error
        }
        do {
            metricsHTTP = try options.metrics.map { address in
                let (host, port) = try Self.split(address)
                let access = HTTPAccess(allowedHosts: options.access.allowedHosts ?? HTTPAccess.defaultHosts(listening: host, extra: []))
                let api = OpenAIAPI(service: scheduler, modelName: options.modelName, access: access, surface: .metricsOnly,
                                    metricsText: { metrics.render() }, log: log)
                return try HTTPServer.start(host: host, port: port) { request, responder in
                    api.handle(request, responder)
                }
            }
            if let address = options.grpc {
                _ = try Self.split(address)
                let service = CoordinatorService(service: scheduler, modelName: options.modelName, keys: options.access.keys) {
                    scheduler.load
                }
                grpc = try RPCServer.start(listen: address, security: options.grpcSecurity ?? .insecure,
                                           unary: service.unaryHandlers, serverStreaming: service.streamingHandlers)
            } else {
                grpc = nil
            }
        } catch {
            http?.shutdown(grace: .zero)
            scheduler.shutdown(grace: .zero)
            throw error
        }
    }

    /// The bound HTTP port, nil without HTTP.
    public var httpPort: Int? { http?.port }
    /// The bound port of the metrics-only listener, nil without one.
    public var metricsPort: Int? { metricsHTTP?.port }
    /// The bound gRPC port, nil without gRPC.
    public var grpcPort: Int? { grpc?.port }

    /// Stops taking requests (the listeners close, new submissions are refused), gives
    /// running ones up to `grace` to finish with their streams still flowing, fails the rest,
    /// and returns when everything has stopped.
    public func shutdown(grace: Duration) {
        let closed = DispatchGroup()
        for http in [http, metricsHTTP].compactMap({ $0 }) {
            closed.enter()
            Thread.detachNewThread {
                http.shutdown(grace: grace + .seconds(1))
                closed.leave()
            }
        }
        if let grpc {
            closed.enter()
            Task {
                await grpc.shutdown(grace: grace + .seconds(1))
                closed.leave()
            }
        }
        scheduler.shutdown(grace: grace)
        closed.wait()
    }

    /// `"host:port"` → its parts; `[::1]:80` and `:80` (every interface) too.
    public static func split(_ address: String) throws(ServeError) -> (host: String, port: Int) {
        guard let endpoint = Endpoint(address) else { throw .badAddress(address) }
        return (endpoint.host, endpoint.port)
    }
}

/// Why the server could not start.
public enum ServeError: Error, CustomStringConvertible, Equatable {
    case badAddress(String)
    case apiKeys(String)

    public var description: String {
        switch self {
        case let .badAddress(address): "'\(address)' is not HOST:PORT"
        case let .apiKeys(why): "--api-key-file \(why)"
        }
    }
}
