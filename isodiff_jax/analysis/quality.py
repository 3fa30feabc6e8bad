"""Sample quality as a Fréchet distance between generated and real images in some features:
FID with Inception-v3 pool features, `fd_oracle` with the shapes factor oracle's features
(method.md §6: a classifier trained on the data set, reported under its own name).

Both sets have the same size; the distance between two disjoint real sets of that size is
reported beside it as the finite-sample floor ("<name>_real_vs_real"), since a Fréchet distance
from a few hundred samples is biased upwards.
"""
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
import tqdm

from isodiff_jax.analysis import frechet


def generate(sample: Callable, key, *, image_shape: Sequence[int], num: int, batch_size: int = 64,
             progress: bool = False) -> np.ndarray:
    """num images from sample(x_T (B, ...), key) -> images, x_T ~ N(0, I), in batches of one shape;
    the key is the batch's own (for stochastic samplers)."""
    fn = jax.jit(sample)
    out = []
    for start in tqdm.trange(0, num, batch_size, desc="sampling", disable=not progress, leave=False):
        k_noise, k_sampler = jax.random.split(jax.random.fold_in(key, start))
        x_T = jax.random.normal(k_noise, (batch_size, *image_shape))
        out.append(np.asarray(fn(x_T, k_sampler)))
    return np.concatenate(out)[:num]


def frechet_distance(name: str, features: Callable, generated, real) -> Iterator:
    """Evaluator: (name, FD(generated, real[:N])) and (f"{name}_real_vs_real", FD(real[:N], real[N:2N]))
    for N = len(generated); `real` must hold at least 2N images; features: images -> (B, D)."""
    n = len(generated)
    if len(real) < 2 * n:
        raise ValueError(f"{name} needs {2 * n} real images for {n} generated ones, got {len(real)}")
    real_features = features(real[:2 * n])
    yield name, frechet.frechet_distance_of_features(features(generated), real_features[:n])
    yield f"{name}_real_vs_real", frechet.frechet_distance_of_features(real_features[:n], real_features[n:])


def confident_fraction(probabilities, threshold: float = 0.9) -> float:
    """Share of images whose most likely class has probability ≥ threshold: (B, K) -> float."""
    return float(np.mean(np.max(probabilities, axis=-1) >= threshold))
