"""What ``decaylab resume`` needs beyond the loop's checkpoints: which folders are done,
and how a sweep stacks its points again.

A run folder is resumed as the command that wrote it (``config.json["command"]``):
``train`` and ``compare`` runs continue from their checkpoints (``train.train_run``), a
``compare`` with strengths chosen on validation resumes its sweeps then its seeded runs
(``choose.run_compare``), a ``sweep`` continues its unfinished stacks from their
checkpoints (``sweep.run_sweep``). ``select`` keeps no checkpoints: it is refused with one line.
"""

from __future__ import annotations

from pathlib import Path

from . import runfolder

RESUMABLE = ("compare", "train", "sweep")


def finished(run_dir: Path, saved: dict) -> bool:
    """True if the folder ended complete and holds every result its command writes.

    >>> import tempfile; finished(Path(tempfile.mkdtemp()), {"command": "train", "runs": []})
    False
    """
    if runfolder.read_status(run_dir).get("state") != "complete":
        return False
    if saved.get("command") == "sweep":
        return runfolder.read_sweep(run_dir) is not None
    if "base_runs" in saved:
        return runfolder.read_compare(run_dir) is not None
    names = [r.get("name") for r in saved.get("runs", []) if isinstance(r, dict)]
    return all(runfolder.run(run_dir, n).is_complete() for n in names)


def stack_size(run_dir: Path, spec: dict, planned: int, resume: bool) -> int:
    """Points per stack of a sweep: the first plan's, saved in ``config.json["sweep"]
    ["per_stack"]``, so a resume (maybe with less free memory) stacks the points as the
    interrupted sweep did and its halving decides the same."""
    if resume and spec.get("per_stack"):
        return spec["per_stack"]
    if not spec.get("per_stack"):
        spec["per_stack"] = planned
        runfolder.update_config(run_dir, sweep=spec)
    return planned


def kept_points(seed: int, done: int, total: int, again: int) -> str:
    """The line a resumed sweep says per seed.

    >>> kept_points(0, 3, 8, 4)
    'resume: seed 0: 3 of 8 points finished; 4 go on (each stack with an unfinished point, from its last checkpoint)'
    """
    return (f"resume: seed {seed}: {done} of {total} points finished; {again} go on "
            f"(each stack with an unfinished point, from its last checkpoint)")
