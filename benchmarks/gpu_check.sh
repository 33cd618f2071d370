#!/usr/bin/env bash
# Everything to check on a lent GPU, in one command (the workplace's `device` tool runs it in the
# repository root; OUT is where the logs go):
#
#   benchmarks/gpu_check.sh "$OUT"
#
# 1. the GPU tests against the NumPy reference (both float32 kernels, seven strip shapes);
# 2. the speed table with the float32 kernels side by side (docs/performance.md, GPU section);
# 3. the shipped models on the GPU against the CPU (benchmarks/gpu_agreement.py), and
#    denoise_trd as users call it (benchmarks/gpu_end_to_end.py);
# 4. Nsight Compute's view of one stage of the default kernel and one other at 2048^2.
# Needs CuPy, NumPy, SciPy, scikit-image, Numba, pooch, lazy_loader and pytest on that machine (PyWavelets too, or
# the noise-estimate part of one test is left out).
set -u -o pipefail
status=0
out=${1:-.}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cupy.py tests/test_cuda_source.py 2>&1 \
    | tee "$out/gpu_tests.txt" || status=1
python3 benchmarks/gpu_speed.py --repeat 5 \
    --kernels default,tiles,strips:8x8,strips:8x16,strips:4x8:r,strips:4x16:r,strips:8x16:r \
    2>&1 | tee "$out/gpu_speed.txt" \
    || status=1
SKIMAGE_TRD_CACHE=$(mktemp -d) python3 benchmarks/gpu_agreement.py 2>&1 \
    | tee "$out/gpu_agreement.txt" || status=1
SKIMAGE_TRD_CACHE=$(mktemp -d) python3 benchmarks/gpu_end_to_end.py 2>&1 \
    | tee "$out/gpu_end_to_end.txt" || status=1
for k in default strips:8x8; do
    timeout 150 ncu --clock-control none --kernel-name regex:trd_stage --launch-skip 5 \
        --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
        --section LaunchStats --section InstructionStats \
        python3 benchmarks/gpu_profile.py "$k" > "$out/ncu_${k//:/_}.txt" 2>&1
    grep -E "Duration|Throughput|Registers Per|Executed Instructions  " "$out/ncu_${k//:/_}.txt"
done
exit $status
