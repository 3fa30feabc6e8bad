"""Exact rank·L_iso of the encoder: how far it is from a scaled isometry, with dense traces.

With R the encoder's pulled-back metric on the sphere of noisy inputs (method.md §3: in the
tangent form, P Jᵀ J P at x_t) and r its rank (min(dim h, dim x − 1)), L_iso = mean Tr R² /
(mean Tr R)² over the samples, and rank·L_iso is 1 exactly when every R is c·I on a common
r-dimensional space with one c. The traces here are exact (`isometry.exact_isometry_traces`,
one dense Jacobian per image), not the training loss's stochastic estimate.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax import diffusion, isometry
from isodiff_jax.analysis.evaluator import Evaluator, Measured
from isodiff_jax.spec import ModelSpec

IMAGE_SEED = 11  # the real images' draw: fixed, so every run and seed of a study sees the same ones


def value_names(timesteps: Sequence[int]) -> tuple[str, ...]:
    """The values `ExactRankIso` measures."""
    return tuple(f"rank_iso_t{t}" for t in timesteps)


class ExactRankIso(Evaluator):
    """Evaluator: rank_iso_t{t} at each timestep t, on `images` (count, H, W, C) in [-1, 1]
    noised to x_t (the noise drawn from t). One compiled program serves every timestep and
    parameters (both are arguments). Each image costs a dense Jacobian: keep count small."""

    def __init__(self, spec: ModelSpec, timesteps: Sequence[int], x0):
        x0 = jnp.asarray(x0)
        self.timesteps = tuple(timesteps)
        self.rank = min(int(np.prod(spec.h_shape)), int(np.prod(spec.image_shape)) - 1)

        def traces(params, t):
            t_vec = jnp.full((x0.shape[0],), t, jnp.int32)
            noise = jax.random.normal(jax.random.PRNGKey(t), x0.shape)
            x_t = diffusion.q_sample(spec.noise_schedule, x0, t_vec, noise)
            return isometry.exact_isometry_traces(lambda x: spec.encode(params, x, t_vec), x_t)
        self._traces = jax.jit(traces)

    def measure(self, params) -> Measured:
        values = {}
        for t in self.timesteps:
            tr_r, tr_r2 = (np.asarray(v, np.float64) for v in self._traces(params, t))
            values[f"rank_iso_t{t}"] = float(self.rank * np.mean(tr_r2) / np.mean(tr_r) ** 2)
        return Measured(values)
