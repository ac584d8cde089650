"""fxprune: torch.fx passes for basis scaling and double pruning of pretrained vision models."""

from . import passes  # noqa: F401  (registers the passes)
from . import nn  # noqa: F401  (fxprune.nn.BasisScalingConv)
from .analysis.latency import LatencyTable
from .analysis.report import SavingsReport, savings
from .core.api import DEFAULT_PIPELINE, prune
from .core.errors import FxPruneError, PassError, PipelineError, TraceError, VerificationError
from .core.manager import PassManager, PassRecord, history
from .core.pass_base import FxPass, PassContext, PassResult, register
from .core.pipeline import Pipeline
from .core.submodule import prune_submodule
from .core.tracing import trace
from .runners.backend import backend
from .runners.checkpoint import zero_head
from .runners.export import save_exported as save
from .training.recipe import TransferResult, transfer
from .training.options import PruneOptions, TrainOptions, TransferOptions
from .training.runtime import Runtime
from .training.scales import evaluate, train_scaling
from .training.search import prune_iteratively

__all__ = [
    "DEFAULT_PIPELINE", "backend", "FxPass", "LatencyTable", "FxPruneError", "PassContext", "PassError", "PassManager", "PassRecord",
    "PassResult", "Pipeline", "PipelineError", "SavingsReport", "TraceError", "VerificationError", "history",
    "evaluate", "prune", "prune_iteratively", "prune_submodule", "register", "savings", "trace", "train_scaling", "transfer",
    "TransferResult", "save", "zero_head", "PruneOptions", "TrainOptions", "TransferOptions", "Runtime",
]
