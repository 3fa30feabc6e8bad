"""Config files load, and invalid values stop before any work with a message naming the field."""
import importlib
import json

import jax
import jax.numpy as jnp
import pytest

from isodiff_jax import config as config_lib
from isodiff_jax import diffusion, sharding
from isodiff_jax.train import loop

EXPERIMENTS = ("default", "shapes32", "shapes16", "shapes16_iso", "cifar10", "celebahq256", "test", "bench_cpu32")


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_are_valid(name):
    config = load(name)
    if config.data.name not in ("shapes", "digits"):  # the built-in ones read no files
        config.data.data_dir = "/somewhere"
    config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize("name", ["shapes16", "digits16"])
def test_a_data_dir_for_a_built_in_data_set_is_one_config_error(name):
    """It was refused only when the source was made, as a ValueError traceback."""
    config = load(name)
    config.data.data_dir = "/nonexistent"
    with pytest.raises(config_lib.ConfigError, match=r"config.data.data_dir='/nonexistent' is invalid: allowed '' "
                                                     r"for the built-in data set"):
        config_lib.validate(config, num_devices=1)


def test_bench_config_is_the_benchmark_model():
    import jax
    config = load("bench_cpu32")
    model = config_lib.unet(config)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), "float32"), jax.ShapeDtypeStruct((1,), "int32"))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 6_472_195


def test_celebahq256_is_the_papers_setting():
    c = load("celebahq256")
    assert tuple(c.model.block_out_channels) == (128, 128, 256, 256, 512, 512)
    assert c.data.resolution == 256
    assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.clip_norm) == (1e-5, 0.95, 0.999, 1e-6, 1.0)
    assert (c.regularizer.weight, c.regularizer.p, c.optim.ema_max_decay) == (1e-3, 0.5, 0.9999)


@pytest.mark.parametrize("field, value, message", [
    ("regularizer.weight", -1e-3, "λ >= 0"),
    ("regularizer.p", 1.0, "[0, 1)"),
    ("regularizer.p", -0.1, "[0, 1)"),
    ("regularizer.kind", "riemann", "'sphere'"),
    ("data.name", "imagenet_nonexistent_name", "'shapes'"),
    ("optim.lr", 0.0, "> 0"),
    ("optim.lr", float("inf"), "finite learning rate"),
    ("optim.clip_norm", 0.0, "finite norm > 0"),
    ("model.norm_eps", 0.0, "finite epsilon > 0"),
    ("optim.lr", float("nan"), "finite learning rate"),
    ("regularizer.weight", float("inf"), "finite λ"),
    ("optim.clip_norm", float("inf"), "finite norm"),
    ("logging.sample_eta", float("nan"), "finite DDIM η"),
    ("model.norm_num_groups", 0, "integer >= 1"),
    ("model.attention_head_dim", 0, "integer >= 1"),
    ("optim.decay", "linear", "'cosine'"),
    ("model.dtype", "float16", "'bfloat16'"),
    ("model.remat", "everything", "'dots_saveable'"),
    ("model.attention_levels", (False,), "one bool per level"),
    ("model.norm_num_groups", 7, "divisor"),
    ("model.attention_head_dim", 24, "every attention block [64]"),
    ("model.layers_per_block", 0, "integer >= 1"),
    ("data.resolution", 30, "multiple of 2**(levels-1)"),
    ("training.global_batch_size", 30, "devices × grad_accum_steps = 4 × 1"),
    ("optim.grad_accum_steps", 0, "integer >= 1"),
    ("diffusion.loss_weighting", "p2", "'min_snr'"),
    ("diffusion.min_snr_gamma", 0.0, "finite γ > 0"),
    ("diffusion.min_snr_gamma", float("nan"), "finite γ > 0"),
    ("diffusion.logsnr_shift", float("inf"), "finite shift in [-10, 10]"),
    ("diffusion.logsnr_shift", 12.0, "finite shift in [-10, 10]"),
    ("optim.ema_power", 0.0, "finite power > 0"),
])
def test_invalid_values_name_the_field(field, value, message):
    config = load("default")
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config, num_devices=4)
    assert f"config.{field}=" in str(error.value) and message in str(error.value), str(error.value)


