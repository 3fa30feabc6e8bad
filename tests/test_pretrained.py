"""diffusers import and export (isodiff_jax.pretrained) against the offline fixtures of
tests/data/make_diffusers_reference.py: tiny random-weight UNet2DModel folders with the options
of google's DDPM checkpoints and every other option the U-Net honours, with diffusers' outputs."""
import dataclasses
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax import checkpoint, pretrained, sharding
from isodiff_jax import config as config_lib
from isodiff_jax.errors import InvalidValue, MissingPath, UserError
from isodiff_jax.pretrained import cli, safetensors_io, weights
from isodiff_jax.spec import ScheduleSpec
from isodiff_jax.unet import UNet

DATA = os.path.join(os.path.dirname(__file__), "data", "diffusers")
CASES = ("cifar10", "celebahq", "options", "gelu")


def reference(name):
    with np.load(os.path.join(DATA, name, "reference.npz")) as f:
        ref = dict(f)
    nhwc = lambda a: a.transpose(0, 2, 3, 1)
    return {**ref, **{k: nhwc(ref[k]) for k in ("x", "eps", "h", "eps64", "h64")}}


def relative(a, b):
    """max |a − b| / max |b|."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def imported():
    return {name: pretrained.from_diffusers(os.path.join(DATA, name)) for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_import_reproduces_diffusers_eps_and_h(imported, name):
    model, ref = imported[name], reference(name)
    eps, h = jax.jit(model.unet.apply)(model.params, jnp.asarray(ref["x"]), jnp.asarray(ref["t"]))
    assert relative(eps, ref["eps"]) < 1e-5 and relative(h, ref["h"]) < 1e-5
    # in float64 against diffusers run entirely in float64: h to rounding; ε̂ is returned in float32
    unet64 = model.unet.clone(dtype=jnp.float64)
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), model.params)
    eps64, h64 = jax.jit(unet64.apply)(params64, jnp.asarray(ref["x"], jnp.float64), jnp.asarray(ref["t"]))
    assert relative(h64, ref["h64"]) < 1e-12
    assert relative(eps64, ref["eps64"]) < 1e-6


def test_a_wrong_option_is_visible_in_float64(imported):
    """The float64 check sees a GroupNorm epsilon off by 1 % (the float32 one at 1e-5 would not)."""
    model, ref = imported["cifar10"], reference("cifar10")
    unet = model.unet.clone(dtype=jnp.float64, norm_eps=model.unet.norm_eps * 1.01)
    _, h = jax.jit(unet.apply)(jax.tree.map(lambda p: p.astype(jnp.float64), model.params),
                               jnp.asarray(ref["x"], jnp.float64), jnp.asarray(ref["t"]))
    assert relative(h, ref["h64"]) > 1e-9


def test_imported_options_and_schedules(imported):
    cifar, celeba, options, gelu = (imported[n] for n in CASES)
    for model in (cifar, celeba):  # google's DDPM options
        u = model.unet
        assert (u.downsample_padding, u.flip_sin_to_cos, u.freq_shift, u.norm_eps, u.attention_head_dim) == \
            (0, False, 1.0, 1e-6, None)
        assert model.schedule == ScheduleSpec("linear", 1000, 1e-4, 0.02) and model.clip_sample == 1.0
    assert cifar.unet.attention_levels == (False, True, False, False) and cifar.resolution == 16
    assert celeba.unet.attention_levels == (False,) * 4 + (True, False) and celeba.resolution == 32
    u = options.unet
    assert (u.resnet_time_scale_shift, u.act_fn, u.center_input_sample, u.attention_head_dim) == \
        ("scale_shift", "mish", True, 2)
    assert u.mid_block_scale_factor == pytest.approx(2 ** 0.5)
    assert "group_norm" not in options.params["params"]["mid_block"]["attentions_0"]
    assert options.schedule.kind == "cosine" and options.clip_sample is None
    assert (gelu.unet.act_fn, gelu.unet.mid_attention, gelu.schedule.kind) == ("gelu", False, "scaled_linear")
    # the celebahq fixture stores attention weights under their pre-0.15 names, as google's files do
    names = safetensors_io.read(os.path.join(DATA, "celebahq", "unet", pretrained.folder.SAFETENSORS))
    assert any(".query." in k for k in names) and not any(".to_q." in k for k in names)


@pytest.mark.parametrize("name", CASES)
def test_schedule_matches_the_diffusers_scheduler(imported, name):
    abar = np.asarray(imported[name].schedule.build().alphas_cumprod)
    np.testing.assert_allclose(abar, reference(name)["alphas_cumprod"], rtol=2e-6, atol=1e-7)


def copy_case(tmp_path, name="cifar10"):
    folder = str(tmp_path / name)
    shutil.copytree(os.path.join(DATA, name), folder)
    return folder


def edit_json(path, **changes):
    with open(path) as f:
        values = json.load(f)
    values.update(changes)
    with open(path, "w") as f:
        json.dump(values, f)


@pytest.mark.parametrize("field, value, message", [
    ("time_embedding_type", "fourier", "time_embedding_type='fourier' is not supported"),
    ("dropout", 0.1, "dropout=0.1"),
    ("class_embed_type", "timestep", "class_embed_type='timestep'"),
    ("mid_block_type", None, "mid_block_type=None"),
    ("downsample_type", "resnet", "downsample_type='resnet'"),
    ("resnet_time_scale_shift", "spatial", "resnet_time_scale_shift='spatial'"),
    ("act_fn", "tanh", "act_fn='tanh'"),
    ("down_block_types", ["DownBlock2D", "SkipDownBlock2D", "DownBlock2D", "DownBlock2D"], "down_block_types="),
    ("up_block_types", ["UpBlock2D"] * 4, "attention at the levels of down_block_types"),
    ("cross_attention_dim", 8, "unknown UNet2DModel fields ['cross_attention_dim']"),
    ("_class_name", "UNet2DConditionModel", "_class_name='UNet2DConditionModel'"),
    ("time_embedding_dim", 64, "time_embedding_dim=64"),
])
def test_an_option_that_cannot_be_honoured_is_refused_by_name(tmp_path, field, value, message):
    folder = copy_case(tmp_path)
    edit_json(os.path.join(folder, "config.json"), **{field: value})
    with pytest.raises(pretrained.Unsupported, match="config.json") as error:
        pretrained.from_diffusers(folder)
    assert message in str(error.value), str(error.value)
    assert isinstance(error.value, UserError)


@pytest.mark.parametrize("changes, message", [
    ({"prediction_type": "v_prediction"}, "prediction_type='v_prediction' is not supported"),
    ({"prediction_type": "sample"}, "prediction_type='sample'"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas=[0.1, 0.2]"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ({"_class_name": "ScoreSdeVeScheduler"}, "_class_name='ScoreSdeVeScheduler'"),
])
def test_a_scheduler_that_is_not_epsilon_prediction_or_changes_the_betas_is_refused(tmp_path, changes, message):
    folder = copy_case(tmp_path)
    edit_json(os.path.join(folder, "scheduler_config.json"), **changes)
    with pytest.raises(pretrained.Unsupported, match="scheduler_config.json") as error:
        pretrained.from_diffusers(folder)
    assert message in str(error.value), str(error.value)


def rewrite_weights(folder, change):
    path = os.path.join(folder, pretrained.folder.SAFETENSORS)
    state = safetensors_io.read(path)
    change(state)
    safetensors_io.write(path, state)


def test_missing_unexpected_and_misshaped_weights_are_named(tmp_path):
    folder = copy_case(tmp_path)
    rewrite_weights(folder, lambda s: s.pop("down_blocks.1.attentions.0.to_k.weight"))
    with pytest.raises(InvalidValue, match=r"missing weights: down_blocks\.1\.attentions\.0\.to_k\.weight$"):
        pretrained.from_diffusers(folder)
    folder = copy_case(tmp_path / "b")

    def change(state):
        state["class_embedding.weight"] = np.zeros((4, 16), np.float32)
        state["conv_in.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    rewrite_weights(folder, change)
    with pytest.raises(InvalidValue) as error:
        pretrained.from_diffusers(folder)
    text = str(error.value)
    assert "unexpected weights (not in this model): class_embedding.weight" in text
    assert "conv_in.weight has shape (4, 3, 5, 5), expected (4, 3, 3, 3)" in text


def test_missing_files_and_other_pipelines_are_named(tmp_path):
    with pytest.raises(MissingPath, match="not a directory"):
        pretrained.from_diffusers(str(tmp_path / "nothing"))
    folder = copy_case(tmp_path)
    os.remove(os.path.join(folder, "scheduler_config.json"))
    with pytest.raises(MissingPath, match="no scheduler_config.json"):
        pretrained.from_diffusers(folder)
    folder = copy_case(tmp_path / "b", "celebahq")
    edit_json(os.path.join(folder, "model_index.json"), text_encoder=["transformers", "CLIPTextModel"],
              _class_name="LDMTextToImagePipeline")
    with pytest.raises(pretrained.Unsupported, match=r"'LDMTextToImagePipeline' has components \['text_encoder'\]"):
        pretrained.from_diffusers(folder)
    edit_json(os.path.join(folder, "model_index.json"), text_encoder=[None, None], vqvae=["diffusers", "VQModel"])
    with pytest.raises(MissingPath, match=r"names a vqvae but .*vqvae holds no config.json"):
        pretrained.from_diffusers(folder)


def test_a_pytorch_file_needs_torch(tmp_path, monkeypatch):
    folder = copy_case(tmp_path)
    os.rename(os.path.join(folder, pretrained.folder.SAFETENSORS), os.path.join(folder, pretrained.folder.PICKLE))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(MissingPath, match=r"only diffusion_pytorch_model\.bin.*torch is not installed"):
        pretrained.from_diffusers(folder)


def test_export_then_import_is_identical(imported, tmp_path):
    for name in ("celebahq", "options"):
        model = imported[name]
        out = pretrained.to_diffusers(model.unet, model.params, model.schedule, str(tmp_path / name),
                                      resolution=model.resolution, clip_sample=model.clip_sample)
        back = pretrained.from_diffusers(out)
        assert back.unet == model.unet and back.schedule == model.schedule
        assert (back.resolution, back.clip_sample) == (model.resolution, model.clip_sample)
        same = jax.tree.map(lambda a, b: a.dtype == b.dtype and bool(jnp.array_equal(a, b)), back.params, model.params)
        assert jax.tree.structure(back.params) == jax.tree.structure(model.params) and all(jax.tree.leaves(same))
        # the exported state dict has diffusers' current names, torch layouts
        state = safetensors_io.read(os.path.join(out, "unet", pretrained.folder.SAFETENSORS))
        assert state.keys() == weights.state_dict_from_params(model.params).keys()


def test_a_shifted_schedule_is_refused_before_anything_is_written(imported, tmp_path):
    model = imported["options"]
    shifted = dataclasses.replace(model.schedule, logsnr_shift=1.0)
    with pytest.raises(InvalidValue, match=r"shifted \(diffusion.logsnr_shift=1.0\).*cannot be exported"):
        pretrained.to_diffusers(model.unet, model.params, shifted, str(tmp_path / "out"), resolution=model.resolution)
    assert not (tmp_path / "out").exists()


def test_safetensors_round_trip_and_damage(tmp_path):
    import ml_dtypes
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2], ml_dtypes.bfloat16),
              "c": np.array(7, np.int64), "empty": np.zeros((0, 4), np.float16)}
    path = str(tmp_path / "x.safetensors")
    safetensors_io.write(path, arrays, {"format": "pt"})
    back = safetensors_io.read(path)
    assert back.keys() == arrays.keys()
    for k in arrays:
        assert back[k].dtype == arrays[k].dtype and back[k].shape == arrays[k].shape
        np.testing.assert_array_equal(back[k], arrays[k])
    with open(path, "rb") as f:
        data = f.read()
    for damaged, message in ((data[:-3], "not a readable safetensors file: incomplete metadata"),
                             (b"\xff" * 16, "not a readable safetensors file: header too large"),
                             (data[:5], "not a readable safetensors file: header too small")):
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(InvalidValue, match=message):
            safetensors_io.read(path)


@pytest.mark.slow  # trains and analyses the import
def test_import_command_writes_a_workdir_that_training_and_analysis_accept(imported, tmp_path):
    workdir = str(tmp_path / "imported")
    cli.main([os.path.join(DATA, "cifar10"), "--workdir", workdir, "--data_name", "shapes"])
    model = imported["cifar10"]
    loaded = checkpoint.load_params(workdir)  # what analysis and training.init_from read
    assert loaded.step == 0 and loaded.spec.unet == model.unet and loaded.spec.schedule == model.schedule
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), loaded.params, model.params)))
    # its config.py reproduces the model and fine-tunes from the workdir
    from support import load_module
    config = load_module(os.path.join(workdir, "config.py")).get_config()
    config_lib.validate(config, num_devices=1)
    setup = config_lib.train_setup(config)
    assert setup.spec == loaded.spec and setup.settings.init_from == workdir
    from isodiff_jax.train import loop
    mesh = sharding.make_mesh(jax.devices()[:1])
    state = loop.fresh_state(setup, mesh)  # training.init_from=workdir
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state.params, model.params)))
    other = load_module(os.path.join(workdir, "config.py")).get_config()
    other.model.norm_eps = 1e-5  # same parameter shapes, another computation
    with pytest.raises(InvalidValue, match=r"model.norm_eps=1e-05 \(theirs: 1e-06\)"):
        loop.fresh_state(config_lib.train_setup(other), mesh)
    step, resumed = checkpoint.restore(checkpoint.manager(workdir, read_only=True), loop.abstract_state(setup, mesh))
    assert step == 0 and int(resumed.step) == 0  # train.py --workdir OUT resumes it as a training state
    config_lib.check_resumable(workdir, config)
    # a second import into it is refused; export writes it back
    with pytest.raises(SystemExit) as exit_info:
        cli.main([os.path.join(DATA, "cifar10"), "--workdir", workdir])
    assert exit_info.value.code == 2
    out = str(tmp_path / "exported")
    cli.main(["--export", workdir, "--out", out])
    back = pretrained.from_diffusers(out)
    assert back.unet == model.unet and all(jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back.params, model.params)))


def test_the_celebahq256_config_is_googles_unet():
    """configs/celebahq256.py builds the U-Net of google/ddpm-ema-celebahq-256's config.json (the
    fixture's, at the real widths), so it can fine-tune an imported workdir: the same computation,
    in the recipe's bf16 (init_from accepts another compute dtype)."""
    import importlib
    from isodiff_jax.pretrained import translate
    with open(os.path.join(DATA, "celebahq", "unet", "config.json")) as f:
        google = {**json.load(f), "block_out_channels": [128, 128, 256, 256, 512, 512], "norm_num_groups": 32}
    fields, resolution = translate.unet_fields(google)
    config = importlib.import_module("configs.celebahq256").get_config()
    assert config_lib.unet(config) == UNet(**fields, dtype=jnp.bfloat16)
    assert resolution == 32 and config.data.resolution == 256  # (the fixture's sample_size is small)


def test_flipped_bytes_in_a_safetensors_file_are_found(tmp_path):
    """Hardening issue, case 9: 16 flipped bytes in the data of an exported file read back as
    weights of about ±100 and were accepted. Our files carry a SHA-256 of their tensors; in any
    file, a flip that makes a non-finite value is refused."""
    rng = np.random.default_rng(0)
    arrays = {"w": (rng.standard_normal((64, 64)) * 0.06).astype(np.float32), "b": np.zeros(64, np.float32)}
    path = tmp_path / "x.safetensors"
    safetensors_io.write(str(path), arrays, {"format": "pt"})
    data = bytearray(path.read_bytes())
    middle = len(data) - 64 * 64 * 4 // 2
    data[middle:middle + 16] = bytes(b ^ 0x5A for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidValue, match="is damaged: its tensors do not match the SHA-256"):
        safetensors_io.read(str(path))
    # a file from elsewhere (no checksum): a NaN is refused by name, instead of failing the save
    import safetensors.numpy
    arrays["w"][3, 5] = np.nan
    safetensors.numpy.save_file(arrays, str(path), metadata={"format": "pt"})
    with pytest.raises(InvalidValue, match="tensor w holds non-finite values"):
        safetensors_io.read(str(path))
