"""The boundary between a config (ml_collections, see configs/default.py) and the code.

`validate` checks every value before any work starts and names the field and what it allows;
the builders turn config sections into the typed values the library takes (a `ModelSpec`, a
`Regularizer`, an optax optimizer, the loop's `TrainSetup`, the evaluators' `Options`). Nothing
past this module sees a ConfigDict. It sits at the top of the layers (it imports training and
analysis; nothing below imports it).
"""
import json
import math
import os
from typing import Optional

import jax.numpy as jnp
import ml_collections
import optax

from isodiff_jax import checkpoint, data, diffusion, isometry, storage
from isodiff_jax.errors import UserError
from isodiff_jax.analysis import options as options_lib
from isodiff_jax.analysis import registry, suite
from isodiff_jax.isometry import REGULARIZERS, Regularizer
from isodiff_jax.autoencoder import VQAutoencoder
from isodiff_jax.spec import DataSpec, LatentSpec, ModelSpec, ScheduleSpec
from isodiff_jax.train.loop import TrainSettings, TrainSetup
from isodiff_jax.train.step import make_optimizer
from isodiff_jax.unet import ACTIVATIONS, REMAT_POLICIES, TIME_SCALE_SHIFTS, UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AUTOENCODERS = ("none", "vq")
DECAYS = ("cosine", "constant")


class ConfigError(UserError, ValueError):
    """A config value that is out of range; the message names the field."""


def _check(ok, field, value, allowed):
    if not ok:
        raise ConfigError(f"config.{field}={value!r} is invalid: allowed {allowed}")


def _check_choice(config, field, choices):
    value = config
    for part in field.split("."):
        value = value[part]
    _check(value in choices, field, value, f"one of {tuple(choices)}")


def _check_positive_int(value, field, minimum=1):
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, field, value,
           f"an integer >= {minimum}")


def _check_finite(value, field, low=-math.inf, allowed="a finite number", *, strict=False, high=math.inf):
    """A finite real number >= low (> low when `strict`) and <= high; inf and nan pass most
    comparisons, so they are named here."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if strict else value >= low) and value <= high
    _check(ok, field, value, allowed)


def _known_dataset(name) -> bool:
    try:
        if data.source_kind(name) != "tfds":
            return True
    except ValueError:  # not a string, empty, or the kind "tfds" itself
        return False
    import tensorflow_datasets as tfds  # only for TFDS names: it is slow to import
    return name.split("/")[0].split(":")[0] in tfds.list_builders(with_community_datasets=False)


def validate(config: ml_collections.ConfigDict, num_devices: Optional[int] = None) -> None:
    """Raises ConfigError for the first invalid value. With num_devices, also checks that the
    global batch (and each gradient-accumulation micro-batch) divides over the devices."""
    _validate_data(config)
    validate_model(config)
    _validate_objective(config)
    _validate_run(config, num_devices)
    _validate_evaluation(config)


def validate_model(config: ml_collections.ConfigDict) -> None:
    """The model and diffusion sections, and data.resolution (which the U-Net's levels must
    divide): all that an imported model's config holds before its data are named."""
    _check_positive_int(config.data.resolution, "data.resolution", 4)
    _validate_autoencoder(config)
    _validate_model(config)
    _validate_diffusion(config)


