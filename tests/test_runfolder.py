"""The run folder owns its layout (issue #17 §4): the names on disk, the readers and
writers of :mod:`decaylab.lab.runfolder`, and that no other lab module spells a name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from decaylab.lab import runfolder

LAB = Path(runfolder.__file__).parent


def test_root_writers_put_each_file_at_its_documented_name(tmp_path):
    runfolder.write_config(tmp_path, {"seed": 0}, "select", versions={"torch": "2"})
    runfolder.set_status(tmp_path, "running")
    runfolder.write_data_info(tmp_path, {"task": "classification", "n_val": 10})
    runfolder.write_sweep(tmp_path, {"chosen": {"best": 0.1}})
    runfolder.write_compare(tmp_path, {"seeds": [0]})
    written = runfolder.write_selection(tmp_path, {"alphas": [1.0]}, {"features": ["x0"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "compare.json", "config.json", "data.json", "path.json", "selection.json", "status.json", "sweep.json"]
    assert written == tmp_path / "selection.json"
    assert json.loads((tmp_path / "path.json").read_text()) == {"alphas": [1.0]}
    assert runfolder.selection_figure(tmp_path) == tmp_path / "selection.png"
    assert runfolder.report_path(tmp_path) == tmp_path / "report.html"
    assert runfolder.ray_storage(tmp_path) == (tmp_path / "ray").resolve()
    assert runfolder.run(tmp_path, "l1").path == tmp_path / "runs" / "l1"
    assert runfolder.sweep_dir(tmp_path, "l1") == tmp_path / "sweeps" / "l1"
    assert runfolder.sweep_ref("l1") == "sweeps/l1/sweep.json"


def test_write_config_stamps_command_sweep_versions_and_time_in_that_order(tmp_path):
    runfolder.write_config(tmp_path, {"seed": 3, "runs": []}, "sweep", versions={"torch": "2"}, sweep={"alphas": [1]})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert list(saved) == ["seed", "runs", "command", "sweep", "versions", "created"]
    assert (saved["command"], saved["sweep"], saved["versions"]) == ("sweep", {"alphas": [1]}, {"torch": "2"})


def test_write_config_without_a_command_writes_the_config_as_given(tmp_path):
    runfolder.write_config(tmp_path, {"seed": 0, "command": "train"})
    assert runfolder.read_config(tmp_path) == {"seed": 0, "command": "train"}


def test_update_config_changes_only_the_keys_given(tmp_path):
    runfolder.write_config(tmp_path, {"seed": 0, "runs": ["a"], "command": "compare"})
    assert runfolder.update_config(tmp_path, runs=["a-s0"], base_runs=["a"]) == \
        {"seed": 0, "runs": ["a-s0"], "command": "compare", "base_runs": ["a"]}
    assert runfolder.read_config(tmp_path)["runs"] == ["a-s0"]


def test_update_config_of_a_folder_without_config_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder.*config.json"):
        runfolder.update_config(tmp_path, seed=1)


def test_strict_readers_name_the_missing_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.json"):
        runfolder.read_data_info(tmp_path)
    runfolder.run(tmp_path, "l1").begin({"name": "l1"})
    with pytest.raises(FileNotFoundError, match=r"final.json.*run 'l1' has not finished.*decaylab resume"):
        runfolder.final(tmp_path, "l1")
    runfolder.run(tmp_path, "l1").write_final({"test_acc": 0.9})
    assert runfolder.final(tmp_path, "l1") == {"test_acc": 0.9}


def test_tolerant_readers_give_none_for_missing_or_torn_files(tmp_path):
    assert runfolder.read_sweep(tmp_path) is None and runfolder.read_compare(tmp_path) is None
    (tmp_path / "sweep.json").write_text('{"chosen": ')  # torn
    (tmp_path / "compare.json").write_text("[1, 2]")  # not an object
    assert runfolder.read_sweep(tmp_path) is None and runfolder.read_compare(tmp_path) is None
    assert runfolder.read_sweeps(tmp_path) == [] and runfolder.runs(tmp_path) == []


def test_read_sweeps_lists_finished_sweep_folders_by_name(tmp_path):
    for name in ("l2", "l1", "gl"):
        runfolder.sweep_dir(tmp_path, name).mkdir(parents=True)
    runfolder.write_sweep(runfolder.sweep_dir(tmp_path, "l2"), {"chosen": 2})
    runfolder.write_sweep(runfolder.sweep_dir(tmp_path, "l1"), {"chosen": 1})
    (tmp_path / "sweeps" / "notes.txt").write_text("not a sweep")
    assert runfolder.read_sweeps(tmp_path) == [("l1", {"chosen": 1}), ("l2", {"chosen": 2})]


def test_runs_lists_run_folders_by_name_and_skips_files(tmp_path):
    for name in ("b", "a-s1", "a"):
        runfolder.run(tmp_path, name).begin({"name": name})
    (tmp_path / "runs" / "stray.txt").write_text("")
    assert [r.path.name for r in runfolder.runs(tmp_path)] == ["a", "a-s1", "b"]


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_layout_paths_refuse_a_name_that_would_leave_the_folder(tmp_path, name):
    for make in (lambda: runfolder.run(tmp_path, name), lambda: runfolder.sweep_dir(tmp_path, name),
                 lambda: runfolder.sweep_ref(name), lambda: runfolder.final(tmp_path, name)):
        with pytest.raises(ValueError, match="not a safe folder name"):
            make()


def test_write_compact_saves_the_weights_only_when_there_are_some(tmp_path):
    run = runfolder.run(tmp_path, "l1")
    run.begin({"name": "l1"})
    run.write_compact({"compacted": False, "reason": "no zero group"})
    assert run.compact() == {"compacted": False, "reason": "no zero group"}
    assert not (run.path / "compact.pt").exists()
    run.write_compact({"compacted": True}, {"w": torch.ones(2)})
    assert run.compact_model_path == run.path / "compact.pt"
    assert torch.equal(runfolder.load_pt(run.compact_model_path)["w"], torch.ones(2))
    assert run.compact() == {"compacted": True}


def test_a_second_lock_on_the_folder_is_refused(tmp_path):
    with runfolder.lock(tmp_path):
        with pytest.raises(runfolder.FolderInUse, match="in use by another decaylab process"):
            with runfolder.lock(tmp_path):
                pass
    with runfolder.lock(tmp_path):  # released on leaving the block
        pass
    assert (tmp_path / ".lock").is_file()


def _layout_names() -> set[str]:
    names = {v for k, v in vars(runfolder).items() if k.isupper() and isinstance(v, str)}
    # "runs", "sweeps" and "ray" are also keys (the config's runs, the report's sweeps) and
    # a --backend choice; the folders runs/, sweeps/ and ray/ are caught as spelled paths.
    return names - {runfolder.RUNS, runfolder.SWEEPS, runfolder.RAY}


def _spelled(path: Path, names: set[str]) -> list[str]:
    """String literals of ``path``'s code (docstrings aside) that name a layout file or
    spell a path into runs/, sweeps/ or ray/ (``"runs/x"``, ``root / "runs"``)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in (runfolder.RUNS, runfolder.SWEEPS, runfolder.RAY):  # root / "runs"
            found.append(f"{path.name}:{node.lineno}: {node.right.value!r}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value.strip("/")
            folder = "/" in node.value and text.split("/")[0] in ("runs", "sweeps", "ray")
            if text in names or text.split("/")[-1] in names or folder:
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return found


def test_no_lab_module_but_runfolder_spells_a_layout_name():
    names = _layout_names()
    spelled = [hit for path in sorted(LAB.glob("*.py")) if path.name != "runfolder.py"
               for hit in _spelled(path, names)]
    assert spelled == [], "use the runfolder constants and functions instead:\n" + "\n".join(spelled)


def test_the_detector_finds_a_literal_path(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Writes config.json."""\nimport json\n'
                   'def f(d):\n    """Reads final.json."""\n    return d / "runs" / "x" / "final.json", f"sweeps/{d}/"\n')
    assert sorted(hit.split(": ", 1)[1] for hit in _spelled(bad, _layout_names())) == \
        ["'final.json'", "'runs'", "'sweeps/'"]
