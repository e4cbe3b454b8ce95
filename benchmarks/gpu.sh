#!/usr/bin/env bash
# Every GPU figure in one call (issue 23): set-up from the copied tree, then benchmarks/gpu_figures.py.
#
#   benchmarks/gpu.sh [--smoke] [DATA]        results in $OUT (default: gpu-out)
#
# The GPU machine has its own Python with a CUDA torch and installs nothing: cnnlab runs from this tree
# (PYTHONPATH=src). --smoke runs the same script on the CPU with tiny sizes (tests/test_gpu_script.py).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=""
if [ "${1:-}" = "--smoke" ]; then smoke="--smoke"; shift; fi
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
out=${OUT:-gpu-out}
python=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'PY'
import sys, torch
cuda = torch.cuda.is_available()
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"gpu {torch.cuda.get_device_name(0) if cuda else 'none'}", flush=True)
PY
if [ -z "$smoke" ]; then nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true; fi
"$python" benchmarks/gpu_figures.py "$data" "$out" $smoke
