"""The Hugging Face Trainer with decaylab, against the real transformers + accelerate +
tensorboard (extras; skipped where absent). Tiny BERT from a config, random tokens."""

import glob

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers, accelerate) is not installed")
pytest.importorskip("accelerate", reason="the hf extra (accelerate) is not installed")

import decaylab as dl  # noqa: E402
from decaylab.integrations.hf import RegularizedTrainer  # noqa: E402

pytestmark = pytest.mark.extras


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 50, (n, 8), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def _model():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                  intermediate_size=32, vocab_size=50, max_position_embeddings=16)
    return transformers.BertForSequenceClassification(cfg)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-2,
                logging_steps=2, report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0,
                optim="adamw_torch", lr_scheduler_type="linear", disable_tqdm=True)
    return transformers.TrainingArguments(**{**base, **kw})


def _train(cls, tmp_path, **kw):
    rules = kw.pop("rules", None)
    extra = {"rules": rules} if cls is RegularizedTrainer else {}
    trainer = cls(model=_model(), args=_args(tmp_path, **kw), train_dataset=Tokens(), **extra)
    trainer.train()
    return trainer


def test_weight_decay_becomes_the_rule_and_trains_like_the_trainer(tmp_path):
    theirs = _train(transformers.Trainer, tmp_path / "a", weight_decay=0.1)
    ours = _train(RegularizedTrainer, tmp_path / "b", weight_decay=0.1)
    reg = dl.find_regularized(ours.optimizer)  # through accelerate's AcceleratedOptimizer
    (binding,) = reg.bindings
    assert binding.rule.mode == "decoupled" and binding.rule.penalty.alpha == 0.1
    decayed = set(transformers.Trainer.get_decay_parameter_names(None, ours.model))
    assert set(binding.names) <= decayed and all(g.get("weight_decay", 0) == 0 for g in reg.param_groups)
    for (n, a), (_, b) in zip(theirs.model.named_parameters(), ours.model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)


def test_helpers_take_the_optimizer_the_trainer_hands_back(tmp_path):
    trainer = _train(RegularizedTrainer, tmp_path, weight_decay=0.0, rules=[dl.Rule(dl.L1(1e-3))])
    wrapped = trainer.optimizer
    assert not isinstance(wrapped, dl.Regularized)  # accelerate's wrapper
    assert "L1(alpha=0.001)" in dl.summary(wrapped)
    assert dl.metrics(wrapped) == dl.metrics(dl.find_regularized(wrapped))


def test_rules_and_weight_decay_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"weight_decay=0.1\): the Trainer would decay twice"):
        _train(RegularizedTrainer, tmp_path, weight_decay=0.1, rules=[dl.Rule(dl.L1(1e-3))])


def test_metrics_and_histograms_reach_tensorboard(tmp_path, monkeypatch):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                             reason="tensorboard is not installed")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    _train(RegularizedTrainer, tmp_path, weight_decay=0.0, rules=[dl.Rule(dl.L1(1e-2))], report_to=["tensorboard"])
    (event_file,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    acc = ea.EventAccumulator(event_file, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars, hists = acc.Tags()["scalars"], acc.Tags()["histograms"]
    key = "train/decaylab/zeros/bert.encoder.layer.0.attention.self.query.weight"  # HF adds "train/"
    assert key in scalars and len(acc.Scalars(key)) == 3  # logging_steps=2 over 6 steps
    assert acc.Scalars(key)[-1].value > 0  # the L1 prox made exact zeros, and the log shows them
    assert "train/decaylab/penalty/weights >= 2-D" in scalars
    assert "decaylab/weights/bert.encoder.layer.0.attention.self.query.weight" in hists
