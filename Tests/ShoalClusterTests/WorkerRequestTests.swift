import Foundation
import ShoalTestSupport
import Testing
import ShoalCluster
import ShoalModel
import ShoalProtocol
import ShoalRPC
import Synchronization

/// What a worker answers a bad peer, over the wire: a clear status naming the problem, and
/// it keeps serving.
@Suite struct WorkerRequestTests {
    /// The same answers as a unary Compute and on a ComputeStream (where a refusal ends the
    /// stream, so each request here gets a stream of its own).
    @Test(arguments: [ExpertServiceMethod.compute, ExpertServiceMethod.computeStream])
    func badComputeRequestsGetInvalidArgumentNamingTheField(method: String) async throws {
        let cluster = try LocalCluster(folder: try Fixtures.path("models/tiny-f32/hf"), specs: ["0-3"])
        let channel = RPCChannel(target: cluster.addresses[0])
        let queue = RPCCallerQueue()
        func status(_ payload: RPCPayload) async -> RPCStatus? {
            let result: Result<RPCPayload, Error>
            if method == ExpertServiceMethod.compute {
                do {
                    result = .success(try await channel.unary(method, request: payload, timeout: .seconds(10)))
                } catch {
                    result = .failure(error)
                }
            } else {
                // The worker answers on its polling thread, so waiting here starves no one.
                let stream = channel.openExchange(method, on: queue)
                let answer = Mutex<Result<RPCPayload, Error>?>(nil)
                stream.exchange(payload) { r in answer.withLock { $0 = r } }
                _ = queue.run(until: { answer.withLock { $0 != nil } }, deadline: .now + .seconds(10))
                stream.cancel(RPCStatus(code: .cancelled, message: "test done"))
                result = answer.withLock { $0 } ?? .failure(RPCStatus(code: .deadlineExceeded, message: "no answer"))
            }
            guard case .failure(let error) = result else { return nil }
            return error as? RPCStatus ?? RPCStatus(code: .unknown, message: "\(error)")
        }
        let garbage = await status(RPCPayload([0xFF, 0xFF, 0xFF]))
        #expect(garbage?.code == .invalidArgument && garbage?.message.contains("ComputeRequest") == true, "\(String(describing: garbage))")

        var request = Shoal_V1_ComputeRequest()
        request.layer = 0
        request.tokenCount = 1
        request.dim = 64
        request.dtype = .f32
        request.hidden = ActivationCodec.encode([Float](repeating: 0.5, count: 64), as: .f32)
        request.routeToken = [0]
        request.routeExpert = [5]  // held by another worker
        request.routeWeight = [1]
        let notHeld = await status(try encodedPayload(request))
        #expect(notHeld?.code == .invalidArgument && notHeld?.message.contains("expert 5") == true, "\(String(describing: notHeld))")

        // Still serving: the same request for an expert it holds succeeds.
        request.routeExpert = [2]
        #expect(await status(try encodedPayload(request)) == nil)
        channel.close()
        withExtendedLifetime(queue) {}
        await cluster.stop()
    }

    @Test func coordinatorOfAnotherConfigIsRefusedByTheWorker() async throws {
        let cluster = try LocalCluster(folder: try Fixtures.path("models/tiny-f32/hf"), specs: ["0-7"])
        let folder = NSTemporaryDirectory() + "shoal-other-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: folder) }
        var config = Synth.preset("tiny")!
        config.ropeTheta = 1234
        try Synth.write(config, to: folder)
        let addresses = cluster.addresses
        let text = await errorText { _ = try clusterEngine(folder, addresses) }
        await cluster.stop()
        #expect(text?.hasPrefix("worker \(addresses[0]) refused this coordinator: ") == true, "\(text ?? "no error")")
        #expect(text?.contains("model_fingerprint: expected") == true, "\(text ?? "no error")")
    }
}

/// A message as the transport's payload.
func encodedPayload(_ request: Shoal_V1_ComputeRequest) throws -> RPCPayload {
    let bytes: [UInt8] = try request.serializedBytes()
    return RPCPayload(bytes)
}
