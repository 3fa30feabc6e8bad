"""Loading a training workdir for analysis: its saved config, the U-Net, the noise schedule and
the (EMA or raw) parameters of the newest or a given checkpoint, on any number of devices.
No data is read."""
from typing import Optional

from isodiff_jax.analysis.trained import Trained
from isodiff_jax.train import loop, sharding

__all__ = ["Trained", "load"]


def load(workdir: str, *, step: Optional[int] = None, ema: bool = True, devices=None) -> Trained:
    """The checkpoint of `workdir` at `step` (newest by default), EMA parameters unless ema=False,
    replicated over `devices` (all by default)."""
    config, setup, found, state = loop.restore_workdir(workdir, sharding.make_mesh(devices), step)
    params = state.ema_params if ema else state.params
    return Trained(config=config, model=setup.model, schedule=setup.schedule, params=params, step=found)
