"""The run folder: the only code that writes and reads one.

The layout is documented in ``docs/run-folder.md``. Training (``train.py``), the console
table, the HTML report, and the later commands (``sweep``, ``select``, ``compact``,
``resume``) all go through this module, so a file name or a reading rule lives in one place.

Writing rules: every JSON file and every checkpoint is written to a temporary file in the
same folder, flushed to disk (fsync) and renamed over the old one, so a process killed at
any moment leaves either the old or the new file, never half of one. ``metrics.jsonl`` is
appended one flushed line per epoch; a reader skips a last line that does not parse.

This module imports torch only to save or load ``.pt`` files, and every load uses
``torch.load(..., weights_only=True)``: a shared checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

CONFIG, STATUS, DATA, REPORT = "config.json", "status.json", "data.json", "report.html"
SPEC, METRICS, FINAL = "spec.json", "metrics.jsonl", "final.json"
MODEL, RULES, CHECKPOINT = "model.pt", "rules.txt", "checkpoint.pt"
COMPACT = "compact.json"  # written by `decaylab compact RUN_DIR`
STATES = ("running", "complete", "failed", "interrupted")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,127}")


def now() -> str:
    """The current UTC time as an ISO string to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- names ------------------------------------------------------------------------------
def check_name(name: str, what: str = "run name") -> str:
    """Return ``name`` if it is a safe single folder name, else raise ``ValueError``.

    A safe name is 1-128 characters of letters, digits and ``_ . + = -``, not starting with
    a dot or a dash: no path separator, no ``..``, so a folder can never escape its parent.

    >>> check_name("l1-1e-4")
    'l1-1e-4'
    >>> check_name("../x")
    Traceback (most recent call last):
    ...
    ValueError: run name '../x' is not a safe folder name: use 1-128 letters, digits and _ . + = - (not starting with '.' or '-')
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a safe folder name: use 1-128 letters, digits "
                         f"and _ . + = - (not starting with '.' or '-')")
    return name


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


# -- atomic writes and tolerant reads ---------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def umask_mode(fd: int) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode ``open()`` would: 0666 less the umask
    (0644 usually), so reports and checkpoints can be shared like any tool's output."""
    if hasattr(os, "fchmod"):
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)


def _atomic(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask_mode(fd)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (temp file, fsync, rename).

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.json"
    >>> write_json(p, {"a": 1}); read_json(p), read_json(p.with_name("missing.json"), {})
    ({'a': 1}, {})
    """
    data = json.dumps(obj, indent=2).encode()
    _atomic(Path(path), lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    data = text.encode("utf-8")
    _atomic(Path(path), lambda f: f.write(data))


def read_json(path: str | os.PathLike, default=None):
    """Parse a JSON file; a missing or half-written file gives ``default``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """One dict per parsable line of ``metrics.jsonl``; a partial last line is skipped."""
    path, rows = Path(path), []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [row for row in rows if isinstance(row, dict)]


def save_pt(obj, path: str | os.PathLike) -> None:
    """``torch.save`` atomically: a kill mid-write leaves the previous file intact."""
    import torch

    _atomic(Path(path), lambda f: torch.save(obj, f))


def load_pt(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` onto the CPU: tensors and plain data only."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# -- the folder -------------------------------------------------------------------------
class FolderInUse(FileExistsError):
    """Another process is training into the run folder."""


class lock:
    """Hold ``RUN_DIR/.lock`` (an OS file lock) while training into a folder, so a second
    ``decaylab resume`` of the same folder fails instead of writing over the first. The OS
    drops the lock when the process ends, even on SIGKILL. No-op where ``fcntl`` is missing.
    """

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / ".lock"
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise FolderInUse(f"run folder '{self.path.parent}' is in use by another decaylab process; "
                              f"wait for it to end (or stop it) and try again") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
        return False



def is_run_folder(path: str | os.PathLike) -> bool:
    root = Path(path)
    return (root / CONFIG).is_file() or (root / "runs").is_dir()


def write_config(root: Path, cfg: dict) -> None:
    write_json(Path(root) / CONFIG, cfg)


def read_config(root: str | os.PathLike) -> dict:
    """``config.json``; a folder without one is not a run folder (``FileNotFoundError``)."""
    cfg = read_json(Path(root) / CONFIG)
    if not isinstance(cfg, dict):
        raise FileNotFoundError(f"'{root}' is not a run folder: it has no readable {CONFIG}; pass "
                                f"a folder written by 'decaylab compare' or 'decaylab train'")
    return cfg


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


def run(root: str | os.PathLike, name: str) -> "Run":
    """The run called ``name`` inside the run folder ``root`` (``root/runs/name``)."""
    return Run(Path(root) / "runs" / check_name(name))


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

    # writing
    def begin(self, spec: dict) -> None:
        """Start the run afresh: an empty folder holding only ``spec.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in (METRICS, FINAL, MODEL, RULES, CHECKPOINT):
            (self.path / leftover).unlink(missing_ok=True)
        write_json(self.spec_path, spec)

    def append_metrics(self, row: dict) -> None:
        """Append one epoch's line and push it to disk before the next epoch starts."""
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

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

    # reading
    def spec(self) -> dict:
        return read_json(self.spec_path, {}) or {}

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def final(self) -> dict | None:
        final = read_json(self.final_path)
        return final if isinstance(final, dict) else None

    def compact(self) -> dict | None:
        """``compact.json`` (what ``decaylab compact`` removed), or None before it ran."""
        result = read_json(self.path / COMPACT)
        return result if isinstance(result, dict) else None

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
        raise FileNotFoundError(f"'{root}' is not a run folder: it has no config.json and no "
                                f"runs/; pass the folder written by 'decaylab compare'")
    config = read_json(root / CONFIG, {}) or {}
    runs_dir = root / "runs"
    runs = [Run(p).read() for p in sorted(runs_dir.iterdir()) if p.is_dir()] if runs_dir.is_dir() else []
    rank = {name: i for i, name in enumerate(_config_order(config))}
    runs.sort(key=lambda r: (rank.get(r["name"], rank.get(r["dir"], len(rank))), r["name"]))
    return {"path": str(root), "config": config, "status": read_status(root),
            "data": read_json(root / DATA, {}) or {}, "runs": runs}
