import Foundation
import ShoalProtocol
import ShoalTensor
import Testing

/// One way to break the fixture request, the error it must produce, and the field its
/// message must name.
struct BadRequest: Sendable, CustomTestStringConvertible {
    let name: String
    let field: String
    let error: ProtocolError
    let breakIt: @Sendable (inout Shoal_V1_ComputeRequest) -> Void
    var testDescription: String { name }

    static func routes(_ r: inout Shoal_V1_ComputeRequest, _ tokens: [UInt32], _ experts: [UInt32]) {
        r.routeToken = tokens
        r.routeExpert = experts
        r.routeWeight = Array(repeating: 0.5, count: tokens.count)
    }

    static let all: [BadRequest] = [
        .init(name: "layer past the end", field: "layer", error: .layerOutOfRange(layer: 4, layers: 4)) { $0.layer = 4 },
        .init(name: "no tokens", field: "token_count", error: .tokenCountOutOfRange(tokenCount: 0, maxTokens: 16)) {
            $0.tokenCount = 0
        },
        .init(name: "too many tokens", field: "token_count",
              error: .tokenCountOutOfRange(tokenCount: 17, maxTokens: 16)) { $0.tokenCount = 17 },
        .init(name: "wrong dim", field: "dim", error: .dimMismatch(expected: 8, actual: 7)) { $0.dim = 7 },
        .init(name: "unspecified dtype", field: "dtype", error: .unsupportedDType(raw: 0)) { $0.dtype = .unspecified },
        .init(name: "unknown dtype", field: "dtype", error: .unsupportedDType(raw: 9)) { $0.dtype = .UNRECOGNIZED(9) },
        .init(name: "hidden one byte short", field: "hidden", error: .hiddenSize(expected: 96, actual: 95)) {
            $0.hidden.removeLast()
        },
        .init(name: "f32 bytes labelled bf16", field: "hidden", error: .hiddenSize(expected: 48, actual: 96)) {
            $0.dtype = .bf16
        },
        .init(name: "weights array short", field: "route_weight",
              error: .routeArrayLengths(tokens: 5, experts: 5, weights: 4)) { $0.routeWeight.removeLast() },
        .init(name: "experts array long", field: "route_expert",
              error: .routeArrayLengths(tokens: 5, experts: 6, weights: 5)) { $0.routeExpert.append(3) },
        .init(name: "fewer routes than tokens", field: "route_token", error: .tooFewRoutes(routes: 2, tokenCount: 3)) {
            routes(&$0, [0, 1], [0, 1])
        },
        .init(name: "token past token_count", field: "route_token[4]",
              error: .routeTokenOutOfRange(index: 4, token: 3, tokenCount: 3)) { $0.routeToken[4] = 3 },
        .init(name: "repeated (token, expert)", field: "route_expert[1]",
              error: .routesUnsorted(index: 1, token: 0, expert: 0)) { $0.routeExpert[1] = 0 },
        .init(name: "experts descending in a token", field: "route_expert[3]",
              error: .routesUnsorted(index: 3, token: 2, expert: 0)) { routes(&$0, [0, 1, 2, 2], [0, 1, 3, 0]) },
        .init(name: "tokens descending", field: "route_token[3]",
              error: .routesUnsorted(index: 3, token: 1, expert: 2)) { routes(&$0, [0, 1, 2, 1], [0, 1, 0, 2]) },
        .init(name: "middle token skipped", field: "route_token", error: .tokenWithoutRoute(token: 1)) {
            routes(&$0, [0, 0, 2, 2], [0, 2, 0, 3])
        },
        .init(name: "last token skipped", field: "route_token", error: .tokenWithoutRoute(token: 2)) {
            routes(&$0, [0, 0, 1], [0, 2, 1])
        },
        .init(name: "first token skipped", field: "route_token", error: .tokenWithoutRoute(token: 0)) {
            routes(&$0, [1, 2, 2], [0, 0, 1])
        },
        .init(name: "expert past the end", field: "route_expert[4]",
              error: .expertOutOfRange(index: 4, expert: 8, experts: 8)) { $0.routeExpert[4] = 8 },
        .init(name: "expert held elsewhere", field: "layer 2 expert 5", error: .expertNotHeld(layer: 2, expert: 5)) {
            $0.routeExpert[4] = 5
        },
        .init(name: "NaN weight", field: "route_weight[2]", error: .nonFiniteWeight(index: 2)) { $0.routeWeight[2] = .nan },
        .init(name: "infinite weight", field: "route_weight[4]", error: .nonFiniteWeight(index: 4)) {
            $0.routeWeight[4] = -.infinity
        },
    ]
}

