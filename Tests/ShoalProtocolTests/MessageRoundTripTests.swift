import Foundation
import ShoalProtocol
import SwiftProtobuf
import Testing

/// Every message survives serializedData() → init(serializedBytes:) unchanged.
@Suite struct MessageRoundTripTests {
    func roundTrip<M: SwiftProtobuf.Message & Equatable>(_ message: M) throws -> M {
        let bytes = try message.serializedData()
        let back = try M(serializedBytes: bytes)
        #expect(back == message)
        return back
    }

    @Test func helloRequest() throws {
        var request = Shoal_V1_HelloRequest()
        request.protocolVersion = ProtocolVersion.current
        request.modelFingerprint = Fixture.fingerprint
        let back = try roundTrip(request)
        #expect(back.protocolVersion == 2)
        #expect(back.modelFingerprint == Fixture.fingerprint)
    }

    @Test func helloResponse() throws {
        let back = try roundTrip(Fixture.helloResponse())
        #expect(back.layers.count == 16 && back.experts.count == 16)
        #expect(ModelShape(back.shape) == Fixture.shape)
        #expect(back.weightDtype == .bf16)
        #expect(back.memoryBytes == 64 << 30)
    }

    @Test func modelShape() throws {
        #expect(ModelShape(try roundTrip(Fixture.shape.proto)) == Fixture.shape)
    }

    @Test(arguments: WireDType.allCases) func computeRequest(dtype: WireDType) throws {
        let request = Fixture.computeRequest(dtype: dtype)
        let back = try roundTrip(request)
        #expect(back.hidden == request.hidden)
        #expect(back.routeWeight == [0.75, 0.25, 1, 0.5, 0.5])
    }

    @Test func routeArraysArePacked() throws {
        // Packed repeated fields keep a decode step's request small: one tag per array,
        // not one per route. Field 6 (route_token) with wire type 2 is tag byte 0x32.
        var request = Shoal_V1_ComputeRequest()
        request.routeToken = [1, 2, 3]
        #expect(Array(try request.serializedData()) == [0x32, 3, 1, 2, 3])
    }

    @Test func computeResponse() throws {
        var response = Shoal_V1_ComputeResponse()
        response.dtype = .bf16
        response.output = ActivationCodec.encode([1, -2, 3.5, 0], as: .bf16)
        response.computeMicros = 1234
        #expect(try roundTrip(response).output.count == 8)
    }

    @Test func health() throws {
        _ = try roundTrip(Shoal_V1_HealthRequest())
        var response = Shoal_V1_HealthResponse()
        response.status = .serving
        response.uptimeSeconds = 86_400
        response.requestsServed = 1 << 40
        response.pairsHeld = 128
        #expect(try roundTrip(response).status == .serving)
        response.status = .notServing
        #expect(try roundTrip(response).status == .notServing)
    }

    @Test func unknownEnumValuesSurvive() throws {
        // A newer peer's dtype must reach validation as itself, not as a default.
        var request = Shoal_V1_ComputeRequest()
        request.dtype = .UNRECOGNIZED(7)
        #expect(try roundTrip(request).dtype.rawValue == 7)
    }

    @Test func namesMatchTheMethodPaths() {
        #expect(Shoal_V1_ComputeRequest.protoMessageName == "shoal.v1.ComputeRequest")
        for path in ExpertServiceMethod.all {
            #expect(path.hasPrefix("/" + ExpertServiceMethod.service + "/"))
        }
        #expect(ExpertServiceMethod.compute == "/shoal.v1.ExpertService/Compute")
        #expect(ExpertServiceMethod.computeStream == "/shoal.v1.ExpertService/ComputeStream")
        #expect(ProtocolVersion.current == 2)
    }
}
