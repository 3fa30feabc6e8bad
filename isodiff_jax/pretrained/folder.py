"""diffusers model folders: `from_diffusers(path)` reads one, `to_diffusers(...)` writes one.

A folder is either a pipeline (model_index.json, unet/ with config.json and the weights,
scheduler/ with scheduler_config.json), as the Hugging Face Hub repositories google/ddpm-* are,
or a model folder (config.json and the weights, and scheduler_config.json beside it or in
../scheduler/). Weights come from diffusion_pytorch_model.safetensors, read with numpy; only
when there is none, from diffusion_pytorch_model.bin, which needs torch (read with
weights_only=True, so it runs no pickled code).
"""
import json
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from isodiff_jax.errors import InvalidValue, MissingPath
from isodiff_jax.pretrained import safetensors_io, translate, weights
from isodiff_jax.spec import DataSpec, ModelSpec, Params, ScheduleSpec
from isodiff_jax.unet import UNet

SAFETENSORS = "diffusion_pytorch_model.safetensors"
PICKLE = "diffusion_pytorch_model.bin"
PIPELINE_PARTS = ("unet", "scheduler")  # model_index.json components this project reads


class Pretrained(NamedTuple):
    """An imported model: the U-Net, its parameters ({'params': ...}, float32), its noise schedule,
    the image size it was trained at (config.json's sample_size; None if not recorded), and the
    bound its own sampler clips predicted x0 to (None: no clipping)."""
    unet: UNet
    params: Params
    schedule: ScheduleSpec
    resolution: Optional[int]
    clip_sample: Optional[float]

    def model_spec(self, data: Optional[DataSpec] = None) -> ModelSpec:
        """The model spec (data: the images it works on; by default unnamed images of its size)."""
        if data is None:
            data = DataSpec(name="folder", resolution=self.resolution or 2 ** (len(self.unet.block_out_channels) - 1),
                            channels=self.unet.in_channels)
        return ModelSpec(unet=self.unet, schedule=self.schedule, data=data)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            values = json.load(f)
    except json.JSONDecodeError as error:
        raise InvalidValue(f"{path} is not JSON: {error}") from None
    if not isinstance(values, dict):
        raise InvalidValue(f"{path} is not a JSON object")
    return values


def locate(path: str) -> tuple[str, str]:
    """-> (the folder holding the U-Net's config.json and weights, the scheduler_config.json)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise MissingPath(f"{path} is not a directory (expected a diffusers model folder)")
    index_file = os.path.join(path, "model_index.json")
    if os.path.exists(index_file):
        index = _read_json(index_file)
        parts = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
        if other := sorted(parts - set(PIPELINE_PARTS)):
            raise translate.Unsupported(
                f"{index_file}: the pipeline {index.get('_class_name')!r} has components {other} besides a "
                f"U-Net and a scheduler; only pixel-space pipelines (DDPMPipeline, DDIMPipeline) are supported "
                f"(latent diffusion is not yet)")
        candidates = [(os.path.join(path, "unet"), os.path.join(path, "scheduler", "scheduler_config.json"))]
    else:
        candidates = []
    candidates.append((path, os.path.join(path, "scheduler_config.json")))
    candidates.append((path, os.path.join(os.path.dirname(path), "scheduler", "scheduler_config.json")))
    unet_dirs = [u for u, _ in candidates if os.path.exists(os.path.join(u, "config.json"))]
    if not unet_dirs:
        raise MissingPath(f"no config.json in {' or '.join(sorted({u for u, _ in candidates}))}: "
                          f"{path} is not a diffusers model folder")
    schedulers = [s for _, s in candidates if os.path.exists(s)]
    if not schedulers:
        raise MissingPath(f"no scheduler_config.json in {' or '.join(s for _, s in candidates)}: the noise "
                          f"schedule the model was trained with is part of the model")
    return unet_dirs[0], schedulers[0]


def read_state_dict(unet_dir: str) -> tuple[dict, str]:
    """-> (name -> numpy array, the file read)."""
    path = os.path.join(unet_dir, SAFETENSORS)
    if os.path.exists(path):
        return safetensors_io.read(path), path
    path = os.path.join(unet_dir, PICKLE)
    if not os.path.exists(path):
        raise MissingPath(f"{unet_dir} holds neither {SAFETENSORS} nor {PICKLE}")
    try:
        import torch  # optional: only for .bin checkpoints
    except ImportError:
        raise MissingPath(f"{unet_dir} holds only {PICKLE}, a PyTorch file, and torch is not installed: "
                          f"install torch (pip install torch) to read it, or download the repository's "
                          f"{SAFETENSORS} instead") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}, path


def from_diffusers(path: str) -> Pretrained:
    """Reads a diffusers folder (see the module docstring) -> Pretrained(unet, params, schedule, ...).
    Refuses by name every config value the U-Net cannot honour, and names every missing,
    unexpected or mis-shaped weight."""
    unet_dir, scheduler_file = locate(path)
    config_file = os.path.join(unet_dir, "config.json")
    fields, resolution = translate.unet_fields(_read_json(config_file), config_file)
    schedule, clip = translate.schedule_spec(_read_json(scheduler_file), scheduler_file)
    unet = UNet(**fields)
    try:
        abstract = abstract_params(unet)
    except ValueError as error:  # a combination the U-Net refuses (e.g. groups that do not divide)
        raise translate.Unsupported(f"{config_file}: {error}") from None
    state_dict, weights_file = read_state_dict(unet_dir)
    params = weights.params_from_state_dict(state_dict, abstract, weights_file)
    return Pretrained(unet=unet, params=jax.tree.map(jnp.asarray, params), schedule=schedule,
                      resolution=resolution, clip_sample=clip)


def abstract_params(unet: UNet) -> Any:
    """Shapes and dtypes of `unet`'s parameters (they do not depend on the image size)."""
    side = 2 ** (len(unet.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, side, side, unet.in_channels), jnp.float32)
    return jax.eval_shape(unet.init, jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))


def to_diffusers(unet: UNet, params: Params, schedule: ScheduleSpec, out_dir: str, *,
                 resolution: Optional[int] = None, clip_sample: Optional[float] = 1.0) -> str:
    """Writes a diffusers pipeline folder (model_index.json, unet/, scheduler/) that
    `UNet2DModel.from_pretrained(out_dir, subfolder="unet")` and `DDIMPipeline.from_pretrained(out_dir)`
    open; `from_diffusers(out_dir)` reads back the same parameters bit for bit. -> out_dir."""
    unet_dir, scheduler_dir = os.path.join(out_dir, "unet"), os.path.join(out_dir, "scheduler")
    os.makedirs(unet_dir, exist_ok=True)
    os.makedirs(scheduler_dir, exist_ok=True)
    _write_json(os.path.join(unet_dir, "config.json"), translate.diffusers_unet_config(unet, resolution))
    safetensors_io.write(os.path.join(unet_dir, SAFETENSORS),
                         weights.state_dict_from_params(jax.device_get(params)), {"format": "pt"})
    _write_json(os.path.join(scheduler_dir, "scheduler_config.json"),
                translate.diffusers_scheduler_config(schedule, clip_sample))
    _write_json(os.path.join(out_dir, "model_index.json"),
                {"_class_name": "DDPMPipeline", "_diffusers_version": translate.DIFFUSERS_VERSION,
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]})
    return out_dir


def _write_json(path: str, values: dict) -> None:
    with open(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")