def _validate_autoencoder(config) -> None:
    """The autoencoder section (latent diffusion), and that data.resolution fits its levels."""
    a = config.autoencoder
    _check_choice(config, "autoencoder.kind", AUTOENCODERS)
    if a.kind == "none":
        return
    _check(bool(a.params_file) and storage.is_file(a.params_file), "autoencoder.params_file", a.params_file,
           "the .npz of the autoencoder's weights (written by `python -m isodiff_jax.pretrained`)")
    _check(len(a.block_out_channels) >= 1 and all(isinstance(c, int) and c > 0 for c in a.block_out_channels),
           "autoencoder.block_out_channels", a.block_out_channels, "a non-empty tuple of positive integers")
    for field in ("layers_per_block", "latent_channels", "vq_embed_dim", "num_vq_embeddings", "norm_num_groups"):
        _check_positive_int(a[field], f"autoencoder.{field}")
    _check(all(c % a.norm_num_groups == 0 for c in a.block_out_channels), "autoencoder.norm_num_groups",
           a.norm_num_groups, f"a divisor of every entry of block_out_channels {a.block_out_channels}")
    _check_choice(config, "autoencoder.act_fn", tuple(ACTIVATIONS))
    _check_finite(a.scaling_factor, "autoencoder.scaling_factor", 0, "a finite factor > 0", strict=True)
    factor = 2 ** (len(a.block_out_channels) - 1)
    _check(config.data.resolution % factor == 0, "data.resolution", config.data.resolution,
           f"a multiple of the autoencoder's downsampling factor {factor}")


def diffusion_side(config) -> int:
    """The side of what the U-Net diffuses: the images', or their latents' for latent diffusion."""
    a = config.autoencoder
    return config.data.resolution // (2 ** (len(a.block_out_channels) - 1) if a.kind == "vq" else 1)


def _validate_data(config) -> None:
    d = config.data
    _check(_known_dataset(d.name), "data.name", d.name,
           "'shapes', 'digits', 'folder' or a TFDS data set name such as 'cifar10' or 'celeb_a_hq/256'")
    _check(d.name in data.BUILT_IN or bool(d.data_dir), "data.data_dir", d.data_dir,
           f"a directory (required for data.name={d.name!r})")
    _check(d.name not in data.BUILT_IN or not d.data_dir, "data.data_dir", d.data_dir,
           f"'' for the built-in data set {d.name!r}, which is made here and reads no files")
    _check_positive_int(d.resolution, "data.resolution", 4)
    _check_positive_int(d.prefetch, "data.prefetch")
    _check(isinstance(d.workers, int) and not isinstance(d.workers, bool) and d.workers >= 0, "data.workers",
           d.workers, "an integer >= 0 (0: one loading thread)")
    _validate_latent_cache(config)
    _check(isinstance(config.seed, int) and 0 <= config.seed < 2**31, "seed", config.seed,
           "an integer in [0, 2**31)")


def _validate_latent_cache(config) -> None:
    """data.latent_cache: "" or a directory (made if missing) for latent diffusion's latents."""
    path = config.data.latent_cache
    _check(isinstance(path, str), "data.latent_cache", path, "a directory path or '' (encode on the fly)")
    if not path:
        return
    _check(config.autoencoder.kind != "none", "data.latent_cache", path,
           "'' for diffusion on the images (a latent cache needs autoencoder.kind 'vq')")
    _check(not storage.is_url(path), "data.latent_cache", path,
           "a local directory (the cache is memory-mapped; each host keeps its own on its local disk)")
    parent = os.path.dirname(os.path.abspath(path))
    _check(os.path.isdir(path) or (not os.path.exists(path) and os.path.isdir(parent)), "data.latent_cache", path,
           "an existing directory, or a new one in an existing directory")


