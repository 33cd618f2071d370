#!/usr/bin/env bash
# Train the deblocking models (paper Table 3: 4 stages of 48 7x7 filters, q = 10, 20, 30) on a
# CUDA GPU, all three at once, resuming from training/runs/<name>/checkpoint.npz when present:
#
#   SKIMAGE_TRD_COMMIT=$(git rev-parse HEAD) training/gpu_train_deblock.sh SECONDS DATA_DIR VALIDATION_DIR
#
# DATA_DIR is the paper's train400 (176x176 centre crops are JPEG-compressed with Pillow).
set -u
seconds=$1; data=$2; validation=$3
export PYTHONPATH=src PYTHONUNBUFFERED=1 NUMBA_NUM_THREADS=4
mkdir -p training/runs
for q in 10 20 30; do
    timeout "$seconds" python3 -m skimage_trd.train --task deblock --quality "$q" --data "$data" \
        --validation "$validation" --backend cupy --kernel-size 7 --stages 4 --crop 176 \
        --greedy-iterations 200 --joint-iterations 300 --seed 0 \
        --out "training/runs/jpeg-q$q-7x7" >> "training/runs/jpeg-q$q-7x7.stdout" 2>&1 &
done
wait
tail -n 2 training/runs/jpeg-q*.stdout
