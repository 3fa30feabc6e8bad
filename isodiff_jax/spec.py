"""The model spec: everything static about a diffusion model, with its parameters kept apart.

A `ModelSpec` is a frozen, hashable value (the U-Net, the noise schedule, the images it works
on and the data set it was trained on). Functions of the model take the parameters as their
first argument (`spec.eps(params, x, t)`, `spec.encode(params, x, t)`), so anything built from a
spec, an evaluator or a sampler, is jitted once and runs on any parameters of the same shapes:
a new checkpoint compiles nothing.

Specs are saved beside every checkpoint as JSON (`to_dict` / `from_dict`), so a checkpoint
describes the model it holds without the config of the run that wrote it.

Latent diffusion: a spec with a `latent` part diffuses the latents of a frozen autoencoder. Its
`image_shape` is then the latent's shape (what the U-Net sees) and `pixel_shape` the images'.
The autoencoder's weights are read from `latent.params_file`; functions that decode take them in
the parameters, as a second collection beside the U-Net's: {"params": unet, "autoencoder": ae}
(`with_autoencoder`); the U-Net ignores it, so `eps` and `encode` take either form.
"""
import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from isodiff_jax import autoencoder as autoencoder_lib
from isodiff_jax import data, diffusion
from isodiff_jax.autoencoder import VQAutoencoder
from isodiff_jax.data.source import Source
from isodiff_jax.unet import UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}

Params = Any  # a Flax variables pytree {"params": ...}


