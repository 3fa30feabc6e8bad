"""Latent spaces whose disentanglement is known, to show that a measure can tell (method.md §6b).

Each control has a latent x ~ N(0, I_6) (as x_T is Gaussian), a decoder x -> image (the shapes
renderer, through a factor code z) and a representation h = e(x) (what probes and pullback
directions read, as h-space does for a model):

    axes     z = x                       h = D z      disentangled, axis-aligned
    rotated  z = Rᵀ x  (R fixed random)  h = D z      disentangled, no preferred latent axes
    mixed    z = Q₂ √2 sin(2.5 Q₁ x + φ) h = D x      entangled: a fixed nonlinear mix

D = diag(scales) has distinct entries, so each control's Jacobian has distinct singular values
and its local basis is unique. The factor code z maps to the six factors as the data set's own:
shape = ⌊3 Φ(z₀)⌋, object hue = Φ(z₁)/4 (a quarter of the wheel), background hue = ½ + Φ(z₂)/4
(a separate quarter, so that every pair stays ≥ 0.25 apart as in `shapes`, yet the two hues are
independent coordinates), scale, x, y = low + (high − low) Φ(z₃…₅); Φ the normal CDF.

`control.measure(reader)` runs every disentanglement measure of the study on one control: the
supervised editing precision of `supervised` with its linearity and composition, the held-out
linear probes of `probe`, and the purity, coverage and linearity of the pullback directions of
`pullback`, all read through the same network as a model's images (the factor oracle on shapes,
the digit classifier on digits).
"""
import dataclasses
import functools
from typing import ClassVar, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

from isodiff_jax.analysis.edits import factors, pullback, scoring, supervised
from isodiff_jax.analysis.measures import probe
from isodiff_jax.data import digits, pipeline, shapes

CONTROLS = ("axes", "rotated", "mixed")
POSITIVE = ("axes", "rotated")
ALPHAS = scoring.ALPHAS


