#!/usr/bin/env bash
# Idempotent setup: a project-local virtual environment (.venv) with a torch +
# torchvision pair that import together, then this package with its extras.
#
# Why pin the pair here: the machine image offers a CPU-only torch wheel through
# pip's find-links, and PyPI's torchvision cannot load its C extension against it
# ("operator torchvision::nms does not exist"). Installing both in one resolver run
# from the registry gives a matching pair every time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FRAMEEXIT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.frameexit-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import torch, torchvision, frameexit" 2>/dev/null; then
  exit 0
fi
case "$(uname -m)" in
  aarch64|arm64) TORCH_PAIR=("torch==2.9.1" "torchvision==0.24.1") ;;
  *)             TORCH_PAIR=("torch==2.14.1" "torchvision==0.29.1") ;;
esac
TORCH_PAIR=(${FRAMEEXIT_TORCH_PAIR:-${TORCH_PAIR[@]}})
echo "setup: installing ${TORCH_PAIR[*]} and frameexit[dev] into $VENV (first run takes a few minutes)"
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "${TORCH_PAIR[@]}"
# One resolver run for everything else, with the torch pair held fixed.
"${PIP[@]}" install -e ".[dev,lite0]" "${TORCH_PAIR[@]}"
"$VENV/bin/python" - <<'PYCHECK'
import torch, torchvision
from torchvision.ops import nms
boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
nms(boxes, torch.tensor([1.0]), 0.5)  # fails if torchvision's C ops do not match torch
print(f"setup: torch {torch.__version__}, torchvision {torchvision.__version__} OK")
PYCHECK
echo "$want" > "$stamp"
