"""The evaluators of several metrics behind one object: `Suite(spec, metrics, options, resources,
mesh)` builds the registry's entries once for a model spec; `run(params)` yields the values,
`measure(params)` gives values and pictures' data, for any parameters of that model (a
checkpoint, or the EMA parameters inside training), compiling nothing after the first run.
"""
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from isodiff_jax import geometry, sharding
from isodiff_jax.analysis import registry
from isodiff_jax.analysis.evaluator import Evaluator, Measured, merged
from isodiff_jax.analysis.options import Options
from isodiff_jax.analysis.registry import Resources
from isodiff_jax.analysis.sampling import sampler
from isodiff_jax.spec import ModelSpec


class Suite(Evaluator):
    """The evaluators of `metrics` (names of `registry.REGISTRY`) for one model spec, built once.

    Every kernel takes the parameters as an argument, so a measurement of new parameters of the
    same shapes (another checkpoint, a later training step) compiles nothing. With a mesh,
    evaluation batches are split over its devices (of every process; all processes must measure
    together). `names` are the values it measures, in the order of the metrics.
    """

    def __init__(self, spec: ModelSpec, metrics, options: Options = Options(), resources: Resources = Resources(),
                 mesh: Optional[Mesh] = None):
        metrics = list(metrics)
        registry.check(metrics, spec, resources, options)
        context = registry.Context(spec, options, resources, mesh)
        entries = {}
        for metric in metrics:  # one evaluator per entry: "mcn" and "vor" share one
            if all(entry is not registry.REGISTRY[metric] for entry in entries.values()):
                entries[metric] = registry.REGISTRY[metric]
        self.spec, self.metrics, self.options = spec, metrics, options
        self.names = tuple(name for entry in entries.values() for name in entry.names(context))
        self.evaluators = {metric: entry.build(context) for metric, entry in entries.items()}

    def measure(self, params) -> Measured:
        return merged(evaluator.measure(params) for evaluator in self.evaluators.values())

    def run(self, params) -> Iterator[tuple[str, float]]:
        for evaluator in self.evaluators.values():
            yield from evaluator.run(params)


class Interpolation(Evaluator):
    """Pictures only: frames decoded along slerp and lerp between two fixed x_T, as
    "interpolation_frames", {"slerp": (K, H, W, C), "lerp": (K, H, W, C)}."""

    def __init__(self, spec: ModelSpec, options: Options, num_frames: int = 9):
        k0, k1 = jax.random.split(jax.random.PRNGKey(options.seed + 7))
        x0, x1 = (jax.random.normal(k, (1, *spec.image_shape)) for k in (k0, k1))
        w = jnp.linspace(0, 1, num_frames)  # (1, H, W, C) ends and (K,) weights give K frames
        self.paths = {name: np.asarray(path(x0, x1, w)) for name, path in (("slerp", geometry.slerp),
                                                                           ("lerp", geometry.lerp))}
        self._sample = jax.jit(sampler(spec, options.sample_steps))

    def measure(self, params) -> Measured:
        frames = {name: sharding.to_host(self._sample(params, x)) for name, x in self.paths.items()}
        return Measured({}, {"interpolation_frames": frames})
