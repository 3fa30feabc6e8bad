"""diffusers model folders: `from_diffusers(path)` reads one, `to_diffusers(...)` writes one.

A folder is either a pipeline (model_index.json, unet/ with config.json and the weights,
scheduler/ with scheduler_config.json, and for latent diffusion vqvae/ with a VQModel's
config.json and weights), as the Hugging Face Hub repositories google/ddpm-* and
CompVis/ldm-celebahq-256 are, or a model folder (config.json and the weights, and scheduler_config.json beside it or in
../scheduler/). Weights come from diffusion_pytorch_model.safetensors, read with numpy; only
when there is none, from diffusion_pytorch_model.bin, which needs torch (read with
weights_only=True, so it runs no pickled code).
"""
import json
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from isodiff_jax import autoencoder as autoencoder_lib
from isodiff_jax import storage
from isodiff_jax.autoencoder import VQAutoencoder
from isodiff_jax.errors import InvalidValue, MissingPath
from isodiff_jax.pretrained import safetensors_io, translate, weights
from isodiff_jax.spec import DataSpec, LatentSpec, ModelSpec, Params, ScheduleSpec
from isodiff_jax.unet import UNet

SAFETENSORS = "diffusion_pytorch_model.safetensors"
PICKLE = "diffusion_pytorch_model.bin"
PIPELINE_PARTS = ("unet", "scheduler", "vqvae")  # model_index.json components this project reads


class Pretrained(NamedTuple):
    """An imported model: the U-Net, its parameters ({'params': ...}, float32), its noise schedule,
    the size of the U-Net's input it was trained at (its config.json's sample_size; None if not
    recorded), and the bound its own sampler clips predicted x0 to (None: no clipping). Latent
    diffusion adds the autoencoder and its parameters (None for a pixel-space model)."""
    unet: UNet
    params: Params
    schedule: ScheduleSpec
    resolution: Optional[int]
    clip_sample: Optional[float]
    autoencoder: Optional[VQAutoencoder] = None
    autoencoder_params: Optional[Params] = None

    @property
    def image_resolution(self) -> int:
        """The side of the images the model generates (the latent side × the autoencoder's factor)."""
        side = self.resolution or 2 ** (len(self.unet.block_out_channels) - 1)
        return side * (self.autoencoder.downsampling if self.autoencoder is not None else 1)

    def model_spec(self, data: Optional[DataSpec] = None, autoencoder_file: str = "") -> ModelSpec:
        """The model spec (data: the images it works on; by default unnamed images of its size;
        autoencoder_file: where the autoencoder's weights are kept, see `spec.LatentSpec`)."""
        channels = (self.autoencoder or self.unet).in_channels
        if data is None:
            data = DataSpec(name="folder", resolution=self.image_resolution, channels=channels)
        latent = None if self.autoencoder is None else LatentSpec(self.autoencoder, autoencoder_file)
        return ModelSpec(unet=self.unet, schedule=self.schedule, data=data, latent=latent)

    def all_params(self) -> Params:
        """The U-Net's parameters, with the autoencoder's beside them for latent diffusion
        (`ModelSpec.with_autoencoder`): what the spec's functions that decode take."""
        if self.autoencoder is None:
            return self.params
        return {"params": self.params["params"], "autoencoder": self.autoencoder_params["params"]}


def _read_json(path: str) -> dict:
    try:
        values = storage.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidValue(f"{path} is not JSON: {error}") from None
    if not isinstance(values, dict):
        raise InvalidValue(f"{path} is not a JSON object")
    return values


