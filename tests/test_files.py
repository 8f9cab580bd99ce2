"""Tests for decaylab.lab.files: the files the lab writes. Every file of a run folder, written
atomically through a temporary file, ends with the mode ``open()`` would give it: 0666
less the process umask."""

from __future__ import annotations

import pytest

from decaylab.lab import cli

from conftest import TINY_CLI, cli_args

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_are_written_with_the_process_umask(tmp_path, monkeypatch, umask):
    import os

    from decaylab.lab import train

    real, lines = train.runfolder.Run.append_metrics, []  # none finishes (model.pt), then a
    monkeypatch.setattr(train.runfolder.Run, "append_metrics",  # Ctrl-C in l1 leaves checkpoint.pt
                        lambda self, row: (real(self, row), lines.append(1), len(lines) == 3 and train.request_stop()))
    old = os.umask(umask)
    try:
        assert cli.main(cli_args("compare", tmp_path, TINY_CLI, extra=["--only", "none,l1"])) == 130
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "x").rglob("*") if p.is_file() and p.name != ".lock"]
    names = {p.name for p in files}
    assert {"config.json", "status.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "report.html"} <= names
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}
