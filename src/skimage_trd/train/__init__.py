"""Train TRD denoising models on your own images (greedy stage-wise, then joint; L-BFGS).

The procedure of Chen, Yu & Pock (CVPR 2015, Sec. 3-4):

1. training pairs: clean images and noisy versions (Gaussian noise with a
   seed, or noisy images you supply);
2. greedy training (Eq. 4): stage ``t`` is trained alone to minimise the
   quadratic loss of its output (Eq. 5), stages ``1 .. t-1`` fixed;
3. joint training (Eq. 11): all stages together, the loss of the last output.

Every stage starts from the paper's plain initialisation: the zero-mean DCT
atoms as filters and ``phi(z) = 2z / (1 + z**2)`` (rescaled, see
:func:`plain_initial_stage`) fitted by the Gaussian RBFs. Gradients are
hand-written (``train/gradients.py``; as matrix products for the GPU in
``train/gradients_cupy.py``), the optimiser is scipy's L-BFGS-B, run in
chunks of ``chunk`` iterations: after every chunk the state is checkpointed
atomically, and a run restarted from a checkpoint continues exactly as the
uninterrupted run would have (each chunk starts L-BFGS afresh from the
checkpointed parameters, in both cases).

Deblocking models (Eq. 9) are trained the same way on JPEG-compressed crops
(``--task deblock --quality 10``); their stages end in the quantisation
projection, whose gradient is part of the GPU trainer.

Command line::

    python -m skimage_trd.train --data DIR --sigma 25 --out runs/s25 [--kernel-size 7]
        [--stages 5] [--greedy-iterations 200] [--joint-iterations 200] [--seed 0]
        [--validation DIR] [--dtype float32] [--threads N] [--export model.npz]

Rerunning the same command resumes from ``--out``; rerunning it with a larger
``--joint-iterations`` continues the joint phase of a run, finished or not (as each chunk restarts
L-BFGS, the longer run takes the same path as if it had been asked for from the start, provided
the earlier number was a multiple of ``--chunk``). The model's provenance lists every session.
"""

from .run import (
    TrainingCancelled,
    TrainingConfig,
    TrainingStep,
    add_noise,
    fit,
    jpeg_pairs,
    load_image_folder,
    main,
    photon_training_images,
    plain_initial_stage,
    rescale_model,
    train_model,
)

__all__ = [
    "TrainingCancelled",
    "TrainingConfig",
    "TrainingStep",
    "fit",
    "add_noise",
    "jpeg_pairs",
    "load_image_folder",
    "main",
    "photon_training_images",
    "plain_initial_stage",
    "rescale_model",
    "train_model",
]