def _validate_model(config) -> None:
    d, m = config.data, config.model
    levels = len(m.block_out_channels)
    _check(levels >= 1 and all(isinstance(c, int) and c > 0 for c in m.block_out_channels),
           "model.block_out_channels", m.block_out_channels, "a non-empty tuple of positive integers")
    _check(len(m.attention_levels) == levels, "model.attention_levels", m.attention_levels,
           f"one bool per level ({levels})")
    side, latent = diffusion_side(config), config.autoencoder.kind != "none"
    _check(side % 2 ** (levels - 1) == 0, "data.resolution", d.resolution,
           f"a multiple of 2**(levels-1) = {2 ** (levels - 1)}" + (f" after the autoencoder (latent side {side})"
                                                                    if latent else ""))
    _check_positive_int(m.norm_num_groups, "model.norm_num_groups")
    _check(all(c % m.norm_num_groups == 0 for c in m.block_out_channels), "model.norm_num_groups",
           m.norm_num_groups, f"a divisor of every entry of block_out_channels {m.block_out_channels}")
    if m.attention_head_dim is not None:  # None: one head per attention block
        _check_positive_int(m.attention_head_dim, "model.attention_head_dim")
        attention_channels = [c for c, a in zip(m.block_out_channels, m.attention_levels) if a]
        attention_channels += [m.block_out_channels[-1]] if m.mid_attention else []
        _check(all(c % m.attention_head_dim == 0 for c in attention_channels), "model.attention_head_dim",
               m.attention_head_dim, f"None or a divisor of the channels of every attention block {attention_channels}")
    _check_positive_int(m.layers_per_block, "model.layers_per_block")
    _validate_model_options(config)
    _check_choice(config, "model.dtype", DTYPES)
    _check_choice(config, "model.remat", REMAT_POLICIES)


def _validate_model_options(config) -> None:
    """The U-Net options that diffusers' UNet2DModel has (isodiff_jax.unet.UNet)."""
    m = config.model
    _check_finite(m.norm_eps, "model.norm_eps", 0, "a finite epsilon > 0", strict=True)
    _check_finite(m.freq_shift, "model.freq_shift")
    _check_finite(m.mid_block_scale_factor, "model.mid_block_scale_factor", 0, "a finite factor > 0",
                  strict=True)
    _check_choice(config, "model.downsample_padding", (0, 1))
    _check_choice(config, "model.act_fn", tuple(ACTIVATIONS))
    _check_choice(config, "model.resnet_time_scale_shift", TIME_SCALE_SHIFTS)


def _validate_diffusion(config) -> None:
    _check_choice(config, "diffusion.schedule", diffusion.SCHEDULE_KINDS)
    df = config.diffusion
    _check_positive_int(df.num_timesteps, "diffusion.num_timesteps", 2)
    if df.schedule in ("linear", "scaled_linear"):
        ok = all(isinstance(b, (int, float)) for b in (df.beta_start, df.beta_end))
        _check(ok and 0 < df.beta_start < df.beta_end < 1, "diffusion.beta_start/beta_end",
               (df.beta_start, df.beta_end), "0 < beta_start < beta_end < 1")
    _check_finite(df.logsnr_shift, "diffusion.logsnr_shift", -10, "a finite shift in [-10, 10]", high=10)
    _check_choice(config, "diffusion.loss_weighting", diffusion.LOSS_WEIGHTINGS)
    _check_choice(config, "diffusion.t_sampling", diffusion.T_SAMPLINGS)
    _check_finite(df.min_snr_gamma, "diffusion.min_snr_gamma", 0, "a finite γ > 0", strict=True)


def _validate_objective(config) -> None:
    r, o = config.regularizer, config.optim
    _check_choice(config, "regularizer.kind", ("none",) + REGULARIZERS)
    _check_finite(r.weight, "regularizer.weight", 0, "a finite λ >= 0")
    _check(0 <= r.p < 1, "regularizer.p", r.p, "a gating ratio in [0, 1)")
    _check_choice(config, "regularizer.form", isometry.FORMS)
    _check_choice(config, "regularizer.estimator", isometry.ESTIMATORS)
    _check_choice(config, "regularizer.radius", isometry.RADII)
    _check_positive_int(r.num_probes, "regularizer.num_probes")
    _check(0 <= r.pl_decay < 1, "regularizer.pl_decay", r.pl_decay, "a decay in [0, 1)")
    _check_finite(o.lr, "optim.lr", 0, "a finite learning rate > 0", strict=True)
    _check(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, "optim.warmup_steps",
           o.warmup_steps, "an integer >= 0")
    _check_choice(config, "optim.decay", DECAYS)
    _check(0 <= o.end_lr_fraction <= 1, "optim.end_lr_fraction", o.end_lr_fraction, "a fraction in [0, 1]")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optim.b1/b2", (o.b1, o.b2), "betas in [0, 1)")
    _check_finite(o.weight_decay, "optim.weight_decay", 0, "a finite number >= 0")
    _check_finite(o.clip_norm, "optim.clip_norm", 0, "a finite norm > 0", strict=True)
    _check(0 <= o.ema_max_decay < 1, "optim.ema_max_decay", o.ema_max_decay, "a decay in [0, 1)")
    _check_finite(o.ema_power, "optim.ema_power", 0, "a finite power > 0", strict=True)
    _check_positive_int(o.grad_accum_steps, "optim.grad_accum_steps")


