import ArgumentParser
import Foundation

/// `shoal`: Mixtral across a shoal of small machines.
public struct ShoalCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "shoal",
        abstract: "Run Mixtral-architecture models exactly, on one machine or across several.",
        subcommands: [
            DemoCommand.self, ServeCommand.self, WorkerCommand.self, GenerateCommand.self, LogitsCommand.self, TokenizeCommand.self,
            DetokenizeCommand.self, SynthCommand.self, QuantizeCommand.self, BenchCommand.self, KernelBenchCommand.self, LoadCommand.self, ChatCommand.self,
            CertsCommand.self, ClusterCommand.self,
        ])

    public init() {}
}

/// Prints `error: <one line>` on stderr and exits 1: the one way commands report failures.
func fail(_ error: Error) -> ExitCode {
    let message = String(describing: error)
    FileHandle.standardError.write(Data(("error: " + message + "\n").utf8))
    return ExitCode(1)
}

/// Runs `body`, turning any thrown error into a one-line message and exit code 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let exit as ExitCode { throw exit } catch { throw fail(error) }
}

/// Errors in command-line values that ArgumentParser cannot see.
enum UsageError: Error, CustomStringConvertible {
    case badIDs(String)
    case conflicting(String)

    var description: String {
        switch self {
        case let .badIDs(s): return "--ids takes comma-separated integers, got \(s)"
        case let .conflicting(s): return s
        }
    }
}

/// `"1,2,3"` → `[1, 2, 3]`.
func parseIDs(_ text: String) throws -> [Int] {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false)
    let ids = parts.compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !text.isEmpty, ids.count == parts.count else { throw UsageError.badIDs(text) }
    return ids
}

func printErr(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

/// JSON of a string, with no escaping of `/` and non-ASCII kept as is.
func jsonString(_ s: String) -> String {
    let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
    let array = String(decoding: data, as: UTF8.self)
    return String(array.dropFirst().dropLast())
}

func jsonArray(_ ids: [Int]) -> String { "[" + ids.map(String.init).joined(separator: ",") + "]" }
