"""Pullback directions (the "local basis" of Park et al., NeurIPS 2023; method.md §6b).

At a noisy sample x_t, J = ∂e(x_t)/∂x_t pulls h-space's Euclidean metric back to x: JᵀJ. Its top
right singular vectors v_1 … v_k (in x) are the directions that move h the most, with
singular values s_1 ≥ … ≥ s_k; u_i = J v_i / s_i are their images in h.

`local_basis` computes them matrix-free: the Golub–Kahan–Lanczos bidiagonalization of
`spectrum.bidiagonalize_fn` (full reorthogonalization), whose Lanczos vectors times the singular
vectors of the small bidiagonal matrix are the Ritz vectors. `PullbackEditing` edits along
them, x_t + α σ_t v_i decoded by DDIM from t to 0 (in h: u_i added to h at every DDIM step from
t down, Asyrp-style), and scores each direction with a reader (`scoring`): which attribute
it moves (purity), how many distinct attributes the top k cover, and whether the change is
monotone and linear in α.
"""
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax import diffusion
from isodiff_jax.analysis.edits import scoring, supervised
from isodiff_jax.analysis.edits.spaces import H, X_t
from isodiff_jax.analysis.evaluator import Evaluator, Measured
from isodiff_jax.analysis.measures import spectrum
from isodiff_jax.analysis.sampling import in_batches
from isodiff_jax.spec import ModelSpec

ALPHAS = (-2.0, -1.0, 1.0, 2.0)  # edits of each direction (each α costs one DDIM decode per direction)
SPACES = (X_t, H)


