"""`decaylab compact RUN_DIR`: a run trained with coupled groups compacts to an equal model."""

from __future__ import annotations

import json

import torch

from decaylab.lab import cli


def test_compact_command_on_a_coupled_run(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path), "--name", "c", "--quiet"]
    for item in ['penalty.penalty="coupled"', "penalty.alpha=0.002", 'penalty.metric="adam"', "penalty.l1_ratio=0",
                 "data.n_train=300", "train.epochs=3", "model.hidden=[32, 16]", "train.batch_size=20", "train.lr=0.003"]:
        args += ["--set", item]
    assert cli.main(args) == 0
    assert cli.main(["compact", str(tmp_path / "c")]) == 0
    (run,) = (tmp_path / "c" / "runs").iterdir()
    result = json.loads((run / "compact.json").read_text())
    assert result["compacted"] and result["max_abs_diff_test"] <= 1e-5
    assert result["params_after"] < result["params_before"]
    state = torch.load(run / "compact.pt", weights_only=True)
    assert sum(t.numel() for k, t in state.items() if k != "select_inputs.index") == result["params_after"]
    assert f"{run.name}: inputs " in capsys.readouterr().out
    assert result["speedup_batch256"] == result["time_dense_batch256"] / result["time_compact_batch256"]
    assert 'data-figure="compaction"' in (tmp_path / "c" / "report.html").read_text()  # rebuilt by compact


def test_compact_command_on_a_missing_folder_exits_2(tmp_path, capsys):
    assert cli.main(["compact", str(tmp_path / "nope")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_a_slower_compact_model_is_called_slower(tmp_path, capsys, monkeypatch):
    from decaylab.lab import compacting

    args = ["train", "--out", str(tmp_path), "--name", "c", "--quiet"]
    for item in ['penalty.penalty="coupled"', "penalty.alpha=0.002", 'penalty.metric="adam"', "penalty.l1_ratio=0",
                 "data.n_train=300", "train.epochs=3", "model.hidden=[32, 16]", "train.batch_size=50",
                 "train.lr=0.01"]:  # Adam-metric prox steps are capped at lr: zero groups in 18 steps
        args += ["--set", item]
    assert cli.main(args) == 0
    times = iter([1e-3, 1.25e-3])  # dense, then compact: the compact model measured slower
    monkeypatch.setattr(compacting, "time_inference", lambda model, batch: next(times))
    assert cli.main(["compact", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "1.25x slower (batch 256)" in out and "faster" not in out
