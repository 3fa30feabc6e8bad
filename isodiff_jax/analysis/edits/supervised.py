"""Supervised edits on the shapes data set, in x_T and in h: one labelled direction per factor,
scored by its editing precision (`Editing`) and by the linearity and composition of its edits
(`SupervisedEdits`, the paper's Figs. 7 and 8; method.md §6b).

For each continuous factor f, a direction is estimated from `num_label` samples labelled by the
factor oracle: the difference between the mean latent of the top and of the bottom quartile of the
factor's edit coordinate (hues: cos 2πh, the red–cyan axis, since a circular factor has no single
increasing direction; scale, x, y: the value), as a unit vector. Held-out samples are then edited
by α ∈ ALPHAS standard deviations of the latents' projection on it and decoded again:

- x_T: x_T + α σ d, put back on the sphere of radius |x_T| (method.md §5), decoded with the
  deterministic DDIM sampler;
- h: the same DDIM run with h_t ← h_t + α σ_t d_t at every step with t ≥ h_min_t, where d_t and
  σ_t come from the labelled samples' h along their own sampling paths (one direction per step,
  since h changes with t). As Asyrp does (h_edit "asyrp", the default), the shifted h changes
  only the predicted x0 of each DDIM step and the direction term keeps the unshifted ε̂; with
  h_edit "both" the shifted ε̂ enters both terms, which largely cancel (the form used before).

Latent diffusion: x_T, h and the DDIM steps are the latent model's; every sample is decoded through
the frozen autoencoder (`ModelSpec.to_images`) before the oracle reads it.

The oracle reads every factor of the edited and original images; with `factors.change` (a common
[0, 1] scale), target = mean change of f, others = sum of the mean changes of the other five
factors (shape included), and precision = target / (target + others): 1 when only f moves.

`SupervisedEdits` edits along the same directions at α ∈ `scoring.ALPHAS` (stds of the latents
along it) and scores them with `scoring.supervised_family`: editing precision, the R² of the
edited factor's response to α, its monotonicity, the unintended changes at each |α|, and the
additivity error of two composed edits.
"""
import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax import diffusion, geometry
from isodiff_jax.analysis.edits import factors, scoring
from isodiff_jax.analysis.edits.spaces import H, X_T
from isodiff_jax.analysis.evaluator import Evaluator, Measured
from isodiff_jax.analysis.options import H_EDITS
from isodiff_jax.analysis.sampling import in_batches
from isodiff_jax.data import shapes
from isodiff_jax.spec import ModelSpec

ALPHAS = (-2.0, -1.0, 1.0, 2.0)  # of `Editing`; `SupervisedEdits` takes scoring.ALPHAS
SPACES = (X_T, H)


def edit_coordinate(predicted: dict, name: str) -> np.ndarray:
    """The scalar a direction for factor `name` increases: cos 2πh for hues, the value otherwise."""
    values = np.asarray(predicted[name], np.float64)
    return np.cos(2 * np.pi * values) if name in factors.HUES else values


def direction(latents, coordinate, quantile: float = 0.25) -> tuple[np.ndarray, float]:
    """latents (N, D), coordinate (N,) -> (unit direction (D,), std of the latents' projection on it)."""
    latents = np.asarray(latents, np.float64).reshape(len(latents), -1)
    low, high = np.quantile(coordinate, [quantile, 1 - quantile])
    d = latents[coordinate >= high].mean(axis=0) - latents[coordinate <= low].mean(axis=0)
    d /= np.linalg.norm(d)
    return d, float(np.std(latents @ d))


def precision(original: dict, edited: list, target: str) -> dict:
    """original factors {name: (B,)}, edited: one factor dict per α -> target, others, precision."""
    mean_change = {name: np.mean([factors.change(name, original[name], e[name]) for e in edited])
                   for name in shapes.FACTORS}
    others = sum(v for name, v in mean_change.items() if name != target)
    total = mean_change[target] + others
    return {"target": float(mean_change[target]), "others": float(others),
            "precision": float(mean_change[target] / total) if total > 0 else float("nan")}


