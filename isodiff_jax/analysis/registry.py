"""Every measure of the library, by name: `REGISTRY` maps a metric name to an `Entry` that builds
its evaluator and declares what it yields, the data sets it applies to and the networks it needs.

The analysis command (`--metrics`), in-training evaluation (`config.evaluation.metrics`) and the
studies in experiments/ all read this one table:

    mrtl, mcn (= vor), ppl, inversion   the model only (ppl uses LPIPS when given)
    rank_iso                            the model only: exact rank·L_iso at each timestep
    fd                                  Inception-v3 (fid) and/or the data set's own network:
                                        the oracle on shapes (fd_oracle), the classifier on digits
                                        (fd_classifier)
    factor_rtl, edit, linearity         shapes and the oracle
    probe                               shapes (the generator's own factors)
    class_probe                         digits (the scans' labels)
    pullback                            shapes with the oracle, or digits with the classifier

An entry's `names(context)` are exactly the values its evaluator measures (tests check it for
every entry); a metric that cannot run on a model says why in one line (`problems`).
"""
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from isodiff_jax import diffusion
from isodiff_jax.analysis.edits import factors, pullback, scoring, supervised
from isodiff_jax.analysis.evaluator import Evaluator, Measured, merged
from isodiff_jax.analysis.measures import inversion, ppl, probe, quality, rank_iso, rtl, spectrum
from isodiff_jax.analysis.options import Options
from isodiff_jax.analysis.sampling import real_images, real_x0, sampler
from isodiff_jax.data import shapes
from isodiff_jax.errors import InvalidValue
from isodiff_jax.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Resources:
    """Networks loaded from local files; None when not given."""
    oracle: Optional[Any] = None  # oracle.Oracle (shapes)
    inception: Optional[Any] = None  # inception features, with .features(images) -> (B, 2048)
    lpips: Optional[Any] = None  # lpips.Lpips, with .net and .distance(a, b) -> (B,)
    classifier: Optional[Any] = None  # digit_classifier.Classifier (digits)

    def given(self) -> frozenset:
        return frozenset(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)


def load_resources(oracle_dir: str = "", inception_file: str = "", lpips_file: str = "",
                   classifier_dir: str = "") -> Resources:
    """Networks from local files ("" or None: not used)."""
    resources = {}
    if oracle_dir:
        from isodiff_jax.analysis.networks import oracle
        resources["oracle"] = oracle.load(oracle_dir)
    if inception_file:
        from isodiff_jax.analysis.networks import inception
        resources["inception"] = inception.load(inception_file)
    if lpips_file:
        from isodiff_jax.analysis.networks import lpips
        resources["lpips"] = lpips.load(lpips_file)
    if classifier_dir:
        from isodiff_jax.analysis.networks import digit_classifier
        resources["classifier"] = digit_classifier.load(classifier_dir)
    return Resources(**resources)


# what each network is, and the one data set it reads (None: any)
RESOURCES = {"oracle": ("the factor oracle", "shapes"), "inception": ("Inception-v3 weights", None),
             "lpips": ("LPIPS weights", None), "classifier": ("the digit classifier", "digits")}
CLI_INPUTS = {"oracle": "--oracle DIR", "inception": "--inception FILE", "lpips": "--lpips FILE",
              "classifier": "--classifier DIR"}
CONFIG_INPUTS = {"oracle": "evaluation.oracle_dir", "inception": "evaluation.inception_file",
                 "lpips": "evaluation.lpips_file", "classifier": "evaluation.classifier_dir"}


@dataclasses.dataclass(frozen=True)
class Context:
    """What an entry builds its evaluator from."""
    spec: ModelSpec
    options: Options = Options()
    resources: Resources = Resources()
    mesh: Optional[Mesh] = None


@dataclasses.dataclass(frozen=True)
class Entry:
    """One measure: build(context) -> its evaluator; names(context) -> the values it measures."""
    build: Callable[[Context], Evaluator]
    names: Callable[[Context], tuple[str, ...]]
    datasets: tuple[str, ...] = ()  # the data sets it applies to (empty: every one)
    data_needed: str = ""  # what those data sets give it, for the message when the data set is another
    needs: tuple[str, ...] = ()  # networks it needs, every one
    needs_one_of: tuple[str, ...] = ()  # ... or at least one of these that reads the model's data set
    timesteps: tuple[str, ...] = ()  # the options holding timesteps it measures at


def _usable(resource: str, data_name: str) -> bool:
    return RESOURCES[resource][1] in (None, data_name)


