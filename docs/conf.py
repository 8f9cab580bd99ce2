"""Sphinx configuration of the decaylab site (build: docs/build.sh, or README "Documentation").

No network at build time: intersphinx is off and nothing is fetched. Warnings are errors in
CI (``-W``), and ``nitpicky`` makes every unresolved cross-reference a warning, which is how
internal links are checked.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import benchmarks  # noqa: E402  (docs/_ext/benchmarks.py)
import mainjob  # noqa: E402  (docs/_ext/mainjob.py)
import registries  # noqa: E402  (docs/_ext/registries.py)

project = "decaylab"
author = "decaylab engineers"
copyright = "2026, decaylab engineers"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
# intersphinx is deliberately not loaded: it would fetch inventories over the network.

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated/*.inc", "_generated/mainjob*", "examples/README.rst", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # signatures show names; types that live outside decaylab are not linked
autodoc_default_options = {"members": True, "show-inheritance": False}

nitpicky = True
# names that are not decaylab's and, without intersphinx, cannot resolve
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|transformers|lightning|nn|fx|optim|np|numpy|collections|typing|pathlib|Tensor|Module|Optimizer)(\..*)?"),
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|set|callable|object|None|Sequence|Mapping|Iterable|Callable|Any|optional)"),
    # references in library docstrings to private or undocumented names (decaylab.fused is an
    # implementation module; the others name helpers that are not public API)
    (r"py:.*", r"(decaylab\.fused|decaylab\.functional\.times|selection|resolve|chain|install)"),
]

html_theme = "pydata_sphinx_theme"
html_title = "decaylab"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path: list[str] = []

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "gallery_order.ReadingOrder",  # docs/_ext/gallery_order.py
    "matplotlib_animations": False,
}
os.environ.setdefault("MPLBACKEND", "Agg")

# --- generated pages (from the repo's own files, at build time) ---------------------------
GENERATED = HERE / "_generated"
GENERATED.mkdir(exist_ok=True)


def _write(name: str, text: str) -> None:
    path = GENERATED / name
    if not path.exists() or path.read_text() != text:  # unchanged files keep incremental builds quiet
        path.write_text(text)


_history = benchmarks.history_text((HERE.parent / "BENCHMARKS.md").read_text())
# the history without its pasted PNGs (figures on the site are drawn by scripts only)
_history_site = "\n".join(
    "*(figure `" + line.split("](", 1)[1].split(")", 1)[0] + "` is a file in the repository, not shown on the site)*"
    if line.lstrip().startswith("![") else line
    for line in _history.splitlines())
_write("benchmarks-history.md.inc", _history_site + "\n")
_write("benchmarks-table.md.inc", benchmarks.markdown(benchmarks.parse(_history)) + "\n")

# the integrations are documented when their frameworks are installed (the docs extra pulls
# in the integrations extra); without them the page says how to get them, with no warning
_have = {m: importlib.util.find_spec(p) is not None
         for m, p in [("hf", "transformers"), ("lightning", "lightning")]}
_parts = []
for mod, ok in _have.items():
    if ok:
        _parts.append(f".. automodule:: decaylab.integrations.{mod}\n   :members:\n")
    else:
        _parts.append(f"``decaylab.integrations.{mod}`` is documented when its framework is installed "
                      f"(``pip install -e \".[integrations]\"``).\n")
_write("integrations.rst.inc", "\n".join(_parts))

# the lab's models, data sets, penalties and figures, from the registries the CLI reads
_write("lab-choices.md.inc", registries.markdown())

# the Getting-started page's report: the main job run now, its figures drawn by the lab's own
# report code (no pasted images)
mainjob.generate(FAST)
