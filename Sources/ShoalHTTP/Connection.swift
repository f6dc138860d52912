/// One client connection on its own thread: reads requests one after another and runs the
/// handler on each, until the client or the server closes it.
struct Connection {
    let core: ServerCore
    let id: Int
    let fd: Int32
    let peer: String

    func run() {
        defer { core.close(id) }
        var reader = SocketReader(fd: fd)
        while serveOne(&reader, peer: peer) {}
    }

    /// Reads and answers one request; false when the connection must close.
    private func serveOne(_ reader: inout SocketReader, peer: String) -> Bool {
        let request: HTTPRequest, responder: HTTPResponder
        do {
            (request, responder) = try readRequest(&reader, peer: peer)
        } catch {
            if case .reject(let rejection) = error {
                try? HTTPResponder(fd: fd, minorVersion: 1, keepAlive: false).respondError(rejection)
                halfCloseAndDrain(fd)
            }
            return false
        }
        core.handler(request, responder)
        switch responder.state {
        case .pending where responder.clientIsGone:
            return false  // the handler gave up on a client that left: nobody to answer
        case .pending:
            try? responder.respondError(RequestRejection(500, "the server did not produce a response"))
        case .streaming:
            return false  // an unfinished stream: the close tells the client it is cut short
        case .done:
            break
        }
        return responder.keepAlive && !responder.broken && core.endRequest(id)
    }

    /// The next request, its body read, and the responder for it.
    private func readRequest(_ reader: inout SocketReader, peer: String) throws(RequestFailure) -> (HTTPRequest, HTTPResponder) {
        let limits = core.limits
        let bytes = try reader.readHead(maxBytes: limits.maxHeaderBytes, until: .now + core.headerTimeout)
        let head: RequestHead, framing: BodyFraming, expectsContinue: Bool
        do {
            head = try RequestHead.parse(bytes)
            framing = try head.framing(maxBodyBytes: limits.maxBodyBytes)
            expectsContinue = try head.expectsContinue()
        } catch {
            throw .reject(error)
        }
        guard core.beginRequest(id) else { throw .reject(RequestRejection(503, "the server is shutting down")) }
        if expectsContinue, framing != .none {
            do { try sendAll(fd, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) } catch { throw .quiet }
        }
        let body = try reader.readBody(framing, limits: limits)
        let request = HTTPRequest(method: head.method, target: head.target, query: head.query,
                                  headers: head.headers, body: body, peer: peer)
        return (request, HTTPResponder(fd: fd, minorVersion: head.minorVersion, keepAlive: head.keepAlive))
    }
}
