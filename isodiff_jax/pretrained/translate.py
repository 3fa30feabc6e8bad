"""diffusers configs <-> this project's model and schedule: `UNet2DModel`'s config.json <-> `UNet`
fields, `VQModel`'s <-> `VQAutoencoder` fields, a scheduler_config.json <-> `ScheduleSpec`.

Every UNet2DModel field is either translated, or checked to hold a value that computes what the
`UNet` computes, or refused by name (`Unsupported`); a field this module does not know is refused
too, since it may change the computation. A config.json written by an older diffusers lacks the
fields added since: they take UNet2DModel's defaults, as diffusers itself does when it loads one.
"""
from typing import Optional

from isodiff_jax.autoencoder import VQAutoencoder
from isodiff_jax.errors import InvalidValue
from isodiff_jax.spec import ScheduleSpec
from isodiff_jax.unet import ACTIVATIONS, TIME_SCALE_SHIFTS, UNet

UNET_CLASS = "UNet2DModel"
DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# UNet2DModel's defaults (diffusers 0.42), for the fields an older config.json lacks
UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None}
RECORD_FIELDS = ("_class_name", "_diffusers_version", "_name_or_path")  # bookkeeping, no computation

VQ_CLASS = "VQModel"
# VQModel's defaults (diffusers 0.42), except scaling_factor (see vq_fields)
VQ_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256, "norm_num_groups": 32, "vq_embed_dim": None,
    "scaling_factor": None, "norm_type": "group", "mid_block_add_attention": True, "lookup_from_codebook": False,
    "force_upcast": False}
UNSCALED = 1.0  # the scaling_factor of a VQModel config.json that has none (see vq_fields)

SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler")  # the same β and ε definitions
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                      "beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
                      "clip_sample": True, "clip_sample_range": 1.0, "thresholding": False,
                      "rescale_betas_zero_snr": False}
DIFFUSERS_VERSION = "0.42.1"  # the version the exported folders were checked with


class Unsupported(InvalidValue):
    """A diffusers config value this project cannot honour; the message names the field."""


def _refuse(file: str, field: str, value, allowed) -> Unsupported:
    return Unsupported(f"{file}: {field}={value!r} is not supported (allowed: {allowed})")


def unet_fields(config: dict, file: str = "config.json") -> tuple[dict, Optional[int]]:
    """UNet2DModel config -> (UNet keyword arguments, sample_size or None)."""
    if config.get("_class_name", UNET_CLASS) != UNET_CLASS:
        raise _refuse(file, "_class_name", config["_class_name"], f"{UNET_CLASS!r} (pixel-space U-Nets)")
    if unknown := sorted(set(config) - set(UNET_DEFAULTS) - set(RECORD_FIELDS)):
        raise Unsupported(f"{file}: unknown {UNET_CLASS} fields {unknown}: they may change the computation")
    c = {**UNET_DEFAULTS, **config}

    def require(field, allowed):
        if c[field] not in allowed:
            raise _refuse(file, field, c[field], " or ".join(map(repr, allowed)))

    require("time_embedding_type", ("positional",))
    require("mid_block_type", ("UNetMidBlock2D",))  # h is the middle block's output
    require("downsample_type", ("conv",))
    require("upsample_type", ("conv",))
    require("dropout", (0, 0.0))  # training would differ
    require("class_embed_type", (None,))
    require("num_class_embeds", (None,))
    require("act_fn", tuple(ACTIVATIONS))
    require("resnet_time_scale_shift", TIME_SCALE_SHIFTS)
    require("downsample_padding", (0, 1))
    boc = tuple(c["block_out_channels"])
    require("time_embedding_dim", (None, 4 * boc[0]))
    require("attn_norm_num_groups", (None, c["norm_num_groups"]) if c["resnet_time_scale_shift"] == "default"
            else (None,))
    attention = _attention_levels(c, file, len(boc))
    fields = dict(in_channels=c["in_channels"], out_channels=c["out_channels"], block_out_channels=boc,
                  attention_levels=attention, layers_per_block=c["layers_per_block"],
                  mid_attention=bool(c["add_attention"]), attention_head_dim=c["attention_head_dim"],
                  norm_num_groups=c["norm_num_groups"], norm_eps=float(c["norm_eps"]),
                  flip_sin_to_cos=bool(c["flip_sin_to_cos"]), freq_shift=float(c["freq_shift"]),
                  downsample_padding=c["downsample_padding"], act_fn=c["act_fn"],
                  resnet_time_scale_shift=c["resnet_time_scale_shift"],
                  center_input_sample=bool(c["center_input_sample"]),
                  mid_block_scale_factor=float(c["mid_block_scale_factor"]))
    return fields, _sample_size(c["sample_size"], file)


