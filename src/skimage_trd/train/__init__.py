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
    python -m skimage_trd.train --loss sure --data noisy/ --init trd-gauss-s25-7x7-5st --out run

Rerunning the same command resumes from ``--out``; rerunning it with a larger
``--joint-iterations`` continues the joint phase of a run, finished or not (as each chunk restarts
L-BFGS, the longer run takes the same path as if it had been asked for from the start, provided
the earlier number was a multiple of ``--chunk``). The model's provenance lists every session.

Adapting a model to your own noisy images (no clean image) is ``--loss sure --init MODEL``
(or :func:`fit` with ``loss="sure", init=...``, or ``denoise_trd(noisy, sigma, adapt=True)``):
Adam, progress judged by SURE of the whole adaptation (a twin run of the same adaptation on
the images plus a known probe: ``objectives.TwinEstimate``), the best parameters by that
estimate returned, and the starting model unchanged if nothing beats it.

The package's modules, one purpose each: ``fitting`` (:func:`fit`, the one front door: defaults, the roles
of the data, the starting model), ``data`` (images, noise, held-out pixels), ``config``
(configuration, checkpoints), ``objectives`` (losses, the held-out and the twin estimates),
``optimizers`` (L-BFGS, Adam), ``loop`` (:func:`train_model`), ``models`` (initial and
rescaled models), ``cli`` (the command line), ``gradients`` and ``gradients_cupy`` (the
hand-written gradients).
"""

from .cli import main
from .config import TrainingConfig
from .data import add_noise, holdout_weights, jpeg_pairs, load_image_folder, photon_training_images
from .fitting import DEFAULTS, fine_tuning_defaults, fit
from .loop import train_model
from .models import plain_initial_stage, rescale_model
from .optimizers import TrainingCancelled, TrainingStep

__all__ = [
    "DEFAULTS",
    "TrainingCancelled",
    "TrainingConfig",
    "TrainingStep",
    "fit",
    "fine_tuning_defaults",
    "add_noise",
    "holdout_weights",
    "jpeg_pairs",
    "load_image_folder",
    "main",
    "photon_training_images",
    "plain_initial_stage",
    "rescale_model",
    "train_model",
]
