"""Checkpoints and ``decaylab resume``: bit-identical continuation on CPU, and faults survived.

Each test interrupts a tiny run a different way (Ctrl-C through the real signal handler, a
crash between the metrics line and the checkpoint, a SIGKILL in the middle of writing a
checkpoint), resumes it, and compares metrics.jsonl and model.pt with a run that was never
interrupted, exactly.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from decaylab.lab import cli, runfolder, train

SRC = str(Path(__file__).parents[1] / "src")
TINY = ["data.n_train=150", "model.hidden=[16]", "train.batch_size=40", "model.dropout=0.2"]
# one penalty setting that uses every piece of state: Adam metric, a warm-up schedule
# (the regularizer's step count), dropout (torch RNG), and a fine-tune phase with masks
TRAIN = TINY + ["train.epochs=3", "penalty.penalty=\"l1\"", "penalty.alpha=3e-3", "penalty.metric=\"adam\"",
                "penalty.warmup_epochs=1", "penalty.finetune_epochs=2"]
COMPARE = TINY + ["train.epochs=3", "runs.l1.finetune_epochs=1"]


def _edit_config(folder: Path, edit) -> None:
    """Apply ``edit`` to the folder's saved config.json (as a user or a newer version would)."""
    saved = json.loads((folder / "config.json").read_text())
    edit(saved)
    (folder / "config.json").write_text(json.dumps(saved))


def _copy(src: Path, dst: Path, edit=None) -> Path:
    """A copy of a reference run folder, its config edited by ``edit`` if given."""
    shutil.copytree(src, dst)
    if edit is not None:
        _edit_config(dst, edit)
    return dst


def _args(command: str, out: Path, name: str, items: list[str]) -> list[str]:
    args = [command, "--out", str(out), "--name", name, "--quiet"]
    for item in items:
        args += ["--set", item]
    return args


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("epoch_time")
    return rows


def _assert_same(a: Path, b: Path) -> None:
    names = sorted(p.name for p in (a / "runs").iterdir())
    assert names == sorted(p.name for p in (b / "runs").iterdir())
    for name in names:
        ra, rb = a / "runs" / name, b / "runs" / name
        assert _rows(ra) == _rows(rb), name
        wa, wb = runfolder.load_pt(ra / "model.pt"), runfolder.load_pt(rb / "model.pt")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
        fa, fb = json.loads((ra / "final.json").read_text()), json.loads((rb / "final.json").read_text())
        fa.pop("mean_epoch_time"), fb.pop("mean_epoch_time")
        assert fa == fb, name
        assert not (ra / "checkpoint.pt").exists()
        assert (ra / "rules.txt").exists() == (rb / "rules.txt").exists()
    assert json.loads((a / "status.json").read_text())["state"] == "complete"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert cli.main(_args("train", out, "train", TRAIN)) == 0
    assert cli.main(_args("compare", out, "compare", COMPARE)) == 0
    return out


@pytest.mark.parametrize("stop_after", [2, 4])  # a checkpoint in the train phase / in the fine-tune
def test_stop_request_checkpoints_mid_epoch_and_resume_is_bit_identical(reference, tmp_path, monkeypatch, capsys,
                                                                        stop_after):
    real, saves = runfolder.Run.save_checkpoint, []

    def save_then_stop(self, ckpt):
        real(self, ckpt)
        saves.append(ckpt["epoch"])
        if len(saves) == stop_after:
            train.request_stop()  # as Ctrl-C: the loop stops after its next step

    monkeypatch.setattr(runfolder.Run, "save_checkpoint", save_then_stop)
    assert cli.main(_args("train", tmp_path, "t", TRAIN)) == 130
    err = capsys.readouterr().err
    assert f"decaylab resume {tmp_path / 't'}" in err
    run = tmp_path / "t" / "runs" / "l1"
    ckpt = runfolder.load_pt(run / "checkpoint.pt")
    assert ckpt["epoch"] == stop_after and ckpt["batch"] == 1 and ckpt["order"] is not None  # mid-epoch
    assert json.loads((tmp_path / "t" / "status.json").read_text())["state"] == "interrupted"
    monkeypatch.setattr(runfolder.Run, "save_checkpoint", real)
    assert cli.main(["resume", str(tmp_path / "t"), "--quiet"]) == 0
    _assert_same(tmp_path / "t", reference / "train")


