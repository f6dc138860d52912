import Foundation
import ShoalModel
import ShoalTensor

/// Which (layer, expert) pairs a worker serves, as written on its command line:
/// comma-separated `EXPERTS[@LAYERS]` items, each side a number or an inclusive range `a-b`.
///
///     0-3              experts 0-3 of every layer
///     0-3@0-15,4-7@16-31
///     5@2              expert 5 of layer 2 only
public struct ExpertSpec: Sendable, Equatable, CustomStringConvertible {
    /// One `EXPERTS[@LAYERS]` item; `layers` nil means every layer.
    public struct Item: Sendable, Equatable {
        public var experts: ClosedRange<Int>
        public var layers: ClosedRange<Int>?
    }

    public let items: [Item]
    /// The text it was parsed from.
    public let description: String

    /// Parses `text`; the error quotes the item that is wrong and says why.
    public init(_ text: String) throws(ClusterError) {
        var items: [Item] = []
        for raw in text.split(separator: ",", omittingEmptySubsequences: false) {
            let item = raw.trimmingCharacters(in: .whitespaces)
            let sides = item.split(separator: "@", omittingEmptySubsequences: false)
            guard sides.count <= 2, let experts = ClosedRange(listItem: sides[0]) else {
                throw .badExpertSpec(text, item: item)
            }
            var layers: ClosedRange<Int>?
            if sides.count == 2 {
                guard let l = ClosedRange(listItem: sides[1]) else { throw .badExpertSpec(text, item: item) }
                layers = l
            }
            items.append(Item(experts: experts, layers: layers))
        }
        self.items = items
        description = text
    }

    /// The pairs of a model with `layers` × `experts`, sorted and without repeats.
    /// - Throws: `.specOutOfRange` when an item names a layer or expert the model lacks.
    public func pairs(layers: Int, experts: Int) throws(ClusterError) -> [ExpertKey] {
        var keys = Set<ExpertKey>()
        for item in items {
            let ls = item.layers ?? 0...(layers - 1)
            guard item.experts.upperBound < experts, ls.upperBound < layers else {
                throw .specOutOfRange(description, layers: layers, experts: experts)
            }
            for l in ls { for e in item.experts { keys.insert(ExpertKey(layer: l, expert: e)) } }
        }
        return keys.sorted()
    }
}
