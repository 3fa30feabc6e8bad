"""Relative trajectory length (method.md §6): how far the image of a geodesic in x-space is from
a straight line in h-space.

    RTL = Σ_k |h_{k+1} − h_k| / |h_K − h_0|   (≥ 1; 1 when the path maps to a straight segment)

for K+1 points x_k = slerp(x_0, x_1, k/K) on the sphere and h_k = e_θ(x_k, t). mRTL is the mean
over pairs (x_0, x_1) ~ N(0, I) and over the timesteps evaluated.
"""
from typing import Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from isodiff_jax import geometry, sharding
from isodiff_jax.analysis.evaluator import Evaluator, Measured


def relative_trajectory_length(path: jax.Array) -> jax.Array:
    """path (K+1, B, ...) of points h_0..h_K per sample -> RTL (B,)."""
    if path.ndim < 2 or path.shape[0] < 2:
        raise ValueError(f"path must be (K+1 >= 2, B, ...), got shape {path.shape}")
    flat = path.reshape(path.shape[0], path.shape[1], -1)
    steps = jnp.linalg.norm(jnp.diff(flat, axis=0), axis=-1).sum(axis=0)
    chord = jnp.linalg.norm(flat[-1] - flat[0], axis=-1)
    return steps / chord


def slerp_path(x0: jax.Array, x1: jax.Array, num_segments: int) -> jax.Array:
    """(B, ...) end points -> (K+1, B, ...) points slerp(x0, x1, k/K), k = 0..K, each sample taken
    as one flattened vector (images are not interpolated pixel by pixel)."""
    chex.assert_equal_shape([x0, x1])
    w = jnp.linspace(0.0, 1.0, num_segments + 1, dtype=x0.dtype)
    return jax.vmap(lambda wk: geometry.slerp(x0, x1, wk))(w)


def isometry_floor(x0: jax.Array, x1: jax.Array, num_segments: int) -> jax.Array:
    """RTL (B,) that a map preserving the distances between the path's points (a scaled isometry)
    gets on slerp(x0, x1) with K segments: the RTL of the x-space path itself. For end points on
    one sphere at angle θ it is the inscribed K-gon over the chord, K sin(θ/2K) / sin(θ/2)
    (→ (θ/2) / sin(θ/2) as K grows; ≈ 1.11 for Gaussian pairs in high dimension). mRTL is
    compared with it, not with 1 (method.md §6)."""
    return relative_trajectory_length(slerp_path(x0, x1, num_segments))


def path_rtl(encode: Callable, x0: jax.Array, x1: jax.Array, num_segments: int) -> jax.Array:
    """RTL (B,) of encode (B, ...) -> (B, ...) along slerp(x0, x1)."""
    path = slerp_path(x0, x1, num_segments)
    return relative_trajectory_length(jax.lax.map(encode, path))


def value_names(timesteps: Sequence[int]) -> tuple[str, ...]:
    """The names `Mrtl` measures."""
    return (*(f"mrtl_t{t}" for t in timesteps), "mrtl", "mrtl_floor", "mrtl_over_floor")


class Mrtl(Evaluator):
    """Evaluator: values "mrtl_t{t}" (mean at t) per timestep, "mrtl" (mean over pairs and
    timesteps), "mrtl_floor" (the mean `isometry_floor` of the same pairs), "mrtl_over_floor"
    (their ratio: 1 for an exact scaled isometry); picture "rtl_values", a (len(timesteps),
    num_pairs) array; for encode(params, x (B, H, W, C), t int32 (B,)) -> h.

    The same pairs x_0, x_1 ~ N(0, I) (from `seed`) are used at every timestep. Built once; its
    kernel takes the parameters, so `run` on new parameters of the same shapes compiles nothing.
    With a mesh, each batch of pairs is split over its devices.
    """

    def __init__(self, encode: Callable, *, image_shape: Sequence[int], timesteps: Sequence[int],
                 num_pairs: int = 64, num_segments: int = 20, batch_size: int = 16, seed: int = 0,
                 mesh: Optional[Mesh] = None):
        self.timesteps, self.num_pairs, self.batch_size = tuple(timesteps), num_pairs, batch_size
        self.key = jax.random.PRNGKey(seed)

        def pairs(key, size):
            k0, k1 = jax.random.split(key)
            return tuple(sharding.constrain_rows(jax.random.normal(k, (size, *image_shape)), mesh) for k in (k0, k1))

        def batch_rtl(params, key, t, size):
            t_vec = jnp.full((size,), t, jnp.int32)
            return path_rtl(lambda x: encode(params, x, t_vec), *pairs(key, size), num_segments)
        self._rtl = jax.jit(batch_rtl, static_argnames="size")
        self._floor = jax.jit(lambda key, size: isometry_floor(*pairs(key, size), num_segments),
                              static_argnames="size")

    def _batches(self):
        """(key, size) of each batch of pairs (the same pairs at every timestep)."""
        for start in range(0, self.num_pairs, self.batch_size):
            yield np.asarray(jax.random.fold_in(self.key, start)), min(self.batch_size, self.num_pairs - start)

    def measure(self, params) -> Measured:
        per_t = [np.concatenate([sharding.to_host(self._rtl(params, key, t, size=size))
                                 for key, size in self._batches()]) for t in self.timesteps]
        floor = float(np.concatenate([sharding.to_host(self._floor(key, size=size))
                                      for key, size in self._batches()]).mean())
        values = {f"mrtl_t{t}": float(v.mean()) for t, v in zip(self.timesteps, per_t)}
        values.update(mrtl=float(np.mean(per_t)), mrtl_floor=floor, mrtl_over_floor=float(np.mean(per_t)) / floor)
        return Measured(values, {"rtl_values": np.stack(per_t)})
