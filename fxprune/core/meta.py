"""Keys fxprune writes into `node.meta` and `GraphModule.meta` (namespaced `fxprune.*`)."""

SOURCE = "fxprune.source"  # node.meta: path of the original module this node computes
ROLE = "fxprune.role"  # node.meta: "basis" or "coef" for the two halves of a decomposed layer
RANK = "fxprune.rank"  # node.meta on a merged layer: (kept rank, full rank) it was merged at
HISTORY = "fxprune.history"  # GraphModule.meta: list[PassRecord], every pass applied so far
