"""fxprune's passes, one per file; importing this package registers them all.

Contract every pass keeps: see passes/README.md.
"""

from .decompose_conv import DecomposeConv
from .fold import Fold
from .insert_scaling import InsertScaling
from .prune_basis import PruneBasis

__all__ = ["DecomposeConv", "Fold", "InsertScaling", "PruneBasis"]