def ritz_vectors(alpha, beta, us, vs, *, k: int, x_is_u: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-k singular values (B, k) and right singular vectors (B, k, n) of each sample's
    Jacobian from a bidiagonalization (`spectrum.bidiagonalize_fn(..., bases=True)`).

    With L V = U B (B bidiagonal, B = P Σ Qᵀ), L's right singular vectors are V Q and its left
    ones U P. L = Jᵀ when m ≤ n (x_is_u: J's right vectors, in x, are then U P), else L = J
    (J's right vectors are V Q)."""
    alpha, beta = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
    batch, q = alpha.shape
    mats = np.zeros((batch, q, q))
    idx = np.arange(q)
    mats[:, idx, idx] = alpha
    mats[:, idx[:-1], idx[1:]] = beta[:, :-1]
    p, s, qt = np.linalg.svd(mats)
    small = p[:, :, :k] if x_is_u else np.swapaxes(qt, 1, 2)[:, :, :k]  # (B, q, k)
    basis = np.asarray(us if x_is_u else vs, np.float64)  # (q, B, n)
    return s[:, :k], np.einsum("qbn,bqk->bkn", basis, small)


def local_basis_fn(fn: Callable, x, *, k: int, num_iters: int | None = None, params_like=None) -> Callable:
    """The map (params, x (B, ...), key) -> (s (B, k), v (B, k, ...)) of `local_basis` for
    fn(params, x (B, ...)) -> (B, ...), jitted once for x's shape (new parameters compile nothing)."""
    m, n = spectrum.map_dims(lambda x: jax.eval_shape(fn, params_like, x), x)
    num_iters = spectrum.lanczos_iterations(k, num_iters, min(m, n))
    run = spectrum.bidiagonalize_fn(fn, x, num_iters=num_iters, params_like=params_like, bases=True)

    def basis(params, x, key):
        alpha, beta, us, vs = (np.asarray(a) for a in run(params, x, key))
        s, v = ritz_vectors(alpha, beta, us, vs, k=k, x_is_u=m <= n)
        return s, v.reshape(x.shape[0], k, *x.shape[1:])
    return basis


def local_basis(encode: Callable, x, key, *, k: int, num_iters: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The top-k singular values and right singular vectors of each sample's Jacobian of encode.

    Args: encode, a per-sample map from a batch (B, ...) to (B, ...); x (B, ...); key (the
    Lanczos start vectors); k; num_iters Lanczos iterations, k ≤ q ≤ min(m, n), default
    min(min(m, n), max(4k, 64)) (q = min(m, n) is exact up to rounding; the top values converge
    first, so the default is ample for k ≤ 16 on the models here: see the tests).
    Returns: s (B, k) float64, descending; v (B, k, *x.shape[1:]) float64, each v[b, i] a unit
    vector, orthogonal to the others of its sample, its sign arbitrary.
    """
    return local_basis_fn(lambda _, x: encode(x), x, k=k, num_iters=num_iters)(None, x, key)


def summarize_directions(per_direction: Sequence[dict], alphas, names: Sequence[str], prefix: str) -> dict:
    """Scores of the top-k directions (one `scoring.alpha_response` dict each, on the same
    B samples): per direction i, prefix + f"v{i+1}_<score>" and the share of samples whose
    dominant attribute is each name (prefix + f"v{i+1}_moves_<name>") and the largest of those
    shares (consistency: 1 when direction i moves the same attribute at every sample, about
    1/#names when it moves a random one); over all, the mean purity, linearity, monotone, target
    change and consistency, and coverage, the number of distinct dominant attributes among the k
    directions per sample (mean over samples; at most min(k, #names))."""
    out = {}
    for i, scores in enumerate(per_direction):
        out.update(scoring.summarize(scores, alphas, f"{prefix}v{i + 1}_"))
        shares = [float(np.mean(scores["dominant"] == j)) for j in range(len(names))]
        out.update({f"{prefix}v{i + 1}_moves_{name}": share for name, share in zip(names, shares)})
        out[f"{prefix}v{i + 1}_consistency"] = max(shares)
    for key in ("purity", "linearity", "monotone", "target_change", "consistency"):
        out[prefix + key] = float(scoring.nanmean([out[f"{prefix}v{i + 1}_{key}"] for i in range(len(per_direction))]))
    dominant = np.stack([scores["dominant"] for scores in per_direction])  # (k, B)
    out[prefix + "coverage"] = float(np.mean([len(set(column)) for column in dominant.T]))
    return out


OVERALL = ("purity", "linearity", "monotone", "target_change", "consistency", "coverage")


def direction_names(alphas: Sequence[float], names: Sequence[str], k: int, prefix: str) -> tuple[str, ...]:
    """The numbers `summarize_directions` gives for k directions (their "response" lists aside)."""
    per_direction = tuple(n for i in range(k) for n in (
        *scoring.summary_names(alphas, f"{prefix}v{i + 1}_"),
        *(f"{prefix}v{i + 1}_moves_{name}" for name in names), f"{prefix}v{i + 1}_consistency"))
    return (*per_direction, *(prefix + key for key in OVERALL))


def score_directions(reader, original: dict, edited: Sequence[Sequence[dict]], alphas, prefix: str) -> dict:
    """`summarize_directions` of k directions, edited[i] holding direction i's reading at each α,
    read through `reader`; where the reader has a continuous view (`scoring.continuous_view`:
    shapes without the shape), also the overall scores through it, prefix + "continuous_<score>"."""
    out = summarize_directions([scoring.alpha_response(reader, original, e, alphas) for e in edited], alphas,
                               reader.names, prefix)
    if (view := scoring.continuous_view(reader)) is not None:
        through_view = summarize_directions([scoring.alpha_response(view, original, e, alphas) for e in edited],
                                            alphas, view.names, "")
        out.update({f"{prefix}continuous_{key}": through_view[key] for key in OVERALL})
    return out


def composition_error(reader, original: dict, edit_a: dict, edit_b: dict, edit_ab: dict, prefix: str) -> dict:
    """prefix + "additivity_error" of v_1 + v_2 (`scoring.additivity_error`), and through the
    reader's continuous view as prefix + "continuous_additivity_error" where it has one."""
    out = {prefix + "additivity_error": scoring.additivity_error(reader, original, edit_a, edit_b, edit_ab)}
    if (view := scoring.continuous_view(reader)) is not None:
        out[prefix + "continuous_additivity_error"] = scoring.additivity_error(view, original, edit_a, edit_b, edit_ab)
    return out


def continuous_names(names: Sequence[str], additivity: bool) -> tuple[str, ...]:
    """The continuous view's numbers that `score_directions` (and, with `additivity`,
    `composition_error`) add for a reader of attributes `names`: none unless it reads the shapes
    factors, shape among them."""
    if "shape" not in names:
        return ()
    return (*(f"continuous_{key}" for key in OVERALL), *(("continuous_additivity_error",) if additivity else ()))


def value_names(timesteps: Sequence[int], k: int, names: Sequence[str], alphas: Sequence[float] = ALPHAS
                ) -> tuple[str, ...]:
    """The values `PullbackEditing` measures with a reader of attributes `names`."""
    per_space = {space: (*direction_names(alphas, names, k, ""), *(f"s{i + 1}" for i in range(k)))
                 for space in SPACES}
    per_space["h"] += continuous_names(names, additivity=False)
    if k >= 2:
        per_space["xt"] += ("additivity_error",)
    per_space["xt"] += continuous_names(names, additivity=k >= 2)
    at_t = tuple(f"pullback_{space}_t{t}_{name}" for t in timesteps for space in SPACES for name in per_space[space])
    return (*at_t, *(f"pullback_{space}_{name}" for space in SPACES for name in per_space[space]))


class PullbackEditing(Evaluator):
    """Evaluator: edits along the top-k pullback directions of the encoder at each timestep t of
    `timesteps` (each a DDIM timestep of `sample_steps`) and scores them with `reader`.

    x_t is the deterministic DDIM path's point at t from fixed x_T ~ N(0, I) (num_samples of
    them); the original image is the same DDIM run continued from x_t. Edits:
      xt: x_t + α σ_t v_i, σ_t = sqrt(1 − ᾱ_t) (the noise's std at t, so α counts noise stds);
      h:  h + α ρ u_i at every DDIM step from t down (the shifted h enters only the predicted
          x0, as in `supervised`), u_i = J v_i / s_i, ρ the RMS of h's coordinates at x_t.
    Values pullback_{space}_t{t}_<score> (see `summarize_directions`; also the mean singular
    values s{i}), and pullback_{space}_<score> averaged over t; pictures "pullback_strips",
    {t: (k, len(alphas) + 1, H, W, C)} of the first sample's x_t edits, and each direction's
    response curve pullback_{space}_t{t}_v{i}_response. Built once; `measure(params)` compiles
    nothing for new parameters. Every edit at one t (and the originals) is decoded together,
    `batch_size` samples per call.
    """

    def __init__(self, spec: ModelSpec, reader, *, timesteps: Sequence[int], k: int = 6, num_samples: int = 16,
                 alphas: Sequence[float] = ALPHAS, sample_steps: int = 20, num_iters: int | None = None,
                 batch_size: int = 64, seed: int = 0):
        schedule = spec.noise_schedule
        descending = diffusion.ddim_timesteps(schedule.num_timesteps, sample_steps)[::-1]
        missing = [t for t in timesteps if t not in descending]
        if missing:
            raise ValueError(f"timesteps {missing} are not DDIM timesteps of {sample_steps} steps "
                             f"(those are {sorted(descending.tolist())})")
        self.spec, self.reader, self.k, self.alphas = spec, reader, k, tuple(alphas)
        self.batch_size = min(batch_size, num_samples * self.num_edits)
        self.steps = {int(t): int(np.flatnonzero(descending == t)[0]) for t in timesteps}
        self.sigma = {t: float(np.sqrt(1 - schedule.alphas_cumprod[t])) for t in self.steps}
        self.x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (num_samples, *spec.image_shape),
                                                jnp.float32))
        self.key = jax.random.PRNGKey(seed + 1)
        self._path = jax.jit(lambda params, x_T: diffusion.ddim_sample(
            lambda x, t: spec.eps(params, x, t), schedule, x_T, sample_steps, clip_x0=spec.clip_x0,
            return_path=True)[1])
        params_like = spec.abstract_params()
        self._basis, self._decode, self._encode_jvp = {}, {}, {}
        for t, i in self.steps.items():
            encode = lambda params, x, t=t: spec.encode(params, x, jnp.full((x.shape[0],), t, jnp.int32))
            self._basis[t] = local_basis_fn(encode, self.x_T, k=k, num_iters=num_iters, params_like=params_like)
            self._decode[t] = jax.jit(self._decoder(i, sample_steps))
            self._encode_jvp[t] = jax.jit(lambda params, x, v, encode=encode: jax.jvp(
                lambda y: encode(params, y), (x,), (v,)))

    def _decoder(self, from_step: int, sample_steps: int):
        spec, schedule = self.spec, self.spec.noise_schedule

        def decode(params, x_t, h_shift):
            eps = lambda x, t: supervised.eps_with_h_shift(spec, params, x, t, h_shift)
            return spec.to_images(params, diffusion.ddim_sample(eps, schedule, x_t, sample_steps, clip_x0=spec.clip_x0,
                                                                from_step=from_step))
        return decode

    @property
    def num_edits(self) -> int:
        """Decodes per sample at each t: the original, each direction at each α in x_t and in h,
        and (k ≥ 2) the three edits of the composition v_1 + v_2 in x_t."""
        return 1 + 2 * self.k * len(self.alphas) + (3 if self.k >= 2 else 0)

    def _edits(self, params, t: int, x_t, s, v) -> list:
        """The (x_t, h shift) of every decode at t, in `num_edits`' order, as functions."""
        x_t = np.asarray(x_t, np.float32)
        zero = np.zeros((len(x_t), *self.spec.h_shape), np.float32)  # no shift of h
        h_and_jv = [[np.asarray(a) for a in self._encode_jvp[t](params, x_t, v[:, i])] for i in range(self.k)]
        rms = float(np.sqrt(np.mean(np.square(h_and_jv[0][0]))))
        u = [jv / s[:, i].astype(np.float32).reshape(-1, *([1] * (jv.ndim - 1))) for i, (_, jv) in enumerate(h_and_jv)]
        step = self.sigma[t] * v
        edits = [lambda: (x_t, zero)]
        edits += [lambda i=i, a=a: (x_t + a * step[:, i], zero) for i in range(self.k) for a in self.alphas]
        edits += [lambda i=i, a=a: (x_t, a * rms * u[i]) for i in range(self.k) for a in self.alphas]
        if self.k >= 2:  # v_1 + v_2 against the two edits alone, in x_t
            edits += [lambda shift=shift: (x_t + shift, zero)
                      for shift in scoring.composition_shifts(step[:, 0], step[:, 1])]
        return edits

    def _at(self, params, t: int, x_t) -> tuple[dict, np.ndarray]:
        """({space: scores}, strips (k, len(alphas) + 1, H, W, C) of the first sample's x_t edits)."""
        s, v = self._basis[t](params, x_t, self.key)
        v = np.asarray(v, np.float32)
        edits, batch = self._edits(params, t, x_t, s, v), len(x_t)

        def take(start, stop):  # rows start:stop of the edits' rows, one edit (batch rows) after another
            first, last = start // batch, (stop - 1) // batch
            parts = [edits[j]() for j in range(first, last + 1)]
            offset = start - first * batch
            return tuple(np.concatenate(p)[offset:offset + stop - start] for p in zip(*parts))
        images = in_batches(lambda x, h: self._decode[t](params, x, h), take, len(edits) * batch, self.batch_size)
        images = np.split(images, len(edits))
        readings = scoring.read_each(self.reader, images)
        original, per_alpha = readings[0], len(self.alphas)
        below, values, strips = sum(a < 0 for a in self.alphas), {}, []
        for n, space in enumerate(SPACES):
            firsts = [1 + (n * self.k + i) * per_alpha for i in range(self.k)]
            values[space] = score_directions(self.reader, original, [readings[f:f + per_alpha] for f in firsts],
                                             self.alphas, "")
            values[space].update({f"s{i + 1}": float(np.mean(s[:, i])) for i in range(self.k)})
            if space == "xt":
                for first in firsts:
                    edited = images[first:first + per_alpha]
                    strips.append(np.stack([im[0] for im in edited[:below]] + [images[0][0]]
                                           + [im[0] for im in edited[below:]]))
        if self.k >= 2:
            values["xt"].update(composition_error(self.reader, original, *readings[-3:], ""))
        return values, np.stack(strips)

    def measure(self, params) -> Measured:
        paths = np.asarray(self._path(params, self.x_T))  # (S, B, ...)
        values, means, pictures = {}, {}, {"pullback_strips": {}}
        for t, i in self.steps.items():
            at_t, pictures["pullback_strips"][t] = self._at(params, t, jnp.asarray(paths[i]))
            for space, scores in at_t.items():
                numbers, curves = scoring.numbers_and_curves(scores)
                pictures.update({f"pullback_{space}_t{t}_{name}": curve for name, curve in curves.items()})
                for name, value in numbers.items():
                    values[f"pullback_{space}_t{t}_{name}"] = value
                    means.setdefault(f"pullback_{space}_{name}", []).append(value)
        values.update({name: float(np.mean(v)) for name, v in means.items()})
        return Measured(values, pictures)

