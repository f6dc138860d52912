import Foundation

/// Progress of long work measured in bytes, on stderr: a bar with rate and ETA redrawn in place
/// on a terminal, a line per step otherwise (logs and pipes get no carriage returns).
final class ProgressBar {
    private let title: String
    private let total: Int
    private let start = Date()
    private let isTerminal = isatty(STDERR_FILENO) == 1
    private var lastDraw = Date.distantPast
    private var lastLabel = ""
    private var finished = false

    init(_ title: String, totalBytes: Int) {
        self.title = title
        total = max(totalBytes, 1)
    }

    /// `done` of `total` so far; `label` names the current step. Redraws at most 10 times a
    /// second on a terminal; elsewhere prints a line whenever the label changes.
    func update(_ done: Int, label: String = "") {
        let now = Date()
        if isTerminal {
            guard now.timeIntervalSince(lastDraw) >= 0.1 || done >= total else { return }
            lastDraw = now
            let fraction = min(1, Double(done) / Double(total)), width = 24
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "=", count: filled) + (filled < width ? ">" : "")
                + String(repeating: " ", count: max(0, width - filled - 1))
            let line = "\(title) [\(bar)] \(Int(fraction * 100))% \(formatBytes(done))/\(formatBytes(total)) \(rate(done, now)) \(eta(done, now)) \(label)"
            FileHandle.standardError.write(Data(("\r" + line.prefix(160) + "\u{1B}[K").utf8))
        } else if !finished && (label != lastLabel || done >= total) {
            lastLabel = label
            finished = done >= total
            let percent = Int(min(1, Double(done) / Double(total)) * 100)
            printErr("\(title): \(percent)% \(formatBytes(done))/\(formatBytes(total)) \(rate(done, now)) \(eta(done, now)) \(label)")
        }
    }

    /// Ends the bar's line on a terminal.
    func finish() {
        update(total, label: lastLabel)
        if isTerminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    private func rate(_ done: Int, _ now: Date) -> String {
        let seconds = now.timeIntervalSince(start)
        guard seconds > 0.2 else { return "" }
        return formatBytes(Int(Double(done) / seconds)) + "/s"
    }

    private func eta(_ done: Int, _ now: Date) -> String {
        let seconds = now.timeIntervalSince(start)
        guard done > 0, done < total, seconds > 0.5 else { return done >= total ? "done in \(clock(seconds))" : "" }
        return "ETA " + clock(seconds * Double(total - done) / Double(done))
    }

    private func clock(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }
}
