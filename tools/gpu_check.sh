#!/usr/bin/env bash
# One-command check on a machine with an NVIDIA GPU, from the repository root:
#   bash tools/gpu_check.sh            # results in ${OUT:-runs/gpu_check}
# Creates its own venv (.venv-gpu; torch from PyPI, the CUDA build), installs the project with its
# dev extras, runs the tests marked `cuda`, then benchmarks the shipped teacher on the GPU.
# UNVERIFIED until run on a GPU (docs/engine.md, "Checking on a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
VENV=${VENV:-.venv-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi: this needs a machine with an NVIDIA GPU"; exit 1; }
nvidia-smi | tee "$OUT/nvidia-smi.txt"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"  # the same pin as .ci/setup; from PyPI on Linux: the CUDA build
"$VENV/bin/python" -m pip install -q ".[dev]"  # not editable: the installed package is what runs
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee "$OUT/torch.txt"
echo "== pytest -m cuda"
"$VENV/bin/python" -m pytest -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.txt"
echo "== worldsim-bench engine --device cuda"
"$VENV/bin/worldsim-bench" engine --checkpoint assets/teacher_builtin_v1 --device cuda --out "$OUT/bench_engine.json" \
    2>&1 | tee "$OUT/bench_engine.txt"
echo "gpu_check: results in $OUT"
