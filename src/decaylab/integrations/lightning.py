"""Lightning: what the penalties do, in whatever loggers the ``Trainer`` has.

::

    from decaylab.integrations.lightning import DecaylabCallback
    trainer = lightning.Trainer(callbacks=[DecaylabCallback()], logger=TensorBoardLogger(...))

``configure_optimizers`` returns the decaylab wrapper as any optimizer
(``dl.regularize(torch.optim.AdamW(...), self, rules)``); the callback logs
:func:`decaylab.metrics` at the Trainer's ``log_every_n_steps`` (through ``self.log``, so
TensorBoard, W&B, CSV all get it) and each penalized weight's histogram every
``histogram_every`` of those to the loggers that take histograms (TensorBoard).
"""

from __future__ import annotations

from lightning.pytorch import Callback

from ..monitor import find_regularized, histograms, metrics

__all__ = ["DecaylabCallback"]


class DecaylabCallback(Callback):
    """Logs :func:`decaylab.metrics` and weight histograms of every decaylab optimizer."""

    def __init__(self, histogram_every: int = 10):
        self.histogram_every, self._logs = histogram_every, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        every = max(int(trainer.log_every_n_steps), 1)
        if trainer.global_step % every:
            return
        regs = []
        for opt in trainer.optimizers:
            try:
                regs.append(find_regularized(opt))
            except ValueError:  # an optimizer without rules: nothing to show
                continue
        for reg in regs:
            pl_module.log_dict(metrics(reg), on_step=True, on_epoch=False)
        self._logs += 1
        if regs and self.histogram_every and (self._logs - 1) % self.histogram_every == 0:
            for logger in trainer.loggers:
                add = getattr(getattr(logger, "experiment", None), "add_histogram", None)
                if add is None:
                    continue
                for reg in regs:
                    for name, values in histograms(reg).items():
                        add(f"decaylab/weights/{name}", values, trainer.global_step)
