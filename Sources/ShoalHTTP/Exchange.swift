import Foundation
import HTTPTypes
import HummingbirdCore
import NIOCore

/// One request and its response, on the connection's task: the checks the HTTP parser leaves
/// to us, the body read up to its limit, then the handler on a thread of its own, whose
/// response parts are written here one at a time, each acknowledged to the waiting handler.
func respond(to request: Request, writer: consuming ResponseWriter, channel: any Channel, registry: ConnectionRegistry,
             handler: @escaping HTTPServer.Handler) async {
    let limits = registry.limits
    let head = request.head
    let target = head.path ?? ""
    let query: [String: String]
    do throws(RequestRejection) {
        query = try checkHead(head, target: target, maxBodyBytes: limits.maxBodyBytes)
    } catch {
        try? await writer.write(error)
        try? await channel.close(mode: .output)
        return
    }
    if head.headerFields[.expect] != nil {
        try? await writer.writeInformationalHead(HTTPResponse(status: .continue))
    }
    var body: [UInt8] = []
    do {
        for try await buffer in request.body {
            guard body.count + buffer.readableBytes <= limits.maxBodyBytes else {
                try? await writer.write(RequestRejection(413, "the request body is larger than the limit of \(limits.maxBodyBytes) bytes"))
                try? await channel.close(mode: .output)
                return
            }
            body += buffer.readableBytesView
        }
    } catch {
        // Malformed chunking, or the client ended its side part-way (a reset or a closed
        // connection makes this write fail, which is fine: nobody is left to tell).
        try? await writer.write(RequestRejection(400, "the request body is malformed or ended before it was complete"))
        try? await channel.close(mode: .output)
        return
    }
    var headers: [(name: String, value: String)] = []
    if let authority = head.authority { headers.append((name: "host", value: authority)) }
    for field in head.headerFields { headers.append((name: field.name.canonicalName, value: field.value)) }
    let shoalRequest = HTTPRequest(method: head.method.rawValue, target: target, query: query, headers: headers, body: body,
                                   peer: channel.remoteAddress?.ipAddress ?? "")

    guard registry.beginHandler() else {
        try? await writer.write(RequestRejection(503, "the server is answering \(limits.maxHandlers) requests; try again"))
        try? await channel.close(mode: .output)
        return
    }
    let (parts, continuation) = AsyncStream.makeStream(of: ResponsePart.self)
    let responder = HTTPResponder(parts: continuation, channel: channel, writeTimeout: limits.writeTimeout)
    Thread.detachNewThread {
        handler(shoalRequest, responder)
        responder.handlerReturned()
    }
    await relay(parts, to: writer, channel: channel, release: HandlerSlot(registry))
}

/// A running handler's place among `maxHandlers`, given back once: before its response's
/// last part is written (so a client that reads the answer finds the place free) or when the
/// handler returns, whichever comes first.
private final class HandlerSlot {
    private var registry: ConnectionRegistry?
    init(_ registry: ConnectionRegistry) { self.registry = registry }
    func release() {
        registry?.endHandler()
        registry = nil
    }
}

/// Writes the handler's parts in order, acknowledging each; a write that fails fails every
/// later part, and a stream the handler left unfinished closes the connection.
private func relay(_ parts: AsyncStream<ResponsePart>, to writer: consuming ResponseWriter, channel: any Channel,
                   release slot: HandlerSlot) async {
    defer { slot.release() }
    var iterator = parts.makeAsyncIterator()
    guard let first = await iterator.next() else { return }
    switch first.kind {
    case let .whole(status, headers, bytes):
        slot.release()
        first.written.complete(await writeWhole(writer, status: status, headers: headers, body: bytes))
    case let .head(status, headers):
        var bodyWriter: (any ResponseBodyWriter)?
        do {
            bodyWriter = try await writer.writeHead(responseHead(status: status, headers: headers))
            first.written.complete(nil)
        } catch {
            first.written.complete(.clientGone)
        }
        while let part = await iterator.next() {
            switch part.kind {
            case .chunk(let bytes):
                guard var writing = bodyWriter else { part.written.complete(.clientGone); continue }
                do {
                    try await writing.write(channel.allocator.buffer(bytes: bytes))
                    bodyWriter = writing
                    part.written.complete(nil)
                } catch {
                    bodyWriter = nil
                    part.written.complete(.clientGone)
                }
            case .end:
                slot.release()
                guard let finishing = bodyWriter else { part.written.complete(.clientGone); continue }
                bodyWriter = nil
                do {
                    try await finishing.finish(nil)
                    part.written.complete(nil)
                } catch {
                    part.written.complete(.clientGone)
                }
                return
            case .handlerReturned:
                slot.release()
                // A stream cut short: only closing the connection tells the client.
                try? await channel.close()
                return
            case .whole, .head:
                part.written.complete(.alreadyResponded)  // the responder's state forbids these
            }
        }
    case .handlerReturned:
        slot.release()
        // No answer: either the client left (nobody to tell) or the handler forgot.
        if channel.isActive {
            _ = await writeWhole(writer, status: 500, headers: [("Content-Type", "application/json")],
                                 body: errorBody(status: 500, message: "the server did not produce a response"))
        }
    case .chunk, .end:
        first.written.complete(.notStreaming)
    }
}

