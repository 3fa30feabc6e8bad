"""Latent diffusion end to end: configs/celebahq256_ldm.py is CompVis/ldm-celebahq-256's model,
and a tiny model of the same family (configs/test_ldm.py: a VQ autoencoder and a U-Net on its
latents) trains through train.py, encoding images on the fly, and the analysis command decodes
through the autoencoder."""
import dataclasses
import functools
import importlib
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax import autoencoder as autoencoder_lib
from isodiff_jax import checkpoint, errors, sharding
from isodiff_jax import config as config_lib
from isodiff_jax.analysis import registry, suite
from isodiff_jax.analysis import load as analysis_load
from isodiff_jax.analysis.measures import ppl
from isodiff_jax.analysis.networks import inception
from isodiff_jax.analysis.networks import oracle as oracle_lib
from isodiff_jax.analysis.options import Options
from isodiff_jax.autoencoder import VQAutoencoder
from isodiff_jax.data.shapes import ShapesSource
from isodiff_jax.pretrained import translate
from isodiff_jax.spec import DataSpec, ModelSpec
from isodiff_jax.train import latents, loop
from isodiff_jax.unet import UNet

pytestmark = pytest.mark.slow  # latent-diffusion training runs


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "diffusers", "ldm")


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    """Random weights of configs/test_ldm.py's autoencoder, with a codebook near its latents."""
    ae = config_lib.latent_spec(load("test_ldm")).autoencoder
    params = ae.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    return autoencoder_lib.save_params(str(tmp_path_factory.mktemp("ae") / "autoencoder.npz"), params)


def test_the_ldm_recipe_is_compvis_model(params_file):
    """configs/celebahq256_ldm.py builds the U-Net and the autoencoder of CompVis/ldm-celebahq-256's
    config files (the fixture's, at the real widths) with its schedule, so it fine-tunes an
    imported workdir; latents are 64×64×3."""
    config = load("celebahq256_ldm")
    config.data.data_dir, config.autoencoder.params_file = "/somewhere", params_file
    config_lib.validate(config, num_devices=1)
    with open(os.path.join(DATA, "unet", "config.json")) as f:
        unet = {**json.load(f), "block_out_channels": [224, 448, 672, 896], "attention_head_dim": 32,
                "norm_num_groups": 32}
    with open(os.path.join(DATA, "vqvae", "config.json")) as f:
        vq = {k: v for k, v in json.load(f).items() if k != "norm_num_groups"}  # the real file has none
    vq.update(block_out_channels=[128, 256, 512], num_vq_embeddings=8192)
    spec = config_lib.model_spec(config)
    assert spec.unet == UNet(**translate.unet_fields(unet)[0])
    assert spec.latent.autoencoder == VQAutoencoder(**translate.vq_fields(vq)[0])
    assert spec.image_shape == (64, 64, 3) and spec.pixel_shape == (256, 256, 3)
    assert (config.diffusion.schedule, config.diffusion.beta_start, config.diffusion.beta_end) == \
        ("scaled_linear", 0.0015, 0.0195)
    o = config.optim
    assert (o.lr, o.decay, o.b1, o.b2, o.weight_decay, config.regularizer.weight, config.regularizer.p) == \
        (1e-5, "constant", 0.95, 0.999, 1e-6, 1e-3, 0.5)
    config.autoencoder.params_file = "/nowhere.npz"
    with pytest.raises(config_lib.ConfigError, match="autoencoder.params_file='/nowhere.npz'"):
        config_lib.validate(config)


def test_batches_are_encoded_by_the_frozen_autoencoder(params_file):
    config = load("test_ldm")
    config.autoencoder.params_file = params_file
    setup = config_lib.train_setup(config)
    assert setup.batch_shape == (8, 8, 8, 3)  # the U-Net's batches are latents
    mesh = sharding.make_mesh()
    ae_params = loop.autoencoder_params(setup, mesh)
    images = jax.random.uniform(jax.random.PRNGKey(0), (8, 16, 16, 3), minval=-1, maxval=1)
    x0 = loop.make_encoder(setup, mesh)(ae_params, sharding.global_batch(np.asarray(images), mesh))
    expected = setup.spec.latent.autoencoder.apply(ae_params, images, method=VQAutoencoder.encode)
    np.testing.assert_allclose(np.asarray(x0), np.asarray(expected), rtol=1e-6, atol=1e-6)
    spec = ModelSpec.from_dict(json.loads(json.dumps(setup.spec.to_dict())))
    assert spec == setup.spec  # saved with every checkpoint


