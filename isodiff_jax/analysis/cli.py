"""`python -m isodiff_jax.analysis`: metrics and pictures for a training workdir, or a comparison
of several.

    python -m isodiff_jax.analysis --workdir runs/x --metrics mrtl,mcn,vor,ppl,inversion --out runs/x/analysis
    python -m isodiff_jax.analysis --compare runs/a runs/b --out runs/compare

The first writes OUT/metrics.json and PNG pictures; the second analyses each workdir into
OUT/<name>/ and writes OUT/comparison.md with every metric side by side.
"""
import argparse
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from isodiff_jax import data, diffusion, geometry
from isodiff_jax.analysis import inversion, load, pictures, ppl, rtl, spectrum

METRICS = ("mrtl", "mcn", "vor", "ppl", "inversion")


@dataclasses.dataclass(frozen=True)
class Options:
    num_pairs: int = 32  # mRTL pairs
    timesteps: tuple = (500, 700, 900)  # mRTL and MCN/VoR timesteps
    num_samples: int = 64  # PPL samples; MCN/VoR and inversion use a quarter of it
    sample_steps: int = 20  # DDIM steps for PPL, interpolation and inversion
    pool: int = 1  # average pooling of h before MCN/VoR
    spectrum_method: str = "matrix_free"  # "dense" or "matrix_free"
    seed: int = 0


def sampler(trained, num_steps):
    return lambda x_T: diffusion.ddim_sample(trained.eps, trained.schedule, x_T, num_steps, clip_x0=1.0)


def real_images(trained, count: int, seed: int) -> np.ndarray:
    """count images of the workdir's data set in [-1, 1] (read directly, no training pipeline)."""
    d = trained.config.data
    source = data.make_source(d.name, resolution=d.resolution, seed=trained.config.seed,
                              data_dir=d.data_dir or None, split=d.split)
    index = np.random.default_rng(seed).choice(len(source), size=count, replace=False)
    return source.get(np.sort(index)).astype(np.float32) / 127.5 - 1.0