def _validate_run(config, num_devices) -> None:
    o, t = config.optim, config.training
    _check_positive_int(t.num_steps, "training.num_steps")
    _check_positive_int(t.global_batch_size, "training.global_batch_size")
    _check(t.global_batch_size % o.grad_accum_steps == 0, "training.global_batch_size",
           t.global_batch_size, f"a multiple of optim.grad_accum_steps={o.grad_accum_steps}")
    if num_devices is not None:
        per_step = num_devices * o.grad_accum_steps
        _check(t.global_batch_size % per_step == 0, "training.global_batch_size", t.global_batch_size,
               f"a multiple of devices × grad_accum_steps = {num_devices} × {o.grad_accum_steps} = {per_step}")
    _check_positive_int(config.checkpoint.every_steps, "checkpoint.every_steps")
    _check_positive_int(config.checkpoint.keep, "checkpoint.keep")
    lg = config.logging
    _check_positive_int(lg.log_every_steps, "logging.log_every_steps")
    _check(isinstance(lg.sample_every_steps, int) and lg.sample_every_steps >= 0,
           "logging.sample_every_steps", lg.sample_every_steps, "an integer >= 0 (0: only at the end)")
    _check_positive_int(lg.num_samples, "logging.num_samples")
    _check_positive_int(lg.sample_steps, "logging.sample_steps")
    _check_finite(lg.sample_eta, "logging.sample_eta", 0, "a finite DDIM η >= 0")
    steps = tuple(lg.profile_steps)
    _check(steps == () or (len(steps) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
                            and 0 <= steps[0] < steps[1]), "logging.profile_steps", lg.profile_steps,
           "() or START,STOP with 0 <= START < STOP (the steps START..STOP-1 are traced)")


def evaluation_metrics(config) -> list:
    """config.evaluation.metrics as a list of names."""
    return [m.strip() for m in config.evaluation.metrics.split(",") if m.strip()]


def _validate_evaluation(config) -> None:
    ev = config.evaluation
    _check(isinstance(ev.every_steps, int) and ev.every_steps >= 0, "evaluation.every_steps", ev.every_steps,
           "an integer >= 0 (0: never)")
    if not ev.every_steps:
        return  # the other fields are not used
    metrics = evaluation_metrics(config)
    if not metrics:
        raise ConfigError(f"config.evaluation.every_steps={ev.every_steps} but evaluation.metrics is empty: "
                          f"name some of {registry.METRICS}")
    given = {resource for resource, field in (("oracle", "oracle_dir"), ("inception", "inception_file"),
                                              ("lpips", "lpips_file"), ("classifier", "classifier_dir")) if ev.get(field)}
    found = registry.problems(metrics, config.data.name, given, registry.CONFIG_INPUTS)
    if found:
        raise ConfigError(f"config.evaluation.metrics={ev.metrics!r}: " + "; ".join(found))
    for field, allowed in (("h_edit", options_lib.H_EDITS), ("mcn_input", options_lib.MCN_INPUTS),
                           ("spectrum_method", ("dense", "matrix_free"))):
        _check_choice(config, f"evaluation.{field}", allowed)
    for field in ("oracle_dir", "inception_file", "lpips_file", "classifier_dir"):
        _check(not ev.get(field) or storage.exists(ev[field]), f"evaluation.{field}", ev.get(field), "an existing path")
    for field in ("num_pairs", "num_samples", "num_fd_samples", "sample_steps"):
        _check_positive_int(ev[field], f"evaluation.{field}")
    _check(all(0 <= t < config.diffusion.num_timesteps for t in ev.timesteps), "evaluation.timesteps",
           ev.timesteps, f"timesteps in [0, {config.diffusion.num_timesteps})")


