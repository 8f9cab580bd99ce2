#!/usr/bin/env bash
# Build the documentation site as CI does: every warning is an error (-W, and -n makes every
# unresolved cross-reference a warning, which is how internal links are checked), any gallery
# example that raises fails the build, and nothing is fetched from the network.
#
#   docs/build.sh              # full gallery
#   DECAYLAB_DOCS_FAST=1 docs/build.sh   # gallery scripts shrunk (CI)
#   DOCS_INSTALL=1 docs/build.sh         # pip install the docs and integrations extras first
#
# Output: docs/_build/html/index.html
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${DOCS_INSTALL:-0}" == 1 ]]; then
    "$PY" -m pip install -q "${TORCH:-torch==2.13.0}" -e ".[docs,integrations]"
fi
"$PY" docs/_ext/benchmarks.py --check || {
    echo "BENCHMARKS.md's at-a-glance table is stale: python docs/_ext/benchmarks.py --update-readme-table" >&2
    exit 1
}
rm -rf docs/_build docs/auto_examples docs/_generated   # from scratch, as CI builds (reruns the main job)
"$PY" -m sphinx -W --keep-going -n -b html docs docs/_build/html
