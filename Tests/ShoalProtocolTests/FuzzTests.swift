import Foundation
import ShoalProtocol
import ShoalTensor
import SwiftProtobuf
import Testing

/// Random and mutated bytes through decode + validate: nothing crashes or hangs, and
/// whatever validation accepts really is consistent (DESIGN invariant 4).
@Suite struct FuzzTests {
    static let iterations = 20_000

    /// A valid message's bytes, broken in one of the ways a faulty or hostile peer might.
    static func mutate(_ valid: Data, fields: [Data], using rng: inout SeededRNG) -> Data {
        var bytes = [UInt8](valid)
        switch Int.random(in: 0..<5, using: &rng) {
        case 0:  // bit flips
            for _ in 0..<Int.random(in: 1...4, using: &rng) where !bytes.isEmpty {
                bytes[Int.random(in: bytes.indices, using: &rng)] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
            }
        case 1:  // truncation
            bytes.removeLast(Int.random(in: 0...bytes.count, using: &rng))
        case 2:  // insertion of random bytes
            let at = Int.random(in: 0...bytes.count, using: &rng)
            bytes.insert(contentsOf: (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, at: at)
        case 3:  // a field sent again: scalars take the last value, repeated fields concatenate
            bytes += fields[Int.random(in: fields.indices, using: &rng)]
        default:  // a byte overwritten
            if !bytes.isEmpty { bytes[Int.random(in: bytes.indices, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
        }
        return Data(bytes)
    }

    /// Each set field of `message` serialized on its own, for duplication.
    static func fieldsOf(_ request: Shoal_V1_ComputeRequest) throws -> [Data] {
        var parts: [Shoal_V1_ComputeRequest] = Array(repeating: .init(), count: 8)
        parts[0].layer = request.layer
        parts[1].tokenCount = request.tokenCount
        parts[2].dim = request.dim
        parts[3].dtype = request.dtype
        parts[4].hidden = request.hidden
        parts[5].routeToken = request.routeToken
        parts[6].routeExpert = request.routeExpert
        parts[7].routeWeight = request.routeWeight
        return try parts.map { try $0.serializedData() }
    }

    static func fieldsOf(_ response: Shoal_V1_HelloResponse) throws -> [Data] {
        var parts: [Shoal_V1_HelloResponse] = Array(repeating: .init(), count: 5)
        parts[0].protocolVersion = response.protocolVersion
        parts[1].modelFingerprint = response.modelFingerprint
        parts[2].layers = response.layers
        parts[3].experts = response.experts
        parts[4].shape = response.shape
        return try parts.map { try $0.serializedData() }
    }

    /// Decodes and validates `bytes` as a ComputeRequest; returns whether it was accepted.
    static func feedCompute(_ bytes: Data) -> Bool {
        guard let request = try? Shoal_V1_ComputeRequest(serializedBytes: bytes),
              let valid = try? validate(request, limits: Fixture.limits) else { return false }
        let limits = Fixture.limits
        #expect(valid.layer >= 0 && valid.layer < limits.layers)
        #expect(valid.tokenCount >= 1 && valid.tokenCount <= limits.maxTokens)
        #expect(valid.dim == limits.dim)
        #expect(valid.hidden.count == valid.tokenCount * valid.dim * valid.dtype.byteWidth)
        #expect(valid.routes.count >= valid.tokenCount && valid.routes.count <= valid.tokenCount * limits.experts)
        var covered = Set<Int>(), previous: Route?
        for route in valid.routes {
            #expect(route.token >= 0 && route.token < valid.tokenCount)
            #expect(route.expert >= 0 && route.expert < limits.experts && limits.held(valid.layer, route.expert))
            #expect(route.weight.isFinite)
            if let p = previous { #expect((p.token, p.expert) < (route.token, route.expert)) }
            covered.insert(route.token)
            previous = route
        }
        #expect(covered.count == valid.tokenCount)
        var x = [Float](repeating: 0, count: valid.tokenCount * valid.dim)
        x.withUnsafeMutableBufferPointer { valid.decodeHidden(into: $0) }
        return true
    }

    /// Decodes and validates `bytes` as a HelloResponse; returns whether it was accepted.
    static func feedHello(_ bytes: Data) -> Bool {
        guard let response = try? Shoal_V1_HelloResponse(serializedBytes: bytes),
              let hello = try? validate(response, expecting: Fixture.expectation) else { return false }
        #expect(response.protocolVersion == ProtocolVersion.current)
        #expect(response.modelFingerprint == Fixture.fingerprint)
        #expect(ModelShape(response.shape) == Fixture.shape)
        #expect(hello.pairs.count == response.layers.count && Set(hello.pairs).count == hello.pairs.count)
        for pair in hello.pairs {
            #expect(pair.layer >= 0 && pair.layer < Fixture.layers && pair.expert >= 0 && pair.expert < Fixture.experts)
        }
        return true
    }

    @Test(.timeLimit(.minutes(1))) func randomBytes() {
        var rng = SeededRNG(seed: 0x5EED_0001)
        var decodedAny = 0
        for _ in 0..<Self.iterations {
            let bytes = Data((0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
            _ = Self.feedCompute(bytes)
            _ = Self.feedHello(bytes)
            if (try? Shoal_V1_ComputeRequest(serializedBytes: bytes)) != nil { decodedAny += 1 }
        }
        #expect(decodedAny > 0)  // the decoder was exercised past its first byte
    }

    @Test(.timeLimit(.minutes(1))) func mutatedComputeRequests() throws {
        var rng = SeededRNG(seed: 0x5EED_0002)
        let seeds = [Fixture.computeRequest(dtype: .f32), Fixture.computeRequest(dtype: .bf16)]
        let valid = try seeds.map { try $0.serializedData() }
        let fields = try seeds.map(Self.fieldsOf)
        var accepted = 0
        for i in 0..<Self.iterations {
            let which = i % seeds.count
            if Self.feedCompute(Self.mutate(valid[which], fields: fields[which], using: &rng)) { accepted += 1 }
        }
        // Some mutations (a weight's bits, a duplicated scalar) stay valid: the accept path ran.
        #expect(accepted > 0 && accepted < Self.iterations)
    }

    @Test(.timeLimit(.minutes(1))) func mutatedHelloResponses() throws {
        var rng = SeededRNG(seed: 0x5EED_0003)
        let valid = try Fixture.helloResponse().serializedData()
        let fields = try Self.fieldsOf(Fixture.helloResponse())
        var accepted = 0
        for _ in 0..<Self.iterations where Self.feedHello(Self.mutate(valid, fields: fields, using: &rng)) {
            accepted += 1
        }
        #expect(accepted > 0 && accepted < Self.iterations)
    }
}
