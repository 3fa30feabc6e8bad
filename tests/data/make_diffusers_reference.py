"""Writes tests/data/diffusers/*: small random-weight diffusers `UNet2DModel` folders with the
options of the public checkpoints the importer is meant for, and their outputs on fixed inputs,
the references for tests/test_pretrained.py.

Run it where torch and diffusers are installed (never from the tests or the package), e.g. a
virtualenv outside the repository:

    python3.12 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install torch diffusers safetensors numpy
    /tmp/fixture-venv/bin/python tests/data/make_diffusers_reference.py [--check_export]

`--check_export` (instead of writing the fixtures) imports each fixture with
`isodiff_jax.pretrained.from_diffusers`, exports it with `to_diffusers`, and checks that diffusers
opens the export: `UNet2DModel.from_pretrained` reproduces the stored reference exactly (the
weights are the same float32 numbers) and `DDIMPipeline.from_pretrained` samples with it. That
needs jax and torch in one interpreter, so it is checked here and not in the test suite; run it
from the repository root with PYTHONPATH=.:.venv/lib/python3.12/site-packages.

Each folder is laid out as a diffusers model folder (config.json, diffusion_pytorch_model.safetensors,
scheduler_config.json; or model_index.json with unet/ and scheduler/) and holds reference.npz:
x (B, C, H, W) float32 inputs, t (B,) int64 timesteps, eps and h, diffusers' ε̂ and its middle
block's output (a forward hook on `mid_block`), computed with `model.double()` from the float32
weights stored in the folder; and eps64, h64, the same with diffusers' float32 time features
recomputed in float64, so that a float64 import can be held to ~1e-12 (a float32 one is held to
1e-5 against eps and h; that alone would not see, e.g., norm_eps 2e-6 for 1e-6); alphas_cumprod,
the scheduler's ᾱ (float32, as DDPMScheduler computes it). Every folder is loaded back with `UNet2DModel.from_pretrained` and
`DDPMScheduler.from_pretrained` and must reproduce the reference exactly: the folders are what
diffusers itself reads.

The cases (channels tiny, options those of the models in docs/pretrained.md):
- cifar10: google/ddpm-cifar10-32's options (downsample_padding 0, flip_sin_to_cos False,
  freq_shift 1, norm_eps 1e-6, attention_head_dim None, attention at the 16×16 level of 4),
  current diffusers names, files at the top of the folder, the config diffusers writes today.
- celebahq: google/ddpm-ema-celebahq-256's options (6 levels, attention at the 5th), the
  pipeline layout (model_index.json, unet/, scheduler/), the short config.json and
  scheduler_config.json those repositories hold (diffusers 0.0.4/0.1.1 fields only), and the
  attention weights under their old names (query, key, value, proj_attn) as in those checkpoints.
- options: every other option the importer honours: resnet_time_scale_shift "scale_shift" (its
  middle attention has no GroupNorm), act_fn mish, center_input_sample, mid_block_scale_factor √2,
  several heads per attention block, a squaredcos_cap_v2 schedule of 100 steps.
- gelu: act_fn gelu, add_attention False, a scaled_linear schedule.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.numpy import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusers")
SEED = 1212
GOOGLE_FLAGS = dict(downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
                    attention_head_dim=None, act_fn="silu", center_input_sample=False,
                    mid_block_scale_factor=1, time_embedding_type="positional", in_channels=3,
                    out_channels=3)
# the fields of google/ddpm-*'s config.json and scheduler_config.json (diffusers 0.0.4 / 0.1.1)
GOOGLE_UNET_FIELDS = ("act_fn", "attention_head_dim", "block_out_channels", "center_input_sample",
                      "down_block_types", "downsample_padding", "flip_sin_to_cos", "freq_shift", "in_channels",
                      "layers_per_block", "mid_block_scale_factor", "norm_eps", "norm_num_groups",
                      "out_channels", "sample_size", "time_embedding_type", "up_block_types")
GOOGLE_SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
                    "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
                    "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"}
OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

CASES = {
    "cifar10": dict(
        unet=dict(GOOGLE_FLAGS, sample_size=16, block_out_channels=(4, 8, 8, 8), layers_per_block=2,
                  norm_num_groups=2,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                       clip_sample=True, variance_type="fixed_small"),
        layout="flat", google_files=False, t=(3, 987)),
    "celebahq": dict(
        unet=dict(GOOGLE_FLAGS, sample_size=32, block_out_channels=(4, 4, 4, 4, 8, 8), layers_per_block=2,
                  norm_num_groups=2,
                  down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4),
        scheduler=None, layout="pipeline", google_files=True, t=(0, 640)),
    "options": dict(
        unet=dict(sample_size=8, block_out_channels=(4, 8, 8), layers_per_block=1, norm_num_groups=2,
                  down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
                  attention_head_dim=2, resnet_time_scale_shift="scale_shift", act_fn="mish",
                  center_input_sample=True, mid_block_scale_factor=2 ** 0.5, downsample_padding=1,
                  flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5),
        scheduler=dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False),
        layout="flat", google_files=False, t=(7, 93)),
    "gelu": dict(
        unet=dict(sample_size=8, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=2,
                  down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                  act_fn="gelu", add_attention=False, attention_head_dim=8),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015,
                       beta_end=0.0195, clip_sample=False),
        layout="flat", google_files=False, t=(500, 999)),
}


def random_state_dict(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Every parameter drawn anew (float32), so that no weight keeps a default that could hide a
    transposed or swapped tensor: kernels N(0, 1/fan_in), GroupNorm scales U(0.5, 1.5), biases
    N(0, 0.2²). One generator per tensor, seeded by (seed, index)."""
    out = {}
    for i, (name, value) in enumerate(model.state_dict().items()):
        rng, shape = np.random.default_rng([seed, i]), tuple(value.shape)
        if len(shape) > 1:
            array = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
        elif name.endswith("weight"):
            array = rng.uniform(0.5, 1.5, shape)
        else:
            array = rng.normal(0.0, 0.2, shape)
        out[name] = array.astype(np.float32)
    return out


