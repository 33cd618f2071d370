#!/usr/bin/env bash
# Joint phase of the deblocking models on a CPU (no GPU needed): fine-tune the greedy-phase
# models of training/runs/jpeg-q*-7x7/greedy-model.npz (trained by training/gpu_train_deblock.sh:
# plain initialisation, 200 greedy L-BFGS iterations per stage) jointly through all 4 stages,
# with the Numba stage kernels and the projection's adjoint, on 80x80 centre crops of train400.
#
#   training/cpu_finetune_deblock.sh ITERATIONS DATA_DIR VALIDATION_DIR [QUALITIES]
#
# e.g. training/cpu_finetune_deblock.sh 60 ../shared/data/train400 ../shared/data/set12 "30 20 10"
# Resumable: rerun the same command; each run checkpoints every 10 iterations.
set -eu
iterations=$1; data=$2; validation=$3; qualities=${4:-"30 20 10"}
export PYTHONUNBUFFERED=1
for q in $qualities; do
    run=training/runs/jpeg-q$q-7x7-joint-cpu
    mkdir -p "$run"
    python -m skimage_trd.train --task deblock --quality "$q" --data "$data" \
        --validation "$validation" --init "training/runs/jpeg-q$q-7x7/greedy-model.npz" \
        --crop 80 --joint-iterations "$iterations" --chunk 10 --threads 2 --seed 0 \
        --out "$run" --export "$run/trd-jpeg-q$q-7x7-4st.npz" >> "$run.stdout" 2>&1
done
