"""Every evaluator behind one object: `Suite(spec, metrics, options, resources, mesh)` is built
once for a model spec; `suite.run(params)` yields (name, value) pairs for any parameters of that
model (a checkpoint, or the EMA parameters inside training) and compiles nothing after the first
run.

Metrics and what they need:

    mrtl, mcn, vor, ppl, inversion   the model only (ppl uses LPIPS when resources.lpips is set)
    fd                               resources.inception (-> "fid") and/or, on shapes,
                                     resources.oracle (-> "fd_oracle")
    factor_rtl, edit                 shapes data and resources.oracle
    probe                            shapes data (the generator's own factors)

Scalars are Python floats; arrays and image sets (for pictures) are yielded under names ending
in "_values", "_singular_values", "_pairs", "_strips" or "_frames".
"""
import dataclasses
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from isodiff_jax import diffusion, geometry, sharding
from isodiff_jax.analysis import editing, factors, inversion, ppl, probe, quality, rtl, spectrum
from isodiff_jax.analysis.options import Options
from isodiff_jax.data import pipeline
from isodiff_jax.errors import InvalidValue
from isodiff_jax.spec import ModelSpec

METRICS = ("mrtl", "mcn", "vor", "ppl", "inversion", "fd", "factor_rtl", "edit", "probe")
SHAPES_ONLY = ("factor_rtl", "edit", "probe")
AT_TIMESTEPS = ("mrtl", "mcn", "vor", "probe")  # the metrics measured at options.timesteps

__all__ = ["METRICS", "Options", "Resources", "Suite", "Interpolation", "load_resources", "check", "problems",
           "option_problems", "missing_inputs", "sampler", "real_images"]


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


def check(metrics, spec: ModelSpec, resources: Resources, options: Optional[Options] = None) -> None:
    """Raises InvalidValue naming every reason the metrics cannot run (with `options`: also every
    option that does not fit the model)."""
    found = problems(metrics, spec.data.name, oracle=resources.oracle is not None,
                     inception=resources.inception is not None)
    found += option_problems(options, spec, metrics) if options is not None else []
    if found:
        raise InvalidValue("; ".join(found))


def option_problems(options: Options, spec: ModelSpec, metrics) -> list:
    """Every option that does not fit the model's T timesteps for these metrics; empty when all do."""
    T, found = spec.schedule.num_timesteps, []
    if set(metrics) & set(AT_TIMESTEPS) and not all(0 <= t < T for t in options.timesteps):
        found.append(f"timesteps={','.join(map(str, options.timesteps))} is invalid for a model of T = {T} "
                     f"timesteps: allowed timesteps in [0, {T})")
    if spec.latent is None and options.ppl_space == "latent" and "ppl" in metrics:
        found.append("ppl_space='latent' needs a latent diffusion model (this one diffuses images)")
    for name, low in (("sample_steps", 1), ("fd_sample_steps", 0)):
        if not low <= getattr(options, name) <= T:
            found.append(f"{name}={getattr(options, name)} is invalid for a model of T = {T} timesteps: "
                         f"allowed [{low}, {T}]")
    if "edit" in metrics and 1 <= options.sample_steps <= T:
        largest = int(diffusion.ddim_timesteps(T, options.sample_steps).max())
        if options.h_min_t > largest:
            found.append(f"h_min_t={options.h_min_t} leaves no DDIM step to edit: allowed at most the largest "
                         f"DDIM timestep, {largest} (T = {T}, sample_steps={options.sample_steps})")
    return found


def sampler(spec: ModelSpec, num_steps: int, eta: float = 0.0, decode: bool = True) -> Callable:
    """(params, x_T, key=None) -> images with DDIM, x0 clipped to [-1, 1] in pixel space;
    deterministic (η = 0) unless eta > 0, which needs the key. Latent diffusion: the samples are
    decoded (params then carry the autoencoder's, `ModelSpec.with_autoencoder`) unless
    decode=False. Pure: jit it (with the parameters as an argument)."""
    def sample(params, x_T, key=None):
        x0 = diffusion.ddim_sample(lambda x, t: spec.eps(params, x, t), spec.noise_schedule, x_T, num_steps,
                                   eta=eta, key=key, clip_x0=spec.clip_x0)
        return spec.to_images(params, x0) if decode else x0
    return sample


