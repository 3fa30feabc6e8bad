"""What the evaluators feed a model: DDIM samplers over its parameters, and real images of its
data set (as images in [-1, 1], and as the diffusion model's x0)."""
from typing import Callable

import jax
import numpy as np

from isodiff_jax import diffusion
from isodiff_jax.data import pipeline
from isodiff_jax.spec import ModelSpec


def sampler(spec: ModelSpec, num_steps: int, eta: float = 0.0, decode: bool = True) -> Callable:
    """(params, x_T, key=None) -> images with DDIM, x0 clipped to [-1, 1] in pixel space;
    deterministic (η = 0) unless eta > 0, which needs the key. Latent diffusion: the samples are
    decoded (params then carry the autoencoder's, `ModelSpec.with_autoencoder`) unless
    decode=False. Pure: jit it (with the parameters as an argument)."""
    def sample(params, x_T, key=None):
        x0 = diffusion.ddim_sample(lambda x, t: spec.eps(params, x, t), spec.noise_schedule, x_T, num_steps,
                                   eta=eta, key=key, clip_x0=spec.clip_x0)
        return spec.to_images(params, x0) if decode else x0
    return sample


def real_images(spec: ModelSpec, count: int, seed: int) -> np.ndarray:
    """count images of the model's data set in [-1, 1] (read directly, no training pipeline)."""
    source = spec.data.source()
    if len(source) < count:
        raise ValueError(f"the data set has {len(source)} images, {count} are needed")
    index = np.random.default_rng(seed).choice(len(source), size=count, replace=False)
    return pipeline.to_unit_range(source.get(np.sort(index)))


def real_x0(spec: ModelSpec, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Images in [-1, 1] -> the diffusion model's x0: the images, or their latents (encoded with
    the autoencoder's weights from the spec's params_file)."""
    if spec.latent is None:
        return images
    ae_params = {"autoencoder": spec.latent.load_params()["params"]}
    encode = jax.jit(spec.to_x0)
    return np.concatenate([np.asarray(encode(ae_params, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def in_batches(fn: Callable, take: Callable, rows: int, size: int) -> np.ndarray:
    """fn(*take(start, stop)) over `rows` rows in chunks of exactly `size` rows, so that fn
    compiles once whatever the number of rows: take(start, stop) gives the arrays of rows
    start:stop (built chunk by chunk, so that a large edit set is never in memory whole); a short
    chunk is padded with copies of its last row and the padding's outputs dropped. Returns the
    outputs' rows concatenated, as NumPy."""
    outputs = []
    for start in range(0, rows, size):
        chunk = take(start, min(start + size, rows))
        missing = size - len(chunk[0])
        if missing:
            chunk = tuple(np.concatenate([c, np.repeat(c[-1:], missing, axis=0)]) for c in chunk)
        outputs.append(np.asarray(fn(*chunk))[:size - missing])
    return np.concatenate(outputs)
