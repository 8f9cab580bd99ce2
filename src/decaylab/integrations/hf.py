"""Hugging Face ``Trainer`` with decaylab's rules, and what they do in its logs.

The one-liner: replace ``Trainer`` with :class:`RegularizedTrainer` (or mix
:class:`RegularizedTrainerMixin` into your own subclass)::

    from decaylab.integrations.hf import RegularizedTrainer
    trainer = RegularizedTrainer(model=model, args=TrainingArguments(..., weight_decay=0.01),
                                 train_dataset=ds)          # same optimizer, same decay
    trainer = RegularizedTrainer(model=model, args=args, train_dataset=ds,
                                 rules=[dl.Rule(dl.L1(1e-5))])  # or your own rules

The Trainer still builds its own optimizer (``args.optim``), with no decay of its own; the
wrapper applies the rules. Without ``rules``, ``args.weight_decay`` becomes the rule that
decays exactly what the Trainer decays (``dl.preset("hf")``), in the way the optimizer
itself would (decoupled for AdamW, coupled for SGD/Adam/...), so nothing is decayed twice.
:class:`DecaylabCallback` adds :func:`decaylab.metrics` to every log (TensorBoard, W&B,
CSV: whatever ``report_to`` names) and weight histograms to TensorBoard.
"""

from __future__ import annotations

import torch
from transformers import Trainer, TrainerCallback

from .. import L2, Rule, preset, regularize
from ..monitor import find_regularized, histograms, metrics

__all__ = ["RegularizedTrainer", "RegularizedTrainerMixin", "DecaylabCallback", "decay_rule"]

# torch optimizers whose weight_decay is the decoupled (AdamW) step, the others' is coupled
_COUPLED = (torch.optim.SGD, torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adagrad,
            torch.optim.Adamax, torch.optim.RMSprop, torch.optim.ASGD, torch.optim.Adadelta)


def decay_rule(optimizer: torch.optim.Optimizer, weight_decay: float) -> Rule:
    """The rule equal to ``optimizer``'s own ``weight_decay`` on what the Trainer decays.

    Raises:
        ValueError: for an optimizer whose decay decaylab cannot reproduce exactly.
    """
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay"):
        mode = "decoupled"
    elif type(optimizer) in _COUPLED:
        mode = "coupled"
    else:
        raise ValueError(
            f"RegularizedTrainer cannot tell how {type(optimizer).__name__} applies weight_decay="
            f"{weight_decay}; set TrainingArguments(weight_decay=0) and pass rules=[...] instead"
        )
    return Rule(L2(weight_decay), params=preset("hf"), mode=mode)


class DecaylabCallback(TrainerCallback):
    """Adds :func:`decaylab.metrics` to every log and, every ``histogram_every`` logs, each
    penalized weight's histogram to the Trainer's TensorBoard writer.

    It must see a log before the reporting callbacks do, so install it with
    :meth:`install` (which puts it first) rather than ``callbacks=[...]`` (which puts it
    after TensorBoard's, whose scalars would then miss the keys it adds).
    """

    def __init__(self, histogram_every: int = 10):
        self.histogram_every, self._logs, self._trainer = histogram_every, 0, None

    @classmethod
    def install(cls, trainer: Trainer, histogram_every: int = 10) -> "DecaylabCallback":
        cb = cls(histogram_every)
        cb._trainer = trainer
        trainer.callback_handler.callbacks.insert(0, cb)
        return cb

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or optimizer is None or "loss" not in logs:  # training logs only
            return
        try:
            reg = find_regularized(optimizer)
        except ValueError:  # a Trainer with no rule: nothing to show
            return
        logs.update(metrics(reg))
        self._logs += 1
        writer = self._tensorboard()
        if writer is not None and self.histogram_every and (self._logs - 1) % self.histogram_every == 0:
            for name, values in histograms(reg).items():
                writer.add_histogram(f"decaylab/weights/{name}", values, state.global_step)

    def _tensorboard(self):
        if self._trainer is None:
            return None
        for cb in self._trainer.callback_handler.callbacks:
            if type(cb).__name__ == "TensorBoardCallback" and getattr(cb, "tb_writer", None) is not None:
                return cb.tb_writer
        return None


class RegularizedTrainerMixin:
    """``create_optimizer`` builds the Trainer's own optimizer without decay and wraps it in
    decaylab's rules (``rules=``, or ``args.weight_decay`` as :func:`decay_rule`); installs
    :class:`DecaylabCallback`."""

    def __init__(self, *args, rules=None, histogram_every: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.decaylab_rules = rules
        DecaylabCallback.install(self, histogram_every)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        weight_decay, rules = self.args.weight_decay, self.decaylab_rules
        if rules is not None and weight_decay:
            raise ValueError(
                f"RegularizedTrainer got rules= and TrainingArguments(weight_decay={weight_decay}): the "
                f"Trainer would decay twice; set weight_decay=0 (or put dl.L2 in the rules)"
            )
        self.args.weight_decay = 0.0
        try:
            inner = super().create_optimizer(model)
        finally:
            self.args.weight_decay = weight_decay
        if rules is None:
            rules = [decay_rule(inner, weight_decay)] if weight_decay else []
        if rules:
            self.optimizer = regularize(inner, model if model is not None else self.model, rules)
        return self.optimizer


class RegularizedTrainer(RegularizedTrainerMixin, Trainer):
    """``transformers.Trainer`` whose optimizer is wrapped in decaylab's rules."""

