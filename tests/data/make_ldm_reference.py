"""Writes tests/data/diffusers/{ldm,vq_options}: small random-weight diffusers latent-diffusion
folders (a VQModel, and for `ldm` the UNet2DModel and scheduler beside it) and their outputs on
fixed inputs, the references for tests/test_pretrained_latent.py. The sibling of
make_diffusers_reference.py (same environment, same random weights), run the same way:

    /tmp/fixture-venv/bin/python tests/data/make_ldm_reference.py [--check_export]

`--check_export` imports each folder with `isodiff_jax.pretrained.from_diffusers`, exports it
with `to_diffusers` (run it with PYTHONPATH=. and jax installed in the venv, or point
--check_export at a folder exported beforehand: `--check_export DIR`), and checks that diffusers
opens the export: `VQModel.from_pretrained` reproduces the reference exactly, and
`LDMPipeline.from_pretrained` samples with it.

Cases (widths tiny, options those of CompVis/ldm-celebahq-256):
- ldm: the layout of CompVis/ldm-celebahq-256 (model_index.json naming an LDMPipeline, unet/,
  scheduler/, vqvae/), the short config.json files that repository holds (diffusers 0.0.4/0.1.2
  fields only: no scaling_factor, no vq_embed_dim, no norm_num_groups in the VQModel's; a
  DDIMScheduler, scaled_linear 0.0015 → 0.0195, clip_sample false), three DownEncoderBlock2D
  levels with two resnets each, the middle attention, attention weights under their old names
  (query, key, value, proj_attn). One exception: the VQModel's config sets norm_num_groups 4,
  since its default 32 does not divide the tiny widths.
- vq_options: a VQModel folder with the options the importer honours beyond those: scaling_factor
  0.5, vq_embed_dim 4 ≠ latent_channels 2, no middle attention, act_fn mish, one resnet per level.

reference.npz (NCHW, as diffusers): x images (B, C, H, W) float32; latents = vq.encode(x)
(before quantization, unscaled), quantized and indices (the vector quantizer's output), decoded =
vq.decode(latents) (which quantizes), all computed in float64 from the stored float32 weights;
the nearest/second-nearest distance gap of every latent vector (min_gap), so a test knows no
index is a near tie; for ldm also x_latent (B, 3, h, w), t, eps and h of the U-Net (a hook on its
middle block), and alphas_cumprod.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel, VQModel
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_diffusers_reference import (GOOGLE_UNET_FIELDS, _old_attention_name, _size,  # noqa: E402
                                      random_state_dict, run)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusers")
SEED = 1213
# the fields of CompVis/ldm-celebahq-256's vqvae/config.json (diffusers 0.1.2)
LDM_VQ_FIELDS = ("act_fn", "block_out_channels", "down_block_types", "in_channels", "latent_channels",
                 "layers_per_block", "num_vq_embeddings", "out_channels", "sample_size", "up_block_types")
LDM_SCHEDULER = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.0.4", "beta_end": 0.0195,
                 "beta_schedule": "scaled_linear", "beta_start": 0.0015, "clip_sample": False,
                 "num_train_timesteps": 1000, "trained_betas": None}

CASES = {
    "ldm": dict(
        vq=dict(block_out_channels=(8, 8, 16), layers_per_block=2, latent_channels=3, num_vq_embeddings=64,
                norm_num_groups=4, sample_size=32, act_fn="silu",
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3),
        unet=dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8, 8, 8), layers_per_block=2,
                  norm_num_groups=2, attention_head_dim=4, act_fn="silu", center_input_sample=False,
                  downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
                  time_embedding_type="positional",
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
        t=(17, 903)),
    "vq_options": dict(
        vq=dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=2, vq_embed_dim=4,
                num_vq_embeddings=32, norm_num_groups=4, sample_size=16, act_fn="mish", scaling_factor=0.5,
                mid_block_add_attention=False,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
        unet=None, t=None),
}


def vq_state_dict(model: VQModel, x: np.ndarray, seed: int) -> dict:
    """Random weights (as the U-Net fixtures'), the codebook then drawn near the encoder's outputs
    for other images, so that the quantizer picks among many entries rather than one."""
    weights = random_state_dict(model, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    rng = np.random.default_rng([seed, 99])
    other = rng.normal(0.0, 1.0, x.shape).astype(np.float32)
    with torch.no_grad():
        h = model.double().encode(torch.from_numpy(other).double()).latents.numpy()
    vectors = h.transpose(0, 2, 3, 1).reshape(-1, h.shape[1])
    n = weights["quantize.embedding.weight"].shape[0]
    chosen = vectors[rng.choice(len(vectors), size=n, replace=len(vectors) < n)]
    weights["quantize.embedding.weight"] = (chosen + rng.normal(0, 0.05 * chosen.std(), chosen.shape)).astype(np.float32)
    return weights


def vq_outputs(model: VQModel, x: np.ndarray) -> dict:
    model = model.double().eval()
    with torch.no_grad():
        latents = model.encode(torch.from_numpy(x).double()).latents
        quantized, _, (_, _, indices) = model.quantize(latents)
        decoded = model.decode(latents).sample
        z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        d = torch.cdist(z, model.quantize.embedding.weight).sort(dim=1).values
    b, _, hh, ww = latents.shape
    return {"latents": latents.numpy(), "quantized": quantized.numpy(), "indices": indices.numpy().reshape(b, hh, ww),
            "decoded": decoded.numpy(), "min_gap": float((d[:, 1] - d[:, 0]).min())}


def write_case(name: str, case: dict) -> None:
    folder = os.path.join(ROOT, name)
    shutil.rmtree(folder, ignore_errors=True)
    latent = case["unet"] is not None
    vq_dir = os.path.join(folder, "vqvae") if latent else folder
    os.makedirs(vq_dir)
    rng = np.random.default_rng(SEED)
    size = case["vq"]["sample_size"]
    x = np.clip(rng.normal(0.0, 0.6, (2, 3, size, size)), -1, 1).astype(np.float32)

    vq = VQModel(**case["vq"])
    vq_weights = vq_state_dict(vq, x, SEED + sum(map(ord, name)))
    vq = VQModel(**case["vq"])
    vq.load_state_dict({k: torch.from_numpy(v) for k, v in vq_weights.items()}, strict=True)
    config = {"_class_name": "VQModel", **{k: v for k, v in vq.config.items() if not k.startswith("_")}}
    if latent:  # the short file of CompVis/ldm-celebahq-256, with the old attention names
        config = {"_class_name": "VQModel", "_diffusers_version": "0.1.2", "norm_num_groups": config["norm_num_groups"],
                  **{k: config[k] for k in LDM_VQ_FIELDS}}
        vq_weights = {_old_attention_name(k): v for k, v in vq_weights.items()}
    _write_json(os.path.join(vq_dir, "config.json"), config)
    save_file(vq_weights, os.path.join(vq_dir, "diffusion_pytorch_model.safetensors"))
    ref = {"x": x, **vq_outputs(vq, x)}
    assert ref["min_gap"] > 1e-4, f"{name}: a latent vector is nearly equidistant from two entries ({ref['min_gap']})"
    assert len(np.unique(ref["indices"])) > 4, f"{name}: the quantizer uses {len(np.unique(ref['indices']))} entries"

    if latent:
        ref.update(_write_unet(folder, case, rng))
    np.savez_compressed(os.path.join(folder, "reference.npz"), **ref)
    _check_diffusers_reads(folder, vq_dir, ref)
    print(f"{name}: {_size(folder) / 1024:.0f} KiB, {len(np.unique(ref['indices']))} codebook entries used, "
          f"min gap {ref['min_gap']:.3g}, |decoded| {np.abs(ref['decoded']).max():.3g}")


def _write_unet(folder: str, case: dict, rng) -> dict:
    unet_dir, scheduler_dir = os.path.join(folder, "unet"), os.path.join(folder, "scheduler")
    os.makedirs(unet_dir)
    os.makedirs(scheduler_dir)
    unet = UNet2DModel(**case["unet"])
    weights = random_state_dict(unet, SEED + 7)
    unet.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
              **{k: unet.config[k] for k in GOOGLE_UNET_FIELDS}}
    _write_json(os.path.join(unet_dir, "config.json"), config)
    save_file({_old_attention_name(k): v for k, v in weights.items()},
              os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    _write_json(os.path.join(scheduler_dir, "scheduler_config.json"), LDM_SCHEDULER)
    _write_json(os.path.join(folder, "model_index.json"),
                {"_class_name": "LDMPipeline", "_diffusers_version": "0.1.2", "scheduler": ["diffusers", "DDIMScheduler"],
                 "unet": ["diffusers", "UNet2DModel"], "vqvae": ["diffusers", "VQModel"]})
    side = case["unet"]["sample_size"]
    x_latent = rng.normal(0.0, 1.0, (2, 3, side, side)).astype(np.float32)
    t = np.asarray(case["t"], np.int64)
    eps, h = run(unet, x_latent, t)
    abar = DDIMScheduler.from_pretrained(scheduler_dir).alphas_cumprod.numpy()
    return {"x_latent": x_latent, "t": t, "eps": eps, "h": h, "alphas_cumprod": abar}


def _write_json(path: str, values: dict) -> None:
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    with open(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)


def _check_diffusers_reads(folder: str, vq_dir: str, ref: dict) -> None:
    """diffusers' own loaders read the folder back and reproduce the reference exactly."""
    again = vq_outputs(VQModel.from_pretrained(vq_dir), ref["x"])
    for k in ("latents", "quantized", "indices", "decoded"):
        np.testing.assert_array_equal(again[k], ref[k])
    if "eps" in ref:
        eps, h = run(UNet2DModel.from_pretrained(os.path.join(folder, "unet")), ref["x_latent"], ref["t"])
        np.testing.assert_array_equal(eps, ref["eps"])
        np.testing.assert_array_equal(h, ref["h"])
        from diffusers import LDMPipeline
        LDMPipeline.from_pretrained(folder)


def check_export(name: str, out: str) -> None:
    """Opens an export of fixture `name` (see the module docstring) with diffusers."""
    from diffusers import LDMPipeline
    folder = os.path.join(out, name)
    if not os.path.exists(folder):
        from isodiff_jax import pretrained
        if name == "vq_options":
            ae, params = pretrained.autoencoder_from_diffusers(os.path.join(ROOT, name))
            pretrained.folder.write_autoencoder(folder, ae, params)
        else:
            model = pretrained.from_diffusers(os.path.join(ROOT, name))
            pretrained.to_diffusers(model.unet, model.params, model.schedule, folder, resolution=model.resolution,
                                    clip_sample=model.clip_sample, autoencoder=model.autoencoder,
                                    autoencoder_params=model.autoencoder_params)
    with np.load(os.path.join(ROOT, name, "reference.npz")) as f:
        ref = dict(f)
    vq_dir = os.path.join(folder, "vqvae") if name == "ldm" else folder
    vq = VQModel.from_pretrained(vq_dir)
    again = vq_outputs(vq, ref["x"])
    for k in ("latents", "quantized", "indices", "decoded"):
        np.testing.assert_array_equal(again[k], ref[k])
    message = f"{name}: diffusers opens the export; VQ outputs identical (scaling_factor {vq.config.scaling_factor})"
    if name == "ldm":
        eps, h = run(UNet2DModel.from_pretrained(folder, subfolder="unet"), ref["x_latent"], ref["t"])
        np.testing.assert_array_equal(eps, ref["eps"])
        pipeline = LDMPipeline.from_pretrained(folder)
        images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
        assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
        message += f"; U-Net ε̂ identical; LDMPipeline ({type(pipeline.scheduler).__name__}) sampled {images.shape}"
    print(message)


def main() -> None:
    torch.manual_seed(SEED)
    if "--check_export" in sys.argv[1:]:
        rest = sys.argv[sys.argv.index("--check_export") + 1:]
        with tempfile.TemporaryDirectory() as tmp:
            for name in CASES:
                check_export(name, rest[0] if rest else tmp)
        return
    for name, case in CASES.items():
        write_case(name, case)


if __name__ == "__main__":
    main()
