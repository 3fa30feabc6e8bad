"""`python -m isodiff_jax.pretrained`: a diffusers folder to a training workdir, and back.

    python -m isodiff_jax.pretrained DIR --workdir OUT [--data_name NAME --data_dir PATH]
    python -m isodiff_jax.pretrained --export WORKDIR --out DIR [--step N] [--raw]

The first writes OUT/checkpoints/0 (a training state whose parameters and EMA are the imported
weights, with its model spec and config), OUT/config.json and OUT/config.py, the config that
reproduces the source (configs/default.py with the imported model, diffusion and data sections,
and training.init_from=OUT). Then:

    python train.py --config OUT/config.py --workdir RUN     # fine-tune (from OUT's parameters)
    python -m isodiff_jax.analysis --workdir OUT --out OUT/analysis

For latent diffusion (a folder with vqvae/) the import also writes OUT/autoencoder.npz, the
frozen autoencoder's weights, and the config's autoencoder section names it.

The second writes the EMA (or, with --raw, the raw) parameters of a workdir's checkpoint as a
diffusers pipeline folder (model_index.json, unet/, scheduler/; vqvae/ for latent diffusion),
which `diffusers.DDIMPipeline.from_pretrained(DIR)` (`LDMPipeline` for latent diffusion) opens. This module is an entry point: it builds a
training state, which the pretrained package itself (model layer) may not.
"""
import argparse
import pprint
from typing import Optional

import jax

from isodiff_jax import autoencoder as autoencoder_lib
from isodiff_jax import checkpoint, errors, pretrained, quiet, storage
from isodiff_jax import config as config_lib
from isodiff_jax.errors import InvalidValue
from isodiff_jax.train.step import state_from_params

MODEL_FIELDS = ("block_out_channels", "attention_levels", "layers_per_block", "mid_attention",
                "attention_head_dim", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift",
                "downsample_padding", "act_fn", "resnet_time_scale_shift", "center_input_sample",
                "mid_block_scale_factor")
AUTOENCODER_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "vq_embed_dim",
                      "num_vq_embeddings", "norm_num_groups", "act_fn", "mid_attention", "scaling_factor")
AUTOENCODER_FILE = "autoencoder.npz"  # the import writes the autoencoder's weights here, in the workdir
CONFIG_PY = '''"""The config of a model imported by `python -m isodiff_jax.pretrained` from
{source}:
configs/default.py with the model, diffusion and data sections that reproduce it, fine-tuning
from its weights. Run from the repository root:

    python train.py --config {config_py} --workdir RUN
"""
from configs import default

SECTIONS = {sections}


def get_config():
    c = default.get_config()
    for section, values in SECTIONS.items():
        c[section].update(values)
    c.training.init_from = {workdir!r}
    return c
'''


def imported_sections(model: pretrained.Pretrained, data_name: str, data_dir: str,
                      autoencoder_file: str = "") -> dict:
    """The config sections (model, diffusion, data; autoencoder for latent diffusion, its weights
    in autoencoder_file) that reproduce an imported model."""
    unet, images = model.unet, model.autoencoder or model.unet
    if images.in_channels != images.out_channels or images.in_channels not in (1, 3) or \
            unet.in_channels != unet.out_channels:
        raise InvalidValue(f"the model maps {images.in_channels} to {images.out_channels} image channels; "
                           f"training here needs images of 1 or 3 channels in and out")
    sections = {
        "model": {f: (tuple(getattr(unet, f)) if f in ("block_out_channels", "attention_levels")
                      else getattr(unet, f)) for f in MODEL_FIELDS},
        "diffusion": {"schedule": model.schedule.kind, "num_timesteps": model.schedule.num_timesteps,
                      "beta_start": model.schedule.beta_start, "beta_end": model.schedule.beta_end},
        "data": {"name": data_name, "data_dir": data_dir, "resolution": model.image_resolution},
    }
    if model.autoencoder is not None:
        ae = model.autoencoder
        sections["autoencoder"] = {"kind": "vq", "params_file": autoencoder_file,
                                   **{f: (tuple(getattr(ae, f)) if f == "block_out_channels" else getattr(ae, f))
                                      for f in AUTOENCODER_FIELDS}}
    return sections


