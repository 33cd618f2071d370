"""Export the model of a training run's current checkpoint (for example before its joint phase).

    python training/export_checkpoint.py training/runs/jpeg-q10-7x7 OUT.npz

The provenance says which phase the checkpoint is in and how many iterations were done, so a
model exported from an unfinished run is marked as such.
"""

import json
import sys
from pathlib import Path

import numpy as np

from skimage_trd.train.config import TrainingConfig
from skimage_trd.train.gradients import unpack_params
from skimage_trd.train.loop import _git_commit
from skimage_trd.train.models import _to_model


def main(run, target):
    run = Path(run)
    with np.load(run / "checkpoint.npz", allow_pickle=False) as z:
        state = json.loads(str(z["state"]))
        params = z["params"].copy()
    config = TrainingConfig(**state["config"])
    stages = unpack_params(params, config.spec())
    done = (f"greedy stage {state['stage'] + 1}, {state['done']} iterations"
            if state["phase"] == "greedy" else f"joint, {state['done']} of {config.joint_iterations}")
    finished = state["phase"] == "joint" and state["done"] >= config.joint_iterations
    provenance = {
        "config": state["config"],
        "status": "finished" if finished else f"exported from an unfinished run ({done})",
        "run": str(run),
        "command": f"python -m skimage_trd.train ... --out {run}  (see {run}/train.log)",
        "data_sha256_16": state["data_digest"],
        "noise_seed": config.seed,
        "iterations": {"greedy_per_stage": config.greedy_iterations,
                       "joint": config.joint_iterations, "at": done},
        "history": state["history"][-20:],
        "sessions": state.get("sessions", []),
        "exported_by": f"python training/export_checkpoint.py {run} {target}",
        "export_commit": _git_commit(),
    }
    model = _to_model(stages, config.spec(), config,
                      metadata={"provenance": provenance, "source": "skimage_trd.train"})
    model.save(target)
    print(f"wrote {target}: {model} ({provenance['status']})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
