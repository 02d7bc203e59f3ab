#!/usr/bin/env bash
# Set up ./.venv with everything the pipeline and the tests need (idempotent; a second run takes seconds).
# CPU machines get the CPU build of torch; machines with an NVIDIA driver get the CUDA build (torch >= 2.4).
# To reuse a torch you already have (e.g. a CUDA build), set RECLMIS_SYSTEM_SITE=1 to see system packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "reclmis needs Python >= 3.11")'
if [ ! -x .venv/bin/python ]; then
  if [ "${RECLMIS_SYSTEM_SITE:-0}" = 1 ]; then "$PY" -m venv --system-site-packages .venv; else "$PY" -m venv .venv; fi
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
has_torch() { python - <<'PY'
import sys
try:
    import torch
except ImportError:
    sys.exit(1)
v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2])
sys.exit(0 if v >= (2, 4) else 1)
PY
}
if has_torch; then :
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  python -m pip install -q "torch>=2.4"                      # CUDA build from PyPI
else                                                         # CPU: the CPU build, never the multi-GB CUDA wheels
  python -m pip install -q torch==2.13.0 2>/dev/null \
    || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
TORCH=$(python -c 'import torch; print(torch.__version__.split("+")[0])')
# everything else, with torch pinned to the one installed so nothing pulls another build
PIN=(-c constraints.txt); [ "${RECLMIS_UNPINNED:-0}" = 1 ] && PIN=()   # the versions the committed results were made with
python -m pip install -q "${PIN[@]}" -c <(echo "torch==$TORCH") -e ".[dev]"
python -m ipykernel install --sys-prefix --name python3 >/dev/null
git rev-parse --is-inside-work-tree >/dev/null 2>&1 && dvc config --local core.analytics false 2>/dev/null || true
echo "reclmis set up: torch $(python -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'), $(python --version)"
