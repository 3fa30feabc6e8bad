"""Inversion error (method.md §6): DDIM inversion of real images to x_T, then DDIM sampling back;
MSE and PSNR between the images and their reconstructions (images in [-1, 1], peak-to-peak 2)."""
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from isodiff_jax import diffusion, sharding
from isodiff_jax.analysis.evaluator import Evaluator, Measured


def reconstruct(eps_fn: Callable, schedule: diffusion.Schedule, x0: jax.Array, num_steps: int) -> jax.Array:
    """(B, H, W, C) images -> their DDIM inversion + reconstruction with num_steps steps each way."""
    x_T = diffusion.ddim_invert(eps_fn, schedule, x0, num_steps)
    return diffusion.ddim_sample(eps_fn, schedule, x_T, num_steps)


def mse_and_psnr(x0, x_rec) -> tuple[np.ndarray, np.ndarray]:
    """Per-image MSE (B,) and PSNR (B,) in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = np.mean(np.square(np.asarray(x0, np.float64) - np.asarray(x_rec, np.float64)).reshape(len(x0), -1), axis=1)
    return mse, 10.0 * np.log10(4.0 / np.maximum(mse, 1e-20))


VALUE_NAMES = ("inversion_mse", "inversion_psnr")


class Inversion(Evaluator):
    """Evaluator over (N, H, W, C) images in [-1, 1]: values "inversion_mse" (mean) and
    "inversion_psnr" (mean dB); picture "inversion_pairs", (images[:8], reconstructions[:8]); for
    eps(params, x, t) -> ε̂. Built once; `run(params)` compiles nothing for new parameters."""

    def __init__(self, eps: Callable, schedule: diffusion.Schedule, images, *, num_steps: int = 20,
                 batch_size: int = 16, mesh: Optional[Mesh] = None, x0=None, to_images: Optional[Callable] = None):
        """Latent diffusion: x0 the images' latents, to_images(params, x0) -> images; the
        reconstructions are decoded and compared with the images."""
        images = np.asarray(images)
        self.images = images if np.issubdtype(images.dtype, np.floating) else images.astype(np.float32)
        self.x0 = self.images if x0 is None else np.asarray(x0, np.float32)
        self.batch_size, self.mesh = batch_size, mesh
        decode = to_images or (lambda params, x: x)
        self._reconstruct = jax.jit(lambda params, x: decode(
            params, reconstruct(lambda x, t: eps(params, x, t), schedule, x, num_steps)))

    def measure(self, params) -> Measured:
        chunks = (self.x0[i:i + self.batch_size] for i in range(0, len(self.x0), self.batch_size))
        reconstructions = np.concatenate([sharding.to_host(self._reconstruct(params, sharding.put_rows(x, self.mesh)))
                                          for x in chunks])
        mse, psnr = mse_and_psnr(self.images, reconstructions)
        return Measured({"inversion_mse": float(mse.mean()), "inversion_psnr": float(psnr.mean())},
                        {"inversion_pairs": (self.images[:8], reconstructions[:8])})