private func writeWhole(_ writer: consuming ResponseWriter, status: Int, headers: [(String, String)], body: [UInt8]) async -> HTTPError? {
    var head = responseHead(status: status, headers: headers)
    head.headerFields[.contentLength] = "\(body.count)"
    do {
        var bodyWriter = try await writer.writeHead(head)
        if !body.isEmpty { try await bodyWriter.write(ByteBuffer(bytes: body)) }
        try await bodyWriter.finish(nil)
        return nil
    } catch {
        return .clientGone
    }
}

private func responseHead(status: Int, headers: [(String, String)]) -> HTTPResponse {
    var head = HTTPResponse(status: .init(code: status, reasonPhrase: reasonPhrase(status)))
    head.headerFields[.server] = "shoal"
    for (name, value) in headers {
        guard let fieldName = HTTPField.Name(name) else { preconditionFailure("invalid response header name '\(name)'") }
        head.headerFields.append(HTTPField(name: fieldName, value: value))
    }
    return head
}

extension ResponseWriter {
    /// The server's own refusal: an OpenAI-shaped error, and the connection closed after it.
    consuming func write(_ rejection: RequestRejection) async throws {
        var head = responseHead(status: rejection.status, headers: [("Content-Type", "application/json")])
        let body = errorBody(status: rejection.status, message: rejection.message)
        head.headerFields[.contentLength] = "\(body.count)"
        head.headerFields[.connection] = "close"
        var bodyWriter = try await writeHead(head)
        try await bodyWriter.write(ByteBuffer(bytes: body))
        try await bodyWriter.finish(nil)
    }
}

/// What HTTP parsing leaves to check before a handler sees the request; returns the query.
private func checkHead(_ head: HTTPTypes.HTTPRequest, target: String, maxBodyBytes: Int) throws(RequestRejection) -> [String: String] {
    guard head.authority != nil else { throw RequestRejection(400, "a request must have exactly one Host header") }
    guard target.hasPrefix("/") else { throw RequestRejection(400, "the request target must be a path starting with '/'") }
    let queryText = target.firstIndex(of: "?").map { target[target.index(after: $0)...] } ?? ""
    guard let query = HTTPRequest.decodeQuery(queryText) else { throw RequestRejection(400, "malformed percent-encoding in the query") }
    if let expect = head.headerFields[.expect], expect.lowercased() != "100-continue" {
        throw RequestRejection(417, "only Expect: 100-continue is supported")
    }
    if let coding = head.headerFields[.transferEncoding], coding.lowercased() != "chunked" {
        throw RequestRejection(501, "only the chunked transfer coding is supported")
    }
    // The first Host became the authority; any other is still a field.
    if head.headerFields.contains(where: { $0.name.canonicalName == "host" }) {
        throw RequestRejection(400, "a request must have exactly one Host header")
    }
    if let length = head.headerFields[.contentLength] {
        guard let count = Int(length), count >= 0 else { throw RequestRejection(400, "invalid Content-Length") }
        guard count <= maxBodyBytes else {
            throw RequestRejection(413, "the request body of \(count) bytes is larger than the limit of \(maxBodyBytes)")
        }
    }
    return query
}