def missing(metric: str, data_name: str, given, inputs: dict = CLI_INPUTS) -> Optional[str]:
    """Why `metric` cannot run on a model of data set `data_name` with the networks `given`
    (names of RESOURCES), or None when it can; `inputs` names how the user gives each network."""
    entry = REGISTRY[metric]
    if entry.datasets and data_name not in entry.datasets:
        return f"{metric} needs {entry.data_needed} (this run used {data_name!r})"
    for resource in entry.needs:
        if resource not in given:
            return f"{metric} needs {RESOURCES[resource][0]} ({inputs[resource]})"
    usable = [r for r in entry.needs_one_of if _usable(r, data_name)]
    if usable and not any(r in given for r in usable):
        return f"{metric} needs " + " or ".join(f"{RESOURCES[r][0]} ({inputs[r]})" for r in usable)
    return None


def problems(metrics, data_name: str, given, inputs: dict = CLI_INPUTS) -> list:
    """Every reason the metrics cannot run (unknown names included); empty when they all can."""
    unknown = [m for m in metrics if m not in REGISTRY]
    out = [f"unknown metrics {unknown}; available: {', '.join(REGISTRY)}"] if unknown else []
    reasons = (missing(m, data_name, given, inputs) for m in metrics if m in REGISTRY)
    return out + [r for r in reasons if r]


def option_problems(options: Options, spec: ModelSpec, metrics) -> list:
    """Every option that does not fit the model's T timesteps for these metrics; empty when all do."""
    T, found, entries = spec.schedule.num_timesteps, [], [REGISTRY[m] for m in metrics if m in REGISTRY]
    for name in sorted({name for entry in entries for name in entry.timesteps}):
        if not all(0 <= t < T for t in getattr(options, name)):
            found.append(f"{name}={','.join(map(str, getattr(options, name)))} is invalid for a model of T = {T} "
                         f"timesteps: allowed timesteps in [0, {T})")
    if spec.latent is None and options.ppl_space == "latent" and "ppl" in metrics:
        found.append("ppl_space='latent' needs a latent diffusion model (this one diffuses images)")
    for name, low in (("sample_steps", 1), ("fd_sample_steps", 0)):
        if not low <= getattr(options, name) <= T:
            found.append(f"{name}={getattr(options, name)} is invalid for a model of T = {T} timesteps: "
                         f"allowed [{low}, {T}]")
    if not 1 <= options.sample_steps <= T:
        return found
    ddim = diffusion.ddim_timesteps(T, options.sample_steps)
    if "edit" in metrics and options.h_min_t > int(ddim.max()):
        found.append(f"h_min_t={options.h_min_t} leaves no DDIM step to edit: allowed at most the largest "
                     f"DDIM timestep, {int(ddim.max())} (T = {T}, sample_steps={options.sample_steps})")
    off_grid = [t for t in options.pullback_timesteps if t not in ddim]
    if "pullback" in metrics and off_grid:
        found.append(f"pullback_timesteps {off_grid} are not DDIM timesteps of sample_steps="
                     f"{options.sample_steps} (those are {','.join(map(str, sorted(ddim.tolist())))})")
    return found


def check(metrics, spec: ModelSpec, resources: Resources, options: Optional[Options] = None) -> None:
    """Raises InvalidValue naming every reason the metrics cannot run (with `options`: also every
    option that does not fit the model)."""
    found = problems(metrics, spec.data.name, resources.given())
    found += option_problems(options, spec, metrics) if options is not None else []
    if found:
        raise InvalidValue("; ".join(found))


# --- the evaluators that join several parts -----------------------------------------------------

class SpectrumAtTimesteps(Evaluator):
    """MCN / VoR at each timestep (one `spectrum.Spectrum` per timestep, prefix t{t}_), at real
    images noised to x_t (options.mcn_input "noised_data") or at pure noise x ~ N(0, I) ("noise",
    what the original code measures whatever t is)."""

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

    def measure(self, params) -> Measured:
        return merged(part.measure(params) for part in self.parts)


