"""Every benchmark's TARGET where it was (issue #17): a benchmark run on a base commit and on
this tree, one after the other in one run on one machine, and their TARGET lines compared.

    python bench/targets_where.py                           # bench/step_overhead.py, base f57ba25
    python bench/targets_where.py --base REV --bench bench/sweep.py --rounds 2 -- --quick

The base is checked out into a temporary git worktree (removed afterwards); each side runs
its own copy of the benchmark against its own ``src/``, so the base is measured as it was
written. With ``--rounds N`` the two sides alternate N times and each target's verdict is
taken from the median of its measured values. A target is kept when this tree's verdict is
no worse than the base's (PASS stays PASS; a base MISS may stay a MISS). The default base,
f57ba25, is the last commit before the #17 restructure.

Ends with ``TARGET where: kept/all (target >= all/all) PASS|MISS``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = re.compile(r"^TARGET\s+(?P<name>\S+):\s+(?P<measured>\S+)\s+\(target\s+(?P<op><=|>=|<|>|==)\s+"
                    r"(?P<value>[^)]+)\)\s+(?P<verdict>PASS|MISS)", re.M)


def run_bench(tree: Path, bench: str, args: list[str]) -> dict[str, dict]:
    """TARGET lines of ``bench`` run in ``tree`` (its own ``src/``): name -> fields."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, bench, *args], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{bench} failed in {tree} (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return {m["name"]: m.groupdict() for m in TARGET.finditer(out.stdout)}


def number(measured: str) -> float:
    return float(measured.rstrip("%x"))


def verdict(value: float, op: str, limit: str) -> str:
    limit_v = number(limit)
    ok = {"<=": value <= limit_v, ">=": value >= limit_v, "<": value < limit_v, ">": value > limit_v,
          "==": value == limit_v}[op]
    return "PASS" if ok else "MISS"


def combine(runs: list[dict[str, dict]]) -> dict[str, tuple[float, str]]:
    """Per target: the median measured value over the rounds and its verdict."""
    out = {}
    for name, first in runs[0].items():
        values = [number(r[name]["measured"]) for r in runs if name in r]
        median = statistics.median(values)
        out[name] = (median, verdict(median, first["op"], first["value"]) if len(values) > 1 else first["verdict"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="f57ba25", help="the commit to compare with (default: before #17)")
    ap.add_argument("--bench", default="bench/step_overhead.py")
    ap.add_argument("--rounds", type=int, default=1, help="alternations of base and this tree")
    ap.add_argument("bench_args", nargs="*", help="arguments for the benchmark (after --)")
    args = ap.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), rev], cwd=ROOT, check=True)
        try:
            runs = {"base": [], "head": []}
            for i in range(args.rounds):
                for side, tree in (("base", base), ("head", ROOT)):
                    print(f"round {i + 1}/{args.rounds}: {args.bench} on {side}", flush=True)
                    runs[side].append(run_bench(tree, args.bench, args.bench_args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    b, h = combine(runs["base"]), combine(runs["head"])
    print(f"\n{args.bench}, {args.rounds} round(s) each; base {rev}, head = this tree")
    print(f"  {'target':<40} {'base':>16} {'head':>16}  kept")
    kept = 0
    for name, (bv, bverdict) in b.items():
        hv, hverdict = h.get(name, (float("nan"), "MISS"))
        ok = hverdict == "PASS" or bverdict == "MISS"
        kept += ok
        print(f"  {name:<40} {bv:>11.4g} {bverdict} {hv:>11.4g} {hverdict}  {'yes' if ok else 'NO'}")
    n = len(b)
    print(f"TARGET where: {kept}/{n} (target >= {n}/{n}) {'PASS' if kept == n and n else 'MISS'}")


if __name__ == "__main__":
    main()
