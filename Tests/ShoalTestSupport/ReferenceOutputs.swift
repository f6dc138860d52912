import Foundation
import ShoalTensor
import Testing

/// A fixture model's reference outputs (`models/NAME/expected.safetensors` and `expected.json`,
/// computed by the reference implementation: ../shared/fixtures/README.md).
public final class ReferenceOutputs {
    public let file: SafetensorsFile
    public let json: [String: Any]

    public init(model: String) throws {
        file = try SafetensorsFile(path: try FixtureFolder.path("models/\(model)/expected.safetensors"))
        let data = try Data(contentsOf: URL(fileURLWithPath: try FixtureFolder.path("models/\(model)/expected.json")))
        json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    public func floats(_ name: String) throws -> [Float] { try file.floats(name) }
    public func ints(_ name: String) throws -> [Int] { try file.floats(name).map { Int($0) } }
    public var promptCount: Int { (json["prompts"] as! [Any]).count }
}

/// Asserts |a-b| <= atol + rtol*|b| elementwise, reporting the worst element.
public func expectClose(_ a: [Float], _ b: [Float], atol: Float = 1e-4, rtol: Float = 1e-4, _ what: String,
                        sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, "\(what): \(a.count) values, expected \(b.count)", sourceLocation: sourceLocation)
    guard a.count == b.count else { return }
    var worst = 0, worstExcess: Float = -.infinity
    for i in a.indices {
        let excess = abs(a[i] - b[i]) - (atol + rtol * abs(b[i]))
        if !(excess <= worstExcess) || excess.isNaN { worstExcess = excess.isNaN ? .infinity : excess; worst = i }
    }
    #expect(worstExcess <= 0,
            "\(what): element \(worst) is \(a[worst]), expected \(b[worst]) (tolerance \(atol) + \(rtol)·|b|)",
            sourceLocation: sourceLocation)
}