def eps_with_h_shift(spec: ModelSpec, params, x, t, shift, h_edit: str = "asyrp"):
    """ε̂ with the middle block's output moved by `shift` (B or 1, h shape). h_edit "asyrp": the
    pair (shifted ε̂, unshifted ε̂), so that DDIM moves only its predicted x0 (method.md §5; one
    encoder pass, two decoder passes); "both": the shifted ε̂ alone, in both terms of the step."""
    def apply(module, x, t):
        h, skips = module.encode_with_skips(x, t)
        shifted = module.decode(h + shift.astype(h.dtype), skips, t)
        return shifted if h_edit == "both" else (shifted, module.decode(h, skips, t))
    return spec.unet.apply(params, x, t, method=apply)


def edit_x_T(x_T, shift) -> np.ndarray:
    """x_T + shift, each sample put back on the sphere of its own radius |x_T| (method.md §5):
    x_T (B, ...), shift (...) or (B, ...)."""
    x_T = np.asarray(x_T, np.float32)
    radius = np.linalg.norm(x_T.reshape(len(x_T), -1), axis=1)
    return np.asarray(geometry.project_to_sphere(jnp.asarray(x_T + shift), jnp.asarray(radius)))


class Editor:
    """Deterministic DDIM decoding of x_T, optionally with h moved at every step; its kernels take
    the parameters and are jitted once. Edits are decoded together, `batch_size` samples per
    call, whichever edit each belongs to (one compiled program; few, full calls)."""

    def __init__(self, spec: ModelSpec, sample_steps: int, h_min_t: int, h_edit: str = "asyrp",
                 batch_size: int = 64):
        if h_edit not in H_EDITS:
            raise ValueError(f"h_edit={h_edit!r} is not one of {H_EDITS}")
        self.spec, self.sample_steps, self.batch_size = spec, sample_steps, batch_size
        schedule = spec.noise_schedule
        self.timesteps = diffusion.ddim_timesteps(schedule.num_timesteps, sample_steps)[::-1]
        self.edit_steps = np.flatnonzero(self.timesteps >= h_min_t)
        if len(self.edit_steps) == 0:
            raise ValueError(f"h_min_t={h_min_t} leaves no DDIM step to edit; the largest timestep "
                             f"is {self.timesteps[0]}")
        step_of_t = np.zeros(schedule.num_timesteps, np.int32)  # timestep -> DDIM step index
        step_of_t[self.timesteps] = np.arange(sample_steps)
        step_of_t = jnp.asarray(step_of_t)
        self.h_shape = spec.h_shape

        def decode(params, x_T, shifts):  # shifts (B, S, *h shape): each sample's own
            eps_fn = lambda x, t: eps_with_h_shift(spec, params, x, t, shifts[:, step_of_t[t[0]]], h_edit)
            return spec.to_images(params, diffusion.ddim_sample(eps_fn, schedule, x_T, sample_steps,
                                                                clip_x0=spec.clip_x0))

        def path(params, x_T):
            x_0, steps = diffusion.ddim_sample(lambda x, t: spec.eps(params, x, t), schedule, x_T, sample_steps,
                                               clip_x0=spec.clip_x0, return_path=True)
            return spec.to_images(params, x_0), steps
        self._decode = jax.jit(decode)
        self._path = jax.jit(path)
        self._encode = jax.jit(spec.encode)

    def decode(self, params, x_T, shifts=None) -> np.ndarray:
        """x_T (B, H, W, C), shifts (S, *h shape) in sampling order or None -> images (B, H', W', C')
        (decoded through the autoencoder for latent diffusion: params then carry its weights)."""
        return self.decode_many(params, [(x_T, shifts)])[0]

    def decode_many(self, params, edits) -> list[np.ndarray]:
        """`decode` of each (x_T, shifts) of `edits`, all decoded together in batches."""
        x_T = np.concatenate([np.asarray(x, np.float32) for x, _ in edits])
        zero = np.zeros((self.sample_steps, *self.h_shape), np.float32)
        table = np.stack([zero if shifts is None else np.asarray(shifts, np.float32) for _, shifts in edits])
        sizes = [len(x) for x, _ in edits]
        edit_of_row = np.repeat(np.arange(len(edits)), sizes)
        take = lambda start, stop: (x_T[start:stop], table[edit_of_row[start:stop]])
        images = in_batches(lambda x, shifts: self._decode(params, x, shifts), take, len(x_T), self.batch_size)
        return np.split(images, np.cumsum(sizes)[:-1])

    def h_along_paths(self, params, x_T) -> tuple[np.ndarray, np.ndarray]:
        """(images (B, H, W, C), h at the edited steps along each sample's own path (S_edit, B, D))."""
        images, path = self._path(params, x_T)
        hs = [np.asarray(self._encode(params, path[i], jnp.full((len(x_T),), self.timesteps[i], jnp.int32)))
              for i in self.edit_steps]
        return np.asarray(images), np.stack([h.reshape(len(x_T), -1) for h in hs])

    def h_shifts(self, hs, coordinate) -> np.ndarray:
        """Unit shifts σ_t d_t (S, *h shape) from h along paths and the samples' edit coordinate."""
        shifts = np.zeros((self.sample_steps, int(np.prod(self.h_shape))), np.float32)
        for i, h in zip(self.edit_steps, hs):
            d, sigma = direction(h, coordinate)
            shifts[i] = sigma * d
        return shifts.reshape(self.sample_steps, *self.h_shape)


