#!/usr/bin/env bash
# Everything to check on a lent GPU, in one command (the workplace's `device` tool runs it in the
# repository root; OUT is where the logs go):
#
#   benchmarks/gpu_check.sh "$OUT"
#
# 1. the GPU tests against the NumPy reference (both float32 kernels, four strip shapes);
# 2. the speed table with the float32 kernels side by side (docs/performance.md, GPU section).
# Needs CuPy, NumPy, SciPy, scikit-image, Numba, pooch and pytest on that machine.
set -u -o pipefail
status=0
out=${1:-.}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cupy.py tests/test_cuda_source.py 2>&1 \
    | tee "$out/gpu_tests.txt" || status=1
python3 benchmarks/gpu_speed.py --repeat 5 \
    --kernels tiles,strips:8x8,strips:4x16,strips:8x16,strips:16x4 2>&1 | tee "$out/gpu_speed.txt" \
    || status=1
exit $status