def _raise_after_metrics_line(monkeypatch, n: int, error: BaseException):
    """Make writing the ``n``-th metrics line (over all runs outside ``sweeps/``: a choice
    sweep's points write theirs through the same writer) raise ``error`` right after the
    line is written; returns the real ``append_metrics`` to put back."""
    real, lines = runfolder.Run.append_metrics, []

    def append_then_raise(self, row):
        real(self, row)
        if "sweeps" in self.path.parts:
            return
        lines.append(row)
        if len(lines) == n:
            raise error

    monkeypatch.setattr(runfolder.Run, "append_metrics", append_then_raise)
    return real


@pytest.mark.slow
def test_crash_between_metrics_line_and_checkpoint_redoes_that_epoch(reference, tmp_path, monkeypatch):
    # none: 3 epochs, l2: 2 epochs written, l2's 2nd checkpoint not
    real = _raise_after_metrics_line(monkeypatch, 5, RuntimeError("power cut"))
    assert cli.main(_args("compare", tmp_path, "c", COMPARE)) == 1
    l2 = runfolder.Run(tmp_path / "c" / "runs" / "l2")
    assert len(l2.metrics()) == 2 and l2.load_checkpoint()["epoch"] == 1
    monkeypatch.setattr(runfolder.Run, "append_metrics", real)
    assert cli.main(["resume", str(tmp_path / "c"), "--quiet"]) == 0
    _assert_same(tmp_path / "c", reference / "compare")


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from decaylab.lab import cli, runfolder
    real, n = torch.save, [0]
    def save_half_then_die(obj, f, *a, **k):
        n[0] += 1
        if n[0] == {kill_at}:
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.{sig})
        return real(obj, f, *a, **k)
    torch.save = save_half_then_die
    sys.exit(cli.main(sys.argv[1:]))