def precision_names() -> tuple[str, ...]:
    """The values `Editing` measures."""
    per_factor = tuple(f"edit_{space}_{name}_{kind}" for space in SPACES for name in factors.CONTINUOUS
                       for kind in ("target", "others", "precision"))
    return (*per_factor, *(f"edit_{space}_precision" for space in SPACES))


class Editing(Evaluator):
    """Evaluator: values "edit_<space>_<factor>_{target,others,precision}" per space and factor
    and "edit_<space>_precision" (mean over factors); picture "edit_strips", {space: (B, 1 +
    len(ALPHAS), H, W, C)}: per factor, the first held-out sample and its edits. Built once;
    `measure(params)` compiles nothing for new parameters."""

    def __init__(self, spec: ModelSpec, oracle, *, num_label: int = 256, num_edit: int = 32,
                 sample_steps: int = 20, h_min_t: int = 500, h_edit: str = "asyrp", batch_size: int = 64,
                 seed: int = 0):
        self.editor = Editor(spec, sample_steps, h_min_t, h_edit, batch_size=min(batch_size, num_edit * len(ALPHAS)))
        self.oracle, self.image_shape = oracle, spec.image_shape
        k_label, k_edit = jax.random.split(jax.random.PRNGKey(seed))
        self.x_label = np.asarray(jax.random.normal(k_label, (num_label, *spec.image_shape)))
        self.x_edit = np.asarray(jax.random.normal(k_edit, (num_edit, *spec.image_shape)))
        self.batch_size = batch_size

    def measure(self, params) -> Measured:
        editor, oracle, x_label, x_edit = self.editor, self.oracle, self.x_label, self.x_edit
        labelled = [editor.h_along_paths(params, x_label[i:i + self.batch_size])
                    for i in range(0, len(x_label), self.batch_size)]
        label_factors = oracle.predict(np.concatenate([images for images, _ in labelled]))
        hs = np.concatenate([h for _, h in labelled], axis=1)
        edits = [(x_edit, None)]  # the originals, then each factor's edits in each space at each α
        for name in factors.CONTINUOUS:
            coordinate = edit_coordinate(label_factors, name)
            d, sigma = direction(x_label, coordinate)
            x_shift = (sigma * d).reshape(self.image_shape).astype(np.float32)
            h_shifts = editor.h_shifts(hs, coordinate)
            edits += [(edit_x_T(x_edit, a * x_shift), None) for a in ALPHAS]
            edits += [(x_edit, a * h_shifts) for a in ALPHAS]
        images = editor.decode_many(params, edits)
        original_images, readings = images[0], scoring.read_each(scoring.FactorReader(oracle), images)
        original = readings[0]
        strips, precisions, values = {space: [] for space in SPACES}, {space: [] for space in SPACES}, {}
        for j, name in enumerate(factors.CONTINUOUS):
            for s, space in enumerate(SPACES):
                first = 1 + (2 * j + s) * len(ALPHAS)
                edited = images[first:first + len(ALPHAS)]
                scores = precision(original, readings[first:first + len(ALPHAS)], name)
                precisions[space].append(scores["precision"])
                values.update({f"edit_{space}_{name}_{kind}": value for kind, value in scores.items()})
                strips[space].append(np.stack([e[0] for e in edited[:2]] + [original_images[0]]
                                              + [e[0] for e in edited[2:]]))
        values.update({f"edit_{space}_precision": float(np.mean(precisions[space])) for space in SPACES})
        return Measured(values, {"edit_strips": {space: np.stack(rows) for space, rows in strips.items()}})


