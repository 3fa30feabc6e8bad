"""Every evaluator behind one call: `evaluate(trained, metrics, options, resources)` yields
(name, value) pairs for a `trained.Trained` (from a checkpoint, or built from a training state).

Metrics and what they need:

    mrtl, mcn, vor, ppl, inversion   the model only (ppl uses LPIPS when resources.lpips is set)
    fd                               resources.inception (-> "fid") and/or, on shapes,
                                     resources.oracle (-> "fd_oracle")
    factor_rtl, edit                 shapes data and resources.oracle
    probe                            shapes data (the generator's own factors)

Scalars are Python floats; arrays and image sets (for pictures) are yielded under names ending
in "_values", "_singular_values", "_pairs" or "_strips".
"""
import dataclasses
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax import data, diffusion, geometry
from isodiff_jax.analysis import editing, factors, inversion, ppl, probe, quality, rtl, spectrum

METRICS = ("mrtl", "mcn", "vor", "ppl", "inversion", "fd", "factor_rtl", "edit", "probe")
SHAPES_ONLY = ("factor_rtl", "edit", "probe")


@dataclasses.dataclass(frozen=True)
class Options:
    num_pairs: int = 32  # mRTL and factor-RTL pairs
    timesteps: tuple = (500, 700, 900)  # mRTL, MCN/VoR and probe timesteps
    num_samples: int = 64  # PPL samples; MCN/VoR and inversion use a quarter of it
    num_fd_samples: int = 512  # generated images for fid / fd_oracle (as many real ones again, twice)
    sample_steps: int = 20  # DDIM steps (η = 0) for every decoded image
    fd_sample_steps: int = 0  # fd's samples: DDIM steps (0: sample_steps)
    fd_sample_eta: float = 0.0  # fd's samples: DDIM η (1 = the training loop's grids)
    pool: int = 1  # average pooling of h before MCN/VoR and the probes
    spectrum_method: str = "matrix_free"  # "dense" or "matrix_free"
    spectrum_iters: int = 64  # matrix-free Lanczos iterations (s_min, hence MCN, converges from above: see docs/benchmarks.md)
    num_label: int = 256  # editing: oracle-labelled samples that define the directions
    num_edit: int = 32  # editing: held-out samples edited
    h_min_t: int = 500  # editing in h: steps with t >= h_min_t are edited
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Resources:
    """Networks loaded from local files; None when not given."""
    oracle: Optional[Any] = None  # oracle.Oracle (shapes only)
    inception: Optional[Any] = None  # inception features, with .features(images) -> (B, 2048)
    lpips: Optional[Any] = None  # lpips.Lpips, with .net and .distance(a, b) -> (B,)


def load_resources(oracle_dir: str = "", inception_file: str = "", lpips_file: str = "") -> Resources:
    """Networks from local files ("" or None: not used)."""
    resources = {}
    if oracle_dir:
        from isodiff_jax.analysis import oracle
        resources["oracle"] = oracle.load(oracle_dir)
    if inception_file:
        from isodiff_jax.analysis import inception
        resources["inception"] = inception.load(inception_file)
    if lpips_file:
        from isodiff_jax.analysis import lpips
        resources["lpips"] = lpips.load(lpips_file)
    return Resources(**resources)


CLI_INPUTS = {"oracle": "--oracle DIR", "inception": "--inception FILE"}  # how each input is given


def missing_inputs(metric: str, data_name: str, *, oracle: bool, inception: bool,
                   inputs: dict = CLI_INPUTS) -> Optional[str]:
    """Why `metric` cannot run on a model of data set `data_name` with or without the oracle and
    Inception weights, or None when it can; `inputs` names how the user gives each of them."""
    on_shapes = data_name == "shapes"
    if metric in SHAPES_ONLY and not on_shapes:
        return f"{metric} needs the shapes data set's ground-truth factors (this run used {data_name!r})"
    if metric in ("factor_rtl", "edit") and not oracle:
        return f"{metric} needs the factor oracle ({inputs['oracle']})"
    if metric == "fd" and not inception and not (on_shapes and oracle):
        return (f"fd needs Inception-v3 weights ({inputs['inception']}) or, on shapes, the factor oracle "
                f"({inputs['oracle']})")
    return None


def problems(metrics, data_name: str, *, oracle: bool, inception: bool, inputs: dict = CLI_INPUTS) -> list:
    """Every reason the metrics cannot run (unknown names included); empty when they all can."""
    unknown = sorted(set(metrics) - set(METRICS))
    out = [f"unknown metrics {unknown}; available: {', '.join(METRICS)}"] if unknown else []
    reasons = (missing_inputs(m, data_name, oracle=oracle, inception=inception, inputs=inputs)
               for m in metrics if m in METRICS)
    return out + [r for r in reasons if r]


def check(metrics, trained, resources: Resources) -> None:
    found = problems(metrics, trained.config.data.name, oracle=resources.oracle is not None,
                     inception=resources.inception is not None)
    if found:
        raise ValueError("; ".join(found))


