"""The run folder: the only code that knows its layout, writes and reads one.

The layout is documented in ``docs/run-folder.md``; every file and folder name in it is a
constant here. Training (``train.py``), the sweeps (local and Ray), compare with selection,
``select``, ``compact``, ``resume``, the console table and the HTML report all go through
this module, so a file name or a reading rule lives in one place.

Writing rules (:mod:`decaylab.lab.files`): every JSON file and every checkpoint is
written to a temporary file in the same folder, flushed to disk (fsync) and renamed over
the old one, so a process killed at any moment leaves either the old or the new file,
never half of one. ``metrics.jsonl`` is appended one flushed line per epoch; a reader skips
a last line that does not parse. Every ``.pt`` load uses ``torch.load(...,
weights_only=True)``: a shared checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

# the primitives, re-exported: ``runfolder.write_json`` etc. keep working for old callers
from .files import load_pt, read_json, read_metrics, save_pt, write_json, write_text  # noqa: F401
from .files import FileLock, FolderInUse, append_line, check_name  # noqa: F401

# RUN_DIR/
CONFIG, STATUS, DATA, REPORT, LOCK = "config.json", "status.json", "data.json", "report.html", ".lock"
RUNS, SWEEPS, RAY = "runs", "sweeps", "ray"  # runs/<name>/, sweeps/<run>/, Ray Tune's storage
SWEEP, COMPARE = "sweep.json", "compare.json"  # decaylab sweep; compare with selection or seeds
PATH, SELECTION, SELECTION_FIGURE = "path.json", "selection.json", "selection.png"  # decaylab select
# RUN_DIR/runs/<name>/
SPEC, METRICS, FINAL = "spec.json", "metrics.jsonl", "final.json"
MODEL, RULES, CHECKPOINT = "model.pt", "rules.txt", "checkpoint.pt"
COMPACT, COMPACT_MODEL = "compact.json", "compact.pt"  # written by `decaylab compact RUN_DIR`
STATES = ("running", "complete", "failed", "interrupted")


def now() -> str:
    """The current UTC time as an ISO string to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the folder -------------------------------------------------------------------------
def folder_path(out: str | os.PathLike, name: str) -> Path:
    """``out/name``, refusing a name that is not one plain folder name.

    >>> str(folder_path("runs", "digits"))
    'runs/digits'
    """
    return Path(out) / check_name(name, "run folder name (--name)")


def create(out: str | os.PathLike, name: str) -> Path:
    """Make the new, empty folder ``out/name``; an existing folder is never reused."""
    path = folder_path(out, name)
    if path.exists():
        raise FileExistsError(f"run folder {str(path)!r} already exists and is never overwritten; "
                              f"choose another --name or remove it")
    path.mkdir(parents=True)
    return path


def lock(root: str | os.PathLike) -> FileLock:
    """Hold ``RUN_DIR/.lock`` (an OS file lock) while training into a folder, so a second
    ``decaylab resume`` of the same folder fails (:class:`FolderInUse`) instead of writing
    over the first. The OS drops the lock when the process ends, even on SIGKILL."""
    return FileLock(Path(root) / LOCK)


