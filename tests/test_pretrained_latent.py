"""Latent diffusion import and export (isodiff_jax.pretrained, isodiff_jax.autoencoder) against the
offline fixtures of tests/data/make_ldm_reference.py: a tiny random-weight LDM pipeline laid out as
CompVis/ldm-celebahq-256 (unet/, scheduler/, vqvae/, its short config files) and a VQModel with
the other options, with diffusers' outputs."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax import checkpoint, pretrained
from isodiff_jax import config as config_lib
from isodiff_jax.autoencoder import VQAutoencoder
from isodiff_jax.errors import MissingPath, UserError
from isodiff_jax.pretrained import cli, safetensors_io
from isodiff_jax.spec import ScheduleSpec

pytestmark = pytest.mark.slow  # latent-diffusion import and fine-tuning


DATA = os.path.join(os.path.dirname(__file__), "data", "diffusers")
VQ_CASES = ("ldm", "vq_options")


def reference(name):
    with np.load(os.path.join(DATA, name, "reference.npz")) as f:
        ref = dict(f)
    return {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in ref.items()}


def relative(a, b):
    """max |a − b| / max |b|."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def same(a, b):
    equal = jax.tree.map(lambda x, y: x.dtype == y.dtype and bool(jnp.array_equal(x, y)), a, b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(jax.tree.leaves(equal))


@pytest.fixture(scope="module")
def ldm():
    return pretrained.from_diffusers(os.path.join(DATA, "ldm"))


@pytest.fixture(scope="module")
def autoencoders(ldm):
    return {"ldm": (ldm.autoencoder, ldm.autoencoder_params),
            "vq_options": pretrained.autoencoder_from_diffusers(os.path.join(DATA, "vq_options"))}


@pytest.fixture(scope="module")
def round_trip():
    """(encode, quantize_latents, decode) of an autoencoder, jitted once per module."""
    def run(ae, params, x):
        z = ae.apply(params, x, method=VQAutoencoder.encode)
        return z, ae.apply(params, z, method=VQAutoencoder.quantize_latents), ae.apply(params, z,
                                                                                    method=VQAutoencoder.decode)
    return jax.jit(run, static_argnums=0)


@pytest.mark.parametrize("name", VQ_CASES)
def test_vq_import_reproduces_diffusers(autoencoders, round_trip, name):
    """Latents before and after quantization, codebook indices and decoded images match diffusers'
    VQModel (computed in float64) within 1e-5 relative; the latents are diffusers' times
    scaling_factor (0.5 in vq_options, 1 for a config without one)."""
    (ae, params), ref = autoencoders[name], reference(name)
    assert ref["min_gap"] > 1e-4  # no latent vector is a near tie between two codebook entries
    z, (z_q, indices), decoded = round_trip(ae, params, jnp.asarray(ref["x"]))
    s = ae.scaling_factor
    assert relative(z / s, ref["latents"]) < 1e-5
    np.testing.assert_array_equal(np.asarray(indices), ref["indices"])
    assert relative(z_q / s, ref["quantized"]) < 1e-5
    assert relative(decoded, ref["decoded"]) < 1e-5


def test_ldm_import_reproduces_the_latent_unet_and_reads_compvis_options(ldm):
    ref = reference("ldm")
    eps, h = jax.jit(ldm.unet.apply)(ldm.params, jnp.asarray(ref["x_latent"]), jnp.asarray(ref["t"]))
    assert relative(eps, ref["eps"]) < 1e-5 and relative(h, ref["h"]) < 1e-5
    np.testing.assert_allclose(np.asarray(ldm.schedule.build().alphas_cumprod), ref["alphas_cumprod"], rtol=2e-6)
    assert ldm.schedule == ScheduleSpec("scaled_linear", 1000, 0.0015, 0.0195) and ldm.clip_sample is None
    ae = ldm.autoencoder  # the short 0.1.2 config: vq_embed_dim = latent_channels, no scaling_factor -> 1
    assert (ae.vq_embed_dim, ae.scaling_factor, ae.mid_attention, ae.layers_per_block) == (3, 1.0, True, 2)
    assert (ldm.resolution, ldm.image_resolution) == (8, 32)
    spec = ldm.model_spec()
    assert spec.image_shape == (8, 8, 3) and spec.pixel_shape == (32, 32, 3) and spec.clip_x0 is None
    options = pretrained.autoencoder_from_diffusers(os.path.join(DATA, "vq_options"))[0]
    assert (options.latent_channels, options.vq_embed_dim, options.scaling_factor, options.mid_attention,
            options.act_fn) == (2, 4, 0.5, False, "mish")


def copy_vq(tmp_path):
    folder = str(tmp_path / "vq")
    shutil.copytree(os.path.join(DATA, "vq_options"), folder)
    return folder


@pytest.mark.parametrize("field, value, message", [
    ("norm_type", "spatial", "norm_type='spatial' is not supported"),
    ("lookup_from_codebook", True, "lookup_from_codebook=True"),
    ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "down_block_types="),
    ("up_block_types", ["UpDecoderBlock2D"], "up_block_types=['UpDecoderBlock2D']"),
    ("act_fn", "tanh", "act_fn='tanh'"),
    ("scaling_factor", 0, "scaling_factor=0"),
    ("double_z", True, "unknown VQModel fields ['double_z']"),
    ("_class_name", "AutoencoderKL", "_class_name='AutoencoderKL'"),
])
def test_a_vq_option_that_cannot_be_honoured_is_refused_by_name(tmp_path, field, value, message):
    folder = copy_vq(tmp_path)
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        values = json.load(f)
    with open(path, "w") as f:
        json.dump({**values, field: value}, f)
    with pytest.raises(pretrained.Unsupported, match="config.json") as error:
        pretrained.autoencoder_from_diffusers(folder)
    assert message in str(error.value) and isinstance(error.value, UserError), str(error.value)


