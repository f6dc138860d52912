extension ClosedRange where Bound == Int {
    /// One item of a command-line list such as `--experts 0-3,6` or `--cpus 0,2-3`: `a` or
    /// `a-b` with `0 <= a <= b`; nil otherwise.
    public init?(listItem text: Substring) {
        let ends = text.split(separator: "-", omittingEmptySubsequences: false)
        guard ends.count == 1 || ends.count == 2,
              let lo = Int(ends[0]), let hi = Int(ends.last!), lo >= 0, lo <= hi else { return nil }
        self = lo...hi
    }
}
