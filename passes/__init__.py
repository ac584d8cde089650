"""fxprune's passes, one per file; importing this package registers them all, in pipeline order
(the order `fxprune passes` lists them).

Contract every pass keeps: see passes/README.md.
"""

from .decompose_conv import DecomposeConv  # isort: skip
from .insert_scaling import InsertScaling  # isort: skip
from .insert_channel_scaling import InsertChannelScaling  # isort: skip
from .prune_basis import PruneBasis  # isort: skip
from .prune_channels import PruneChannels  # isort: skip
from .prune_joint import PruneJoint  # isort: skip
from .fold import Fold  # isort: skip

__all__ = ["DecomposeConv", "InsertScaling", "InsertChannelScaling", "PruneBasis", "PruneChannels", "PruneJoint", "Fold"]