@pytest.fixture(scope="module")
def workdir(params_file, tmp_path_factory):
    """configs/test_ldm.py trained 2 steps through train.py (batches encoded on the fly)."""
    workdir = str(tmp_path_factory.mktemp("ldm") / "run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1", "JAX_ENABLE_X64": "1",
           "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"}
    command = [sys.executable, "train.py", "--config", "configs/test_ldm.py", "--workdir", workdir,
               f"--config.autoencoder.params_file={params_file}", "--config.regularizer.p=0.0"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir


def test_a_tiny_latent_model_trains_through_train_py_and_is_analysed(workdir, params_file, tmp_path):
    out = str(tmp_path / "analysis")
    loaded = checkpoint.load_params(workdir)
    assert loaded.step == 2 and loaded.spec.latent.params_file == params_file
    samples = os.listdir(os.path.join(workdir, "samples"))
    assert samples, "the sample grid (decoded images) was not written"
    from isodiff_jax.analysis import cli
    cli.main(["--workdir", workdir, "--out", out, "--metrics", "mrtl,ppl,inversion", "--num_pairs", "2",
              "--timesteps", "90", "--num_samples", "4", "--sample_steps", "2", "--ppl_space", "latent"])
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)["metrics"]
    assert {"mrtl", "ppl_latent_mse", "inversion_mse"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())


@dataclasses.dataclass(frozen=True)
class _RecordingOracle(oracle_lib.Oracle):
    """An untrained 16 px factor oracle (random weights) that records the shapes it reads; its
    own check already refuses anything but (B, 16, 16, 3) images."""
    seen: list = dataclasses.field(default_factory=list, compare=False)

    def outputs(self, images, batch_size: int = 256):
        self.seen.append(np.shape(images))
        return super().outputs(images, batch_size)


class _SmallInception(inception.InceptionFeatures):
    """FID's input checks (shape, range [-1, 1]) on a stand-in network (the pixels as features):
    the real Inception-v3 costs a minute of CPU to compile, and its weights are not here."""

    @functools.cached_property
    def _network(self):
        return jax.jit(lambda variables, x: x.reshape(len(x), -1))

    @functools.cached_property
    def _resize(self):
        return lambda x: x


def test_decoded_images_reach_the_oracle_inception_and_lpips(workdir):
    """edit (x_T and h), probe, fd (FID, fd_oracle) and LPIPS-PPL on a latent model: what the
    oracle, Inception and LPIPS judge are decoded 16×16 images in [-1, 1], not 8×8 latents."""
    loaded = analysis_load.load(workdir, devices=jax.devices()[:1])  # one device: 4 replicas cost 4× the CPU
    spec = loaded.spec
    assert spec.image_shape == (8, 8, 3) and spec.pixel_shape == (16, 16, 3)
    oracle = _RecordingOracle(oracle_lib.OracleNet(), oracle_lib.OracleNet().init(
        jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))), 16)
    lpips_shapes = []

    def distance(a, b):  # LPIPS' contract; real LPIPS-alex needs more than 16×16 pixels
        lpips_shapes.append(a.shape)
        return ppl.pixel_l2(a, b)
    resources = registry.Resources(oracle=oracle, inception=_SmallInception({}, "stand-in"),
                                lpips=types.SimpleNamespace(net="stand_in", distance=distance))
    options = Options(num_label=8, num_edit=2, sample_steps=2, h_min_t=0, timesteps=(90,), num_fd_samples=4,
                      num_samples=4)
    # Two training steps leave ε̂ nearly independent of h (zero-initialised output convolution), and
    # the decoder's quantizer then maps every h-edit to the same images: perturb the U-Net.
    rng = np.random.default_rng(1)
    unet = jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.standard_normal(p.shape).astype(p.dtype),
                        loaded.params["params"])
    params = {**loaded.params, "params": unet}
    measures = suite.Suite(spec, ["edit", "probe", "fd", "ppl"], options, resources)
    results = measures.measure(params)
    scalars = results.values
    assert sorted(scalars) == sorted(measures.names)
    for name in ("edit_xT_precision", "edit_h_precision", "probe_r2", "probe_shape_accuracy", "fid",
                 "fd_oracle", "ppl_lpips_stand_in"):
        assert np.isfinite(scalars[name]), name
    assert oracle.seen and all(shape[1:] == (16, 16, 3) for shape in oracle.seen)
    assert lpips_shapes and all(shape[1:] == (16, 16, 3) for shape in lpips_shapes)
    assert results.pictures["edit_strips"]["h"].shape[-3:] == (16, 16, 3)


