#!/usr/bin/env bash
# Create .venv and install longvu.
#
#   bash scripts/setup.sh           # the package and its dev tools (enough for `longvu ask`)
#   bash scripts/setup.sh --tests   # also what the whole test suite exercises: lmms-eval, Ray Serve, peft
#
# torch is installed first, pinned to 2.13.0: on machines that carry that wheel locally
# (CPU build) pip takes it from disk; elsewhere pip fetches 2.13.0 from PyPI.  Set
# LONGVU_TORCH to install another torch spec instead (e.g. LONGVU_TORCH="torch>=2.4").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${LONGVU_TORCH:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "$TORCH"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
if [ "${1:-}" = "--tests" ]; then
  # lmms-eval requires torchvision: the one matching torch 2.13.0 (0.28.0) in the same install keeps pip
  # from replacing torch.  PyPI's Linux torchvision is a CUDA build whose ops cannot load beside the CPU
  # torch, and transformers imports any torchvision it finds: where it cannot load it is removed again
  # (nothing here needs it).  lmms-eval 0.7.3 needs filelock<4 (the lmms extra pins it).
  .venv/bin/python -m pip install -q -e ".[dev,lmms,serve-ray,train]" "$TORCH" "torchvision==0.28.0"
  if ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -y -q torchvision
  fi
fi
echo "longvu installed in $(pwd)/.venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
