"""The options of the training and pruning loops, grouped: one object each that the CLI builds once from its
arguments, the Python API takes (or builds from keywords) and the report prints. Each checks its values
before any work and names the bad one in one line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def with_changes(options, changes: dict, where: str):
    """`options` with the keyword `changes` applied (fields by name), checked; a name that is not a field
    is one clear line."""
    fields = {f.name for f in dataclasses.fields(options)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise TypeError(f"{where}: unexpected keyword {unknown[0]!r} (options: {', '.join(sorted(fields))})")
    options = dataclasses.replace(options, **changes) if changes else options
    options.check(where)
    return options


RETRAINING = {"epochs": "retrain_epochs", "lr": "retrain_lr", "head_lr": "retrain_head_lr",
              "schedule": "retrain_schedule"}  # PruneOptions' field -> the TransferOptions field that sets it


class OptionError(ValueError):
    """A bad option value: its `field`, the `value` given and what to give instead (`text`), worded for the
    API as "where: field=value: text"; a caller that knows the option by another name (the CLI's flag, a
    wrapping object's field) words it its way with `named`."""

    def __init__(self, where: str, field: str, value, text: str):
        super().__init__(f"{where}: {field}={value!r}: {text}")
        self.where, self.field, self.value, self.text = where, field, value, text

    def named(self, head: str) -> ValueError:
        return ValueError(f"{head}: {self.text}")


def parse_until(until: str, has_val: bool) -> tuple[str, float]:
    """(key, number) of a stop rule: params=F, macs=F, latency=F or accuracy=A."""
    key, _, value = until.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if key not in ("params", "macs", "latency", "accuracy") or not 0 < number <= 1:
        raise ValueError(f"until={until!r}: write params=F, macs=F or latency=F (fraction of the model to keep) or "
                         "accuracy=A (stop before val accuracy falls below A), with F, A in (0, 1]")
    if key == "accuracy" and not has_val:
        raise ValueError("until='accuracy=...' needs val_data")
    return key, number


def stop_rule(until: str, transferred_accuracy: float) -> str:
    """`accuracy-drop=D` (at most D below the transferred model's val accuracy) as accuracy=A;
    the other rules of prune_iteratively (params=F, macs=F, accuracy=A) as they are."""
    key, _, value = until.partition("=")
    if key != "accuracy-drop":
        return until
    try:
        drop = float(value)
    except ValueError:
        drop = -1.0
    if not 0 <= drop < 1:
        raise ValueError(f"until={until!r}: write accuracy-drop=D with D in [0, 1), e.g. accuracy-drop=0.01")
    return f"accuracy={max(transferred_accuracy - drop, 1e-9):.6f}"


@dataclass(frozen=True)
class TrainOptions:
    """One training run of what insert-scaling left trainable (train_scaling)."""

    epochs: int = 1
    lr: float = 1e-2
    optimizer: str = "adam"  # adam, radam or sgd (momentum 0.9)
    schedule: str = "cosine"  # cosine: lr decays to 0 over the run; constant
    head_lr: float | None = None  # the lr of what is trainable besides the scales; None: lr; 0 keeps it
    l1: float = 0.0  # l1 * sum |s| over every scale
    distill: float = 0.5  # with a teacher: the weight of its term

    def check(self, where: str = "train_scaling") -> None:
        if self.optimizer not in ("adam", "radam", "sgd"):
            raise OptionError(where, "optimizer", self.optimizer, "give 'adam', 'radam' or 'sgd'")
        if not 0 <= self.distill <= 1:
            raise OptionError(where, "distill", self.distill, "give the weight of the teacher's term, in [0, 1]")
        if self.schedule not in ("constant", "cosine"):
            raise OptionError(where, "schedule", self.schedule, "give 'constant' or 'cosine'")
        if not self.lr > 0:
            raise OptionError(where, "lr", self.lr, "give a learning rate above 0")
        if self.head_lr is not None and not self.head_lr >= 0:
            raise OptionError(where, "head_lr", self.head_lr, "the lr of the head (what is trainable besides the "
                              "scales): give a value >= 0 (0 keeps the head as it is) or None for lr")
        if not self.epochs >= 0:
            raise OptionError(where, "epochs", self.epochs, "give a number of epochs >= 0")


@dataclass(frozen=True)
class PruneOptions:
    """The prune/retrain search (prune_iteratively): what to prune, by which importance, in descent steps of
    `step` of what is left, each retrained `epochs` at `lr` (`schedule`); then at most `probes` settling
    retrainings of `settle_epochs` with the lr decaying along a cosine; until `until`."""

    prune_what: str = "bases"  # bases, channels, joint or double
    criterion: str = "taylor"
    step: float = 0.15  # share of the params (MACs, latency) left that each descent step prunes
    until: str = "params=0.5"
    max_steps: int = 30  # descent steps at most
    patience: int = 2  # descent steps in a row below an accuracy floor before the descent stops
    probes: int = 6  # settling tries at most
    settle_epochs: int = 5
    momentum: float | None = None  # taylor importance averaged across steps
    margin: float = 0.0  # standard errors a try must clear an accuracy floor by
    agreement: float = 0.98  # with agreement_data: the share of its predictions a settled try must keep (0: off)
    distill: float = 0.0  # > 0: the retraining distils from the unpruned model with this weight
    epochs: int = 2
    lr: float = 1e-2
    head_lr: float | None = None
    optimizer: str = "adam"
    schedule: str = "constant"  # of each descent step's retraining (settling always decays)
    l1: float = 0.0

    def check(self, where: str = "prune_iteratively") -> None:
        if not 0 < self.step < 1:
            raise OptionError(where, "step", self.step, "the share of the model pruned per step must be in (0, 1)")
        if not self.margin >= 0:
            raise OptionError(where, "margin", self.margin, "give a number of standard errors >= 0")
        if not 0 <= self.agreement <= 1:
            raise OptionError(where, "agreement", self.agreement, "give the share of predictions to keep, in [0, 1] "
                              "(0: off)")
        for name in ("max_steps", "patience", "probes"):
            if not getattr(self, name) >= 1:
                raise OptionError(where, name, getattr(self, name), "give at least 1")
        if not self.settle_epochs >= 0:
            raise OptionError(where, "settle_epochs", self.settle_epochs, "give a number of epochs >= 0")
        parse_until(self.until, True)
        self.retraining().check(where)

    def retraining(self) -> TrainOptions:
        """The training run after each descent step."""
        return TrainOptions(epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, schedule=self.schedule,
                            head_lr=self.head_lr, l1=self.l1, distill=self.distill)

    def settling(self) -> TrainOptions:
        """The training run of a settling try: longer, the lr decaying to 0."""
        return dataclasses.replace(self.retraining(), epochs=self.settle_epochs, schedule="cosine")


RETRAIN_HEAD_SHARE = 0.1
"""The head's lr while pruning, as a share of the scales': enough to follow the pruned features, small
enough not to re-fit the head to each step (bench/transfer/results/depth.md)."""


@dataclass(frozen=True)
class TransferOptions:
    """transfer(): `epochs` of training the scales and head at `lr` (`schedule`), then the search of
    PruneOptions, retrained at `retrain_lr` (None: lr), the head at `retrain_head_lr` (None:
    RETRAIN_HEAD_SHARE x that); `until` may also be accuracy-drop=D."""

    epochs: int = 5
    lr: float = 1e-2
    schedule: str = "cosine"
    prune_what: str = "channels"
    criterion: str = "taylor"
    until: str = "accuracy-drop=0.01"
    step: float = 0.15
    max_steps: int = 30
    patience: int = 2
    probes: int = 6
    retrain_epochs: int = 2
    settle_epochs: int = 5
    importance_batches: int | None = 8  # train batches taylor importance is measured on per step (None: all)
    momentum: float | None = None
    basis: str = "svd"  # svd, or data: bases fitted to the responses on the importance batches
    distill: float = 0.0
    retrain_lr: float | None = None
    retrain_head_lr: float | None = None
    retrain_schedule: str = "constant"
    margin: float = 0.0
    agreement: float = 0.98

    @property
    def retrain_lr_value(self) -> float:
        return self.lr if self.retrain_lr is None else self.retrain_lr

    @property
    def retrain_head_lr_value(self) -> float:
        return RETRAIN_HEAD_SHARE * self.retrain_lr_value if self.retrain_head_lr is None else self.retrain_head_lr

    def training(self) -> TrainOptions:
        return TrainOptions(epochs=self.epochs, lr=self.lr, schedule=self.schedule)

    def pruning(self, until: str) -> PruneOptions:
        """The search, with the stop rule resolved (`until`: accuracy-drop=D as accuracy=A)."""
        return PruneOptions(prune_what=self.prune_what, criterion=self.criterion, step=self.step, until=until,
                            max_steps=self.max_steps, patience=self.patience, probes=self.probes,
                            settle_epochs=self.settle_epochs, momentum=self.momentum, margin=self.margin,
                            agreement=self.agreement, distill=self.distill, epochs=self.retrain_epochs,
                            lr=self.retrain_lr_value, head_lr=self.retrain_head_lr_value,
                            schedule=self.retrain_schedule)

    def check(self, where: str = "transfer") -> None:
        if self.basis not in ("svd", "data"):
            raise OptionError(where, "basis", self.basis, "give 'svd' or 'data'")
        if self.importance_batches is not None and not self.importance_batches >= 1:
            raise OptionError(where, "importance_batches", self.importance_batches, "give at least 1 (None: all)")
        self.training().check(where)
        try:
            self.pruning(stop_rule(self.until, 1.0)).check(where)
        except OptionError as e:  # named as this object's fields: the search retrains at retrain_lr, ...
            raise OptionError(where, RETRAINING.get(e.field, e.field), e.value, e.text) from None
