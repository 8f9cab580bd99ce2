"""Fuzz the config loader and ``--set`` strings: any failure is one clean line on stderr
with exit code 2, never a traceback; any success prints a config that reads back the same."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decaylab.lab import cli, config

KEYS = sorted({*config.DEFAULTS, *(f"{t}.{k}" for t, v in config.DEFAULTS.items() if isinstance(v, dict) for k in v),
               *(f"penalty.{k}" for k in config.RUN_DEFAULTS), *(f"runs.l1.{k}" for k in config.RUN_DEFAULTS),
               "runs.*.alpha", "runs", "penalty", "runs.nope.alpha", "train", "train.epochs.x", ""})
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALAR = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(), st.booleans(), TEXT)
VALUE_TEXT = st.one_of(SCALAR.map(str), TEXT, st.sampled_from(
    ["[1, 2]", "[]", "[0]", "[-3]", "[1.5]", '"adam"', '"cosine"', '"l1"', "1e-3", "-1e-3", "nan", "inf", "1e400",
     "0", "true", "[[1]]", "{a = 1}", '"../x"', '"cuda"', "3", "0.5", '"prox"', '"adam"', "40"]))
SET_ITEM = st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS) | TEXT, VALUE_TEXT), TEXT)


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"


NAMES = st.sampled_from(sorted({*config.DEFAULTS, *config.DEFAULTS["train"], *config.RUN_DEFAULTS, "runs",
                                "penalty", "x"})) | TEXT
TREE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=4),
                    max_leaves=12)
FILE = st.dictionaries(NAMES, TREE, max_size=5)


def _run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _check(command: str, argv: list[str]) -> None:
    code, out, err = _run(argv)
    if code == 0:
        assert config.resolve(tomllib.loads(out), command=command) is not None
        return
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("decaylab: error: "), err


FUZZ = settings(max_examples=int(os.environ.get("DECAYLAB_FUZZ_EXAMPLES", 300)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(command=st.sampled_from(["compare", "train"]), items=st.lists(SET_ITEM, min_size=1, max_size=4))
def test_set_strings(command, items):
    argv = [command, "--print-config"]
    for item in items:
        argv += ["--set", item]
    _check(command, argv)


@FUZZ
@given(command=st.sampled_from(["compare", "train"]), data=FILE)
def test_config_files(tmp_path_factory, command, data):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_text("\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in data.items()), encoding="utf-8")
    argv = [command, str(path), "--print-config"] + (["--set", 'penalty.penalty="l1"'] if command == "train" else [])
    _check(command, argv)


@FUZZ
@given(text=st.text(max_size=200))
def test_raw_file_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_text(text, encoding="utf-8")
    _check("compare", ["compare", str(path), "--print-config"])