def _attention_levels(c: dict, file: str, levels: int) -> tuple[bool, ...]:
    down, up = tuple(c["down_block_types"]), tuple(c["up_block_types"])
    for field, types, known in (("down_block_types", down, DOWN_BLOCKS), ("up_block_types", up, UP_BLOCKS)):
        if len(types) != levels or any(t not in known for t in types):
            raise _refuse(file, field, list(types), f"{levels} entries (one per block_out_channels) "
                                                    f"from {tuple(known)}")
    attention = tuple(DOWN_BLOCKS[t] for t in down)
    if tuple(UP_BLOCKS[t] for t in up) != attention[::-1]:
        raise _refuse(file, "up_block_types", list(up), "attention at the levels of down_block_types, "
                                                        "in reverse order")
    return attention


def _sample_size(value, file: str) -> Optional[int]:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise _refuse(file, "sample_size", value, "square images")
        value = value[0]
    return value


def diffusers_unet_config(unet: UNet, sample_size: Optional[int] = None) -> dict:
    """UNet -> a UNet2DModel config.json (every field, so no diffusers default is relied on)."""
    levels = tuple(unet.attention_levels)
    down = [("AttnDownBlock2D" if a else "DownBlock2D") for a in levels]
    up = [("AttnUpBlock2D" if a else "UpBlock2D") for a in levels[::-1]]
    return {
        "_class_name": UNET_CLASS, "_diffusers_version": DIFFUSERS_VERSION, **UNET_DEFAULTS,
        "sample_size": sample_size, "in_channels": unet.in_channels, "out_channels": unet.out_channels,
        "center_input_sample": unet.center_input_sample, "freq_shift": unet.freq_shift,
        "flip_sin_to_cos": unet.flip_sin_to_cos, "down_block_types": down, "up_block_types": up,
        "block_out_channels": list(unet.block_out_channels), "layers_per_block": unet.layers_per_block,
        "mid_block_scale_factor": unet.mid_block_scale_factor, "downsample_padding": unet.downsample_padding,
        "act_fn": unet.act_fn, "attention_head_dim": unet.attention_head_dim,
        "norm_num_groups": unet.norm_num_groups, "norm_eps": unet.norm_eps,
        "resnet_time_scale_shift": unet.resnet_time_scale_shift, "add_attention": unet.mid_attention}


def vq_fields(config: dict, file: str = "config.json") -> tuple[dict, Optional[int]]:
    """VQModel config -> (VQAutoencoder keyword arguments, sample_size or None).

    A config.json without `scaling_factor` (written before diffusers had the field, as
    CompVis/ldm-celebahq-256's is) reads as 1.0: its U-Net was trained on unscaled latents, as
    CompVis' latent diffusion trains on VQ latents. diffusers itself would read 0.18215 and its
    LDMPipeline then decodes such a model's samples wrongly (huggingface/diffusers#6725).
    `force_upcast` only sets the dtype diffusers' pipelines run the model in (this one computes
    in float32) and is not read."""
    if config.get("_class_name", VQ_CLASS) != VQ_CLASS:
        raise _refuse(file, "_class_name", config["_class_name"], f"{VQ_CLASS!r} (VQ autoencoders)")
    if unknown := sorted(set(config) - set(VQ_DEFAULTS) - set(RECORD_FIELDS)):
        raise Unsupported(f"{file}: unknown {VQ_CLASS} fields {unknown}: they may change the computation")
    c = {**VQ_DEFAULTS, **config}
    for field, allowed in (("norm_type", ("group",)), ("lookup_from_codebook", (False,)),
                           ("act_fn", tuple(ACTIVATIONS))):
        if c[field] not in allowed:
            raise _refuse(file, field, c[field], " or ".join(map(repr, allowed)))
    boc = tuple(c["block_out_channels"])
    for field, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if list(c[field]) != [kind] * len(boc):
            raise _refuse(file, field, list(c[field]), f"{len(boc)} × {kind!r} (one per block_out_channels)")
    scaling = UNSCALED if c["scaling_factor"] is None else float(c["scaling_factor"])
    if not scaling > 0:
        raise _refuse(file, "scaling_factor", c["scaling_factor"], "a number > 0")
    fields = dict(in_channels=c["in_channels"], out_channels=c["out_channels"], block_out_channels=boc,
                  layers_per_block=c["layers_per_block"], latent_channels=c["latent_channels"],
                  vq_embed_dim=c["vq_embed_dim"] or c["latent_channels"], num_vq_embeddings=c["num_vq_embeddings"],
                  norm_num_groups=c["norm_num_groups"], act_fn=c["act_fn"],
                  mid_attention=bool(c["mid_block_add_attention"]), scaling_factor=scaling)
    return fields, _sample_size(c["sample_size"], file)