""")


def _subprocess(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one(reference, tmp_path):
    script = _KILL_SCRIPT.format(kill_at=3, sig="SIGKILL")  # dies writing epoch 3's checkpoint
    proc = _subprocess(script, _args("train", tmp_path, "k", TRAIN))
    assert proc.returncode == -signal.SIGKILL
    run = runfolder.Run(tmp_path / "k" / "runs" / "l1")
    assert list(run.path.glob(".checkpoint.pt.*.tmp"))  # the torn write, never renamed
    assert run.load_checkpoint()["epoch"] == 2  # the previous checkpoint is intact
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]
    assert json.loads((tmp_path / "k" / "status.json").read_text())["state"] == "running"
    assert cli.main(["resume", str(tmp_path / "k"), "--quiet"]) == 0
    assert not list(run.path.glob(".*.tmp"))
    _assert_same(tmp_path / "k", reference / "train")


@pytest.mark.slow
def test_real_sigint_stops_checkpoints_and_prints_the_resume_command(reference, tmp_path):
    script = _KILL_SCRIPT.format(kill_at=2, sig="SIGINT")  # Ctrl-C during epoch 2's checkpoint
    proc = _subprocess(script, _args("train", tmp_path, "i", TRAIN))
    assert proc.returncode == 130, proc.stderr
    assert f"continue with: decaylab resume {tmp_path / 'i'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    ckpt = runfolder.load_pt(tmp_path / "i" / "runs" / "l1" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (2, 1)  # stopped one step into epoch 3
    assert cli.main(["resume", str(tmp_path / "i"), "--quiet"]) == 0
    _assert_same(tmp_path / "i", reference / "train")


@pytest.mark.slow
def test_resume_of_a_complete_folder_changes_nothing(reference, tmp_path, capsys):
    copy = _copy(reference / "compare", tmp_path / "done", lambda c: c["versions"].update(torch="0.0"))
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != "status.json"
              and p.name != "report.html"}
    assert cli.main(["resume", str(copy), "--quiet"]) == 0
    assert all(p.read_bytes() == b for p, b in before.items())
    assert f"versions changed since the run started (torch 0.0 -> {torch.__version__})" in capsys.readouterr().err


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert cli.main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a run folder" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_loads_with_weights_only(reference, tmp_path, monkeypatch):
    seen = []
    real = torch.load

    def spy(*a, **k):
        seen.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    runfolder.load_pt(reference / "train" / "runs" / "l1" / "model.pt")
    assert seen == [True]


def test_checkpoints_off_still_checkpoint_on_a_stop(reference, tmp_path, monkeypatch):
    real_append, real_save, saved = runfolder.Run.append_metrics, runfolder.Run.save_checkpoint, []

    def append_then_stop(self, row):
        real_append(self, row)
        if row["epoch"] == 2:
            train.request_stop()

    monkeypatch.setattr(runfolder.Run, "append_metrics", append_then_stop)
    monkeypatch.setattr(runfolder.Run, "save_checkpoint", lambda self, c: (saved.append(c["epoch"]), real_save(self, c)))
    assert cli.main(_args("train", tmp_path, "off", TRAIN + ["train.checkpoint=false"])) == 130
    assert saved == [2]  # no per-epoch checkpoints, one on the stop (one step into epoch 3)
    monkeypatch.setattr(runfolder.Run, "append_metrics", real_append)
    assert cli.main(["resume", str(tmp_path / "off"), "--quiet"]) == 0
    _assert_same(tmp_path / "off", reference / "train")


@pytest.mark.slow
def test_resume_with_parallel_jobs(reference, tmp_path, monkeypatch):
    real = _raise_after_metrics_line(monkeypatch, 4, KeyboardInterrupt())  # none complete, l2 one epoch in
    assert cli.main(_args("compare", tmp_path, "p", COMPARE)) == 130
    _edit_config(tmp_path / "p", lambda c: c["train"].update(jobs=2))  # the rest trains in worker processes
    monkeypatch.setattr(runfolder.Run, "append_metrics", real)
    assert cli.main(["resume", str(tmp_path / "p"), "--quiet"]) == 0
    _assert_same(tmp_path / "p", reference / "compare")


def test_resume_checks_the_saved_config(reference, tmp_path, capsys):
    copy = _copy(reference / "train", tmp_path / "edited", lambda c: c["train"].update(epochs="many"))
    assert cli.main(["resume", str(copy)]) == 2
    assert re.search(r"config.json: config key 'train.epochs' must be an integer", capsys.readouterr().err)


def test_a_folder_in_use_is_not_resumed_twice(reference, tmp_path, capsys):
    copy = _copy(reference / "train", tmp_path / "busy")
    with runfolder.lock(copy):  # as another process training into it
        assert cli.main(["resume", str(copy)]) == 2
    assert "is in use by another decaylab process" in capsys.readouterr().err
    assert cli.main(["resume", str(copy), "--quiet"]) == 0


@pytest.mark.slow
def test_ctrl_c_with_parallel_jobs_stops_every_worker_and_resumes_exactly(tmp_path):
    import time

    items = ["data.n_train=150", "model.hidden=[8]", "train.batch_size=50", "train.epochs=30"]
    only = ["--only", "none,l2,l1"]
    assert cli.main(_args("compare", tmp_path, "ref", items) + only) == 0
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "decaylab.lab.cli"] + _args("compare", tmp_path, "par", items + ["train.jobs=2"]) + only
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches
    runs = tmp_path / "par" / "runs"
    # Ctrl-C once the leading run (none or l2: either worker may start first) is 3 epochs
    # in, while the other is far from done: the queued l1 can then only start if Ctrl-C
    # fails to stop the queue (waiting on none alone let l2 finish and l1 start first)
    while proc.poll() is None and max((m.read_text().count("\n") for m in runs.glob("*/metrics.jsonl")),
                                      default=0) < 3:
        time.sleep(0.05)
    finished_first = sorted(p.parent.name for p in runs.glob("*/final.json"))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if finished_first or (runs / "l1" / "final.json").exists():
        pytest.skip(f"runs finished before Ctrl-C arrived ({finished_first}); l1 may have started legitimately")
    assert proc.returncode == 130, err
    assert json.loads((tmp_path / "par" / "status.json").read_text())["state"] == "interrupted"
    started = sorted(p.name for p in (tmp_path / "par" / "runs").iterdir())
    assert "l1" not in started  # queued runs never start after Ctrl-C
    for name in started:  # running ones stopped after a step, with a checkpoint
        run = runfolder.Run(tmp_path / "par" / "runs" / name)
        assert run.is_complete() or run.load_checkpoint() is not None
    assert cli.main(["resume", str(tmp_path / "par"), "--quiet"]) == 0
    _assert_same(tmp_path / "par", tmp_path / "ref")


# -- compare with strengths chosen on validation, over seeds (the main job) ----------------
CHOSEN = ["data.n_train=150", "model.hidden=[16]", "train.batch_size=50", "train.epochs=4", "seeds=2",
          'runs.l1.alphas="1e-4:3e-2:4"', 'runs.l2.alphas="1e-3,1e-1"']
ONLY = ["--only", "none,l2,l1"]


@pytest.fixture(scope="module")
def chosen_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("chosen")
    assert cli.main(_args("compare", out, "ref", CHOSEN) + ONLY) == 0
    return out / "ref"


def _assert_same_compare(a: Path, b: Path) -> None:
    """Runs, each sweep's points and choice, and compare.json equal, timings and stack sizes aside."""
    _assert_same(a, b)
    assert json.loads((a / "compare.json").read_text()) == json.loads((b / "compare.json").read_text())
    for sweep_dir in sorted((b / "sweeps").iterdir()):
        got, want = (json.loads((d / "sweep.json").read_text()) for d in (a / "sweeps" / sweep_dir.name, sweep_dir))
        for sw in (got, want):
            sw.pop("wall_time")
        assert got == want, sweep_dir.name
        for point in sorted((sweep_dir / "runs").iterdir()):
            mine = a / "sweeps" / sweep_dir.name / "runs" / point.name
            assert _rows(mine) == _rows(point), point
            wa, wb = runfolder.load_pt(mine / "model.pt"), runfolder.load_pt(point / "model.pt")
            assert all(torch.equal(wa[k], wb[k]) for k in wb), point