def import_folder(source: str, workdir: str, *, data_name: str = "folder", data_dir: str = "") -> str:
    """Writes `workdir` from the diffusers folder `source` (see the module docstring); -> the
    path of its config.py. Refuses a workdir that already holds checkpoints."""
    if checkpoint.all_steps(workdir):
        raise InvalidValue(f"{workdir} already holds checkpoints: import into a new workdir")
    model = pretrained.from_diffusers(source)
    workdir = storage.absolute(workdir)
    ae_file = ""
    if model.autoencoder is not None:
        ae_file = storage.join(workdir, AUTOENCODER_FILE)
        if jax.process_index() == 0:
            storage.make_dirs(workdir)
            autoencoder_lib.save_params(ae_file, model.autoencoder_params)
    from configs import default  # the defaults every config starts from (configs/ is at the repository root)
    config = default.get_config()
    sections = imported_sections(model, data_name, data_dir, ae_file)
    for section, values in sections.items():
        config[section].update(values)
    config.training.init_from = workdir
    config_lib.validate_model(config)
    if data_dir:
        config_lib.validate(config)
    spec = config_lib.model_spec(config, (model.autoencoder or model.unet).in_channels)
    expected = model.model_spec(spec.data, ae_file).to_dict()
    if any(spec.to_dict().get(k) != expected.get(k) for k in ("unet", "latent")):  # a bug, not an input error
        raise AssertionError(f"the config does not reproduce the imported model: {spec} vs {expected}")
    state = state_from_params(model.params, config_lib.optimizer(config))
    config_json = config_lib.to_json(config)
    mngr = checkpoint.manager(workdir, keep=1)
    checkpoint.save(mngr, 0, state, spec=spec, config_json=config_json)
    mngr.wait_until_finished()
    checkpoint.write_config(workdir, config_json)
    config_py = storage.join(workdir, "config.py")
    if jax.process_index() == 0:
        storage.write_text(config_py, CONFIG_PY.format(
            source=storage.absolute(source), config_py=config_py, workdir=workdir,
            sections=pprint.pformat(sections, width=100, sort_dicts=True)))
    return config_py


def export_workdir(workdir: str, out: str, *, step: Optional[int] = None, ema: bool = True) -> str:
    """Writes the parameters of `workdir`'s checkpoint as a diffusers folder `out`; -> out."""
    loaded = checkpoint.load_params(workdir, step=step, ema=ema)
    spec = loaded.spec
    if spec.latent is None:
        return pretrained.to_diffusers(spec.unet, loaded.params, spec.schedule, out, resolution=spec.data.resolution)
    return pretrained.to_diffusers(spec.unet, loaded.params, spec.schedule, out, resolution=spec.image_shape[0],
                                   clip_sample=None, autoencoder=spec.latent.autoencoder,
                                   autoencoder_params=spec.latent.load_params())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m isodiff_jax.pretrained", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", help="a diffusers folder (model_index.json, or config.json + weights)")
    p.add_argument("--workdir", help="the training workdir to write (import)")
    p.add_argument("--data_name", default="folder",
                   help="config.data.name of the imported config (default: folder, images under --data_dir)")
    p.add_argument("--data_dir", default="", help="config.data.data_dir (can also be set when training)")
    p.add_argument("--export", metavar="WORKDIR", help="a training workdir to export")
    p.add_argument("--out", help="the diffusers folder to write (export)")
    p.add_argument("--step", type=int, default=None, help="export: checkpoint step (default: the newest)")
    p.add_argument("--raw", action="store_true", help="export: raw parameters instead of the EMA")
    p.add_argument("--traceback", action="store_true", help="show the traceback of input errors too")
    return p


def run(args: argparse.Namespace) -> str:
    for path in (args.source, args.workdir, args.export, args.out):
        if path:
            storage.check_reachable(path)
    if args.export:
        if args.source or args.workdir or not args.out:
            raise errors.UserError("--export WORKDIR takes --out DIR (and neither a source folder nor --workdir)")
        out = export_workdir(args.export, args.out, step=args.step, ema=not args.raw)
        return f"wrote {out} (open it with diffusers.DDIMPipeline.from_pretrained)"
    if not args.source or not args.workdir or args.out:
        raise errors.UserError("give a diffusers folder and --workdir OUT (or --export WORKDIR --out DIR)")
    config_py = import_folder(args.source, args.workdir, data_name=args.data_name, data_dir=args.data_dir)
    note = "" if args.data_dir or args.data_name == "shapes" else " --config.data.data_dir=DATA"
    if storage.is_url(config_py):  # absl reads a config file from the local disk only
        return (f"wrote {args.workdir}; copy its config here (gcloud storage cp {config_py} imported_config.py), "
                f"then fine-tune with: python train.py --config imported_config.py --workdir RUN{note}")
    return f"wrote {args.workdir}; fine-tune with: python train.py --config {config_py} --workdir RUN{note}"


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    quiet.quiet_third_party()  # ISODIFF_VERBOSE=1 keeps Orbax's and asyncio's messages
    with errors.exit_on_user_error(traceback=args.traceback):
        print(run(args))