def real_images(spec: ModelSpec, count: int, seed: int) -> np.ndarray:
    """count images of the model's data set in [-1, 1] (read directly, no training pipeline)."""
    source = spec.data.source()
    if len(source) < count:
        raise ValueError(f"the data set has {len(source)} images, {count} are needed")
    index = np.random.default_rng(seed).choice(len(source), size=count, replace=False)
    return pipeline.to_unit_range(source.get(np.sort(index)))


def real_x0(spec: ModelSpec, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Images in [-1, 1] -> the diffusion model's x0: the images, or their latents (encoded with
    the autoencoder's weights from the spec's params_file)."""
    if spec.latent is None:
        return images
    ae_params = {"autoencoder": spec.latent.load_params()["params"]}
    encode = jax.jit(spec.to_x0)
    return np.concatenate([np.asarray(encode(ae_params, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


class _SpectrumAtTimesteps:
    """MCN / VoR at each timestep (one `spectrum.Spectrum` per timestep), at real images noised
    to x_t (options.mcn_input "noised_data") or at pure noise x ~ N(0, I) ("noise", what the
    original code measures whatever t is)."""

    def __init__(self, spec: ModelSpec, options: Options):
        key = jax.random.PRNGKey(options.seed)
        count = max(4, options.num_samples // 4)
        x0 = None
        if options.mcn_input == "noised_data":
            x0 = jnp.asarray(real_x0(spec, real_images(spec, count, options.seed)))
        self.parts = []
        for t in options.timesteps:
            fn = lambda params, x, t=t: spectrum.average_pool(
                spec.encode(params, x, jnp.full((x.shape[0],), t, jnp.int32)), options.pool)
            eps = jax.random.normal(jax.random.fold_in(key, t), (count, *spec.image_shape))
            x_t = eps if x0 is None else diffusion.q_sample(spec.noise_schedule, x0, jnp.full((count,), t), eps)
            self.parts.append(spectrum.Spectrum(fn, x_t, params_like=spec.abstract_params(),
                                                method=options.spectrum_method, key=key, prefix=f"t{t}_",
                                                num_iters=options.spectrum_iters))

    def run(self, params) -> Iterator:
        for part in self.parts:
            yield from part.run(params)


class _FrechetDistances:
    """fid and/or fd_oracle: generated images against real ones, whose features are computed once."""

    def __init__(self, spec: ModelSpec, options: Options, resources: Resources, mesh: Optional[Mesh]):
        sample = sampler(spec, options.fd_sample_steps or options.sample_steps, options.fd_sample_eta)
        self.generator = quality.Generator(sample, image_shape=spec.image_shape, num=options.num_fd_samples,
                                           seed=options.seed, mesh=mesh)
        self.extractors = {}
        if resources.inception is not None:
            self.extractors["fid"] = resources.inception.features
        if resources.oracle is not None and spec.data.name == "shapes":
            self.extractors["fd_oracle"] = resources.oracle.features
        real = real_images(spec, 2 * options.num_fd_samples, options.seed + 2)
        self.real_features = {name: features(real) for name, features in self.extractors.items()}
        self.oracle = resources.oracle if "fd_oracle" in self.extractors else None

    def run(self, params) -> Iterator:
        generated = self.generator.generate(params)
        for name, features in self.extractors.items():
            yield from quality.frechet_distances(name, features(generated), self.real_features[name])
        if self.oracle is not None:
            yield "oracle_confident_fraction", quality.confident_fraction(self.oracle.shape_probabilities(generated))


def _ppl(spec: ModelSpec, options: Options, resources: Resources, mesh: Optional[Mesh]) -> ppl.Ppl:
    distance, name = ppl.pixel_l2, "pixel_l2"
    in_latents = options.ppl_space == "latent"  # the original's latent-space PPL (MSE of the DDIM latents)
    if in_latents:
        name = "latent_mse"
    elif resources.lpips is not None:  # on decoded images for latent diffusion
        distance, name = resources.lpips.distance, f"lpips_{resources.lpips.net}"
    return ppl.Ppl(sampler(spec, options.sample_steps, decode=not in_latents), image_shape=spec.image_shape,
                   num_samples=options.num_samples, distance=distance, distance_name=name, seed=options.seed, mesh=mesh)


def _inversion(spec: ModelSpec, options: Options, mesh: Optional[Mesh]) -> inversion.Inversion:
    """In latent space for latent diffusion: the images' latents inverted and reconstructed, then
    decoded and compared with the images (so the autoencoder's own error is included)."""
    images = real_images(spec, max(4, options.num_samples // 4), options.seed + 1)
    return inversion.Inversion(spec.eps, spec.noise_schedule, images, num_steps=options.sample_steps, mesh=mesh,
                               x0=real_x0(spec, images), to_images=spec.to_images)


def _builders(spec: ModelSpec, options: Options, resources: Resources, mesh: Optional[Mesh]) -> dict:
    """{metric: () -> evaluator}, in METRICS order ("vor" is computed by the "mcn" evaluator)."""
    o = options
    return {
        "mrtl": lambda: rtl.Mrtl(spec.encode, image_shape=spec.image_shape, timesteps=o.timesteps,
                                 num_pairs=o.num_pairs, seed=o.seed, mesh=mesh),
        "mcn": lambda: _SpectrumAtTimesteps(spec, o),
        "ppl": lambda: _ppl(spec, o, resources, mesh),
        "inversion": lambda: _inversion(spec, o, mesh),
        "fd": lambda: _FrechetDistances(spec, o, resources, mesh),
        "factor_rtl": lambda: factors.FactorRtl(sampler(spec, o.sample_steps), resources.oracle,
                                                image_shape=spec.image_shape, num_pairs=o.num_pairs, seed=o.seed),
        "edit": lambda: editing.Editing(spec, resources.oracle, num_label=o.num_label, num_edit=o.num_edit,
                                        sample_steps=o.sample_steps, h_min_t=o.h_min_t, h_edit=o.h_edit,
                                        seed=o.seed),
        "probe": lambda: probe.LinearProbe(spec.encode, spec.noise_schedule, resolution=spec.data.resolution,
                                           timesteps=o.timesteps, pool=o.pool, seed=o.seed, mesh=mesh,
                                           to_x0=spec.to_x0),
    }


class Suite:
    """The evaluators of `metrics` for one model spec, built once.

    `run(params)` yields (name, value) for the chosen metrics, in METRICS order. Every kernel takes
    the parameters as an argument, so a run on new parameters of the same shapes (another
    checkpoint, a later training step) compiles nothing. With a mesh, evaluation batches are split
    over its devices (of every process; all processes must call `run` together).
    """

    def __init__(self, spec: ModelSpec, metrics, options: Options = Options(), resources: Resources = Resources(),
                 mesh: Optional[Mesh] = None):
        metrics = list(metrics)
        check(metrics, spec, resources, options)
        if "vor" in metrics and "mcn" not in metrics:
            metrics.append("mcn")  # one spectrum gives both
        self.spec, self.metrics, self.options = spec, metrics, options
        builders = _builders(spec, options, resources, mesh)
        self.evaluators = {name: build() for name, build in builders.items() if name in metrics}

    def run(self, params) -> Iterator[tuple[str, Any]]:
        for evaluator in self.evaluators.values():
            yield from evaluator.run(params)


class Interpolation:
    """Frames decoded along slerp and lerp between two fixed x_T (for pictures): `run(params)`
    yields ("interpolation_frames", {"slerp": (K, H, W, C), "lerp": (K, H, W, C)})."""

    def __init__(self, spec: ModelSpec, options: Options, num_frames: int = 9):
        k0, k1 = jax.random.split(jax.random.PRNGKey(options.seed + 7))
        x0, x1 = (jax.random.normal(k, (1, *spec.image_shape)) for k in (k0, k1))
        w = jnp.linspace(0, 1, num_frames)  # (1, H, W, C) ends and (K,) weights give K frames
        self.paths = {name: np.asarray(path(x0, x1, w)) for name, path in (("slerp", geometry.slerp),
                                                                           ("lerp", geometry.lerp))}
        self._sample = jax.jit(sampler(spec, options.sample_steps))

    def run(self, params) -> Iterator[tuple[str, dict]]:
        frames = {name: sharding.to_host(self._sample(params, x)) for name, x in self.paths.items()}
        yield "interpolation_frames", frames