def test_vq_weights_problems_are_named(tmp_path):
    folder = copy_vq(tmp_path)
    path = os.path.join(folder, pretrained.folder.SAFETENSORS)
    state = safetensors_io.read(path)
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"][:, :3]
    safetensors_io.write(path, state)
    with pytest.raises(UserError, match=r"VQ autoencoder .* quantize\.embedding\.weight has shape \(32, 3\), "
                                        r"expected \(32, 4\)"):
        pretrained.autoencoder_from_diffusers(folder)
    with pytest.raises(MissingPath, match="no config.json"):
        pretrained.autoencoder_from_diffusers(str(tmp_path))


def test_export_then_import_is_identical(ldm, tmp_path):
    out = pretrained.to_diffusers(ldm.unet, ldm.params, ldm.schedule, str(tmp_path / "ldm"), resolution=ldm.resolution,
                                  clip_sample=ldm.clip_sample, autoencoder=ldm.autoencoder,
                                  autoencoder_params=ldm.autoencoder_params)
    back = pretrained.from_diffusers(out)
    assert (back.unet, back.schedule, back.autoencoder, back.resolution, back.clip_sample) == \
        (ldm.unet, ldm.schedule, ldm.autoencoder, ldm.resolution, ldm.clip_sample)
    assert same(back.params, ldm.params) and same(back.autoencoder_params, ldm.autoencoder_params)
    with open(os.path.join(out, "vqvae", "config.json")) as f:
        assert json.load(f)["scaling_factor"] == 1.0  # written out, so diffusers does not assume 0.18215
    with open(os.path.join(out, "model_index.json")) as f:
        assert json.load(f)["_class_name"] == "LDMPipeline"


def test_import_command_records_the_autoencoder_and_export_writes_it_back(ldm, tmp_path):
    workdir = str(tmp_path / "imported")
    cli.main([os.path.join(DATA, "ldm"), "--workdir", workdir, "--data_name", "shapes"])
    loaded = checkpoint.load_params(workdir)
    spec = loaded.spec
    assert spec.latent.autoencoder == ldm.autoencoder and spec.latent.params_file == os.path.join(workdir,
                                                                                                   "autoencoder.npz")
    assert spec.unet == ldm.unet and same(loaded.params, ldm.params)
    assert same(spec.latent.load_params(), ldm.autoencoder_params)
    from support import load_module
    config = load_module(os.path.join(workdir, "config.py")).get_config()
    config_lib.validate(config, num_devices=1)
    assert config.autoencoder.kind == "vq" and config_lib.model_spec(config) == spec
    out = str(tmp_path / "exported")
    cli.main(["--export", workdir, "--out", out])
    back = pretrained.from_diffusers(out)
    assert back.autoencoder == ldm.autoencoder and back.schedule == ldm.schedule and back.clip_sample is None
    assert same(back.params, ldm.params) and same(back.autoencoder_params, ldm.autoencoder_params)
    os.remove(spec.latent.params_file)
    with pytest.raises(MissingPath, match="autoencoder.npz does not exist"):
        spec.latent.load_params()
