import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The listener, the accept thread and the registry of open connections.
///
/// `@unchecked Sendable`: the mutable state is only touched with `condition` locked. Sockets
/// are closed under that lock too, so `shutdown` never hits a descriptor number that was
/// closed and reused.
final class ServerCore: @unchecked Sendable {
    typealias Handler = @Sendable (HTTPRequest, HTTPResponder) -> Void

    let port: Int
    let limits: HTTPLimits
    let handler: Handler
    private let listener: Int32
    /// A byte written here wakes the accept thread's poll.
    private let wake: (read: Int32, write: Int32)

    private let condition = NSCondition()
    /// Open connections: their socket, whether a request is being handled on it, and the
    /// client's address.
    private var connections: [Int: (fd: Int32, busy: Bool, peer: String)] = [:]
    /// Open connections per client address.
    private var perClient: [String: Int] = [:]
    private var nextID = 0
    private var stopping = false
    private var accepting = true

    init(host: String, port: Int, limits: HTTPLimits, handler: @escaping Handler) throws(HTTPError) {
        (listener, self.port) = try listeningSocket(host: host, port: port)
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else {
            let code = errno
            Glibc.close(listener)
            throw .socketCall("pipe", errno: code)
        }
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        wake = (pipeFDs[0], pipeFDs[1])
        self.limits = limits
        self.handler = handler
    }

    /// Starts the accept thread.
    func startAccepting() {
        Thread.detachNewThread { self.acceptLoop() }
    }

    private func locked<T>(_ body: () -> T) -> T {
        condition.lock()
        defer { condition.unlock() }
        return body()
    }

    private func acceptLoop() {
        var entries = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0), pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
        accepting: while true {
            let n = poll(&entries, 2, -1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 || entries[1].revents != 0 { break }
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                switch errno {
                case EAGAIN, EWOULDBLOCK, EINTR, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM: usleep(50_000)  // wait for descriptors to be freed
                default: break accepting
                }
                continue
            }
            configureConnection(fd, writeTimeout: limits.writeTimeout)
            admit(fd)
        }
        locked {
            accepting = false
            Glibc.close(listener)
            Glibc.close(wake.read)
            Glibc.close(wake.write)
        }
        condition.broadcast()
    }

    /// Registers `fd` and gives it a thread, or turns it away: when the server is full, or
    /// this client holds its share of connections already.
    private func admit(_ fd: Int32) {
        let peer = peerAddress(fd)
        let id: Int? = locked {
            guard !stopping, connections.count < limits.maxConnections,
                  perClient[peer, default: 0] < limits.maxConnectionsPerClient else { return nil }
            nextID += 1
            connections[nextID] = (fd, false, peer)
            perClient[peer, default: 0] += 1
            return nextID
        }
        guard let id else { return refuse(fd) }
        // Idle connections block in poll: a small stack keeps a thousand of them cheap.
        let thread = Thread { Connection(core: self, id: id, fd: fd, peer: peer).run() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// How long a connection may take to send its next request head: the short timeout
    /// while more than half the connections are taken.
    var headerTimeout: Duration {
        locked { connections.count > limits.maxConnections / 2 } ? min(limits.busyHeaderTimeout, limits.headerTimeout)
            : limits.headerTimeout
    }

    /// Answers 503 and closes, without blocking the accept thread on the client.
    private func refuse(_ fd: Int32) {
        let message = locked { stopping } ? "the server is shutting down"
            : "the server has too many open connections (or this client its share of them); retry later"
        try? HTTPResponder(fd: fd, minorVersion: 1, keepAlive: false).respondError(RequestRejection(503, message))
        shutdown(fd, Int32(SHUT_WR))
        var scratch = [UInt8](repeating: 0, count: 4096)
        while recv(fd, &scratch, scratch.count, Int32(MSG_DONTWAIT)) > 0 {}
        Glibc.close(fd)
    }

    /// Marks connection `id` busy with a request; false when the server is stopping.
    func beginRequest(_ id: Int) -> Bool {
        locked {
            guard !stopping else { return false }
            connections[id]?.busy = true
            return true
        }
    }

    /// Marks connection `id` idle again; false when the server is stopping (close it).
    func endRequest(_ id: Int) -> Bool {
        locked {
            connections[id]?.busy = false
            return !stopping
        }
    }

    /// Closes connection `id` and forgets it.
    func close(_ id: Int) {
        locked {
            if let connection = connections.removeValue(forKey: id) {
                Glibc.close(connection.fd)
                perClient[connection.peer, default: 1] -= 1
                if perClient[connection.peer] == 0 { perClient[connection.peer] = nil }
            }
        }
        condition.broadcast()
    }

    /// Stops accepting, shuts idle connections down at once and busy ones after `grace`, and
    /// waits for the connection threads (at most two seconds past `grace`).
    func stop(grace: Duration) {
        locked {
            if !stopping, accepting {
                var byte: UInt8 = 1
                _ = write(wake.write, &byte, 1)
            }
            stopping = true
            for connection in connections.values where !connection.busy {
                shutdown(connection.fd, Int32(SHUT_RDWR))
            }
        }
        if waitUntilQuiet(until: .now + grace) { return }
        locked {
            for connection in connections.values { shutdown(connection.fd, Int32(SHUT_RDWR)) }
        }
        _ = waitUntilQuiet(until: .now + .seconds(2))
    }

    /// Waits until the accept thread and every connection are gone; false at `deadline`.
    private func waitUntilQuiet(until deadline: ContinuousClock.Instant) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while accepting || !connections.isEmpty {
            let left = deadline - .now
            guard left > .zero else { return false }
            let (seconds, attoseconds) = left.components
            _ = condition.wait(until: Date(timeIntervalSinceNow: Double(seconds) + Double(attoseconds) * 1e-18))
        }
        return true
    }
}
