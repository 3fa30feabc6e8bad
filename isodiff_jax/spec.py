"""The model spec: everything static about a diffusion model, with its parameters kept apart.

A `ModelSpec` is a frozen, hashable value (the U-Net, the noise schedule, the images it works
on and the data set it was trained on). Functions of the model take the parameters as their
first argument (`spec.eps(params, x, t)`, `spec.encode(params, x, t)`), so anything built from a
spec, an evaluator or a sampler, is jitted once and runs on any parameters of the same shapes:
a new checkpoint compiles nothing.

Specs are saved beside every checkpoint as JSON (`to_dict` / `from_dict`), so a checkpoint
describes the model it holds without the config of the run that wrote it.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from isodiff_jax import data, diffusion
from isodiff_jax.data.source import Source
from isodiff_jax.unet import UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}

Params = Any  # a Flax variables pytree {"params": ...}


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A noise schedule by its definition (`diffusion.make_schedule` arguments)."""
    kind: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def build(self) -> diffusion.Schedule:
        return diffusion.make_schedule(self.kind, self.num_timesteps, beta_start=self.beta_start,
                                       beta_end=self.beta_end)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The images a model works on and the data set they come from (`data.make_source`)."""
    name: str = "shapes"
    resolution: int = 32
    channels: int = 3
    data_dir: str = ""
    split: str = "train"
    seed: int = 0  # the shapes generator's seed (and the data order's in training)

    def source(self) -> Source:
        """The data set, read directly (no training pipeline)."""
        return data.make_source(self.name, resolution=self.resolution, seed=self.seed,
                                data_dir=self.data_dir or None, split=self.split)


def _unet_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(UNet) if f.name not in ("parent", "name"))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A U-Net, its noise schedule and its data; hashable, so it can key caches of compiled code."""
    unet: UNet
    schedule: ScheduleSpec = ScheduleSpec()
    data: DataSpec = DataSpec()

    def __post_init__(self):
        if self.unet.in_channels != self.data.channels:
            raise ValueError(f"the U-Net takes {self.unet.in_channels} channels, the data has {self.data.channels}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        r = self.data.resolution
        return (r, r, self.data.channels)

    @functools.cached_property
    def noise_schedule(self) -> diffusion.Schedule:
        """The schedule's arrays, built once; concrete even when first read inside a jit trace
        (a cached tracer would break every later use)."""
        with jax.ensure_compile_time_eval():
            return self.schedule.build()

    def eps(self, params: Params, x: jax.Array, t: jax.Array) -> jax.Array:
        """ε̂(x (B, H, W, C), t int32 (B,)) -> (B, H, W, C)."""
        return self.unet.apply(params, x, t)[0]

    def encode(self, params: Params, x: jax.Array, t: jax.Array) -> jax.Array:
        """h = e_θ(x, t): the middle block's output, (B, H/2^(L-1), W/2^(L-1), C_L)."""
        return self.unet.apply(params, x, t, method=UNet.encode)

    def init_params(self, key: jax.Array) -> Params:
        """Fresh parameters (random initialisation)."""
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        return self.unet.init(key, x, jnp.zeros((1,), jnp.int32))

    def abstract_params(self) -> Params:
        """Shapes and dtypes of the parameters (jax.ShapeDtypeStruct leaves), computed without work."""
        return jax.eval_shape(self.init_params, jax.random.PRNGKey(0))

    @property
    def h_shape(self) -> tuple[int, ...]:
        """The shape of one sample's h."""
        x = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32)
        h = jax.eval_shape(lambda p, x: self.encode(p, x, jnp.zeros((1,), jnp.int32)), self.abstract_params(), x)
        return tuple(h.shape[1:])

    def to_dict(self) -> dict:
        """A JSON-ready description (`from_dict` is its inverse)."""
        unet = {name: getattr(self.unet, name) for name in _unet_fields()}
        unet["dtype"] = jnp.dtype(unet["dtype"]).name
        unet = {k: list(v) if isinstance(v, tuple) else v for k, v in unet.items()}
        return {"unet": unet, "schedule": dataclasses.asdict(self.schedule), "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        unet = dict(values["unet"])
        unknown = set(unet) - set(_unet_fields())
        if unknown:
            raise ValueError(f"unknown U-Net fields {sorted(unknown)} in a saved model spec")
        unet = {k: tuple(v) if isinstance(v, list) else v for k, v in unet.items()}
        unet["dtype"] = DTYPES[unet["dtype"]]
        return cls(unet=UNet(**unet), schedule=ScheduleSpec(**values["schedule"]), data=DataSpec(**values["data"]))
