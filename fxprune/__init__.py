"""fxprune: torch.fx passes for basis scaling and double pruning of pretrained vision models."""

from . import passes  # noqa: F401  (registers the passes)
from .api import DEFAULT_PIPELINE, prune
from .backend import backend
from .export import save_exported as save
from .errors import FxPruneError, PassError, PipelineError, TraceError, VerificationError
from .manager import PassManager, PassRecord, history
from .pass_base import FxPass, PassContext, PassResult, register
from .pipeline import Pipeline
from .report import SavingsReport, savings
from .tracing import trace
from .training import evaluate, prune_iteratively, train_scaling
from .recipe import TransferResult, transfer
from . import nn  # noqa: F401  (fxprune.nn.BasisScalingConv)

__all__ = [
    "DEFAULT_PIPELINE", "backend", "FxPass", "FxPruneError", "PassContext", "PassError", "PassManager", "PassRecord",
    "PassResult", "Pipeline", "PipelineError", "SavingsReport", "TraceError", "VerificationError", "history",
    "evaluate", "prune", "prune_iteratively", "register", "savings", "trace", "train_scaling", "transfer",
    "TransferResult", "save",
]