def is_run_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` has a ``config.json`` or a ``runs/`` folder."""
    root = Path(path)
    return (root / CONFIG).is_file() or (root / RUNS).is_dir()


def _dict_or_none(path: Path) -> dict | None:
    obj = read_json(path)
    return obj if isinstance(obj, dict) else None


def _required(path: Path, why: str) -> dict:
    obj = _dict_or_none(path)
    if obj is None:
        raise FileNotFoundError(f"'{path}' is missing or unreadable: {why}")
    return obj


# -- config.json, status.json, data.json ------------------------------------------------
def write_config(root: str | os.PathLike, cfg: dict, command: str | None = None, *,
                 versions: dict | None = None, sweep: dict | None = None) -> None:
    """Write ``config.json`` (every command writes it through here).

    Args:
        root: the run folder.
        cfg: the resolved config (every key, defaults filled in).
        command: the command making the folder. Given, the file also gets ``"command"``,
            ``"sweep"`` (if given), ``"versions"`` and ``"created"`` (now); omitted,
            ``cfg`` is written as it is.
        versions: ``train.versions()``: what the folder was made with.
        sweep: a ``decaylab sweep`` folder's spec.

    >>> import tempfile; root = tempfile.mkdtemp()
    >>> write_config(root, {"seed": 0}, "train", versions={"torch": "2"}); sorted(read_config(root))
    ['command', 'created', 'seed', 'versions']
    """
    if command is not None:
        cfg = {**cfg, "command": command, **({"sweep": sweep} if sweep is not None else {}),
               "versions": versions or {}, "created": now()}
    write_json(Path(root) / CONFIG, cfg)


def update_config(root: str | os.PathLike, **changes) -> dict:
    """Rewrite ``config.json`` with some keys changed (e.g. the runs once strengths are
    chosen); returns the new config.

    >>> import tempfile; root = tempfile.mkdtemp(); write_config(root, {"seed": 0})
    >>> update_config(root, seed=1)
    {'seed': 1}
    """
    cfg = {**read_config(root), **changes}
    write_json(Path(root) / CONFIG, cfg)
    return cfg


def read_config(root: str | os.PathLike) -> dict:
    """``config.json``; a folder without one is not a run folder (``FileNotFoundError``)."""
    cfg = read_json(Path(root) / CONFIG)
    if not isinstance(cfg, dict):
        raise FileNotFoundError(f"'{root}' is not a run folder: it has no readable {CONFIG}; pass "
                                f"a folder written by 'decaylab compare' or 'decaylab train'")
    return cfg


def has_config(root: str | os.PathLike) -> bool:
    return (Path(root) / CONFIG).is_file()


def set_status(root: str | os.PathLike, state: str, error: str | None = None) -> None:
    """Write ``status.json``: one of ``STATES``, the error if any, the time."""
    assert state in STATES, state
    write_json(Path(root) / STATUS, {"state": state, "error": error, "updated": now()})


@contextmanager
def tracking(root: str | os.PathLike, resume_hint: str | None = None):
    """On leaving the block, write ``status.json``: complete, interrupted (Ctrl-C; the
    message names ``resume_hint`` if given) or failed (with the error), and re-raise."""
    state, error = "failed", None
    try:
        yield
        state = "complete"
    except KeyboardInterrupt:
        state, error = "interrupted", "interrupted by the user (Ctrl-C)"
        if resume_hint:
            error += f"; continue with: {resume_hint}"
        raise
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        set_status(root, state, error)


def read_status(root: str | os.PathLike) -> dict:
    return read_json(Path(root) / STATUS, {}) or {}


def write_data_info(root: str | os.PathLike, info: dict) -> None:
    write_json(Path(root) / DATA, info)


def read_data_info(root: str | os.PathLike) -> dict:
    """``data.json`` (task, split sizes, ...); ``FileNotFoundError`` if the folder has none."""
    return _required(Path(root) / DATA, "the data set is described once the data is loaded")


# -- what sweep, compare with selection, select and report add --------------------------
def sweep_dir(root: str | os.PathLike, run_name: str) -> Path:
    """``root/sweeps/<run>/``: the sweep folder that chooses run ``run_name``'s strength.

    >>> sweep_dir("out", "l1").as_posix(), sweep_ref("l1")
    ('out/sweeps/l1', 'sweeps/l1/sweep.json')
    """
    return Path(root) / SWEEPS / check_name(run_name)


def sweep_ref(run_name: str) -> str:
    """That sweep's ``sweep.json`` relative to the folder, as ``compare.json`` names it."""
    return f"{SWEEPS}/{check_name(run_name)}/{SWEEP}"


def write_sweep(root: str | os.PathLike, result: dict) -> None:
    """Write ``sweep.json``: a sweep's path and choice."""
    write_json(Path(root) / SWEEP, result)


def read_sweep(root: str | os.PathLike) -> dict | None:
    """``sweep.json``, or None where there is none (not a sweep, or not finished)."""
    return _dict_or_none(Path(root) / SWEEP)


def read_sweeps(root: str | os.PathLike) -> list[tuple[str, dict]]:
    """``[(run name, sweep.json)]`` of the ``sweeps/*/`` that have one, by name."""
    folder = Path(root) / SWEEPS
    found = [(p.name, read_sweep(p)) for p in sorted(folder.iterdir())] if folder.is_dir() else []
    return [(name, sw) for name, sw in found if sw is not None]


def write_compare(root: str | os.PathLike, result: dict) -> None:
    """Write ``compare.json``: a compare's chosen strengths and mean ± sd over seeds."""
    write_json(Path(root) / COMPARE, result)


def read_compare(root: str | os.PathLike) -> dict | None:
    return _dict_or_none(Path(root) / COMPARE)


def write_selection(root: str | os.PathLike, path: dict, selection: dict) -> Path:
    """Write ``decaylab select``'s ``path.json`` and ``selection.json``; returns the latter."""
    write_json(Path(root) / PATH, path)
    write_json(Path(root) / SELECTION, selection)
    return Path(root) / SELECTION


def selection_figure(root: str | os.PathLike) -> Path:
    return Path(root) / SELECTION_FIGURE


def report_path(root: str | os.PathLike) -> Path:
    return Path(root) / REPORT


def ray_storage(root: str | os.PathLike) -> Path:
    """``root/ray/`` (absolute): where Ray Tune keeps its trials' state for a Ray sweep."""
    return (Path(root) / RAY).resolve()


# -- the runs ---------------------------------------------------------------------------
def run(root: str | os.PathLike, name: str) -> "Run":
    """The run called ``name`` inside the run folder ``root`` (``root/runs/name``)."""
    return Run(Path(root) / RUNS / check_name(name))


def runs(root: str | os.PathLike) -> list["Run"]:
    """Every run folder under ``root/runs/``, by name."""
    folder = Path(root) / RUNS
    return [Run(p) for p in sorted(folder.iterdir()) if p.is_dir()] if folder.is_dir() else []


def final(root: str | os.PathLike, name: str) -> dict:
    """A finished run's ``final.json``; ``FileNotFoundError`` naming it if the run has none."""
    out = run(root, name)
    return _required(out.final_path, f"run '{name}' has not finished; continue it with "
                                      f"'decaylab resume {root}'")


class Run:
    """One penalty setting's folder, ``RUN_DIR/runs/<name>/``: its writers and readers.

    >>> r = Run("/tmp/x/runs/l1")
    >>> r.metrics_path.name, r.checkpoint_path.name
    ('metrics.jsonl', 'checkpoint.pt')
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    spec_path = property(lambda self: self.path / SPEC)
    metrics_path = property(lambda self: self.path / METRICS)
    final_path = property(lambda self: self.path / FINAL)
    model_path = property(lambda self: self.path / MODEL)
    rules_path = property(lambda self: self.path / RULES)
    checkpoint_path = property(lambda self: self.path / CHECKPOINT)
    compact_model_path = property(lambda self: self.path / COMPACT_MODEL)

    # writing
    def begin(self, spec: dict) -> None:
        """Start the run afresh: an empty folder holding only ``spec.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in (METRICS, FINAL, MODEL, RULES, CHECKPOINT):
            (self.path / leftover).unlink(missing_ok=True)
        write_json(self.spec_path, spec)

    def append_metrics(self, row: dict) -> None:
        """Append one epoch's line and push it to disk before the next epoch starts."""
        append_line(self.metrics_path, row)

    def keep_epochs(self, epochs: int) -> None:
        """Drop metric lines past ``epochs`` (and a torn last line) and temporary files a
        killed write left: for resuming from a checkpoint older than the last line."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        rows = [r for r in self.metrics() if r.get("epoch", 0) <= epochs]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def write_rules(self, text: str) -> None:
        write_text(self.rules_path, text.rstrip("\n") + "\n")

    def write_final(self, final: dict) -> None:
        write_json(self.final_path, final)

    def save_model(self, state_dict: dict) -> None:
        save_pt(state_dict, self.model_path)

    def save_checkpoint(self, checkpoint: dict) -> None:
        save_pt(checkpoint, self.checkpoint_path)

    def checkpoint(self, state) -> None:
        """Checkpoint a run in progress (anything with ``state_dict()``, e.g. a TrainState)."""
        self.save_checkpoint(state.state_dict())

    def drop_checkpoint(self) -> None:
        self.checkpoint_path.unlink(missing_ok=True)

    def write_compact(self, result: dict, state_dict: dict | None = None) -> None:
        """``decaylab compact``'s ``compact.pt`` (the compacted weights, if any), then
        ``compact.json`` (``result``)."""
        if state_dict is not None:
            save_pt(state_dict, self.compact_model_path)
        write_json(self.path / COMPACT, result)

    # reading
    def spec(self) -> dict:
        return read_json(self.spec_path, {}) or {}

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def final(self) -> dict | None:
        return _dict_or_none(self.final_path)

    def compact(self) -> dict | None:
        """``compact.json`` (what ``decaylab compact`` removed), or None before it ran."""
        return _dict_or_none(self.path / COMPACT)

    def load_model(self) -> dict:
        return load_pt(self.model_path)

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint, or None if the run never finished an epoch."""
        return load_pt(self.checkpoint_path) if self.checkpoint_path.is_file() else None

    def is_complete(self) -> bool:
        return self.final() is not None

    def read(self) -> dict:
        """``{"name", "dir", "spec", "metrics", "final", "compact"}`` as the report uses them."""
        spec = self.spec()
        return {"name": str(spec.get("name", self.path.name)), "dir": self.path.name, "spec": spec,
                "metrics": self.metrics(), "final": self.final(), "compact": self.compact()}


def _config_order(config: dict) -> list[str]:
    """Run names in the order ``config.json["runs"]`` lists them (names, dicts or a map)."""
    runs = config.get("runs")
    items = list(runs) if isinstance(runs, (list, dict)) else []
    return [str(item["name"]) if isinstance(item, dict) else item for item in items
            if isinstance(item, str) or (isinstance(item, dict) and "name" in item)]


def load(root: str | os.PathLike) -> dict:
    """Read a run folder into plain Python data (JSON files only, never a ``.pt``).

    Args:
        root: the folder written by ``decaylab compare`` / ``train`` / ``sweep``.

    Returns:
        ``{"path", "config", "status", "data", "runs"}``; each run is ``{"name", "dir",
        "spec", "metrics" (list of epoch dicts), "final" (dict, or None if incomplete),
        "compact" (compact.json, or None)}``,
        ordered as ``config.json["runs"]`` names them, else alphabetically.

    Raises:
        FileNotFoundError: if ``root`` has neither ``config.json`` nor ``runs/``.

    >>> load("runs/digits-compare")["runs"][0]["name"]  # doctest: +SKIP
    'none'
    """
    root = Path(root)
    if not is_run_folder(root):
        raise FileNotFoundError(f"'{root}' is not a run folder: it has no {CONFIG} and no "
                                f"{RUNS}/; pass the folder written by 'decaylab compare'")
    config = read_json(root / CONFIG, {}) or {}
    found = [r.read() for r in runs(root)]
    rank = {name: i for i, name in enumerate(_config_order(config))}
    found.sort(key=lambda r: (rank.get(r["name"], rank.get(r["dir"], len(rank))), r["name"]))
    return {"path": str(root), "config": config, "status": read_status(root),
            "data": read_json(root / DATA, {}) or {}, "runs": found}
