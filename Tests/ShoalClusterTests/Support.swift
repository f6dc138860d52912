import Foundation
import Logging
import Testing
import ShoalCluster
import ShoalModel
import ShoalRPC
import ShoalTestSupport

/// The fixtures (`FixtureFolder`) and what the cluster tests read from them.
enum Fixtures {
    static func path(_ relative: String) throws -> String { try FixtureFolder.path(relative) }

    /// The prompts' token ids from a model's expected.json.
    static func prompts(_ model: String) throws -> [[Int]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: try path("models/\(model)/expected.json")))
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        return (json["prompts"] as! [[String: Any]]).map { $0["input_ids"] as! [Int] }
    }
}

/// A coordinator over `folder` whose experts are the given workers.
func clusterEngine(_ folder: String, _ addresses: [String], wire: WireDTypeChoice = .f32) throws -> Engine {
    var options = RemoteExperts.Options()
    options.wireDType = wire.value
    options.timeout = .seconds(20)
    return try Engine(folder: folder, threads: 1) { checkpoint, _ in
        // A worker the first hello cannot reach is only named by the error that follows: its
        // gRPC status goes to stderr, so a failure in CI's log says why.
        try RemoteExperts(checkpoint: checkpoint, workers: addresses, options: options) {
            FileHandle.standardError.write(Data("clusterEngine: \($0)\n".utf8))
        }
    }
}

import ShoalProtocol
enum WireDTypeChoice { case f32, bf16
    var value: WireDType { self == .f32 ? .f32 : .bf16 }
}

/// The logits of every position of every prompt, each prompt from an empty cache.
func allLogits(_ engine: Engine, _ prompts: [[Int]]) throws -> [[Float]] {
    try prompts.map { ids in
        let cache = KVCache(config: engine.model.config, capacity: ids.count)
        return Array(try engine.model.forward(ids, cache: cache, allLogits: true))
    }
}

/// 24 greedy tokens after `prompt`, EOS ignored.
func greedy(_ engine: Engine, _ prompt: [Int], tokens: Int = 24) throws -> [Int] {
    try engine.generator.generate(
        prompt: prompt, parameters: GenerationParameters(maxTokens: tokens, ignoreEOS: true)).ids
}

/// Bit patterns, so that -0 vs 0 and NaN payloads count as differences.
func bits(_ values: [[Float]]) -> [[UInt32]] { values.map { $0.map(\.bitPattern) } }

/// The error `body` throws, as text, or nil when it throws nothing.
func errorText(_ body: @escaping @Sendable () throws -> Void) async -> String? {
    do {
        try await offPool(body)
        return nil
    } catch {
        return "\(error)"
    }
}
