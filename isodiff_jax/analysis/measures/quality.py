"""Sample quality as a Fréchet distance between generated and real images in some features:
FID with Inception-v3 pool features, `fd_oracle` with the shapes factor oracle's features
(method.md §6: a classifier trained on the data set, reported under its own name).

Both sets have the same size; the distance between two disjoint real sets of that size is
reported beside it as the finite-sample floor ("<name>_real_vs_real"), since a Fréchet distance
from a few hundred samples is biased upwards.
"""
from typing import Callable, Iterator, Optional, Sequence

import jax
import numpy as np
import tqdm
from jax.sharding import Mesh

from isodiff_jax import sharding
from isodiff_jax.analysis.measures import frechet


class Generator:
    """`num` images from sample(params, x_T (B, ...), key) -> images, x_T ~ N(0, I), in batches of
    one shape (the last one cut); each batch's sampler key is its own (stochastic samplers).
    Jitted once: `generate(params)` compiles nothing for new parameters."""

    def __init__(self, sample: Callable, *, image_shape: Sequence[int], num: int, batch_size: int = 64,
                 seed: int = 0, mesh: Optional[Mesh] = None):
        self.num, self.batch_size, self.key = num, batch_size, jax.random.PRNGKey(seed)

        def batch(params, key):
            k_noise, k_sampler = jax.random.split(key)
            x_T = sharding.constrain_rows(jax.random.normal(k_noise, (batch_size, *image_shape)), mesh)
            return sample(params, x_T, k_sampler)
        self._batch = jax.jit(batch)

    def generate(self, params, progress: bool = False) -> np.ndarray:
        out = []
        for start in tqdm.trange(0, self.num, self.batch_size, desc="sampling", disable=not progress, leave=False):
            out.append(sharding.to_host(self._batch(params, np.asarray(jax.random.fold_in(self.key, start)))))
        return np.concatenate(out)[:self.num]


def frechet_distances(name: str, generated_features, real_features) -> Iterator:
    """(name, FD(generated, real[:N])) and (f"{name}_real_vs_real", FD(real[:N], real[N:2N])) for
    N = len(generated_features) (N, D); real_features (>= 2N, D)."""
    n = len(generated_features)
    if len(real_features) < 2 * n:
        raise ValueError(f"{name} needs {2 * n} real images for {n} generated ones, got {len(real_features)}")
    yield name, frechet.frechet_distance_of_features(generated_features, real_features[:n])
    yield f"{name}_real_vs_real", frechet.frechet_distance_of_features(real_features[:n], real_features[n:2 * n])


def confident_fraction(probabilities, threshold: float = 0.9) -> float:
    """Share of images whose most likely class has probability ≥ threshold: (B, K) -> float."""
    return float(np.mean(np.max(probabilities, axis=-1) >= threshold))
