// Strict parsing of the request line and header section (RFC 9110, RFC 9112).

/// How the body of a request is delimited.
enum BodyFraming: Equatable {
    /// No body.
    case none
    /// `Content-Length` bytes.
    case length(Int)
    /// `Transfer-Encoding: chunked`.
    case chunked
}

/// A request line and header section that passed every check.
struct RequestHead {
    var method: String
    var target: String
    var query: [String: String]
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    var minorVersion: Int
    /// Names in lowercase.
    var headers: [(name: String, value: String)]

    /// Parses `bytes`: the lines of the head, each ending in CRLF, without the empty line that
    /// ends the section.
    static func parse(_ bytes: ArraySlice<UInt8>) throws(RequestRejection) -> RequestHead {
        var lines: [ArraySlice<UInt8>] = []
        var lineStart = bytes.startIndex
        for index in bytes.indices where bytes[index] == lf {
            guard index > lineStart, bytes[index - 1] == cr else {
                throw RequestRejection(400, "header lines must end with CRLF")
            }
            lines.append(bytes[lineStart..<(index - 1)])
            lineStart = index + 1
        }
        guard lineStart == bytes.endIndex, let requestLine = lines.first else {
            throw RequestRejection(400, "the request head is incomplete")
        }
        var head = try parseRequestLine(requestLine)
        for line in lines.dropFirst() {
            head.headers.append(try parseHeaderLine(line))
        }
        if head.minorVersion == 1 {
            guard head.values("host").count == 1 else {
                throw RequestRejection(400, "an HTTP/1.1 request must have exactly one Host header")
            }
        }
        return head
    }

    /// `METHOD SP request-target SP HTTP-version`, with an origin-form target.
    private static func parseRequestLine(_ line: ArraySlice<UInt8>) throws(RequestRejection) -> RequestHead {
        let parts = line.split(separator: sp, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenByte) else {
            throw RequestRejection(400, "malformed request line")
        }
        let version = String(decoding: parts[2], as: UTF8.self)
        let minor: Int
        switch version {
        case "HTTP/1.1": minor = 1
        case "HTTP/1.0": minor = 0
        default:
            let digits = Array(parts[2].dropFirst(5))
            if version.hasPrefix("HTTP/"), digits.count == 3, digits[1] == UInt8(ascii: "."),
               isDigitByte(digits[0]), isDigitByte(digits[2]) {
                throw RequestRejection(505, "HTTP version \(version.dropFirst(5)) is not supported; use HTTP/1.1")
            }
            throw RequestRejection(400, "malformed request line")
        }
        let target = parts[1]
        guard target.first == UInt8(ascii: "/"), target.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw RequestRejection(400, "the request target must be a path starting with '/'")
        }
        let text = String(decoding: target, as: UTF8.self)
        var query: [String: String] = [:]
        if let mark = text.firstIndex(of: "?") {
            guard let decoded = HTTPRequest.decodeQuery(text[text.index(after: mark)...]) else {
                throw RequestRejection(400, "malformed percent-encoding in the query")
            }
            query = decoded
        }
        return RequestHead(method: String(decoding: parts[0], as: UTF8.self), target: text, query: query,
                           minorVersion: minor, headers: [])
    }

    /// `name: value`; folded lines, blanks before the colon and control characters are refused.
    static func parseHeaderLine(_ line: ArraySlice<UInt8>) throws(RequestRejection) -> (name: String, value: String) {
        if line.first == sp || line.first == tab {
            throw RequestRejection(400, "obsolete header line folding is not accepted")
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex,
              line[..<colon].allSatisfy(isTokenByte)
        else { throw RequestRejection(400, "malformed header line") }
        var value = line[(colon + 1)...]
        while let first = value.first, first == sp || first == tab { value.removeFirst() }
        while let last = value.last, last == sp || last == tab { value.removeLast() }
        guard value.allSatisfy({ $0 == tab || $0 >= sp && $0 != 0x7F }) else {
            throw RequestRejection(400, "control character in a header value")
        }
        return (String(decoding: line[..<colon], as: UTF8.self).lowercased(), String(decoding: value, as: UTF8.self))
    }

    /// Every value of header `name`, in order.
    func values(_ name: String) -> [String] {
        headers.filter { $0.name == name }.map(\.value)
    }

    /// The comma-separated, lowercased elements of every `name` header.
    func tokens(_ name: String) -> [String] {
        values(name).flatMap { $0.split(separator: ",") }
            .map { $0.trimmingBlanks().lowercased() }.filter { !$0.isEmpty }
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes unless told `keep-alive`.
    var keepAlive: Bool {
        let connection = tokens("connection")
        return minorVersion == 1 ? !connection.contains("close") : connection.contains("keep-alive")
    }

    /// Whether the client waits for `100 Continue` before sending the body (HTTP/1.1 only).
    func expectsContinue() throws(RequestRejection) -> Bool {
        let expect = tokens("expect")
        guard !expect.isEmpty else { return false }
        guard expect == ["100-continue"] else { throw RequestRejection(417, "only Expect: 100-continue is supported") }
        return minorVersion == 1
    }

    /// The body's framing, checked against `maxBodyBytes`.
    func framing(maxBodyBytes: Int) throws(RequestRejection) -> BodyFraming {
        let codings = tokens("transfer-encoding")
        let lengths = values("content-length")
        if !values("transfer-encoding").isEmpty {
            guard lengths.isEmpty else {
                throw RequestRejection(400, "a request must not have both Content-Length and Transfer-Encoding")
            }
            guard minorVersion == 1, codings.last == "chunked" else {
                throw RequestRejection(400, "Transfer-Encoding must end with chunked")
            }
            guard codings == ["chunked"] else {
                throw RequestRejection(501, "only the chunked transfer coding is supported")
            }
            return .chunked
        }
        guard !lengths.isEmpty else { return .none }
        let elements = lengths.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }
            .map { $0.trimmingBlanks() }
        guard elements.allSatisfy({ (1...18).contains($0.count) && $0.utf8.allSatisfy(isDigitByte) }),
              let length = Int(elements[0]), elements.allSatisfy({ Int($0) == length })
        else { throw RequestRejection(400, "invalid Content-Length") }
        guard length <= maxBodyBytes else {
            throw RequestRejection(413, "the request body of \(length) bytes is larger than the limit of \(maxBodyBytes)")
        }
        return length == 0 ? .none : .length(length)
    }
}

let cr = UInt8(ascii: "\r")
let lf = UInt8(ascii: "\n")
let sp = UInt8(ascii: " ")
let tab = UInt8(ascii: "\t")

/// 0 through 9 in ASCII.
func isDigitByte(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }

/// `tchar` of RFC 9110: the characters of methods and header names.
func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        true
    default:
        "!#$%&'*+-.^_`|~".utf8.contains(byte)
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    func trimmingBlanks() -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !blank($0) }), let last = lastIndex(where: { !blank($0) }) else { return "" }
        return String(self[first...last])
    }
}
