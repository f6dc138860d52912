import Foundation
import ShoalTensor

/// Carries a sequence's events from the scheduler's thread, which must never wait, to the
/// connection's thread, which waits for them.
///
/// `@unchecked Sendable`: `events` is only touched with `condition` locked.
final class EventQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var events: [GenerationEvent] = []

    /// Adds an event; never blocks for long (the lock is held only to append).
    func push(_ event: GenerationEvent) {
        condition.lock()
        events.append(event)
        condition.unlock()
        condition.signal()
    }

    /// Every event pushed since the last call, in order, waiting up to `limit` for one; empty
    /// when none came.
    func take(waitingUpTo limit: Duration) -> [GenerationEvent] {
        let deadline = Date(timeIntervalSinceNow: limit.seconds)
        condition.lock()
        defer { condition.unlock() }
        while events.isEmpty, condition.wait(until: deadline) {}
        let taken = events
        events.removeAll()
        return taken
    }
}