def evaluation_options(config) -> options_lib.Options:
    """config.evaluation -> analysis Options (seeded by config.seed, so every evaluation of a run
    uses the same noise). An option missing from an older run's record takes its default, which
    computes what that run's evaluations computed."""
    ev = config.evaluation
    values = {f.name: ev.get(f.name, f.default) for f in options_lib.fields() if f.name != "seed"}
    values.update({name: tuple(v) for name, v in values.items() if isinstance(v, (list, tuple))})
    return options_lib.Options(**values, seed=config.seed)


def evaluators(config, spec: ModelSpec, mesh=None) -> list:
    """The evaluators config.evaluation asks for (none when evaluation.every_steps is 0)."""
    if not config.evaluation.every_steps:
        return []
    ev = config.evaluation
    resources = registry.load_resources(ev.oracle_dir, ev.inception_file, ev.lpips_file, ev.get("classifier_dir", ""))
    return [suite.Suite(spec, evaluation_metrics(config), evaluation_options(config), resources, mesh)]


def unet(config, channels: int = 3) -> UNet:
    m = config.model
    return UNet(in_channels=channels, out_channels=channels,
                block_out_channels=tuple(m.block_out_channels),
                attention_levels=tuple(bool(a) for a in m.attention_levels),
                layers_per_block=m.layers_per_block, mid_attention=m.mid_attention,
                attention_head_dim=m.attention_head_dim, norm_num_groups=m.norm_num_groups,
                norm_eps=float(m.norm_eps), flip_sin_to_cos=m.flip_sin_to_cos, freq_shift=float(m.freq_shift),
                downsample_padding=m.downsample_padding, act_fn=m.act_fn,
                resnet_time_scale_shift=m.resnet_time_scale_shift, center_input_sample=m.center_input_sample,
                mid_block_scale_factor=float(m.mid_block_scale_factor), dtype=DTYPES[m.dtype],
                remat=m.remat)


def schedule_spec(config) -> ScheduleSpec:
    df = config.diffusion
    return ScheduleSpec(kind=df.schedule, num_timesteps=df.num_timesteps, beta_start=df.beta_start,
                        beta_end=df.beta_end, logsnr_shift=float(df.logsnr_shift))


def schedule(config) -> diffusion.Schedule:
    return schedule_spec(config).build()


def latent_spec(config, channels: int = 3) -> Optional[LatentSpec]:
    """The autoencoder of latent diffusion (None for diffusion on the images)."""
    a = config.autoencoder
    if a.kind == "none":
        return None
    autoencoder = VQAutoencoder(
        in_channels=channels, out_channels=channels, block_out_channels=tuple(a.block_out_channels),
        layers_per_block=a.layers_per_block, latent_channels=a.latent_channels, vq_embed_dim=a.vq_embed_dim,
        num_vq_embeddings=a.num_vq_embeddings, norm_num_groups=a.norm_num_groups, act_fn=a.act_fn,
        mid_attention=bool(a.mid_attention), scaling_factor=float(a.scaling_factor))
    return LatentSpec(autoencoder, storage.absolute(a.params_file))


def model_spec(config, channels: int = 3) -> ModelSpec:
    """channels: of the images (a latent U-Net takes the autoencoder's latent channels)."""
    d, latent = config.data, latent_spec(config, channels)
    return ModelSpec(unet=unet(config, latent.autoencoder.vq_embed_dim if latent else channels),
                     schedule=schedule_spec(config), latent=latent,
                     data=DataSpec(name=d.name, resolution=d.resolution, channels=channels, data_dir=d.data_dir,
                                   split=d.split, seed=config.seed))


