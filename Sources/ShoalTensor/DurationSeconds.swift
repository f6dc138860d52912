extension Duration {
    /// This duration in seconds, as a Double (timings, rates, metrics).
    public var seconds: Double {
        let (whole, attoseconds) = components
        return Double(whole) + Double(attoseconds) * 1e-18
    }
}
