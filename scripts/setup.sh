#!/usr/bin/env bash
# Create .venv and install longvu with its test tools.
#
# torch is installed first, pinned to 2.13.0: on machines that carry that wheel locally
# (CPU build) pip takes it from disk; elsewhere pip fetches 2.13.0 from PyPI.  Set
# LONGVU_TORCH to install another torch spec instead (e.g. LONGVU_TORCH="torch>=2.4").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "${LONGVU_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
echo "longvu installed in $(pwd)/.venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
