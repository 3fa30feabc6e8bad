"""Training from a config, the entry point behind `train.py`: validate the config, turn it into
typed values (`config.train_setup`, the evaluators), then run the loop, which sees no config."""
from typing import Optional

import ml_collections

from isodiff_jax import config as config_lib
from isodiff_jax import sharding, storage
from isodiff_jax.train import loop


def train(config: ml_collections.ConfigDict, workdir: str, devices: Optional[list] = None) -> dict:
    """Trains (or resumes) `config` in `workdir` on `devices` (all devices of all processes by
    default); returns the loop's summary. Bad values stop before anything is written."""
    storage.check_reachable(workdir)  # a missing or unreachable bucket: one line, before any work
    mesh = sharding.make_mesh(devices)
    config_lib.validate(config, mesh.size)
    setup = config_lib.train_setup(config)
    config_lib.check_resumable(workdir, config)
    evaluators = config_lib.evaluators(config, setup.spec, mesh)
    return loop.train_and_evaluate(setup, workdir, mesh, evaluators)
