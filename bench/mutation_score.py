"""Score a mutmut run from its ``mutants/**/*.meta`` files (bench/mutation.sh calls this).

    python bench/mutation_score.py WORKDIR [EQUIVALENT_LIST]

Killed (and timed-out) mutants over all checked ones, with the mutants listed in
EQUIVALENT_LIST (one mutmut name per line, ``#`` comments: mutants that cannot change any
behaviour) left out. Mutants a time-limited run did not reach are counted apart, not
scored. Survivors are written to WORKDIR/survivors.txt for review.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255}  # test failure, pytest internal error, timeouts
NOT_CHECKED = {None, 2, 34}  # not reached, interrupted, skipped


def main(workdir: str, equivalent_list: str | None = None) -> None:
    equivalent = set()
    if equivalent_list and Path(equivalent_list).exists():
        for line in Path(equivalent_list).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                equivalent.add(line)
    per_file: dict[str, Counter] = {}
    survivors = []
    for meta in sorted(Path(workdir, "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        c = per_file.setdefault(meta.name[: -len(".meta")], Counter())
        for name, code in codes.items():
            if name in equivalent:
                c["equivalent"] += 1
            elif code in NOT_CHECKED:
                c["not checked"] += 1
            elif code in KILLED:
                c["killed"] += 1
            else:
                c["survived"] += 1
                survivors.append(f"{name}: exit {code}")
    total = Counter()
    print(f"{'file':<16} {'killed':>7} {'survived':>9} {'equivalent':>11} {'not checked':>12} {'score':>7}")
    for f, c in per_file.items():
        total.update(c)
        scored = c["killed"] + c["survived"]
        score = f"{100 * c['killed'] / scored:.1f}%" if scored else "-"
        print(f"{f:<16} {c['killed']:>7} {c['survived']:>9} {c['equivalent']:>11} {c['not checked']:>12} {score:>7}")
    scored = total["killed"] + total["survived"]
    Path(workdir, "survivors.txt").write_text("\n".join(survivors) + "\n")
    print(f"survivors listed in {Path(workdir, 'survivors.txt')}")
    if not scored:
        print("TARGET mutation_score: n/a (target >= 90%) MISS  (no mutant checked)")
        return
    score = 100 * total["killed"] / scored
    checked = scored + total["equivalent"]
    everything = checked + total["not checked"]
    verdict = "PASS" if score >= 90 else "MISS"
    print(f"TARGET mutation_score: {score:.1f}% (target >= 90%) {verdict}  "
          f"({scored} scored of {everything} mutants; {total['equivalent']} equivalent excluded, "
          f"{total['not checked']} not reached in the time limit)")


if __name__ == "__main__":
    main(*sys.argv[1:])