# --- linearity and composition of the same directions ----------------------------------------

def linearity_names() -> tuple[str, ...]:
    """The values `SupervisedEdits` measures."""
    return tuple(n for space in SPACES
                 for n in scoring.supervised_names(factors.CONTINUOUS, prefix=f"linear_{space}_", continuous=True))


class SupervisedEdits(Evaluator):
    """Evaluator: values linear_{xT,h}_<factor>_<score> and linear_{xT,h}_{precision, linearity,
    monotone, additivity_error}; pictures linear_{space}_<factor>_response, the mean signed
    response at each α (the linearity curves). Built once; `measure(params)` compiles nothing for
    new parameters (the `Editor` kernels take them)."""

    def __init__(self, spec: ModelSpec, reader, *, num_label: int = 256, num_edit: int = 32, sample_steps: int = 20,
                 h_min_t: int = 500, batch_size: int = 64, seed: int = 0):
        self.editor = Editor(spec, sample_steps, h_min_t,
                             batch_size=min(batch_size, num_edit * len(scoring.ALPHAS)))
        self.reader, self.batch_size = reader, batch_size
        self.image_shape = spec.image_shape
        k_label, k_edit = jax.random.split(jax.random.PRNGKey(seed))
        self.x_label = np.asarray(jax.random.normal(k_label, (num_label, *spec.image_shape), jnp.float32))
        self.x_edit = np.asarray(jax.random.normal(k_edit, (num_edit, *spec.image_shape), jnp.float32))

    def measure(self, params) -> Measured:
        editor, reader = self.editor, self.reader
        labelled = [editor.h_along_paths(params, self.x_label[i:i + self.batch_size])
                    for i in range(0, len(self.x_label), self.batch_size)]
        labels = reader.read(np.concatenate([images for images, _ in labelled]))
        hs = np.concatenate([h for _, h in labelled], axis=1)
        original_images = editor.decode(params, self.x_edit)
        original = reader.read(original_images)
        shifts = {"xT": {}, "h": {}}
        for name in factors.CONTINUOUS:
            coordinate = edit_coordinate(labels, name)
            d, sigma = direction(self.x_label, coordinate)
            shifts["xT"][name] = (sigma * d).reshape(self.image_shape).astype(np.float32)
            shifts["h"][name] = editor.h_shifts(hs, coordinate)
        edit = {"xT": lambda shift: (edit_x_T(self.x_edit, shift), None), "h": lambda shift: (self.x_edit, shift)}
        values, curves = {}, {}
        for space in SPACES:
            read_many = lambda many, space=space: scoring.read_each(
                reader, editor.decode_many(params, [edit[space](shift) for shift in many]))
            numbers, responses = scoring.numbers_and_curves(scoring.supervised_family(
                reader, original, read_many, shifts[space], prefix=f"linear_{space}_"))
            values.update(numbers)
            curves.update(responses)
        return Measured(values, curves)