def _spectrum_names(c: Context) -> tuple[str, ...]:
    (height, width, channels), o = c.spec.h_shape, c.options
    m, n = (height // o.pool) * (width // o.pool) * channels, int(np.prod(c.spec.image_shape))  # h pooled, x
    whole = spectrum.whole_spectrum(o.spectrum_method, m, n, num_iters=o.spectrum_iters)
    return tuple(name for t in o.timesteps for name in spectrum.value_names(o.spectrum_method, whole, f"t{t}_"))


def _extractors(c: Context) -> dict:
    """{fd name: (features(images) -> (B, D), probabilities or None, confident-share name)}."""
    r, data = c.resources, c.spec.data.name
    out = {}
    if r.inception is not None:
        out["fid"] = (r.inception.features, None, None)
    if r.oracle is not None and data == "shapes":
        out["fd_oracle"] = (r.oracle.features, r.oracle.shape_probabilities, "oracle_confident_fraction")
    if r.classifier is not None and data == "digits":
        out["fd_classifier"] = (r.classifier.features, r.classifier.probabilities, "classifier_confident_fraction")
    return out


class FrechetDistances(Evaluator):
    """fid, fd_oracle and/or fd_classifier: DDIM samples against real images, whose features are
    computed once; beside each, the distance between two real sets, and for the oracle and the
    classifier the share of samples they read with confidence."""

    def __init__(self, c: Context):
        o = c.options
        sample = sampler(c.spec, o.fd_sample_steps or o.sample_steps, o.fd_sample_eta)
        self.generator = quality.Generator(sample, image_shape=c.spec.image_shape, num=o.num_fd_samples,
                                           seed=o.seed, mesh=c.mesh)
        self.extractors = _extractors(c)
        real = real_images(c.spec, 2 * o.num_fd_samples, o.seed + 2)
        self.real_features = {name: features(real) for name, (features, _, _) in self.extractors.items()}

    def measure(self, params) -> Measured:
        generated, values = self.generator.generate(params), {}
        for name, (features, probabilities, confident) in self.extractors.items():
            values.update(quality.frechet_distances(name, features(generated), self.real_features[name]))
            if probabilities is not None:
                values[confident] = quality.confident_fraction(probabilities(generated))
        return Measured(values)


def _fd_names(c: Context) -> tuple[str, ...]:
    return tuple(n for name, (_, _, confident) in _extractors(c).items()
                 for n in (name, f"{name}_real_vs_real", *((confident,) if confident else ())))


def _ppl_setting(c: Context) -> tuple[Callable, str]:
    """(distance, its name): the original's latent-space MSE of the DDIM latents, LPIPS when
    given (on decoded images for latent diffusion), or the pixel L2."""
    if c.options.ppl_space == "latent":
        return ppl.pixel_l2, "latent_mse"
    if c.resources.lpips is not None:
        return c.resources.lpips.distance, f"lpips_{c.resources.lpips.net}"
    return ppl.pixel_l2, "pixel_l2"


def _ppl(c: Context) -> ppl.Ppl:
    distance, name = _ppl_setting(c)
    o = c.options
    return ppl.Ppl(sampler(c.spec, o.sample_steps, decode=o.ppl_space != "latent"), image_shape=c.spec.image_shape,
                   num_samples=o.num_samples, distance=distance, distance_name=name, seed=o.seed, mesh=c.mesh)


def _inversion(c: Context) -> inversion.Inversion:
    """In latent space for latent diffusion: the images' latents inverted and reconstructed, then
    decoded and compared with the images (so the autoencoder's own error is included)."""
    images = real_images(c.spec, max(4, c.options.num_samples // 4), c.options.seed + 1)
    return inversion.Inversion(c.spec.eps, c.spec.noise_schedule, images, num_steps=c.options.sample_steps,
                               mesh=c.mesh, x0=real_x0(c.spec, images), to_images=c.spec.to_images)


def _reader(c: Context):
    """What reads edited images: the oracle's factors on shapes, the classifier's classes on digits."""
    if c.spec.data.name == "shapes":
        return scoring.FactorReader(c.resources.oracle)
    from isodiff_jax.analysis.networks import digit_classifier
    return scoring.ClassReader(c.resources.classifier, digit_classifier.CLASS_NAMES)


def _reader_names(c: Context) -> tuple[str, ...]:
    if c.spec.data.name == "shapes":
        return tuple(shapes.FACTORS)
    from isodiff_jax.analysis.networks import digit_classifier
    return tuple(digit_classifier.CLASS_NAMES)


def _pullback(c: Context) -> pullback.PullbackEditing:
    o = c.options
    return pullback.PullbackEditing(c.spec, _reader(c), timesteps=o.pullback_timesteps, k=o.pullback_k,
                                      num_samples=o.pullback_samples, sample_steps=o.sample_steps,
                                      num_iters=o.pullback_iters or None, seed=o.seed)


def _class_probe(c: Context) -> probe.ClassProbe:
    """Fitted on the digit classifier's training scans and scored on its held-out ones (or, with
    options.probe_scans = N, on the first N scans, 3/4 of them fitted)."""
    from isodiff_jax.data import digits, pipeline
    o = c.options
    source = digits.DigitsSource(c.spec.data.resolution)
    count = o.probe_scans or digits.NUM_EXAMPLES
    indices = np.arange(count)
    images = pipeline.to_unit_range(source.get(indices))
    return probe.ClassProbe(c.spec.encode, c.spec.noise_schedule, images, source.labels(indices),
                            num_classes=digits.NUM_CLASSES, timesteps=o.timesteps,
                            num_train=3 * count // 4 if o.probe_scans else digits.TEST_START, seed=o.seed, mesh=c.mesh)


def _rank_iso(c: Context) -> rank_iso.ExactRankIso:
    images = real_images(c.spec, c.options.rank_iso_samples, rank_iso.IMAGE_SEED)
    return rank_iso.ExactRankIso(c.spec, c.options.timesteps, real_x0(c.spec, images))


_MCN = Entry(lambda c: SpectrumAtTimesteps(c.spec, c.options), _spectrum_names, timesteps=("timesteps",))
_SHAPES = dict(datasets=("shapes",), data_needed="the shapes data set's ground-truth factors")

REGISTRY = {
    "mrtl": Entry(lambda c: rtl.Mrtl(c.spec.encode, image_shape=c.spec.image_shape, timesteps=c.options.timesteps,
                                     num_pairs=c.options.num_pairs, seed=c.options.seed, mesh=c.mesh),
                  lambda c: rtl.value_names(c.options.timesteps), timesteps=("timesteps",)),
    "mcn": _MCN,
    "vor": _MCN,  # one spectrum gives both
    "ppl": Entry(_ppl, lambda c: (f"ppl_{_ppl_setting(c)[1]}",)),
    "inversion": Entry(_inversion, lambda c: inversion.VALUE_NAMES),
    "fd": Entry(FrechetDistances, _fd_names, needs_one_of=("inception", "oracle", "classifier")),
    "factor_rtl": Entry(lambda c: factors.FactorRtl(sampler(c.spec, c.options.sample_steps), c.resources.oracle,
                                                    image_shape=c.spec.image_shape, num_pairs=c.options.num_pairs,
                                                    seed=c.options.seed),
                        lambda c: factors.value_names(), needs=("oracle",), **_SHAPES),
    "edit": Entry(lambda c: supervised.Editing(c.spec, c.resources.oracle, num_label=c.options.num_label,
                                            num_edit=c.options.num_edit, sample_steps=c.options.sample_steps,
                                            h_min_t=c.options.h_min_t, h_edit=c.options.h_edit, seed=c.options.seed),
                  lambda c: supervised.precision_names(), needs=("oracle",), **_SHAPES),
    "probe": Entry(lambda c: probe.LinearProbe(c.spec.encode, c.spec.noise_schedule, resolution=c.spec.data.resolution,
                                               timesteps=c.options.timesteps, pool=c.options.pool, seed=c.options.seed,
                                               mesh=c.mesh, to_x0=c.spec.to_x0),
                   lambda c: probe.value_names(c.options.timesteps), timesteps=("timesteps",), **_SHAPES),
    "class_probe": Entry(_class_probe, lambda c: probe.class_value_names(c.options.timesteps), datasets=("digits",),
                         data_needed="the digits data set's class labels", timesteps=("timesteps",)),
    "rank_iso": Entry(_rank_iso, lambda c: rank_iso.value_names(c.options.timesteps), timesteps=("timesteps",)),
    "linearity": Entry(lambda c: supervised.SupervisedEdits(c.spec, _reader(c), num_label=c.options.num_label,
                                                           num_edit=c.options.num_edit,
                                                           sample_steps=c.options.sample_steps,
                                                           h_min_t=c.options.h_min_t, seed=c.options.seed),
                       lambda c: supervised.linearity_names(), needs=("oracle",), **_SHAPES),
    "pullback": Entry(_pullback, lambda c: pullback.value_names(c.options.pullback_timesteps, c.options.pullback_k,
                                                                  _reader_names(c)),
                      datasets=("shapes", "digits"), data_needed="a data set whose edits a network reads (shapes "
                      "with the factor oracle, digits with the digit classifier)",
                      needs_one_of=("oracle", "classifier"), timesteps=("pullback_timesteps",)),
}
METRICS = tuple(REGISTRY)