def train_settings(config) -> TrainSettings:
    t, o, ck, lg = config.training, config.optim, config.checkpoint, config.logging
    return TrainSettings(
        num_steps=t.num_steps, global_batch_size=t.global_batch_size, seed=config.seed, gate_p=config.regularizer.p,
        grad_accum_steps=o.grad_accum_steps, ema_max_decay=o.ema_max_decay, ema_power=o.ema_power,
        loss_weighting=config.diffusion.loss_weighting, min_snr_gamma=config.diffusion.min_snr_gamma,
        t_sampling=config.diffusion.t_sampling,
        init_from=t.init_from,
        random_flip=config.data.random_flip, prefetch=config.data.prefetch, workers=config.data.workers,
        checkpoint_every=ck.every_steps,
        latent_cache=os.path.abspath(config.data.latent_cache) if config.data.latent_cache else "",
        checkpoint_keep=ck.keep, log_every=lg.log_every_steps, sample_every=lg.sample_every_steps,
        num_samples=lg.num_samples, sample_steps=lg.sample_steps, sample_eta=lg.sample_eta,
        evaluate_every=config.evaluation.every_steps, progress_bar=lg.progress_bar,
        profile_steps=tuple(lg.profile_steps))


def train_setup(config) -> TrainSetup:
    """The loop's typed inputs (the config itself travels only as its JSON record)."""
    return TrainSetup(spec=model_spec(config), optimizer=optimizer(config), learning_rate=learning_rate(config),
                      regularizer=regularizer(config), settings=train_settings(config), config_json=to_json(config),
                      step_key=step_key(config))


# Config fields that no compiled training step depends on: the seed and λ (arguments of the step),
# the data set's identity and its reading, and what happens between steps (saving, logging,
# evaluating). Every other field, including any added later, is part of `step_key`.
NOT_IN_STEPS = ("seed", "regularizer.weight", "data.name", "data.data_dir", "data.split", "data.random_flip",
                "data.prefetch", "data.workers", "training.init_from", "checkpoint", "logging", "evaluation")


def step_key(config) -> str:
    """The config without NOT_IN_STEPS, as JSON: runs with equal keys (a sweep over seeds, λ or
    data sets of one image size) share compiled training steps (`loop.compile_steps`)."""
    values = json.loads(to_json(config))
    for name in NOT_IN_STEPS:
        *path, last = name.split(".")
        section = values
        for part in path:
            section = section.get(part, {})
        section.pop(last, None)
    return json.dumps(values, sort_keys=True)


def regularizer(config) -> Optional[Regularizer]:
    r = config.regularizer
    if r.kind == "none":
        return None
    return Regularizer(kind=r.kind, weight=r.weight, form=r.form, estimator=r.estimator,
                       num_probes=r.num_probes, radius=r.radius, pl_decay=r.pl_decay)


def learning_rate(config) -> optax.Schedule:
    """Linear warm-up to optim.lr, then cosine decay to end_lr_fraction·lr at num_steps, or constant."""
    o, steps = config.optim, config.training.num_steps
    warmup = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
    if o.decay == "constant":
        after = optax.constant_schedule(o.lr)
    else:
        after = optax.cosine_decay_schedule(o.lr, max(steps - o.warmup_steps, 1), alpha=o.end_lr_fraction)
    return optax.join_schedules([warmup, after], [o.warmup_steps])


def optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    return make_optimizer(learning_rate(config), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                          clip_norm=o.clip_norm)


def to_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    """The inverse of to_json (tuples come back as tuples where the defaults have tuples)."""
    values = json.loads(text)
    for section in ("model", "evaluation", "autoencoder", "logging"):
        for key, value in values.get(section, {}).items():
            if isinstance(value, list):
                values[section][key] = tuple(value)
    return ml_collections.ConfigDict(values)