@pytest.mark.parametrize("seed", [-1, 2**31])
def test_seed_must_be_a_non_negative_int32(seed):
    config = load("default")
    config.seed = seed
    with pytest.raises(config_lib.ConfigError, match=r"config.seed=.*\[0, 2\*\*31\)"):
        config_lib.validate(config)


@pytest.mark.parametrize("betas", [(0.0, 0.02), (1e-4, 1.0), (0.02, 1e-4), (-1e-4, 0.02), (0.02, 0.02)])
def test_linear_betas_must_be_ordered_in_the_unit_interval(betas):
    config = load("default")
    config.diffusion.beta_start, config.diffusion.beta_end = betas
    with pytest.raises(config_lib.ConfigError, match="0 < beta_start < beta_end < 1"):
        config_lib.validate(config)


def test_config_errors_are_user_errors():
    from isodiff_jax.errors import UserError
    assert issubclass(config_lib.ConfigError, UserError)


@pytest.mark.parametrize("values, message", [
    ({"every_steps": 100}, "evaluation.metrics is empty"),
    ({"every_steps": 100, "metrics": "mrtl,psnr"}, "unknown metrics ['psnr']"),
    ({"every_steps": 100, "metrics": "edit"}, "edit needs the factor oracle (evaluation.oracle_dir)"),
    ({"every_steps": 100, "metrics": "fd"}, "evaluation.inception_file"),
    ({"every_steps": 100, "metrics": "rank_iso,pullback"}, "pullback needs the factor oracle (evaluation.oracle_dir)"),
    ({"every_steps": 100, "metrics": "class_probe"}, "class_probe needs the digits data set's class labels"),
    ({"every_steps": 100, "metrics": "mrtl", "classifier_dir": "/no/such/classifier"}, "an existing path"),
    ({"every_steps": 100, "metrics": "mrtl", "oracle_dir": "/no/such/oracle"}, "an existing path"),
    ({"every_steps": 100, "metrics": "mrtl", "timesteps": (500, 1000)}, "timesteps in [0, 1000)"),
    ({"every_steps": -1}, "an integer >= 0"),
])
def test_invalid_evaluation_settings_name_the_field(values, message):
    config = load("default")
    config.evaluation.update(values)
    with pytest.raises(config_lib.ConfigError, match="config.evaluation") as error:
        config_lib.validate(config, num_devices=1)
    assert message in str(error.value), str(error.value)


def test_evaluation_on_other_data_sets_refuses_ground_truth_metrics():
    config = load("cifar10")
    config.data.data_dir = "/somewhere"
    config.evaluation.update({"every_steps": 10, "metrics": "mrtl,probe"})
    with pytest.raises(config_lib.ConfigError, match="probe needs the shapes data set"):
        config_lib.validate(config, num_devices=1)


def test_folder_needs_a_directory():
    config = load("default")
    config.data.name = "folder"
    with pytest.raises(config_lib.ConfigError, match="config.data.data_dir"):
        config_lib.validate(config)


def test_json_round_trip():
    config = load("celebahq256")
    back = config_lib.from_json(config_lib.to_json(config))
    assert back.to_dict() == config.to_dict()


def test_the_loss_weighting_reaches_the_train_setup():
    config = load("test")
    assert config_lib.train_setup(config).settings.loss_weighting == "uniform"
    config.diffusion.loss_weighting, config.diffusion.min_snr_gamma = "min_snr", 2.0
    settings = config_lib.train_setup(config).settings
    assert (settings.loss_weighting, settings.min_snr_gamma) == ("min_snr", 2.0)


def test_the_timestep_sampling_reaches_the_step_and_its_compiled_key(monkeypatch):
    config = load("test")
    uniform = config_lib.train_setup(config)
    config.diffusion.t_sampling = "stratified"
    stratified = config_lib.train_setup(config)
    assert (uniform.settings.t_sampling, stratified.settings.t_sampling) == ("uniform", "stratified")
    assert uniform.step_key != stratified.step_key  # the two never share a compiled step
    drawn = []  # the step draws its timesteps the configured way (traced only, nothing compiled)
    sample_timesteps = diffusion.sample_timesteps
    monkeypatch.setattr(diffusion, "sample_timesteps", lambda *a: drawn.append(a[-1]) or sample_timesteps(*a))
    mesh = sharding.make_mesh()
    for setup in (uniform, stratified):
        x0 = jax.ShapeDtypeStruct(setup.batch_shape, jnp.float32)
        jax.eval_shape(loop.make_step(setup, False), loop.abstract_state(setup, mesh), x0,
                       *loop.step_arguments(setup, mesh))
    assert drawn == ["uniform", "stratified"]
    config.diffusion.t_sampling = "sobol"
    with pytest.raises(config_lib.ConfigError, match="diffusion.t_sampling.*'uniform', 'stratified'"):
        config_lib.validate(config, num_devices=4)


