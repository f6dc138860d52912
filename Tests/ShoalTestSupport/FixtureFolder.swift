import Foundation
import Testing

/// `../shared/fixtures` beside the repository, for every test target. Tests fail, never
/// skip, when it is missing.
public enum FixtureFolder {
    public static let root: String = {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return repo.deletingLastPathComponent().appendingPathComponent("shared/fixtures").path
    }()

    /// The absolute path of `relative` inside the fixtures, recording a test issue and
    /// throwing when it does not exist.
    public static func path(_ relative: String) throws -> String {
        let p = root + "/" + relative
        guard FileManager.default.fileExists(atPath: p) else {
            Issue.record("fixture \(p) is missing: the tests need ../shared/fixtures beside the repository")
            throw Missing(path: p)
        }
        return p
    }

    /// A fresh temporary folder, removed by the caller.
    public static func temporary() throws -> String {
        let p = NSTemporaryDirectory() + "shoal-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    public struct Missing: Error {
        public let path: String
    }
}