def locate(path: str) -> tuple[str, str, Optional[str]]:
    """-> (the folder holding the U-Net's config.json and weights, the scheduler_config.json, the
    VQ autoencoder's folder or None)."""
    path = storage.absolute(path)
    if not storage.is_dir(path):
        raise MissingPath(f"{path} is not a directory (expected a diffusers model folder)")
    index_file, vqvae = storage.join(path, "model_index.json"), None
    if storage.exists(index_file):
        index = _read_json(index_file)
        parts = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
        if other := sorted(parts - set(PIPELINE_PARTS)):
            raise translate.Unsupported(
                f"{index_file}: the pipeline {index.get('_class_name')!r} has components {other} besides a "
                f"U-Net, a scheduler and a VQ autoencoder; supported: pixel-space pipelines (DDPMPipeline, "
                f"DDIMPipeline) and unconditional latent diffusion (LDMPipeline)")
        if "vqvae" in parts:
            vqvae = storage.join(path, "vqvae")
            if not storage.exists(storage.join(vqvae, "config.json")):
                raise MissingPath(f"{index_file} names a vqvae but {vqvae} holds no config.json")
        candidates = [(storage.join(path, "unet"), storage.join(path, "scheduler", "scheduler_config.json"))]
    else:
        candidates = []
    candidates.append((path, storage.join(path, "scheduler_config.json")))
    candidates.append((path, storage.join(storage.parent(path), "scheduler", "scheduler_config.json")))
    unet_dirs = [u for u, _ in candidates if storage.exists(storage.join(u, "config.json"))]
    if not unet_dirs:
        raise MissingPath(f"no config.json in {' or '.join(sorted({u for u, _ in candidates}))}: "
                          f"{path} is not a diffusers model folder")
    schedulers = [s for _, s in candidates if storage.exists(s)]
    if not schedulers:
        raise MissingPath(f"no scheduler_config.json in {' or '.join(s for _, s in candidates)}: the noise "
                          f"schedule the model was trained with is part of the model")
    return unet_dirs[0], schedulers[0], vqvae


def read_state_dict(unet_dir: str) -> tuple[dict, str]:
    """-> (name -> numpy array, the file read)."""
    path = storage.join(unet_dir, SAFETENSORS)
    if storage.exists(path):
        return safetensors_io.read(path), path
    path = storage.join(unet_dir, PICKLE)
    if not storage.exists(path):
        raise MissingPath(f"{unet_dir} holds neither {SAFETENSORS} nor {PICKLE}")
    try:
        import torch  # optional: only for .bin checkpoints
    except ImportError:
        raise MissingPath(f"{unet_dir} holds only {PICKLE}, a PyTorch file, and torch is not installed: "
                          f"install torch (pip install torch) to read it, or download the repository's "
                          f"{SAFETENSORS} instead") from None
    state = torch.load(storage.open_read(path), map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}, path


def from_diffusers(path: str) -> Pretrained:
    """Reads a diffusers folder (see the module docstring) -> Pretrained(unet, params, schedule, ...).
    Refuses by name every config value the U-Net cannot honour, and names every missing,
    unexpected or mis-shaped weight."""
    unet_dir, scheduler_file, vqvae_dir = locate(path)
    config_file = storage.join(unet_dir, "config.json")
    fields, resolution = translate.unet_fields(_read_json(config_file), config_file)
    schedule, clip = translate.schedule_spec(_read_json(scheduler_file), scheduler_file)
    unet = UNet(**fields)
    params = _read_params(unet_dir, unet, abstract_params, "U-Net")
    autoencoder = autoencoder_params = None
    if vqvae_dir is not None:
        autoencoder, autoencoder_params = autoencoder_from_diffusers(vqvae_dir)
        if autoencoder.vq_embed_dim != unet.in_channels or unet.out_channels != unet.in_channels:
            raise InvalidValue(f"{vqvae_dir}: the autoencoder's latents have {autoencoder.vq_embed_dim} channels, "
                               f"the U-Net in {config_file} maps {unet.in_channels} to {unet.out_channels}")
    return Pretrained(unet=unet, params=params, schedule=schedule, resolution=resolution, clip_sample=clip,
                      autoencoder=autoencoder, autoencoder_params=autoencoder_params)


