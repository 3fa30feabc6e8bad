"""A trained model as analysis sees it: config, U-Net, schedule and one set of parameters.

Built by `load.load` from a checkpoint, or by the training loop from its EMA parameters."""
import dataclasses
from typing import Any

import ml_collections

from isodiff_jax import diffusion
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
