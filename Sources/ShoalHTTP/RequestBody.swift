extension SocketReader {
    /// The body as `framing` delimits it, de-chunked, at most `limits.maxBodyBytes`.
    mutating func readBody(_ framing: BodyFraming, limits: HTTPLimits) throws(RequestFailure) -> [UInt8] {
        let deadline = ContinuousClock.now + limits.bodyTimeout
        switch framing {
        case .none:
            return []
        case .length(let count):
            do { return Array(try read(count: count, until: deadline)) } catch { throw error.midRequest }
        case .chunked:
            return try readChunks(limits: limits, until: deadline)
        }
    }

    /// `chunk-size [; ext] CRLF data CRLF`, …, `0 CRLF`, trailer lines (read and dropped), `CRLF`.
    private mutating func readChunks(limits: HTTPLimits, until deadline: ContinuousClock.Instant) throws(RequestFailure) -> [UInt8] {
        let malformed = RequestFailure.reject(RequestRejection(400, "malformed chunked body"))
        var body: [UInt8] = []
        while true {
            let line = try readLine(maxBytes: 4096, until: deadline)
            var digits = line.prefix { $0 != UInt8(ascii: ";") }
            while let last = digits.last, last == sp || last == tab { digits.removeLast() }
            guard (1...15).contains(digits.count), digits.allSatisfy({ hexValue($0) != nil }) else { throw malformed }
            let size = digits.reduce(0) { $0 << 4 | Int(hexValue($1)!) }
            if size == 0 { break }
            guard body.count + size <= limits.maxBodyBytes else {
                throw .reject(RequestRejection(413, "the request body is larger than the limit of \(limits.maxBodyBytes) bytes"))
            }
            let data: ArraySlice<UInt8>, end: ArraySlice<UInt8>
            do {
                data = try read(count: size, until: deadline)
                end = try read(count: 2, until: deadline)
            } catch {
                throw error.midRequest
            }
            guard end.elementsEqual([cr, lf]) else { throw malformed }
            body += data
        }
        var trailerBytes = 0
        while true {
            let line = try readLine(maxBytes: limits.maxHeaderBytes, until: deadline)
            if line.isEmpty { return body }
            trailerBytes += line.count + 2
            guard trailerBytes <= limits.maxHeaderBytes else {
                throw .reject(RequestRejection(431, "the chunked body's trailers are larger than \(limits.maxHeaderBytes) bytes"))
            }
            do { _ = try RequestHead.parseHeaderLine(line) } catch { throw .reject(error) }
        }
    }
}
