#!/usr/bin/env bash
# The engine's distillation step against a plain TinyBERT loop on one NVIDIA GPU (sized for an
# H200: about 5-10 minutes). BERT-base-sized teacher -> TinyBERT4 in bf16; samples/s and MFU
# against a bf16 GEMM ceiling measured in the same run; one table on stdout, JSON in
# $OUT/gpu-cuda.json when OUT is set, else bench/results/gpu-cuda.json.
#
# It installs nothing and needs no network. The Python it uses ($PYTHON, else the checkout's
# .venv/bin/python, else python3) must already have: torch built for CUDA, transformers,
# tokenizers, safetensors, pydantic, numpy, scipy and scikit-learn (the engine's imports). It
# checks them and stops with a message saying what is missing. Extra arguments go to
# bench/gpu_distill.py (e.g. --seconds 60, --batch-sizes 32 256 512).
#
# Usage: bench/gpu.sh [args...]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
if ! command -v "$py" >/dev/null 2>&1; then
    echo "gpu.sh: no Python at '$py'; set PYTHON to one with torch (CUDA) and transformers" >&2
    exit 2
fi

"$py" - <<'EOF' || exit 2
import importlib.util
import sys

needed = ["torch", "transformers", "tokenizers", "safetensors", "pydantic", "numpy", "scipy",
          "sklearn"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu.sh: {sys.executable} lacks {', '.join(missing)}; this script installs "
             "nothing: pre-install them (torch as a CUDA build)")
import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU")
print(f"gpu.sh: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(0)}", file=sys.stderr)
EOF

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec "$py" bench/gpu_distill.py --device cuda "$@"
