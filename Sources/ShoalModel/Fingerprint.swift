import ShoalTensor

/// A model's identity as the cluster checks it at hello (DESIGN invariant 5): a worker for
/// another checkpoint is refused by name, before it computes anything.
///
/// The fingerprint hashes the config's numbers and, for each expert tensor included, its
/// role (layer, expert, w1/w2/w3, not the file's name for it), dtype, shape and three
/// 4 KiB samples of its bytes (start, middle, end). Naming tensors by role makes a Hugging
/// Face folder and a Mistral folder of the same model agree; sampling keeps the cost to a few
/// pages per tensor, so a worker touches nothing beyond what it serves. It is an identity
/// check, not a security one: mutual TLS is what keeps a hostile peer out.
public enum ModelFingerprint {
    /// The fingerprint of `checkpoint`'s config and of the experts in `pairs` (sorted
    /// internally, so any order gives the same value), as 16 lower-case hex digits.
    public static func of(_ checkpoint: Checkpoint, pairs: [ExpertKey]) throws -> String {
        var h = FNV1a()
        let c = checkpoint.config
        for n in [c.dim, c.layers, c.heads, c.kvHeads, c.headDim, c.hiddenDim, c.vocabSize, c.experts,
                  c.expertsPerToken] {
            h.add(UInt64(n))
        }
        h.add(UInt64(c.normEps.bitPattern))
        h.add(UInt64(c.ropeTheta.bitPattern))
        // Quantizing at load is deterministic: the file's bytes and the mix make the weights.
        if let mix = checkpoint.quantization { h.add("quantize \(mix.rawValue)".utf8) }
        for key in pairs.sorted() {
            for w in ["w1", "w2", "w3"] {
                let t = try checkpoint.stored(.expert(key.layer, key.expert, w))
                h.add(UInt64(key.layer))
                h.add(UInt64(key.expert))
                h.add(w.utf8)
                h.add(t.typeName.utf8)
                for d in t.shape { h.add(UInt64(d)) }
                let bytes = t.bytes
                let sample = min(4096, bytes.count)
                for start in [0, (bytes.count - sample) / 2, bytes.count - sample] {
                    h.add(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + sample)]))
                }
            }
        }
        return h.hex
    }
}

/// 64-bit FNV-1a: simple, stable across hosts and releases, and fast enough for a few MB.
struct FNV1a {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        for b in bytes {
            value ^= UInt64(b)
            value = value &* 0x0000_0100_0000_01b3
        }
    }

    /// A number as 8 little-endian bytes, so every field has a fixed width.
    mutating func add(_ n: UInt64) {
        withUnsafeBytes(of: n.littleEndian) { add($0) }
    }

    var hex: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
