"""Perceptual path length (method.md §6) with a pluggable distance.

    PPL = E[ d(g(slerp(x_0, x_1, w)), g(slerp(x_0, x_1, w + ε))) / ε² ],  x_0, x_1 ~ N(0, I), w ~ U(0, 1)

g is the sampler (x_T -> image). Per-sample values outside their 1st-99th percentile are dropped
before averaging (the original code trimmed per-batch means instead). The distance is named in
the output key: "pixel_l2" (mean squared pixel difference, images in [-1, 1]) or any
d(a, b) -> (B,) given with a name, e.g. a feature distance or LPIPS.
"""
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax import geometry


def pixel_l2(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean squared difference per sample: (B, ...) x2 -> (B,)."""
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def trimmed_mean(values, low: float = 1.0, high: float = 99.0) -> float:
    """Mean of the per-sample values inside their [low, high] percentiles."""
    values = np.asarray(values, np.float64).ravel()
    lo, hi = np.percentile(values, [low, high])
    return float(values[(values >= lo) & (values <= hi)].mean())


def pair_values(sample: Callable, distance: Callable, x0, x1, w, epsilon: float) -> jax.Array:
    """d(g(slerp(x0, x1, w)), g(slerp(x0, x1, w + ε))) / ε² per pair: x0, x1 (B, ...), w (B,) -> (B,)."""
    flat0, flat1 = x0.reshape(len(x0), -1), x1.reshape(len(x1), -1)
    a = geometry.slerp(flat0, flat1, w[:, None]).reshape(x0.shape)
    b = geometry.slerp(flat0, flat1, w[:, None] + epsilon).reshape(x0.shape)
    images = sample(jnp.concatenate([a, b]))  # one sampler call for both ends
    return distance(images[:len(a)], images[len(a):]) / epsilon ** 2


def path_length_values(sample: Callable, distance: Callable, key, *, image_shape: Sequence[int],
                       num_samples: int, batch_size: int = 16, epsilon: float = 1e-4) -> np.ndarray:
    """(num_samples,) pair values for x_0, x_1 ~ N(0, I) and w ~ U(0, 1 − ε);
    sample: x_T (B, ...) -> images (B, ...)."""
    @jax.jit
    def batch_values(k, like):
        k0, k1, kw = jax.random.split(k, 3)
        x0 = jax.random.normal(k0, like.shape + tuple(image_shape))
        x1 = jax.random.normal(k1, x0.shape)
        w = jax.random.uniform(kw, like.shape, maxval=1.0 - epsilon)
        return pair_values(sample, distance, x0, x1, w, epsilon)

    values = []
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)
        values.append(np.asarray(batch_values(jax.random.fold_in(key, start), jnp.zeros((size,)))))
    return np.concatenate(values)


def ppl(sample: Callable, key, *, image_shape: Sequence[int], num_samples: int = 256,
        batch_size: int = 16, epsilon: float = 1e-4, distance: Callable = pixel_l2,
        distance_name: str = "pixel_l2") -> Iterator:
    """Evaluator: yields (f"ppl_{distance_name}", trimmed mean) and ("ppl_values", all values)."""
    values = path_length_values(sample, distance, key, image_shape=image_shape,
                                num_samples=num_samples, batch_size=batch_size, epsilon=epsilon)
    yield f"ppl_{distance_name}", trimmed_mean(values)
    yield "ppl_values", values
