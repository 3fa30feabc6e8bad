"""Perceptual path length (method.md §6) with a pluggable distance.

    PPL = E[ d(g(slerp(x_0, x_1, w)), g(slerp(x_0, x_1, w + ε))) / ε² ],  x_0, x_1 ~ N(0, I), w ~ U(0, 1)

g is the sampler (x_T -> image). Per-sample values outside their 1st-99th percentile are dropped
before averaging (the original code trimmed per-batch means instead). The distance is named in
the output key: "pixel_l2" (mean squared pixel difference, images in [-1, 1]) or any
d(a, b) -> (B,) given with a name, e.g. a feature distance or LPIPS.
"""
from typing import Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from isodiff_jax import geometry, sharding
from isodiff_jax.analysis.evaluator import Evaluator, Measured


def pixel_l2(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean squared difference per sample: (B, ...) x2 -> (B,)."""
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def trimmed_mean(values, low: float = 1.0, high: float = 99.0) -> float:
    """Mean of the per-sample values inside their [low, high] percentiles, taken with `lower` and
    `higher` interpolation (as StyleGAN and the original code do): the bounds are values of the
    sample, so below 100 samples nothing is dropped."""
    values = np.asarray(values, np.float64).ravel()
    lo, hi = np.percentile(values, low, method="lower"), np.percentile(values, high, method="higher")
    return float(values[(values >= lo) & (values <= hi)].mean())


def pair_values(sample: Callable, distance: Callable, x0, x1, w, epsilon: float) -> jax.Array:
    """d(g(slerp(x0, x1, w)), g(slerp(x0, x1, w + ε))) / ε² per pair: x0, x1 (B, ...), w (B,) -> (B,)."""
    chex.assert_equal_shape([x0, x1])
    chex.assert_shape(w, (x0.shape[0],))
    a, b = geometry.slerp(x0, x1, w), geometry.slerp(x0, x1, w + epsilon)
    images = sample(jnp.concatenate([a, b]))  # one sampler call for both ends
    return distance(images[:len(a)], images[len(a):]) / epsilon ** 2


class Ppl(Evaluator):
    """Evaluator: value f"ppl_{distance_name}" (the trimmed mean), picture "ppl_values" (all
    values), for
    sample(params, x_T (B, ...)) -> images (B, ...), with x_0, x_1 ~ N(0, I) and w ~ U(0, 1 − ε)
    drawn from `seed`. Built once; `run(params)` compiles nothing for new parameters."""

    def __init__(self, sample: Callable, *, image_shape: Sequence[int], num_samples: int = 256,
                 batch_size: int = 16, epsilon: float = 1e-4, distance: Callable = pixel_l2,
                 distance_name: str = "pixel_l2", seed: int = 0, mesh: Optional[Mesh] = None):
        self.num_samples, self.batch_size, self.name = num_samples, batch_size, distance_name
        self.key = jax.random.PRNGKey(seed)

        def batch_values(params, key, size):
            k0, k1, kw = jax.random.split(key, 3)
            x0 = sharding.constrain_rows(jax.random.normal(k0, (size, *image_shape)), mesh)
            x1 = sharding.constrain_rows(jax.random.normal(k1, x0.shape), mesh)
            w = jax.random.uniform(kw, (size,), maxval=1.0 - epsilon)
            return pair_values(lambda x: sample(params, x), distance, x0, x1, w, epsilon)
        self._values = jax.jit(batch_values, static_argnames="size")

    def values(self, params) -> np.ndarray:
        """(num_samples,) pair values."""
        out = []
        for start in range(0, self.num_samples, self.batch_size):
            size = min(self.batch_size, self.num_samples - start)
            key = np.asarray(jax.random.fold_in(self.key, start))
            out.append(sharding.to_host(self._values(params, key, size=size)))
        return np.concatenate(out)

    def measure(self, params) -> Measured:
        values = self.values(params)
        return Measured({f"ppl_{self.name}": trimmed_mean(values)}, {"ppl_values": values})
