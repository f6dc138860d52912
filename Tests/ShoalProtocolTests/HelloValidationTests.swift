import Foundation
import ShoalProtocol
import Testing

@Suite struct HelloValidationTests {
    func refusal(_ change: (inout Shoal_V1_HelloResponse) -> Void) -> ProtocolError? {
        var response = Fixture.helloResponse()
        change(&response)
        return #expect(throws: ProtocolError.self) { try validate(response, expecting: Fixture.expectation) }
    }

    @Test func compatibleWorkerPasses() throws {
        let hello = try validate(Fixture.helloResponse(), expecting: Fixture.expectation)
        #expect(hello.pairs.count == 16)
        #expect(hello.pairs.first == HeldPair(layer: 0, expert: 0) && hello.pairs.last == HeldPair(layer: 3, expert: 3))
        #expect(hello.weightBytes == 123_456_789 && hello.memoryBytes == 64 << 30 && hello.weightDType == .bf16)
        #expect(hello.workerName == "shoal-worker 0.1.0 on test")
    }

    @Test func otherProtocolVersion() {
        let error = refusal { $0.protocolVersion = 1 }
        #expect(error == .incompatibleWorker(.protocolVersion(expected: 2, actual: 1)))
        #expect(error?.description == "incompatible worker: protocol_version: expected 2, got 1")
    }

    @Test func otherModelNamesBothFingerprints() throws {
        let error = refusal { $0.modelFingerprint = "0123abcd" }
        #expect(error == .incompatibleWorker(.fingerprint(expected: Fixture.fingerprint, actual: "0123abcd")))
        let message = try #require(error?.description)
        #expect(message.contains("model_fingerprint") && message.contains(Fixture.fingerprint) && message.contains("0123abcd"))
    }

    @Test func hostileFingerprintIsShortAndPrintable() throws {
        let error = refusal { $0.modelFingerprint = "evil\n" + String(repeating: "x", count: 10_000) }
        let message = try #require(error?.description)
        #expect(!message.contains("\n") && message.count < 300)
    }

    @Test func shapeChecks() {
        #expect(refusal { $0.clearShape() } == .incompatibleWorker(.missingShape))
        var other = Fixture.shape
        other.hiddenDim = 32
        let error = refusal { $0.shape = other.proto }
        #expect(error == .incompatibleWorker(.shape(expected: Fixture.shape, actual: other)))
        #expect(error?.description.contains("shape: expected dim 8, hidden_dim 16") == true)
    }

    @Test func pairChecks() {
        #expect(refusal { $0.experts.removeLast() } == .incompatibleWorker(.pairArrayLengths(layers: 16, experts: 15)))
        #expect(refusal { $0.layers[3] = 4 } == .incompatibleWorker(.pairOutOfRange(index: 3, layer: 4, expert: 3)))
        #expect(refusal { $0.experts[5] = 8 } == .incompatibleWorker(.pairOutOfRange(index: 5, layer: 1, expert: 8)))
        let error = refusal { $0.layers.append(2); $0.experts.append(1) }
        #expect(error == .incompatibleWorker(.duplicatePair(index: 16, layer: 2, expert: 1)))
        #expect(error?.description.contains("layers/experts[16]") == true)
    }

    @Test func workerRefusesOtherCoordinators() throws {
        var request = Shoal_V1_HelloRequest()
        request.protocolVersion = ProtocolVersion.current
        request.modelFingerprint = Fixture.fingerprint
        try validate(request, expecting: Fixture.expectation)
        request.modelFingerprint = "beef"
        #expect(throws: ProtocolError.incompatibleCoordinator(.fingerprint(expected: Fixture.fingerprint, actual: "beef"))) {
            try validate(request, expecting: Fixture.expectation)
        }
        request.protocolVersion = 0
        #expect(throws: ProtocolError.incompatibleCoordinator(.protocolVersion(expected: 2, actual: 0))) {
            try validate(request, expecting: Fixture.expectation)
        }
    }
}