# How to compile `ModelSpec.init_params` (`jax.jit(...).lower(key).compile(INIT_COMPILER_OPTIONS)`):
# XLA's optimising passes take six times longer on the initialisers' random-number code (61 s
# against 10 s for configs/shapes16_iso.py's U-Net on 2 CPU cores) and gain nothing in a program
# that runs once. The values differ from an optimised compile's by rounding (6e-8 at most).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A noise schedule by its definition (`diffusion.make_schedule` arguments)."""
    kind: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    logsnr_shift: float = 0.0

    def build(self) -> diffusion.Schedule:
        return diffusion.make_schedule(self.kind, self.num_timesteps, beta_start=self.beta_start,
                                       beta_end=self.beta_end, logsnr_shift=self.logsnr_shift)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The images a model works on and the data set they come from (`data.make_source`).

    Only the image size (resolution, channels) takes part in equality and hashing: specs key the
    caches of compiled programs, and which data set, split or seed the images come from changes
    none of them, so the runs of a seed sweep share every compiled program. `dataset` names the
    data set for those who must tell data sets apart (evaluators that read real images)."""
    name: str = dataclasses.field(default="shapes", compare=False)
    resolution: int = 32
    channels: int = 3
    data_dir: str = dataclasses.field(default="", compare=False)
    split: str = dataclasses.field(default="train", compare=False)
    seed: int = dataclasses.field(default=0, compare=False)  # the shapes generator's seed (and the data order's in training)

    @property
    def dataset(self) -> tuple[str, str, str]:
        """(name, data_dir, split): the data set, whatever the seed of its draw or order."""
        return (self.name, self.data_dir, self.split)

    def source(self) -> Source:
        """The data set, read directly (no training pipeline)."""
        return data.make_source(self.name, resolution=self.resolution, seed=self.seed,
                                data_dir=self.data_dir or None, split=self.split)


def _module_fields(module_class) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(module_class) if f.name not in ("parent", "name"))


def _unet_fields() -> tuple[str, ...]:
    return _module_fields(UNet)


def _module_to_dict(module) -> dict:
    values = {name: getattr(module, name) for name in _module_fields(type(module))}
    values["dtype"] = jnp.dtype(values["dtype"]).name
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _module_from_dict(module_class, values: dict, what: str):
    values = dict(values)
    if unknown := set(values) - set(_module_fields(module_class)):
        raise ValueError(f"unknown {what} fields {sorted(unknown)} in a saved model spec")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    values["dtype"] = DTYPES[values["dtype"]]
    return module_class(**values)


@dataclasses.dataclass(frozen=True)
class LatentSpec:
    """The frozen autoencoder of latent diffusion and the file its weights are read from ("":
    none; the caller gives them, e.g. straight after an import)."""
    autoencoder: VQAutoencoder
    params_file: str = ""

    def load_params(self) -> Params:
        """{'params': ...} of the autoencoder, read from params_file."""
        if not self.params_file:
            raise ValueError("this latent spec names no params_file: pass the autoencoder's parameters")
        return autoencoder_lib.load_params(self.params_file, self.autoencoder)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A U-Net, its noise schedule and its data; hashable, so it can key caches of compiled code.
    Two specs are equal when they compile the same programs: the data set's identity (name, path,
    split, seed) is recorded but not compared (see `DataSpec`)."""
    unet: UNet
    schedule: ScheduleSpec = ScheduleSpec()
    data: DataSpec = DataSpec()
    latent: Optional[LatentSpec] = None  # latent diffusion: the autoencoder whose latents are diffused

    def __post_init__(self):
        if self.latent is None:
            if self.unet.in_channels != self.data.channels:
                raise ValueError(f"the U-Net takes {self.unet.in_channels} channels, the data has {self.data.channels}")
            return
        ae = self.latent.autoencoder
        if self.unet.in_channels != ae.vq_embed_dim or self.unet.out_channels != ae.vq_embed_dim:
            raise ValueError(f"the U-Net maps {self.unet.in_channels} to {self.unet.out_channels} channels, the "
                             f"autoencoder's latents have {ae.vq_embed_dim}")
        if ae.in_channels != self.data.channels or self.data.resolution % ae.downsampling:
            raise ValueError(f"the autoencoder takes {ae.in_channels}-channel images of a side divisible by "
                             f"{ae.downsampling}, the data are {self.data.resolution}² with {self.data.channels}")

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image of the data."""
        r = self.data.resolution
        return (r, r, self.data.channels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one diffusion sample x_0: the image, or with `latent` its latent."""
        if self.latent is None:
            return self.pixel_shape
        side = self.data.resolution // self.latent.autoencoder.downsampling
        return (side, side, self.latent.autoencoder.vq_embed_dim)

    @property
    def clip_x0(self) -> Optional[float]:
        """The bound samplers clip predicted x0 to: images lie in [-1, 1], latents are unbounded."""
        return 1.0 if self.latent is None else None

    def with_autoencoder(self, params: Params, autoencoder_params: Optional[Params]) -> Params:
        """The U-Net's parameters with the autoencoder's beside them (what `to_images` and
        `to_x0` need); the U-Net's alone for a pixel-space model."""
        if self.latent is None:
            return params
        return {"params": params["params"], "autoencoder": autoencoder_params["params"]}

    def to_images(self, params: Params, x0: jax.Array) -> jax.Array:
        """Diffusion samples -> images in [-1, 1] (decoded through the autoencoder, whose
        parameters `params` must carry, see `with_autoencoder`, and clipped as diffusers' pipelines
        clamp them: FID's Inception takes [-1, 1] only); the identity in pixel space."""
        if self.latent is None:
            return x0
        ae = self.latent.autoencoder
        return jnp.clip(ae.apply({"params": params["autoencoder"]}, x0, method=VQAutoencoder.decode), -1.0, 1.0)

    def to_x0(self, params: Params, images: jax.Array) -> jax.Array:
        """Images in [-1, 1] -> diffusion samples x_0 (the autoencoder's latents); the identity in
        pixel space."""
        if self.latent is None:
            return images
        ae = self.latent.autoencoder
        return ae.apply({"params": params["autoencoder"]}, images, method=VQAutoencoder.encode)

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
        """Fresh parameters (random initialisation). Jit it with INIT_COMPILER_OPTIONS."""
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        return self.unet.init(key, x, jnp.zeros((1,), jnp.int32))

    def abstract_params(self) -> Params:
        """Shapes and dtypes of the parameters (jax.ShapeDtypeStruct leaves), computed without work
        (traced once per spec; each call returns its own containers)."""
        return jax.tree.map(lambda leaf: leaf, _abstract_params(self))

    @property
    def h_shape(self) -> tuple[int, ...]:
        """The shape of one sample's h."""
        return _h_shape(self)

    def to_dict(self) -> dict:
        """A JSON-ready description (`from_dict` is its inverse); "latent" only for latent diffusion."""
        out = {"unet": _module_to_dict(self.unet), "schedule": dataclasses.asdict(self.schedule),
               "data": dataclasses.asdict(self.data)}
        if self.latent is not None:
            out["latent"] = {"autoencoder": _module_to_dict(self.latent.autoencoder),
                             "params_file": self.latent.params_file}
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        latent = None
        if values.get("latent") is not None:
            latent = LatentSpec(_module_from_dict(VQAutoencoder, values["latent"]["autoencoder"], "autoencoder"),
                                values["latent"]["params_file"])
        return cls(unet=_module_from_dict(UNet, values["unet"], "U-Net"), schedule=ScheduleSpec(**values["schedule"]),
                   data=DataSpec(**values["data"]), latent=latent)


# Tracing the U-Net takes about a second; the evaluators, checkpoint loads and training set-ups of
# one process ask for the same shapes many times. Equal specs have equal shapes.
@functools.lru_cache(maxsize=32)
def _abstract_params(spec: ModelSpec) -> Params:
    return jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=32)
def _h_shape(spec: ModelSpec) -> tuple[int, ...]:
    x = jax.ShapeDtypeStruct((1, *spec.image_shape), jnp.float32)
    h = jax.eval_shape(lambda p, x: spec.encode(p, x, jnp.zeros((1,), jnp.int32)), _abstract_params(spec), x)
    return tuple(h.shape[1:])