def sampler(trained, num_steps, eta: float = 0.0):
    """(x_T, key=None) -> images with DDIM, x0 clipped to [-1, 1]; deterministic (η = 0) unless
    eta > 0, which needs the key."""
    return lambda x_T, key=None: diffusion.ddim_sample(trained.eps, trained.schedule, x_T, num_steps, eta=eta,
                                                       key=key, clip_x0=1.0)


def real_images(trained, count: int, seed: int) -> np.ndarray:
    """count images of the run's data set in [-1, 1] (read directly, no training pipeline)."""
    d = trained.config.data
    source = data.make_source(d.name, resolution=d.resolution, seed=trained.config.seed,
                              data_dir=d.data_dir or None, split=d.split)
    if len(source) < count:
        raise ValueError(f"the data set has {len(source)} images, {count} are needed")
    index = np.random.default_rng(seed).choice(len(source), size=count, replace=False)
    return source.get(np.sort(index)).astype(np.float32) / 127.5 - 1.0


def _spectrum(trained, options, key):
    """MCN / VoR over noised real images at each timestep."""
    x0 = real_images(trained, max(4, options.num_samples // 4), options.seed)
    for t in options.timesteps:
        t_vec = lambda x: jnp.full((x.shape[0],), t, jnp.int32)
        fn = lambda x: spectrum.average_pool(trained.encode(x, t_vec(x)), options.pool)
        eps = jax.random.normal(jax.random.fold_in(key, t), x0.shape)
        x_t = diffusion.q_sample(trained.schedule, jnp.asarray(x0), t_vec(x0), eps)
        m, n = spectrum.map_dims(fn, x_t)
        yield from spectrum.spectrum_metrics(fn, x_t, method=options.spectrum_method, key=key, prefix=f"t{t}_",
                                             num_iters=min(options.spectrum_iters, m, n))


def _ppl(trained, options, resources, key):
    distance, name = ppl.pixel_l2, "pixel_l2"
    if resources.lpips is not None:
        distance, name = resources.lpips.distance, f"lpips_{resources.lpips.net}"
    yield from ppl.ppl(sampler(trained, options.sample_steps), key, image_shape=trained.image_shape,
                       num_samples=options.num_samples, distance=distance, distance_name=name)


def _fd(trained, options, resources, key):
    sample = sampler(trained, options.fd_sample_steps or options.sample_steps, options.fd_sample_eta)
    generated = quality.generate(sample, key, image_shape=trained.image_shape, num=options.num_fd_samples)
    real = real_images(trained, 2 * options.num_fd_samples, options.seed + 2)
    if resources.inception is not None:
        yield from quality.frechet_distance("fid", resources.inception.features, generated, real)
    if resources.oracle is not None and trained.config.data.name == "shapes":
        yield from quality.frechet_distance("fd_oracle", resources.oracle.features, generated, real)
        yield "oracle_confident_fraction", quality.confident_fraction(resources.oracle.shape_probabilities(generated))


def evaluate(trained, metrics, options: Options, resources: Resources = Resources()) -> Iterator:
    """Yields (name, value) for the chosen metrics, in METRICS order."""
    check(metrics, trained, resources)
    key = jax.random.PRNGKey(options.seed)
    sample = sampler(trained, options.sample_steps)
    if "mrtl" in metrics:
        yield from rtl.mrtl(trained.encode, key, image_shape=trained.image_shape, timesteps=options.timesteps,
                            num_pairs=options.num_pairs)
    if "mcn" in metrics or "vor" in metrics:
        yield from _spectrum(trained, options, key)
    if "ppl" in metrics:
        yield from _ppl(trained, options, resources, key)
    if "inversion" in metrics:
        images = real_images(trained, max(4, options.num_samples // 4), options.seed + 1)
        yield from inversion.inversion_error(trained.eps, trained.schedule, images, num_steps=options.sample_steps)
    if "fd" in metrics:
        yield from _fd(trained, options, resources, key)
    if "factor_rtl" in metrics:
        yield from factors.factor_rtl(sample, resources.oracle, key, image_shape=trained.image_shape,
                                      num_pairs=options.num_pairs)
    if "edit" in metrics:
        yield from editing.editing(trained, resources.oracle, key, num_label=options.num_label,
                                   num_edit=options.num_edit, sample_steps=options.sample_steps,
                                   h_min_t=options.h_min_t)
    if "probe" in metrics:
        yield from probe.linear_probe(trained.encode, trained.schedule, key, resolution=trained.config.data.resolution,
                                      timesteps=options.timesteps, pool=options.pool)


def interpolation_rows(trained, options: Options, num_frames: int = 9) -> dict:
    """Frames decoded along slerp and lerp between two fixed x_T."""
    k0, k1 = jax.random.split(jax.random.PRNGKey(options.seed + 7))
    x0, x1 = (jax.random.normal(k, (1, *trained.image_shape)).reshape(1, -1) for k in (k0, k1))
    w = jnp.linspace(0, 1, num_frames)[:, None]
    sample = jax.jit(sampler(trained, options.sample_steps))
    shape = (num_frames, *trained.image_shape)
    return {"slerp": np.asarray(sample(geometry.slerp(x0, x1, w).reshape(shape))),
            "lerp": np.asarray(sample(geometry.lerp(x0, x1, w).reshape(shape)))}