def test_the_main_job_resumes_in_the_sweep_and_in_the_seeded_runs(chosen_reference, tmp_path, monkeypatch, capsys):
    from decaylab.lab import sweep

    # private: the lab has no public hook to interrupt a chosen epoch
    real_log, calls = sweep._log_epoch, []

    def ctrl_c_in_the_second_sweep(stack, data, epoch, *rest):
        calls.append(epoch)
        if len(calls) == 2:  # l1's sweep at its last epoch (the choice sweep logs only its last)
            raise KeyboardInterrupt
        return real_log(stack, data, epoch, *rest)

    monkeypatch.setattr(sweep, "_log_epoch", ctrl_c_in_the_second_sweep)
    assert cli.main(_args("compare", tmp_path, "c", CHOSEN) + ONLY) == 130
    assert f"continue with: decaylab resume {tmp_path / 'c'}" in capsys.readouterr().err
    folder = tmp_path / "c"
    assert json.loads((folder / "status.json").read_text())["state"] == "interrupted"
    assert (folder / "sweeps" / "l2" / "sweep.json").is_file() and not (folder / "sweeps" / "l1" / "sweep.json").exists()
    monkeypatch.setattr(sweep, "_log_epoch", real_log)
    real = _raise_after_metrics_line(monkeypatch, 6, KeyboardInterrupt())  # now in the seeded runs: l2-s0
    assert cli.main(["resume", str(folder), "--quiet"]) == 130
    assert runfolder.Run(folder / "runs" / "none-s0").is_complete()
    assert not runfolder.Run(folder / "runs" / "l2-s0").is_complete()
    monkeypatch.setattr(runfolder.Run, "append_metrics", real)
    assert cli.main(["resume", str(folder), "--quiet"]) == 0
    _assert_same_compare(folder, chosen_reference)


def test_resume_of_a_select_folder_is_refused_in_one_line(tmp_path, capsys):
    args = _args("select", tmp_path, "sel", ["data.n_train=150", "model.hidden=[8]", "train.epochs=1",
                                             "select.n_alphas=2", "select.path_epochs=1", "select.refit_epochs=0"])
    assert cli.main(args) == 0
    before = sorted(p.name for p in (tmp_path / "sel").iterdir())
    capsys.readouterr()
    assert cli.main(["resume", str(tmp_path / "sel")]) == 2
    err = capsys.readouterr().err
    assert "was written by 'decaylab select'" in err and "run 'decaylab select' again" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "sel").iterdir()) == before  # nothing trained into it


def test_resume_of_a_finished_folder_says_nothing_to_do(reference, chosen_reference, tmp_path, capsys):
    for src in (reference / "compare", chosen_reference):
        copy = _copy(src, tmp_path / src.name)
        capsys.readouterr()
        assert cli.main(["resume", str(copy)]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("nothing to do: every run in") and "0/" not in err