def diffusers_vq_config(autoencoder: VQAutoencoder, sample_size: Optional[int] = None) -> dict:
    """VQAutoencoder -> a VQModel config.json (every field, scaling_factor included)."""
    a, levels = autoencoder, len(autoencoder.block_out_channels)
    return {
        "_class_name": VQ_CLASS, "_diffusers_version": DIFFUSERS_VERSION, **VQ_DEFAULTS,
        "in_channels": a.in_channels, "out_channels": a.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(a.block_out_channels), "layers_per_block": a.layers_per_block,
        "act_fn": a.act_fn, "latent_channels": a.latent_channels, "sample_size": sample_size or 32,
        "num_vq_embeddings": a.num_vq_embeddings, "norm_num_groups": a.norm_num_groups,
        "vq_embed_dim": a.vq_embed_dim, "scaling_factor": a.scaling_factor,
        "mid_block_add_attention": a.mid_attention}


def schedule_spec(config: dict, file: str = "scheduler_config.json") -> tuple[ScheduleSpec, Optional[float]]:
    """A diffusers scheduler config -> (ScheduleSpec, the x0 clipping bound of its sampler or None).
    Refuses, by name, a prediction type other than ε and anything that changes the betas. The
    other fields (variance_type, timestep_spacing, steps_offset, ...) set diffusers' own samplers
    and change neither the model nor its noise process: they are not read."""
    name = config.get("_class_name", "DDPMScheduler")
    if name not in SCHEDULER_CLASSES:
        raise _refuse(file, "_class_name", name, " or ".join(SCHEDULER_CLASSES))
    c = {**SCHEDULER_DEFAULTS, **config}
    if c["prediction_type"] != "epsilon":
        raise _refuse(file, "prediction_type", c["prediction_type"],
                      "'epsilon': this project trains, samples and regularizes ε-prediction models only")
    for field in ("trained_betas", "thresholding", "rescale_betas_zero_snr"):
        if c[field] not in (None, False):
            raise _refuse(file, field, c[field], "null or false")
    if c["beta_schedule"] not in BETA_SCHEDULES:
        raise _refuse(file, "beta_schedule", c["beta_schedule"], " or ".join(map(repr, BETA_SCHEDULES)))
    spec = ScheduleSpec(kind=BETA_SCHEDULES[c["beta_schedule"]], num_timesteps=int(c["num_train_timesteps"]),
                        beta_start=float(c["beta_start"]), beta_end=float(c["beta_end"]))
    return spec, (float(c["clip_sample_range"]) if c["clip_sample"] else None)


def diffusers_scheduler_config(schedule: ScheduleSpec, clip_sample: Optional[float] = 1.0,
                               class_name: str = "DDPMScheduler") -> dict:
    """ScheduleSpec -> a DDPMScheduler (or DDIMScheduler) scheduler_config.json (ε-prediction)."""
    if schedule.logsnr_shift:
        raise InvalidValue(f"the model's schedule is shifted (diffusion.logsnr_shift={schedule.logsnr_shift}); "
                           f"diffusers' schedulers have no such option, so it cannot be exported")
    kinds = {v: k for k, v in BETA_SCHEDULES.items()}
    config = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION,
              "num_train_timesteps": schedule.num_timesteps, "beta_schedule": kinds[schedule.kind],
              "beta_start": schedule.beta_start, "beta_end": schedule.beta_end, "trained_betas": None,
              "prediction_type": "epsilon", "clip_sample": clip_sample is not None,
              "clip_sample_range": 1.0 if clip_sample is None else clip_sample}
    return {**config, "variance_type": "fixed_small"} if class_name == "DDPMScheduler" else config
