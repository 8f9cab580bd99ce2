"""The documentation site, checked without building it (the build itself is a slow test)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import decaylab

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _benchmarks():
    spec = importlib.util.spec_from_file_location("docs_benchmarks", DOCS / "_ext" / "benchmarks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # a dataclass needs its module registered
    spec.loader.exec_module(mod)
    return mod


SAMPLE = """# Benchmarks

## step
### 2026-01-03: after the fix (quiet machine)

```
nice python bench/step.py --only direct
```

TARGET ratio: 1.10 (target <= 1.3) PASS
TARGET bytes: 0 (target <= 0) PASS

### 2026-01-01: before

TARGET ratio: 1.90 (target <= 1.3) MISS

## sweep

`python bench/sweep.py --full-too`

TARGET cost: 2.02 (target <= 4) PASS  (16 points)
"""


def test_parser_keeps_the_newest_line_of_each_target_with_its_section():
    rows = _benchmarks().parse(SAMPLE)
    got = [(r.target, r.measured, r.goal, r.verdict, r.command, r.date, r.machine) for r in rows]
    assert got == [
        ("ratio", "1.10", "<= 1.3", "PASS", "nice python bench/step.py --only direct", "2026-01-03", "quiet machine"),
        ("bytes", "0", "<= 0", "PASS", "nice python bench/step.py --only direct", "2026-01-03", "quiet machine"),
        ("cost", "2.02", "<= 4", "PASS", "python bench/sweep.py --full-too", "", "not stated"),
    ]


def test_a_miss_is_reported_as_a_miss():
    rows = _benchmarks().parse("## b\nTARGET x: 9 (target <= 1) MISS\n")
    assert [(r.target, r.verdict) for r in rows] == [("x", "MISS")]


def test_update_writes_between_markers_and_is_idempotent(tmp_path):
    bm = _benchmarks()
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(SAMPLE)
    assert bm.update(path) is True
    text = path.read_text()
    assert text.index(bm.BEGIN) < text.index("## step") and "| ratio | 1.10 |" in text
    assert bm.update(path) is False
    assert bm.history_text(text).count("TARGET ratio") == 2  # the history is kept whole


def test_the_committed_table_is_fresh():
    bm = _benchmarks()
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert f"{bm.BEGIN}\n{bm.markdown(bm.parse(bm.history_text(text)))}\n{bm.END}" in text, \
        "run: python docs/_ext/benchmarks.py --update-readme-table"


def test_every_public_name_is_on_the_api_page():
    api = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto(?:function|class|data|module):: (?:decaylab\.)?(\S+)", api, re.M))
    missing = [n for n in decaylab.__all__ if n not in documented]
    assert not missing, f"add to docs/api.rst: {missing}"


def _includes():
    for page in sorted(DOCS.rglob("*.md")):
        if "_build" in page.parts:
            continue
        text = page.read_text()
        for m in re.finditer(r"```\{literalinclude\} (\S+)\n((?::\S+:.*\n)*)", text):
            opts = dict(re.findall(r":(\S+): *(.*)", m.group(2)))
            yield page, (page.parent / m.group(1)).resolve(), opts


def test_every_literalinclude_target_exists():
    seen = 0
    for page, target, opts in _includes():
        seen += 1
        assert target.is_file(), f"{page.name}: {target} does not exist"
        if "pyobject" in opts:
            names = {n.name for n in ast.walk(ast.parse(target.read_text()))
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert opts["pyobject"] in names, f"{page.name}: no {opts['pyobject']} in {target.name}"
    assert seen >= 8


def test_every_howto_page_shows_tested_code():
    for page in sorted((DOCS / "howto").glob("*.md")):
        if page.name != "index.md":
            assert "{literalinclude}" in page.read_text(), f"{page.name} has no included code"


def test_included_test_files_are_tests():
    for _, target, _ in _includes():
        if target.parent.name == "tests":
            assert target.name.startswith("test_"), target


def test_gallery_examples_have_a_title_and_honour_fast_mode():
    examples = sorted((DOCS / "examples").glob("plot_*.py"))
    assert examples
    for ex in examples:
        doc = ast.get_docstring(ast.parse(ex.read_text()))
        assert doc and "\n===" in doc, f"{ex.name}: the docstring needs a title underlined with ="
        assert "DECAYLAB_DOCS_FAST" in ex.read_text(), f"{ex.name} ignores DECAYLAB_DOCS_FAST"


def test_the_gallery_reading_order_lists_every_example_once():
    spec = importlib.util.spec_from_file_location("gallery_order", DOCS / "_ext" / "gallery_order.py")
    order = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(order)
    examples = {p.name for p in (DOCS / "examples").glob("plot_*.py")}
    assert len(order.ORDER) == len(set(order.ORDER))
    assert set(order.ORDER) == examples, "docs/_ext/gallery_order.py's ORDER must list every gallery example"
    key = order.ReadingOrder(DOCS / "examples")
    assert sorted(examples, key=key) == order.ORDER
    with pytest.raises(ValueError, match="plot_gone.py"):
        order.ORDER.append("plot_gone.py")
        try:
            order.ReadingOrder(DOCS / "examples")
        finally:
            order.ORDER.pop()


def test_the_site_shows_no_pasted_image():
    for page in DOCS.rglob("*"):
        if page.suffix in {".md", ".rst"} and "_build" not in page.parts and "auto_examples" not in page.parts:
            text = page.read_text()
            for m in re.finditer(r"!\[[^\]]*\]\(([^)]+)\)|(?:\.\. |\{)(?:image|figure)(?::: |\} )(\S+)", text):
                assert "_generated/" in (m.group(1) or m.group(2)), f"{page.name}: pasted image {m.group(0)}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sphinx-build") is None and importlib.util.find_spec("sphinx") is None,
                    reason="needs the docs extra: pip install -e '.[docs]'")
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None
                        for m in ("sphinx_gallery", "pydata_sphinx_theme", "myst_parser")),
                    reason="needs the docs extra: pip install -e '.[docs]'")
def test_the_site_builds_without_a_warning(tmp_path):
    env = dict(os.environ, DECAYLAB_DOCS_FAST="1", MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                          "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "html" / "api.html").is_file()


def test_the_lab_choices_page_is_written_from_the_registries():
    from decaylab.lab import build
    from decaylab.lab.figures import FIGURES

    spec = importlib.util.spec_from_file_location("docs_registries", DOCS / "_ext" / "registries.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    page = mod.markdown()
    rows = {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", page, re.M)}
    expected = {*build.MODELS, *build.DATASETS, *build.PENALTIES, *(f.id for f in FIGURES)}
    assert expected <= rows, f"missing from the page: {sorted(expected - rows)}"
    assert rows - expected == {"model.factory", "data.factory"}
    for kind in build.PENALTIES.values():
        assert kind.help in page
    assert "{metric}" not in page
    assert "_generated/lab-choices.md.inc" in (DOCS / "lab-choices.md").read_text()
    assert "lab-choices" in (DOCS / "index.rst").read_text()
    # the Getting-started figures take the report's captions, not a copy of them
    assert "CAPTIONS" not in (DOCS / "_ext" / "mainjob.py").read_text()
