import ShoalModel
import ShoalProtocol
import ShoalRPC

/// What goes wrong between a coordinator and its workers. Every case names the worker and,
/// where a computation failed, the layer and the experts it was asked for.
public enum ClusterError: Error, CustomStringConvertible, Sendable {
    /// A `--experts` value that does not parse.
    case badExpertSpec(String, item: String)
    /// A `--experts` value naming layers or experts the model does not have.
    case specOutOfRange(String, layers: Int, experts: Int)
    /// A `--workers` value that is not a comma-separated list of HOST:PORT.
    case badWorkerList(String)
    /// Hello failed: the worker could not be reached or answered with an error.
    case unreachable(worker: String, status: RPCStatus)
    /// The worker answered hello but runs another model, protocol or shape.
    case refused(worker: String, reason: ProtocolError)
    /// The worker refused our hello: it serves another model or protocol (its message says which).
    case refusedByWorker(worker: String, message: String)
    /// The worker's hello answer did not parse.
    case malformedHello(worker: String, detail: String)
    /// Some pairs have no worker holding them (listed, with the workers that are down).
    case missingPairs([ExpertKey], down: [String])
    /// A Compute call failed.
    case computeFailed(worker: String, layer: Int, experts: [Int], status: RPCStatus)
    /// A Compute answer did not match its request.
    case badResponse(worker: String, layer: Int, experts: [Int], detail: String)
    /// A joined worker's hello lists fewer pairs than it was assigned (it restarted): it is
    /// not used until it holds them again.
    case holdsLess(worker: String, missing: Int)

    public var description: String {
        switch self {
        case let .badExpertSpec(text, item):
            return "--experts \"\(text)\": \"\(item)\" is not EXPERTS[@LAYERS] (e.g. 0-3 or 0-3@0-15)"
        case let .specOutOfRange(text, layers, experts):
            return "--experts \"\(text)\": the model has layers 0-\(layers - 1) and experts 0-\(experts - 1)"
        case let .badWorkerList(text):
            return "--workers \"\(text)\": expected HOST:PORT[,HOST:PORT…]"
        case let .unreachable(worker, status):
            return "worker \(worker) is unreachable: \(status)"
        case let .refused(worker, reason):
            return "worker \(worker) refused: \(reason)"
        case let .refusedByWorker(worker, message):
            return "worker \(worker) refused this coordinator: \(message)"
        case let .malformedHello(worker, detail):
            return "worker \(worker) sent a malformed hello: \(detail)"
        case let .missingPairs(pairs, down):
            let shown = pairs.prefix(16).map { "\($0.layer)/\($0.expert)" }.joined(separator: ", ")
            let more = pairs.count > 16 ? " and \(pairs.count - 16) more" : ""
            let why = down.isEmpty ? "" : " (down: \(down.joined(separator: ", ")))"
            return "no live worker holds \(pairs.count) (layer/expert) pairs: \(shown)\(more)\(why)"
        case let .computeFailed(worker, layer, experts, status):
            return "worker \(worker) failed layer \(layer) experts \(Self.list(experts)): \(status)"
        case let .badResponse(worker, layer, experts, detail):
            return "worker \(worker) answered layer \(layer) experts \(Self.list(experts)) wrongly: \(detail)"
        case let .holdsLess(worker, missing):
            return "worker \(worker) no longer holds \(missing) of the pairs it was assigned (did it restart?)"
        }
    }

    static func list(_ experts: [Int]) -> String { experts.map(String.init).joined(separator: ",") }
}
