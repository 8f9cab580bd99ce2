"""The file primitives under :mod:`runfolder`: safe names, atomic writes, tolerant reads,
a folder lock.

Every JSON file, text file and checkpoint is written to a temporary file in the same
folder (``.NAME.XXXX.tmp``), flushed to disk (fsync) and renamed over the old one, so a
process killed at any moment leaves either the old or the new file, never half of one.
Readers give a default for a missing or half-written file instead of raising.

This module knows no file names: which file lives where is :mod:`runfolder`'s business.
It imports torch only to save or load ``.pt`` files, and every load uses
``torch.load(..., weights_only=True)``: a shared checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,127}")


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
    """Write a text file atomically.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.txt"
    >>> write_text(p, "hello"); p.read_text()
    'hello'
    """
    data = text.encode("utf-8")
    _atomic(Path(path), lambda f: f.write(data))


def read_json(path: str | os.PathLike, default=None):
    """Parse a JSON file; a missing or half-written file gives ``default``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def append_line(path: str | os.PathLike, obj) -> None:
    """Append ``obj`` as one JSON line and push it to disk (fsync) before returning.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "m.jsonl"
    >>> append_line(p, {"epoch": 1}); append_line(p, {"epoch": 2}); read_metrics(p)
    [{'epoch': 1}, {'epoch': 2}]
    """
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """One dict per parsable line of a JSON-lines file; a partial last line is skipped."""
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


class FolderInUse(FileExistsError):
    """Another process is training into the run folder."""


class FileLock:
    """Hold an OS file lock on ``path`` (made if missing) while inside the block; a second
    holder gets :class:`FolderInUse` naming ``path``'s folder. The OS drops the lock when
    the process ends, even on SIGKILL. No-op where ``fcntl`` is missing.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
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
