"""Each row of the conversion table in docs/examples/plot_conversion_table.py, checked.

torch and scikit-learn rows against the libraries; Keras and optax rows (not installed)
against the formulas in their documentation, as arithmetic only.
"""

import importlib.util
import os
import runpy
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "plot_conversion_table.py"


@pytest.fixture(scope="module")
def example():
    import matplotlib

    matplotlib.use("Agg")
    old = os.environ.get("DECAYLAB_DOCS_FAST")
    os.environ["DECAYLAB_DOCS_FAST"] = "1"
    try:
        return runpy.run_path(str(EXAMPLE))
    finally:
        if old is None:
            os.environ.pop("DECAYLAB_DOCS_FAST")
        else:
            os.environ["DECAYLAB_DOCS_FAST"] = old


def _rows():
    src = EXAMPLE.read_text()
    return [line for line in src.splitlines() if line.strip().startswith('("')]


def test_every_row_is_checked(example):
    assert len(example["CONVERSIONS"]) == len(_rows()) == 8
    assert {r[4] for r in example["CONVERSIONS"]} == {"torch", "sklearn", "formula"}


@pytest.mark.parametrize("i", range(8))
@pytest.mark.parametrize("s", [0.01, 0.1, 1.0])
def test_row(example, i, s):
    row = example["CONVERSIONS"][i]
    if row[4] == "sklearn" and importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn not installed")
    tol = 1e-6 if row[4] == "sklearn" else 1e-12
    assert example["check"](row, s) < tol, f"{row[0]} {row[1]} at s={s}"


def test_wrong_conversion_is_caught(example):
    """The check has teeth: Ridge without the 1/n, and Keras L2 without the 2, fail."""
    import decaylab as dl

    ridge, keras = example["CONVERSIONS"][3], example["CONVERSIONS"][5]
    if importlib.util.find_spec("sklearn") is not None:
        bad = ridge[:3] + (lambda s: dl.Rule(dl.L2(s)),) + ridge[4:]
        assert example["check"](bad, 1.0) > 1e-3
    bad = keras[:3] + (lambda s: dl.Rule(dl.L2(s), mode="coupled"),) + keras[4:]
    assert example["check"](bad, 0.1) > 1e-3