def test_a_latent_cache_gives_the_batches_encoded_on_the_fly(params_file, tmp_path):
    """data.latent_cache: the data set encoded once; the batch of each step (flips included, across
    epochs, from a resumed step) is the one encoded on the fly; other weights or another resolution
    are refused by name."""
    config = load("test_ldm")
    config.autoencoder.params_file, config.data.random_flip = params_file, True
    config.data.latent_cache = str(tmp_path / "cache")
    config_lib.validate(config)
    setup = config_lib.train_setup(config)
    source = ShapesSource(16, 0, size=20)  # 8-image batches cross epochs at steps 2 and 4
    cache = latents.open_cache(setup.spec, source, setup.settings.latent_cache, flips=True)
    assert cache.latents.shape == (20, 8, 8, 3) and cache.flipped.shape == (20, 8, 8, 3)
    mesh = sharding.make_mesh(jax.devices()[:1])
    encode, ae_params = loop.make_encoder(setup, mesh), loop.autoencoder_params(setup, mesh)
    with loop.input_batches(setup, source, 1) as images, loop.input_batches(setup, source, 1, cache) as cached:
        for _ in range(4):  # from step 1, as a resumed run
            expected = np.asarray(encode(ae_params, sharding.global_batch(next(images), mesh)))
            np.testing.assert_allclose(next(cached), expected, rtol=1e-5, atol=1e-5)
    made = os.path.getmtime(os.path.join(setup.settings.latent_cache, "latents.npy"))
    latents.open_cache(setup.spec, source, setup.settings.latent_cache, flips=True)  # found, not made again
    assert os.path.getmtime(os.path.join(setup.settings.latent_cache, "latents.npy")) == made

    other = config_lib.latent_spec(config).autoencoder.init(jax.random.PRNGKey(4), jnp.zeros((1, 16, 16, 3)))
    config.autoencoder.params_file = autoencoder_lib.save_params(str(tmp_path / "other.npz"), other)
    with pytest.raises(errors.InvalidValue, match="latent cache .* other inputs .*params_sha256"):
        latents.open_cache(config_lib.model_spec(config), source, setup.settings.latent_cache, flips=True)
    config.autoencoder.params_file, config.data.resolution = params_file, 32
    with pytest.raises(errors.InvalidValue, match="'resolution': 16.*'resolution': 32"):
        latents.open_cache(config_lib.model_spec(config), ShapesSource(32, 0, size=20), setup.settings.latent_cache,
                           flips=True)
    config.autoencoder.kind = "none"
    with pytest.raises(config_lib.ConfigError, match="data.latent_cache"):
        config_lib.validate(config)


def test_the_loop_trains_from_a_latent_cache(params_file, tmp_path, monkeypatch):
    """train_and_evaluate with data.latent_cache encodes the data set once and then never calls
    the on-the-fly encoder (whose batches the cache's equal, above)."""
    monkeypatch.setattr(DataSpec, "source", lambda self: ShapesSource(self.resolution, self.seed, size=12))
    monkeypatch.setattr(loop, "make_encoder", lambda *args: pytest.fail("encoded on the fly despite the cache"))
    config = load("test_ldm")
    config.autoencoder.params_file, config.data.latent_cache = params_file, str(tmp_path / "cache")
    config.regularizer.kind, config.logging.num_samples = "none", 1
    summary = loop.train_and_evaluate(config_lib.train_setup(config), str(tmp_path / "run"),
                                      sharding.make_mesh(jax.devices()[:1]))
    assert summary["final_step"] == 2 and np.isfinite(summary["metrics"]["loss"])
    with open(tmp_path / "cache" / "cache.json") as f:
        assert json.load(f)["shape"] == [12, 8, 8, 3]
