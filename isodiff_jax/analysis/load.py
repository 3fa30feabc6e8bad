"""Loading a training workdir for analysis: its saved config, the U-Net, the noise schedule and
the (EMA or raw) parameters of the newest or a given checkpoint, on any number of devices.
No data is read."""
import dataclasses
from typing import Any, Optional

import ml_collections

from isodiff_jax import diffusion
from isodiff_jax.train import loop, sharding
from isodiff_jax.unet import UNet


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained model as analysis sees it."""
    config: ml_collections.ConfigDict
    model: UNet
    schedule: diffusion.Schedule
    params: Any
    step: int

    def eps(self, x, t):
        """ε̂(x (B, H, W, C), t int32 (B,)) -> (B, H, W, C)."""
        return self.model.apply(self.params, x, t)[0]

    def encode(self, x, t):
        """h = e_θ(x, t): the middle block's output, (B, H/2^(L-1), W/2^(L-1), C_L)."""
        return self.model.apply(self.params, x, t, method=UNet.encode)

    @property
    def image_shape(self) -> tuple:
        r = self.config.data.resolution
        return (r, r, self.model.in_channels)


def load(workdir: str, *, step: Optional[int] = None, ema: bool = True, devices=None) -> Trained:
    """The checkpoint of `workdir` at `step` (newest by default), EMA parameters unless ema=False,
    replicated over `devices` (all by default)."""
    config, setup, found, state = loop.restore_workdir(workdir, sharding.make_mesh(devices), step)
    params = state.ema_params if ema else state.params
    return Trained(config=config, model=setup.model, schedule=setup.schedule, params=params, step=found)
