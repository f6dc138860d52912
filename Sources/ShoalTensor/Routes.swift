/// One route of a mixture-of-experts call: token `token` goes to `expert` with `weight`.
public struct Route: Equatable, Sendable {
    public var token: Int
    public var expert: Int
    public var weight: Float

    public init(token: Int, expert: Int, weight: Float) {
        self.token = token
        self.expert = expert
        self.weight = weight
    }
}

/// Which experts the tokens of one mixture-of-experts call go to, and with what weight, in
/// three columns: the wire's shape (`ComputeRequest.route_token/route_expert/route_weight`).
///
/// The one route type the engine has: the router's output (k routes per token), a worker's
/// validated request, and each worker's share in a coordinator's plan are all `Routes`.
///
/// Invariant, kept by every way of making one: routes are sorted by token and, within a
/// token, by strictly ascending expert, and every token in `0..<tokenCount` has at least one.
/// Every backend adds a token's experts in that order, starting from zero, so a cluster's
/// sum is bit-identical to one process's (DESIGN invariant 1).
public struct Routes: RandomAccessCollection, Equatable, Sendable {
    /// Each route's token, in `0..<tokenCount`.
    public private(set) var token: [UInt32] = []
    /// Each route's expert.
    public private(set) var expert: [UInt32] = []
    /// Each route's weight.
    public private(set) var weight: [Float] = []
    /// The tokens the routes cover: one past the last route's token.
    public var tokenCount: Int { token.last.map { Int($0) + 1 } ?? 0 }

    /// No routes.
    public init() {}

    /// Routes from their columns, which must keep the invariant (a peer's columns are checked
    /// by the protocol's validation first, with errors that name the field).
    public init(token: [UInt32], expert: [UInt32], weight: [Float]) {
        precondition(token.count == expert.count && token.count == weight.count, "route columns of different lengths")
        var previousToken = -1, previousExpert = -1
        for i in token.indices {
            let t = Int(token[i]), e = Int(expert[i])
            precondition(t == previousToken + 1 || (t == previousToken && e > previousExpert),
                         "route \(i) (token \(t), expert \(e)) out of order")
            previousToken = t
            previousExpert = e
        }
        self.token = token
        self.expert = expert
        self.weight = weight
    }

    /// Routes from a list (tests and small callers).
    public init(_ routes: some Sequence<Route>) {
        for r in routes { append(token: r.token, expert: r.expert, weight: r.weight) }
    }

    /// Adds a route after the last: the same token with a higher expert, or the next token.
    public mutating func append(token t: Int, expert e: Int, weight w: Float) {
        let last = tokenCount - 1
        precondition(t == last + 1 || (t == last && e > Int(expert[expert.count - 1])),
                     "route (token \(t), expert \(e)) out of order after token \(last)")
        precondition(e >= 0 && e <= Int(UInt32.max), "expert \(e) out of range")
        token.append(UInt32(t))
        expert.append(UInt32(e))
        weight.append(w)
    }

    /// Removes every route, keeping the storage for the next call.
    public mutating func removeAll() {
        token.removeAll(keepingCapacity: true)
        expert.removeAll(keepingCapacity: true)
        weight.removeAll(keepingCapacity: true)
    }

    /// Each token with the indices of its routes, in order; allocates nothing.
    public var byToken: TokenGroups { TokenGroups(token: token) }

    /// The routes grouped by token: `(token, start..<end)` for tokens 0, 1, …
    public struct TokenGroups: Sequence, IteratorProtocol {
        fileprivate let token: [UInt32]
        private var start = 0

        fileprivate init(token: [UInt32]) { self.token = token }

        public mutating func next() -> (token: Int, routes: Range<Int>)? {
            guard start < token.count else { return nil }
            let t = token[start]
            var end = start + 1
            while end < token.count && token[end] == t { end += 1 }
            defer { start = end }
            return (Int(t), start..<end)
        }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { token.count }
    public subscript(i: Int) -> Route {
        Route(token: Int(token[i]), expert: Int(expert[i]), weight: weight[i])
    }
}