def run(model: UNet2DModel, x: np.ndarray, t: np.ndarray, exact_time: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ε̂, h) in float64, h from a forward hook on the middle block. diffusers computes the
    sinusoidal time features in float32 even in a float64 model (`get_timestep_embedding`);
    exact_time recomputes them in float64 by the same formula (a hook on `time_proj`), so that
    the whole forward pass is float64 and a float64 import can be held to ~1e-12."""
    model = model.double().eval()
    found = {}
    hooks = [model.mid_block.register_forward_hook(lambda module, inputs, output: found.update(h=output))]
    if exact_time:
        hooks.append(model.time_proj.register_forward_hook(_float64_time_features))
    with torch.no_grad():
        eps = model(torch.from_numpy(x).double(), torch.from_numpy(t)).sample
    for hook in hooks:
        hook.remove()
    return eps.numpy(), found["h"].numpy()


def _float64_time_features(module, inputs, output):
    """diffusers' Timesteps features (sin, cos of t·exp(−ln(10⁴)·i/(half − shift))) in float64."""
    (t,), half = inputs, module.num_channels // 2
    exponent = -np.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - module.downscale_freq_shift)
    angles = t[:, None].double() * torch.exp(exponent)[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    features = torch.cat([cos, sin] if module.flip_sin_to_cos else [sin, cos], dim=-1)
    assert features.shape == output.shape and torch.allclose(features.float(), output.float(), atol=1e-5)
    return features


def write_case(name: str, case: dict) -> None:
    folder = os.path.join(ROOT, name)
    shutil.rmtree(folder, ignore_errors=True)
    unet_dir = os.path.join(folder, "unet") if case["layout"] == "pipeline" else folder
    scheduler_dir = os.path.join(folder, "scheduler") if case["layout"] == "pipeline" else folder
    os.makedirs(unet_dir)
    os.makedirs(scheduler_dir, exist_ok=True)

    model = UNet2DModel(**case["unet"])
    weights = random_state_dict(model, SEED + sum(map(ord, name)))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    config = dict(model.config)
    if case["google_files"]:
        config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
                  **{k: config[k] for k in GOOGLE_UNET_FIELDS}}
        weights = {_old_attention_name(k): v for k, v in weights.items()}
        with open(os.path.join(scheduler_dir, "scheduler_config.json"), "w") as f:
            json.dump(GOOGLE_SCHEDULER, f, indent=2, sort_keys=True)
    else:
        config = {"_class_name": "UNet2DModel", **{k: v for k, v in config.items() if not k.startswith("_")}}
        DDPMScheduler(**case["scheduler"]).save_config(scheduler_dir)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    with open(os.path.join(unet_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(weights, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    if case["layout"] == "pipeline":
        index = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1",
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)

    rng = np.random.default_rng(SEED)
    size, channels = case["unet"]["sample_size"], case["unet"].get("in_channels", 3)
    x = rng.normal(0.0, 1.0, (2, channels, size, size)).astype(np.float32)
    t = np.asarray(case["t"], np.int64)
    eps, h = run(model, x, t)
    eps64, h64 = run(model, x, t, exact_time=True)
    abar = DDPMScheduler.from_pretrained(scheduler_dir).alphas_cumprod.numpy()
    np.savez_compressed(os.path.join(folder, "reference.npz"), x=x, t=t, eps=eps, h=h, eps64=eps64, h64=h64,
                        alphas_cumprod=abar)
    _check_diffusers_reads(folder, unet_dir, scheduler_dir, x, t, eps, h)
    print(f"{name}: {_size(folder) / 1024:.0f} KiB, |eps| {np.abs(eps).max():.3g}, h {h.shape}")


def _old_attention_name(key: str) -> str:
    if ".attentions." not in key:
        return key
    for new, old in OLD_ATTENTION_NAMES.items():
        key = key.replace(f".{new}.", f".{old}.")
    return key


def _check_diffusers_reads(folder, unet_dir, scheduler_dir, x, t, eps, h) -> None:
    """diffusers' own loaders read the folder back and reproduce the reference exactly."""
    loaded = UNet2DModel.from_pretrained(unet_dir)
    eps_again, h_again = run(loaded, x, t)
    np.testing.assert_array_equal(eps_again, eps)
    np.testing.assert_array_equal(h_again, h)
    DDPMScheduler.from_pretrained(scheduler_dir)
    if os.path.exists(os.path.join(folder, "model_index.json")):
        from diffusers import DDPMPipeline
        DDPMPipeline.from_pretrained(folder)


def _size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def check_export(name: str, out: str) -> None:
    """Import with isodiff_jax, export, and open the export with diffusers (see the docstring)."""
    from diffusers import DDIMPipeline

    from isodiff_jax import pretrained
    model = pretrained.from_diffusers(os.path.join(ROOT, name))
    folder = pretrained.to_diffusers(model.unet, model.params, model.schedule, os.path.join(out, name),
                                     resolution=model.resolution, clip_sample=model.clip_sample)
    with np.load(os.path.join(ROOT, name, "reference.npz")) as ref:
        eps, h = run(UNet2DModel.from_pretrained(folder, subfolder="unet"), ref["x"], ref["t"])
        np.testing.assert_array_equal(eps, ref["eps"])
        np.testing.assert_array_equal(h, ref["h"])
    pipeline = DDIMPipeline.from_pretrained(folder)
    images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, model.resolution, model.resolution, 3) and np.isfinite(images).all()
    print(f"{name}: diffusers opens the export; ε̂ and h identical; DDIMPipeline sampled {images.shape}")


def main() -> None:
    torch.manual_seed(SEED)
    if "--check_export" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as out:
            for name in CASES:
                check_export(name, out)
        return
    for name, case in CASES.items():
        write_case(name, case)


if __name__ == "__main__":
    main()