@Suite struct ComputeValidationTests {
    @Test(arguments: WireDType.allCases) func validRequestPasses(dtype: WireDType) throws {
        let request = Fixture.computeRequest(dtype: dtype)
        let valid = try validate(request, limits: Fixture.limits)
        #expect(valid.layer == 2 && valid.tokenCount == 3 && valid.dim == 8 && valid.dtype == dtype)
        #expect(valid.hidden == request.hidden)
        #expect(valid.outputByteCount == 3 * 8 * dtype.byteWidth)
        #expect(valid.routes == Routes([
            Route(token: 0, expert: 0, weight: 0.75), Route(token: 0, expert: 2, weight: 0.25),
            Route(token: 1, expert: 1, weight: 1), Route(token: 2, expert: 0, weight: 0.5),
            Route(token: 2, expert: 3, weight: 0.5),
        ]))
        var x = [Float](repeating: .nan, count: 24)
        x.withUnsafeMutableBufferPointer { valid.decodeHidden(into: $0) }
        #expect(x == (0..<24).map { Float($0) * 0.25 - 2 })  // exact in bf16 too
    }

    @Test(arguments: BadRequest.all) func badRequestIsRefused(_ bad: BadRequest) {
        var request = Fixture.computeRequest()
        bad.breakIt(&request)
        do {
            let valid = try validate(request, limits: Fixture.limits)
            Issue.record("accepted: \(valid)")
        } catch {
            #expect(error == bad.error)
            #expect(error.description.contains(bad.field), "\(error.description)")
        }
    }

    @Test func sizeOverflowIsAnErrorNotATrap() {
        let huge = Int(UInt32.max)
        let limits = ComputeLimits(dim: huge, layers: 1, experts: 1, maxTokens: huge) { _, _ in true }
        var request = Shoal_V1_ComputeRequest()
        request.tokenCount = .max
        request.dim = .max
        request.dtype = .f32
        #expect(throws: ProtocolError.hiddenSizeOverflow(tokenCount: huge, dim: huge)) {
            try validate(request, limits: limits)
        }
    }

    @Test func heldIsAskedOncePerExpert() throws {
        final class Counter: @unchecked Sendable { var calls = 0 }
        let counter = Counter()
        let limits = ComputeLimits(dim: 8, layers: 4, experts: 8, maxTokens: 16) { _, _ in counter.calls += 1; return true }
        _ = try validate(Fixture.computeRequest(), limits: limits)
        #expect(counter.calls == 4)  // experts 0, 1, 2, 3
    }

    @Test func responseChecks() throws {
        var response = Shoal_V1_ComputeResponse()
        response.dtype = .bf16
        response.output = Data(count: 48)
        try validate(response, tokenCount: 3, dim: 8, dtype: .bf16)
        #expect(throws: ProtocolError.outputSize(expected: 96, actual: 48)) {
            response.dtype = .f32
            try validate(response, tokenCount: 3, dim: 8, dtype: .f32)
        }
        response.dtype = .unspecified
        let error = #expect(throws: ProtocolError.self) { try validate(response, tokenCount: 3, dim: 8, dtype: .bf16) }
        #expect(error == .responseDType(expected: .bf16, actual: 0))
        #expect(error?.description == "dtype: response is DTYPE_UNSPECIFIED, request asked for DTYPE_BF16")
    }
}
