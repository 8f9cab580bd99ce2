#!/usr/bin/env bash
# Mutation testing of the library core (outside CI: it takes ~30+ minutes on 2 cores).
#
#   pip install mutmut==3.8.1          # the [mutation] extra
#   bench/mutation.sh [MAX_SECONDS] [CHILDREN] [MUTANT_PATTERN ...]
#
# MUTANT_PATTERNs (e.g. "decaylab.rules*") restrict the run to those mutants, so that a
# time-limited run can reach the files an earlier one did not.
#
# mutmut mutates functional.py, penalties.py, optim.py and rules.py one change at a time
# ([tool.mutmut] in pyproject.toml) and runs the fast library tests that cover each
# mutated function. It works in a scratch copy of the repository, so the worktree stays
# clean; the run stops after MAX_SECONDS (default 1800) and the score covers the mutants
# that finished. The last line is the target line for BENCHMARKS.md; equivalent mutants
# listed in bench/equivalent_mutants.txt are excluded from the score.
set -euo pipefail
MAX_SECONDS=${1:-1800}
CHILDREN=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MUTATION_WORKDIR:-$(mktemp -d /tmp/decaylab-mutation.XXXXXX)}
mkdir -p "$WORK"
cp -r "$ROOT/src" "$ROOT/tests" "$ROOT/pyproject.toml" "$ROOT/bench" "$WORK/"
cd "$WORK"
# mutmut drops its mutated copy from sys.path when it changes directory, so an installed
# decaylab (e.g. `pip install -e`) would be tested instead: put mutants/src first again,
# ahead of the shared helpers in tests/conftest.py
{ cat <<'PY'
import os
import sys

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
PY
  grep -v '^from __future__ import' "$ROOT/tests/conftest.py"
} > tests/conftest.py
echo "mutmut $(python -m mutmut --version 2>&1 | tail -1) in $WORK, limit ${MAX_SECONDS}s, ${CHILDREN} children" >&2
set +e
timeout --signal=INT "$MAX_SECONDS" nice -n 10 python -m mutmut run --max-children "$CHILDREN" "$@" > "$WORK/run.log" 2>&1
echo "mutmut run exited with $? (124 = stopped at the time limit)" >&2
set -e
python "$ROOT/bench/mutation_score.py" "$WORK" "$ROOT/bench/equivalent_mutants.txt"