def _orthogonal(rng, size: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


@dataclasses.dataclass(frozen=True)
class Control:
    """One control latent space (see the module docstring); `seed` fixes R, Q₁, Q₂ and φ. Each
    data set implements the same interface: `dim` and `scales` (of D), `decode(x)` and
    `measure(reader, ...)`. `ShapesControl` renders the six factors; `DigitsControl` blends the
    class prototypes (`digit_prototypes`). `control_for(kind, data)` picks one."""
    kind: str
    resolution: int = 16
    seed: int = 0
    dim: ClassVar[int]
    scales: ClassVar[tuple]

    def __post_init__(self):
        if self.kind not in CONTROLS:
            raise ValueError(f"kind must be one of {CONTROLS}, got {self.kind!r}")

    def _matrices(self):
        rng = np.random.default_rng(self.seed)
        return _orthogonal(rng, self.dim), _orthogonal(rng, self.dim), rng.uniform(0, 2 * np.pi, self.dim)

    def code(self, x):
        """latent (B, d) -> code z (B, d); works on NumPy and JAX arrays."""
        q1, q2, phase = self._matrices()
        if self.kind == "axes":
            return x
        if self.kind == "rotated":
            return x @ q1  # z = Rᵀ x with R = q1 (rows: z_b = x_b q1)
        sin = jnp.sin if isinstance(x, jax.Array) else np.sin
        return np.sqrt(2.0) * sin(2.5 * x @ q1.T + phase) @ q2.T

    def encode(self, x):
        """latent (B, d) -> h (B, d), differentiable (JAX)."""
        x = jnp.asarray(x)
        return (x if self.kind == "mixed" else self.code(x)) * jnp.asarray(self.scales, x.dtype)

    def latents(self, key, count: int) -> np.ndarray:
        """count latents x ~ N(0, I_dim), float64."""
        return np.asarray(jax.random.normal(key, (count, self.dim)), np.float64)

    def decode(self, x) -> np.ndarray:
        """latent (B, d) -> images (B, R, R, 3) in [-1, 1]."""
        raise NotImplementedError

    def measure(self, reader, **sizes) -> dict:
        """Every measure of the study on this control, read through `reader`: {name: value}."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ShapesControl(Control):
    """The six shapes factors from the code (see the module docstring)."""
    dim: ClassVar[int] = 6
    scales: ClassVar[tuple] = (3.0, 2.6, 2.2, 1.8, 1.4, 1.0)

    def factors_of(self, x) -> dict:
        """latent (B, 6) -> the six factors (dict of (B,) arrays, as `shapes.sample_factors`)."""
        u = ndtr(np.asarray(self.code(np.asarray(x, np.float64)), np.float64))
        out = {"shape": np.minimum(np.floor(3 * u[:, 0]), 2).astype(np.int32),
               "object_hue": u[:, 1] / 4, "background_hue": 0.5 + u[:, 2] / 4}
        for i, name in enumerate(("scale", "x", "y"), start=3):
            low, high = shapes.FACTOR_RANGES[name]
            out[name] = low + (high - low) * u[:, i]
        return out

    def decode(self, x) -> np.ndarray:
        return pipeline.to_unit_range(shapes.render(self.factors_of(x), self.resolution))

    def measure(self, reader, *, num_label: int = 256, num_edit: int = 64, num_probe: int = 768,
                pullback_samples: int | None = None, pullback_k: int | None = None, pullback_alphas=ALPHAS,
                seed: int = 0) -> dict:
        """Every disentanglement measure of the study, read through `reader` (a
        `scoring.FactorReader` of the factor oracle, as for a model). Probes fit on 3/4 of
        num_probe latents (ground-truth factors) and score the rest. The pullback directions are
        the top pullback_k (default: all) on pullback_samples latents (default: the num_edit
        edited ones), edited at pullback_alphas: a model's protocol gives all three."""
        keys = jax.random.split(jax.random.PRNGKey(seed), 3)
        x_label, x_edit, x_probe = (self.latents(k, n) for k, n in zip(keys, (num_label, num_edit, num_probe)))
        original = reader.read(self.decode(x_edit))
        out = _supervised(self, reader, x_label, x_edit, original)
        out.update(_pullback(self, reader, *_pullback_samples(self, reader, x_edit, original, seed, pullback_samples),
                             pullback_k or self.dim, pullback_alphas))
        h, truth = np.asarray(self.encode(x_probe)), self.factors_of(x_probe)
        n = 3 * num_probe // 4
        scores = probe.probe_scores(h[:n], {k: v[:n] for k, v in truth.items()}, h[n:],
                                    {k: v[n:] for k, v in truth.items()})
        out.update({f"probe_{k}": v for k, v in scores.items()})
        out["probe_r2"] = float(np.mean([v for k, v in scores.items() if k.startswith("r2_")]))
        return out


DIGIT_SHARPNESS = 2.0  # prototype weights softmax(2 z): one or two classes dominate most images


@dataclasses.dataclass(frozen=True)
class DigitsControl(Control):
    """Images that blend the ten class prototypes with weights softmax(2 z)."""
    dim: ClassVar[int] = digits.NUM_CLASSES
    scales: ClassVar[tuple] = tuple(np.linspace(3.0, 1.0, digits.NUM_CLASSES))

    def labels_of(self, x) -> np.ndarray:
        """The class of the largest prototype weight, (B,) ints."""
        return np.argmax(np.asarray(self.code(np.asarray(x, np.float64))), axis=1)

    def decode(self, x) -> np.ndarray:
        z = np.asarray(self.code(np.asarray(x, np.float64)))
        weights = np.exp(DIGIT_SHARPNESS * (z - z.max(axis=1, keepdims=True)))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("bc,chwk->bhwk", weights, digit_prototypes(self.resolution)).astype(np.float32)

    def measure(self, reader, *, num_edit: int = 64, num_probe: int = 768, pullback_samples: int | None = None,
                pullback_k: int | None = None, pullback_alphas=ALPHAS, seed: int = 0) -> dict:
        """The digits study's measures, read through `reader` (a `scoring.ClassReader` of the
        digit classifier): the class purity, coverage, linearity and composition of the pullback
        directions (as `ShapesControl.measure`'s), and the held-out accuracy of a linear class
        probe from h to the dominant prototype's class (fitted on 3/4 of num_probe latents)."""
        k_edit, k_probe = jax.random.split(jax.random.PRNGKey(seed))
        x_edit, x_probe = self.latents(k_edit, num_edit), self.latents(k_probe, num_probe)
        samples = _pullback_samples(self, reader, x_edit, None, seed, pullback_samples)
        out = dict(_pullback(self, reader, *samples, pullback_k or self.dim, pullback_alphas))
        h, labels, n = np.asarray(self.encode(x_probe)), self.labels_of(x_probe), 3 * num_probe // 4
        out["probe_class_accuracy"], _ = probe.class_probe_accuracy(h[:n], labels[:n], h[n:], labels[n:],
                                                                    num_classes=digits.NUM_CLASSES)
        return out


CONTROL_TYPES = {"shapes": ShapesControl, "digits": DigitsControl}


def control_for(kind: str, data: str = "shapes", **options) -> Control:
    """The control `kind` ("axes", "rotated" or "mixed") of data set `data` ("shapes" or "digits")."""
    if data not in CONTROL_TYPES:
        raise ValueError(f"data must be one of {tuple(CONTROL_TYPES)}, got {data!r}")
    return CONTROL_TYPES[data](kind, **options)


@functools.lru_cache(maxsize=2)
def digit_prototypes(resolution: int) -> np.ndarray:
    """The mean training scan of each digit (10, R, R, 3) in [-1, 1]."""
    source = digits.DigitsSource(resolution)
    indices = np.arange(digits.TEST_START)
    images, labels = pipeline.to_unit_range(source.get(indices)), source.labels(indices)
    return np.stack([images[labels == c].mean(axis=0) for c in range(digits.NUM_CLASSES)])


def _supervised(control: Control, reader, x_label, x_edit, original) -> dict:
    """Editing precision, linearity and composition of the oracle-labelled mean-difference
    directions in the latent (`supervised.direction`), as `supervised.SupervisedEdits` does for a model."""
    labels = reader.read(control.decode(x_label))
    shifts = {}
    for name in factors.CONTINUOUS:
        d, sigma = supervised.direction(x_label, supervised.edit_coordinate(labels, name))
        shifts[name] = sigma * d
    return scoring.supervised_family(reader, original, _read_many(control, reader, x_edit), shifts,
                                     prefix="supervised_")


def _read_many(control: Control, reader, x_edit):
    """shifts -> the reading of the control's images of x_edit + each shift, read together."""
    return lambda shifts: scoring.read_each(reader, [control.decode(x_edit + shift) for shift in shifts])


def _pullback_samples(control: Control, reader, x_edit, original, seed: int, count: int | None) -> tuple:
    """(latents, their reading) the pullback directions are measured at: `count` fresh latents
    (their own draw of `seed`), or the edited ones when count is None."""
    if count is None:
        return x_edit, (reader.read(control.decode(x_edit)) if original is None else original)
    x = control.latents(jax.random.fold_in(jax.random.PRNGKey(seed), 1), count)
    return x, reader.read(control.decode(x))


def _pullback(control: Control, reader, x_edit, original, k: int, alphas) -> Iterator:
    s, v = pullback.local_basis(control.encode, jnp.asarray(x_edit), jax.random.PRNGKey(0), k=k)
    v, read_many, n = np.asarray(v), _read_many(control, reader, x_edit), len(alphas)
    edited = read_many([a * v[:, i] for i in range(k) for a in alphas])
    yield from pullback.score_directions(reader, original, [edited[i * n:(i + 1) * n] for i in range(k)], alphas,
                                         "pullback_").items()
    yield from pullback.composition_error(reader, original, *read_many(scoring.composition_shifts(v[:, 0], v[:, 1])),
                                          "pullback_").items()
