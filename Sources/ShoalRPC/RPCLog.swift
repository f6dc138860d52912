import CGRPCCore
import Foundation

/// The gRPC C core's own log lines (handshake failures among them), which it otherwise prints
/// to stderr in its own format. `route` sends them to a handler instead: the daemons turn them
/// into their log lines, so that a refused TLS peer shows up where operators look.
public enum RPCLog {
    public enum Severity: Sendable { case debug, info, error }

    public struct Line: Sendable {
        public let severity: Severity
        public let message: String
        /// The C core source file that logged it, for context.
        public let file: String

        /// Whether this line is the core's report of a TLS handshake it failed or refused.
        public var isHandshakeFailure: Bool { message.contains("Handshake failed") }
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var handler: (@Sendable (Line) -> Void)?

    /// Sends every core log line to `handler`, from whichever core thread logs it.
    public static func route(_ handler: @escaping @Sendable (Line) -> Void) {
        lock.withLock { self.handler = handler }
        gpr_set_log_function { args in
            guard let args else { return }
            let severity: Severity = switch args.pointee.severity {
            case GPR_LOG_SEVERITY_DEBUG: .debug
            case GPR_LOG_SEVERITY_INFO: .info
            default: .error
            }
            let line = Line(
                severity: severity,
                message: args.pointee.message.map { String(cString: $0) } ?? "",
                file: args.pointee.file.map { String(cString: $0) } ?? "")
            RPCLog.lock.withLock { RPCLog.handler }?(line)
        }
    }
}