# Fields added after runs were recorded, with the value that computes what those runs computed: a
# record without the field reads as having this value.
LATER_FIELDS = {"model.norm_eps": 1e-5, "model.flip_sin_to_cos": True, "model.freq_shift": 0.0,
                "model.downsample_padding": 1, "model.act_fn": "silu", "model.resnet_time_scale_shift": "default",
                "model.center_input_sample": False, "model.mid_block_scale_factor": 1.0, "model.remat": "none",
                "autoencoder.kind": "none", "autoencoder.params_file": "",
                "autoencoder.block_out_channels": (128, 256, 512), "autoencoder.layers_per_block": 2,
                "autoencoder.latent_channels": 3, "autoencoder.vq_embed_dim": 3, "autoencoder.num_vq_embeddings": 8192,
                "autoencoder.norm_num_groups": 32, "autoencoder.act_fn": "silu", "autoencoder.mid_attention": True,
                "autoencoder.scaling_factor": 1.0, "data.latent_cache": "", "data.workers": 0,
                "diffusion.loss_weighting": "uniform", "diffusion.min_snr_gamma": 5.0, "optim.ema_power": 0.75,
                "diffusion.logsnr_shift": 0.0, "diffusion.t_sampling": "uniform"}

# What a resumed run may change: how long it trains, how often it logs, saves and evaluates, where
# it finds its data, and what the backward pass recomputes (model.remat: same values, less memory;
# data.latent_cache: the same latents, encoded once). Every other field changes what is computed.
RESUMABLE_CHANGES = ("training.num_steps", "training.init_from", "logging.", "checkpoint.", "evaluation.",
                     "data.prefetch", "data.workers", "data.data_dir", "data.latent_cache", "model.remat")


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list) else value
    return flat


def resume_differences(saved_json: str, config) -> list[str]:
    """The fields that `config` changes from the run recorded in `saved_json` and that a resume
    may not change (see RESUMABLE_CHANGES), as 'config.field=new (was old)'."""
    old, new = _flatten(json.loads(saved_json)), _flatten(json.loads(to_json(config)))
    old = {**LATER_FIELDS, **old}
    allowed = lambda field: any(field == a or (a.endswith(".") and field.startswith(a)) for a in RESUMABLE_CHANGES)
    absent = "(absent)"
    return [f"config.{field}={new.get(field, absent)!r} (was {old.get(field, absent)!r})"
            for field in sorted(set(old) | set(new)) if not allowed(field) and old.get(field) != new.get(field)]


def check_resumable(workdir: str, config) -> None:
    """Refuses, naming every differing field, to resume `workdir` with a config that computes
    something else than the one its checkpoints were trained with (each checkpoint carries its
    own; workdir/config.json stands in only for checkpoints written before that), and refuses a
    training.num_steps below the newest checkpoint. A workdir without checkpoints (also one left
    by a run that died before its first save) accepts any config."""
    saved = checkpoint.read_configs(workdir)
    steps = checkpoint.all_steps(workdir)
    if steps and not saved and storage.exists(storage.join(workdir, checkpoint.CONFIG_FILE)):
        saved = {max(steps): checkpoint.saved_config_json(workdir)}
    for step, text in sorted(saved.items(), reverse=True):
        if differences := resume_differences(text, config):
            raise ConfigError(
                f"{workdir} holds checkpoints (step {step}) of a run with another config; a resume may change only "
                f"{', '.join(RESUMABLE_CHANGES)}. Differing: {'; '.join(differences)}. Use a new workdir "
                f"(or training.init_from={workdir!r} to fine-tune from it)")
    if steps and max(steps) > config.training.num_steps:
        raise ConfigError(f"the newest checkpoint in {checkpoint.checkpoint_dir(workdir)} is at step {max(steps)}, "
                          f"past training.num_steps={config.training.num_steps}: raise num_steps to train on, "
                          f"or use another workdir")
