#!/usr/bin/env bash
# A second CI job: the library's fast tests under a torch release other than the main job's
# (.ci/run installs torch 2.13.0, the oldest release pyproject.toml claims). Default 2.14.1,
# the newest this machine holds on disk (pip takes it and its CUDA libraries from
# /opt/pypi-more: about 5.4 GB in the venv, the CUDA build, run on the CPU).
#
# torchvision comes with it (PyPI's torchvision does not import beside the CPU torch of the
# main job), so timm is tested here: its presets (tests/test_selectors.py).
#
# It runs the library's fast tests plus all of tests/test_compat.py, whose slow canary
# compiles one inductor kernel and fails if any private torch API decaylab._compat uses
# took a fallback on this torch (training would still work, slower; its warning names what).
#
#   .ci/other-torch.sh                 # torch 2.14.1, venv kept in ~/.cache for the next run
#   TORCH=2.13.0 VENV=/tmp/v .ci/other-torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-2.14.1}
TORCHVISION=${TORCHVISION:-0.29.1}
VENV=${VENV:-$HOME/.cache/decaylab/venv-torch-$TORCH}
if ! "$VENV/bin/python" -c "import torch, sys; import numpy; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH" "torchvision==$TORCHVISION" timm "pytest>=7" "hypothesis>=6" numpy \
    2>&1 | grep -v "^WARNING: Location" || true
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__)"
export PYTHONPATH="$PWD/src"  # this checkout's decaylab, not an installed one
"$VENV/bin/python" -m pytest -p no:cacheprovider -q -m "not slow" \
  tests/test_fused.py tests/test_optim.py tests/test_functional.py tests/test_penalties.py
"$VENV/bin/python" -m pytest -p no:cacheprovider -q -m "" tests/test_selectors.py tests/test_any_optimizer.py -k "timm or norm or default"
"$VENV/bin/python" -m pytest -p no:cacheprovider -q -m "slow or not slow" tests/test_compat.py
