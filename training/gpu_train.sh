#!/usr/bin/env bash
# Train the shipped denoising models on a CUDA GPU, all four at once, resuming from
# training/runs/<name>/checkpoint.npz when present. Usage (from the repository root):
#
#   SKIMAGE_TRD_COMMIT=$(git rev-parse HEAD) training/gpu_train.sh SECONDS DATA_DIR VALIDATION_DIR
#
# Each run stops after SECONDS (it resumes from its last checkpoint when started again).
# DATA_DIR is the paper's train400 (../shared/data/train400); VALIDATION_DIR only monitors.
set -u
seconds=$1; data=$2; validation=$3
export PYTHONPATH=src PYTHONUNBUFFERED=1 NUMBA_NUM_THREADS=4
mkdir -p training/runs
run() {
    name=$1; shift
    timeout "$seconds" python3 -m skimage_trd.train --data "$data" --validation "$validation" \
        --backend cupy --greedy-iterations 200 --joint-iterations 300 --seed 0 \
        --out "training/runs/$name" "$@" >> "training/runs/$name.stdout" 2>&1 &
}
run gauss-s15-7x7 --sigma 15 --kernel-size 7
run gauss-s25-7x7 --sigma 25 --kernel-size 7
run gauss-s50-7x7 --sigma 50 --kernel-size 7
run gauss-s25-5x5 --sigma 25 --kernel-size 5
wait
tail -n 3 training/runs/*.stdout
