import ShoalTestSupport

/// The fixtures the command tests read (`FixtureFolder`, `ReferenceOutputs`).
enum Fixtures {
    static func path(_ relative: String) throws -> String { try FixtureFolder.path(relative) }
    static func temporaryFolder() throws -> String { try FixtureFolder.temporary() }
    typealias Expected = ReferenceOutputs
}