def test_the_ema_power_reaches_the_train_settings():
    config = load("test")
    assert config_lib.train_settings(config).ema_power == 0.75  # 1 − (1 + step)^(−3/4), as before
    config.optim.ema_power = 0.9
    assert config_lib.train_settings(config).ema_power == 0.9


def test_learning_rate_warms_up_then_decays():
    config = load("default")
    lr = config_lib.learning_rate(config)
    o, n = config.optim, config.training.num_steps
    assert float(lr(0)) == 0.0
    assert float(lr(o.warmup_steps // 2)) == pytest.approx(o.lr / 2, rel=1e-6)
    assert float(lr(o.warmup_steps)) == pytest.approx(o.lr, rel=1e-6)
    assert float(lr(n)) == pytest.approx(o.lr * o.end_lr_fraction, rel=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("norm_eps", 0.0, "epsilon > 0"),
    ("norm_eps", float("nan"), "epsilon > 0"),
    ("freq_shift", float("inf"), "finite number"),
    ("mid_block_scale_factor", 0.0, "factor > 0"),
    ("downsample_padding", 2, "one of (0, 1)"),
    ("act_fn", "tanh", "'silu'"),
    ("resnet_time_scale_shift", "spatial", "'scale_shift'"),
])
def test_invalid_unet_options_name_the_field(field, value, message):
    config = load("default")
    config.model[field] = value
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config, num_devices=1)
    assert f"config.model.{field}=" in str(error.value) and message in str(error.value), str(error.value)


def test_every_model_field_reaches_the_unet():
    """Each config.model field is passed to the U-Net (google's DDPM options here), and None
    attention_head_dim (one head per attention block) validates."""
    config = load("default")
    values = dict(norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1.0, downsample_padding=0, act_fn="mish",
                  resnet_time_scale_shift="scale_shift", center_input_sample=True, mid_block_scale_factor=2.0,
                  attention_head_dim=None, mid_attention=False, norm_num_groups=4, layers_per_block=2,
                  remat="blocks")
    config.model.update(values)
    config_lib.validate(config, num_devices=1)
    unet = config_lib.unet(config)
    assert {k: getattr(unet, k) for k in values} == values
    assert set(config.model) - {"dtype"} == set(values) | {"block_out_channels", "attention_levels"}


def test_a_run_recorded_before_the_unet_options_resumes():
    """A record without the U-Net options added later reads as their old behaviour; another
    value is still a difference."""
    import json
    config = load("test")
    record = json.loads(config_lib.to_json(config))
    for field in config_lib.LATER_FIELDS:
        section, name = field.split(".")
        del record[section][name]
    del record["autoencoder"]  # a section added later as a whole
    assert config_lib.resume_differences(json.dumps(record), config) == []
    config.model.norm_eps = 1e-6
    assert config_lib.resume_differences(json.dumps(record), config) == [
        "config.model.norm_eps=1e-06 (was 1e-05)"]


def test_scaled_linear_betas_are_checked_like_linear():
    config = load("default")
    config.diffusion.schedule, config.diffusion.beta_start = "scaled_linear", 0.05
    with pytest.raises(config_lib.ConfigError, match="0 < beta_start < beta_end < 1"):
        config_lib.validate(config)


def test_an_older_record_without_a_later_evaluation_option_reads_its_default():
    """Runs recorded before evaluation.ppl_space existed still give their evaluation options."""
    old = json.loads(config_lib.to_json(load("test")))
    del old["evaluation"]["ppl_space"]
    options = config_lib.evaluation_options(config_lib.from_json(json.dumps(old)))
    assert options.ppl_space == "image"
