"""Lightning with decaylab, against the real lightning + tensorboard (extras; skipped
where absent)."""

import glob

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning", reason="the integrations extra (lightning) is not installed")
ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                         reason="the integrations extra (tensorboard) is not installed")

import decaylab as dl  # noqa: E402
from decaylab.integrations.lightning import DecaylabCallback  # noqa: E402

pytestmark = pytest.mark.extras


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        inner = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.0)
        return dl.regularize(inner, self, dl.L1(3e-2))


def test_metrics_and_histograms_reach_tensorboard(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    trainer = L.Trainer(max_steps=8, log_every_n_steps=2, logger=logger, callbacks=[DecaylabCallback(2)],
                        accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False)
    module = Net()
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert "L1(alpha=0.03)" in dl.summary(trainer.optimizers[0])
    (event_file,) = glob.glob(str(tmp_path / "tb" / "version_0" / "events.out.tfevents.*"))
    acc = ea.EventAccumulator(event_file, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    zeros = acc.Scalars("decaylab/zeros/net.0.weight")
    assert len(zeros) >= 3 and zeros[-1].value > 0  # the prox made exact zeros, the log shows them
    assert zeros[-1].value == pytest.approx(float((module.net[0].weight == 0).float().mean()), abs=0.05)
    assert "decaylab/weights/net.0.weight" in acc.Tags()["histograms"]


class Scheduled(Net):
    def configure_optimizers(self):
        opt = super().configure_optimizers()
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2)}


def test_learning_rate_monitor_logs_one_column_for_the_wrapped_optimizer(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,)))
    monitor = L.pytorch.callbacks.LearningRateMonitor()
    trainer = L.Trainer(max_steps=4, log_every_n_steps=1, logger=L.pytorch.loggers.CSVLogger(str(tmp_path)),
                        callbacks=[monitor], accelerator="cpu", enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Scheduled(), torch.utils.data.DataLoader(data, batch_size=8))
    assert list(monitor.lrs) == ["lr-Regularized"]  # was also 'lr-AdamW', the inner optimizer