def autoencoder_from_diffusers(folder: str) -> tuple[VQAutoencoder, Params]:
    """A diffusers VQModel folder (config.json and the weights) -> (VQAutoencoder, its parameters).
    Refuses by name every config value the autoencoder cannot honour (see translate.vq_fields)."""
    config_file = storage.join(folder, "config.json")
    if not storage.exists(config_file):
        raise MissingPath(f"no config.json in {folder}: it is not a diffusers VQModel folder")
    autoencoder = VQAutoencoder(**translate.vq_fields(_read_json(config_file), config_file)[0])
    return autoencoder, _read_params(folder, autoencoder, autoencoder_lib.abstract_params, "VQ autoencoder")


def _read_params(folder: str, module, abstract_fn, what: str) -> Params:
    """The float32 parameters of `module` from the weights in `folder`."""
    try:
        abstract = abstract_fn(module)
    except ValueError as error:  # a combination the module refuses (e.g. groups that do not divide)
        raise translate.Unsupported(f"{storage.join(folder, 'config.json')}: {error}") from None
    state_dict, weights_file = read_state_dict(folder)
    params = weights.params_from_state_dict(state_dict, abstract, weights_file, what)
    return jax.tree.map(jnp.asarray, params)


def abstract_params(unet: UNet) -> Any:
    """Shapes and dtypes of `unet`'s parameters (they do not depend on the image size)."""
    side = 2 ** (len(unet.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, side, side, unet.in_channels), jnp.float32)
    return jax.eval_shape(unet.init, jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))


def to_diffusers(unet: UNet, params: Params, schedule: ScheduleSpec, out_dir: str, *,
                 resolution: Optional[int] = None, clip_sample: Optional[float] = 1.0,
                 autoencoder: Optional[VQAutoencoder] = None, autoencoder_params: Optional[Params] = None) -> str:
    """Writes a diffusers pipeline folder (model_index.json, unet/, scheduler/) that
    `UNet2DModel.from_pretrained(out_dir, subfolder="unet")` and `DDIMPipeline.from_pretrained(out_dir)`
    open; `from_diffusers(out_dir)` reads back the same parameters bit for bit. -> out_dir.
    With an autoencoder (latent diffusion): also vqvae/ (a VQModel with its scaling_factor
    written out), a DDIMScheduler, and an LDMPipeline model_index.json; resolution is then the
    U-Net's (the latent) side."""
    latent = autoencoder is not None
    scheduler = "DDIMScheduler" if latent else "DDPMScheduler"
    scheduler_config = translate.diffusers_scheduler_config(schedule, clip_sample, scheduler)  # may refuse: first
    _write_model(storage.join(out_dir, "unet"), translate.diffusers_unet_config(unet, resolution), params)
    _write_json(storage.join(out_dir, "scheduler", "scheduler_config.json"), scheduler_config)
    index = {"_class_name": "LDMPipeline" if latent else "DDPMPipeline",
             "_diffusers_version": translate.DIFFUSERS_VERSION,
             "scheduler": ["diffusers", scheduler], "unet": ["diffusers", "UNet2DModel"]}
    if latent:
        side = resolution and resolution * autoencoder.downsampling
        write_autoencoder(storage.join(out_dir, "vqvae"), autoencoder, autoencoder_params, side)
        index["vqvae"] = ["diffusers", "VQModel"]
    _write_json(storage.join(out_dir, "model_index.json"), index)
    return out_dir


def write_autoencoder(folder: str, autoencoder: VQAutoencoder, params: Params,
                      sample_size: Optional[int] = None) -> str:
    """Writes a diffusers VQModel folder that `VQModel.from_pretrained(folder)` opens. -> folder."""
    _write_model(folder, translate.diffusers_vq_config(autoencoder, sample_size), params)
    return folder


def _write_model(folder: str, config: dict, params: Params) -> None:
    storage.make_dirs(folder)
    _write_json(storage.join(folder, "config.json"), config)
    safetensors_io.write(storage.join(folder, SAFETENSORS),
                         weights.state_dict_from_params(jax.device_get(params)), {"format": "pt"})


def _write_json(path: str, values: dict) -> None:
    storage.write_text(path, json.dumps(values, indent=2, sort_keys=True) + "\n")