def _spectrum(trained, options, key):
    """MCN / VoR over noised real images at each timestep; yields pairs, keeps spectra for pictures."""
    x0 = real_images(trained, max(4, options.num_samples // 4), options.seed)
    for t in options.timesteps:
        t_vec = lambda x: jnp.full((x.shape[0],), t, jnp.int32)
        fn = lambda x: spectrum.average_pool(trained.encode(x, t_vec(x)), options.pool)
        eps = jax.random.normal(jax.random.fold_in(key, t), x0.shape)
        x_t = diffusion.q_sample(trained.schedule, jnp.asarray(x0), t_vec(x0), eps)
        yield from spectrum.spectrum_metrics(fn, x_t, method=options.spectrum_method, key=key, prefix=f"t{t}_")


def evaluate(trained, metrics, options: Options):
    """Yields (name, value) for the chosen metrics (arrays and image pairs included for pictures)."""
    key = jax.random.PRNGKey(options.seed)
    if "mrtl" in metrics:
        yield from rtl.mrtl(trained.encode, key, image_shape=trained.image_shape, timesteps=options.timesteps,
                            num_pairs=options.num_pairs)
    if "mcn" in metrics or "vor" in metrics:
        yield from _spectrum(trained, options, key)
    if "ppl" in metrics:
        yield from ppl.ppl(sampler(trained, options.sample_steps), key, image_shape=trained.image_shape,
                           num_samples=options.num_samples)
    if "inversion" in metrics:
        images = real_images(trained, max(4, options.num_samples // 4), options.seed + 1)
        yield from inversion.inversion_error(trained.eps, trained.schedule, images, num_steps=options.sample_steps)


def interpolation_rows(trained, options: Options, num_frames: int = 9) -> dict:
    """Frames decoded along slerp and lerp between two fixed x_T."""
    k0, k1 = jax.random.split(jax.random.PRNGKey(options.seed + 7))
    x0, x1 = (jax.random.normal(k, (1, *trained.image_shape)).reshape(1, -1) for k in (k0, k1))
    w = jnp.linspace(0, 1, num_frames)[:, None]
    sample = jax.jit(sampler(trained, options.sample_steps))
    shape = (num_frames, *trained.image_shape)
    return {"slerp": np.asarray(sample(geometry.slerp(x0, x1, w).reshape(shape))),
            "lerp": np.asarray(sample(geometry.lerp(x0, x1, w).reshape(shape)))}


def _draw(out: str, label: str, results: dict, trained, options: Options) -> list:
    """The pictures for one workdir's results; returns the paths written."""
    paths = [pictures.interpolation(os.path.join(out, "interpolation.png"), interpolation_rows(trained, options))]
    if "rtl_values" in results:
        paths.append(pictures.histogram(os.path.join(out, "rtl_histogram.png"),
                                        {label: results["rtl_values"]}, "RTL"))
    spectra = {f"{label} {k[:-len('_singular_values')]}": v for k, v in results.items()
               if k.endswith("singular_values")}
    if spectra:
        paths.append(pictures.spectra(os.path.join(out, "spectra.png"), spectra))
    if "inversion_pairs" in results:
        paths.append(pictures.inversion(os.path.join(out, "inversion.png"), *results["inversion_pairs"]))
    return paths


def analyse(workdir: str, metrics, out: str, options: Options, *, step=None, ema=True) -> dict:
    """Runs the metrics on one workdir; writes OUT/metrics.json and the pictures; returns the scalars."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; available: {', '.join(METRICS)}")
    trained = load.load(workdir, step=step, ema=ema)
    results = {}
    with tqdm.tqdm(evaluate(trained, metrics, options), desc=f"analysing {workdir}", unit="value") as bar:
        for name, value in bar:
            results[name] = value
            bar.set_postfix_str(name)
    scalars = {k: v for k, v in results.items() if isinstance(v, float)}
    os.makedirs(out, exist_ok=True)
    paths = _draw(out, os.path.basename(os.path.normpath(workdir)), results, trained, options)
    report = {"workdir": os.path.abspath(workdir), "step": trained.step, "parameters": "ema" if ema else "raw",
              "options": dataclasses.asdict(options), "metrics": scalars,
              "pictures": [os.path.basename(p) for p in paths]}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    return scalars


def comparison_table(names, scalars) -> str:
    """Markdown table: one row per metric, one column per run."""
    keys = sorted(set().union(*scalars))
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for key in keys:
        cells = [f"{s[key]:.6g}" if key in s else "" for s in scalars]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m isodiff_jax.analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--workdir", help="a training workdir")
    runs.add_argument("--compare", nargs="+", metavar="WORKDIR", help="several workdirs side by side")
    parser.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated, from {METRICS}")
    parser.add_argument("--out", required=True, help="where metrics.json and the pictures go")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--raw", action="store_true", help="raw parameters instead of the EMA")
    for field in dataclasses.fields(Options):
        kind = type(field.default)
        parser.add_argument(f"--{field.name}", default=field.default,
                            type=(lambda s: tuple(int(v) for v in s.split(","))) if kind is tuple else kind)
    args = parser.parse_args(argv)
    options = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})
    metrics = [m for m in args.metrics.split(",") if m]
    workdirs = args.compare or [args.workdir]
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(set(names)) != len(names):
        parser.error(f"workdir names must differ to label the comparison: {names}")
    outs = [os.path.join(args.out, n) for n in names] if args.compare else [args.out]
    scalars = [analyse(w, metrics, o, options, step=args.step, ema=not args.raw) for w, o in zip(workdirs, outs)]
    if args.compare:
        with open(os.path.join(args.out, "comparison.md"), "w") as f:
            f.write(comparison_table(names, scalars))
        _compare_pictures(args.out, names, outs)
    print(comparison_table(names, scalars))
    print(f"written to {os.path.abspath(args.out)}")


def _compare_pictures(out: str, names, outs) -> None:
    """The runs' interpolation figures side by side."""
    from PIL import Image
    figures = [Image.open(os.path.join(o, "interpolation.png")).convert("RGB") for o in outs]
    canvas = Image.new("RGB", (sum(f.width for f in figures), max(f.height for f in figures)), "white")
    x = 0
    for figure in figures:
        canvas.paste(figure, (x, 0))
        x += figure.width
    canvas.save(os.path.join(out, "interpolation_side_by_side.png"))
