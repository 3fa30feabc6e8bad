"""Scores of linear edits (method.md §6b), whatever made the edit: purity, linearity, composition.

An edit is read by a *reader*, which turns images into named attributes and measures, per
attribute, the signed change between two readings on a common scale:

- `FactorReader` (shapes, through the factor oracle): the six factors, with `factors.change`'s
  [0, 1] scale and a sign (hues: the signed circular difference × 2; scale, x, y: Δ / range;
  shape: 0 or 1, unsigned);
- `ClassReader` (digits, through a classifier): the probability of each class; a class's change
  counts only where it gains probability (mass moves from one class to another, so the losses
  repeat the gains).

From the magnitudes m_f ≥ 0 of an edit's changes:
    purity      = max_f m_f / Σ_f m_f       (1: one attribute moves; 1/F for an even spread)
    dominant    = argmax_f m_f
and along α ∈ a grid (α = 0 the unedited image, change 0), per sample, for the attribute f
that the edit targets (or its dominant one):
    linearity   = R² of the least-squares line through (α, signed change of f)
    monotone    = 1 when the signed change of f is monotone in α (non-decreasing or non-increasing)
    unintended  = Σ_{g ≠ f} m_g at each |α|
and for two directions a, b with signed changes Δ(a), Δ(b), Δ(a + b):
    additivity error = Σ_b Σ_f |Δ_f(a + b) − Δ_f(a) − Δ_f(b)| / Σ_b Σ_f (|Δ_f(a)| + |Δ_f(b)|)
"""
import warnings
from typing import Callable, Sequence

import numpy as np

from isodiff_jax.analysis.edits import factors
from isodiff_jax.data import shapes

ALPHAS = (-2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0)  # supervised edits, in stds of the latents along the direction
COMPOSE_ALPHA = 1.0  # α of each edit in a composition
PAIRS = (("scale", "x"), ("x", "y"), ("object_hue", "y"), ("background_hue", "scale"))  # composed shapes factors


class FactorReader:
    """The shapes factors read by the factor oracle (`oracle.Oracle`); `names` a subset of
    shapes.FACTORS to score (e.g. the continuous ones, for an oracle too brief to read shapes)."""

    def __init__(self, oracle, names: Sequence[str] = shapes.FACTORS):
        unknown = sorted(set(names) - set(shapes.FACTORS))
        if unknown or not names:
            raise ValueError(f"names must be a non-empty subset of {shapes.FACTORS}, got {tuple(names)}")
        self.oracle, self.names = oracle, tuple(names)

    def read(self, images) -> dict:
        return self.oracle.predict(images)

    def signed_change(self, before: dict, after: dict) -> dict:
        """{name: (B,) signed change}, on factors.change's scale (|signed| = factors.change)."""
        out = {}
        for name in self.names:
            a, b = np.asarray(before[name], np.float64), np.asarray(after[name], np.float64)
            if name == "shape":
                out[name] = (a != b).astype(np.float64)
            elif name in factors.HUES:
                out[name] = 2.0 * (np.mod(b - a + 0.5, 1.0) - 0.5)
            else:
                low, high = shapes.FACTOR_RANGES[name]
                out[name] = (b - a) / (high - low)
        return out

    def magnitude(self, signed: dict) -> dict:
        return {name: np.abs(v) for name, v in signed.items()}


def continuous_view(reader):
    """`reader` limited to the continuous factors (position, size, hues), or None when it reads
    no shape. A shape flip scores 1 on the 0/1 scale and swamps the continuous changes in purity,
    dominance, consistency and additivity; scored through this view, an edit is judged on what
    it does to the continuous factors alone (docs/results.md §6)."""
    if not isinstance(reader, FactorReader) or "shape" not in reader.names:
        return None
    return FactorReader(reader.oracle, names=[name for name in reader.names if name != "shape"])


class ClassReader:
    """Class probabilities read by a classifier with `probabilities(images) -> (B, C)`."""

    def __init__(self, classifier, names: Sequence[str]):
        self.classifier, self.names = classifier, tuple(names)

    def read(self, images) -> dict:
        p = np.asarray(self.classifier.probabilities(images), np.float64)
        return {name: p[:, i] for i, name in enumerate(self.names)}

    def signed_change(self, before: dict, after: dict) -> dict:
        return {name: np.asarray(after[name]) - np.asarray(before[name]) for name in self.names}

    def magnitude(self, signed: dict) -> dict:
        return {name: np.maximum(v, 0.0) for name, v in signed.items()}


def read_each(reader, images: Sequence[np.ndarray]) -> list[dict]:
    """reader.read of each batch of `images`, read together in one call."""
    reading = reader.read(np.concatenate(images))
    bounds = np.cumsum([len(batch) for batch in images])[:-1]
    split = {name: np.split(np.asarray(values), bounds) for name, values in reading.items()}
    return [{name: parts[i] for name, parts in split.items()} for i in range(len(images))]


def _stack(per_name: dict, names) -> np.ndarray:
    """{name: (..., B)} -> (..., B, F) in the order of names."""
    return np.stack([np.asarray(per_name[n], np.float64) for n in names], axis=-1)


def nanmean(values, axis=None):
    """np.nanmean, NaN (without a warning) where every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def purity(magnitudes) -> np.ndarray:
    """magnitudes (..., F) ≥ 0 -> max / sum (...); NaN where nothing moved."""
    m = np.asarray(magnitudes, np.float64)
    total = m.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, m.max(axis=-1) / total, np.nan)


def line_r2(alphas, values) -> np.ndarray:
    """R² of the least-squares line through (alphas (A,), values (A, B)) per column -> (B,);
    1 for a constant response that is exactly on its line (no variance to explain)."""
    a = np.asarray(alphas, np.float64)[:, None]
    v = np.asarray(values, np.float64)
    da, dv = a - a.mean(axis=0), v - v.mean(axis=0)
    ss_tot = np.sum(dv * dv, axis=0)
    slope = np.sum(da * dv, axis=0) / np.sum(da * da)
    ss_res = np.sum((dv - slope * da) ** 2, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 1.0)


def monotone(values) -> np.ndarray:
    """1.0 where the column (A, B) never goes both up and down along its rows, else 0.0 -> (B,)."""
    steps = np.diff(np.asarray(values, np.float64), axis=0)
    return (np.all(steps >= 0, axis=0) | np.all(steps <= 0, axis=0)).astype(np.float64)


def alpha_response(reader, original: dict, edited: Sequence[dict], alphas: Sequence[float],
                   target: str | None = None) -> dict:
    """Scores of one direction edited at each α of `alphas` (α ≠ 0; sorted) on B samples.

    original: the reading of the unedited images; edited: one reading per α. target: the
    attribute the direction is for; None takes, per sample, the attribute with the largest total
    change over the α (the direction's dominant one). Returns per-sample arrays (B,): purity
    (at each α, averaged over α), linearity, monotone, dominant (index into reader.names),
    target_change (mean |Δ| of the target), unintended (A, B) at each α, and precision
    (Σ target / Σ all over the α, the editing precision of `supervised.precision`, per sample),
    response (A + 1, B): the signed change of the target at each α with α = 0 inserted.
    """
    alphas = np.asarray(alphas, np.float64)
    if np.any(alphas == 0) or np.any(np.diff(alphas) <= 0):
        raise ValueError(f"alphas must be ascending and non-zero, got {alphas.tolist()}")
    signed = _stack({n: np.stack([reader.signed_change(original, e)[n] for e in edited]) for n in reader.names},
                    reader.names)  # (A, B, F)
    magnitudes = _stack({n: np.stack([reader.magnitude(reader.signed_change(original, e))[n] for e in edited])
                         for n in reader.names}, reader.names)
    total = magnitudes.sum(axis=0)  # (B, F)
    index = (np.full(total.shape[0], reader.names.index(target)) if target is not None
             else np.argmax(total, axis=-1))
    rows = np.arange(total.shape[0])
    with_zero = np.sort(np.concatenate([alphas, [0.0]]))
    response = np.insert(signed[:, rows, index], int(np.searchsorted(alphas, 0.0)), 0.0, axis=0)  # (A+1, B)
    target_m = magnitudes[:, rows, index]  # (A, B)
    all_m = magnitudes.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(all_m.sum(axis=0) > 0, target_m.sum(axis=0) / all_m.sum(axis=0), np.nan)
    return {"purity": nanmean(purity(magnitudes), axis=0),
            "linearity": line_r2(with_zero, response), "monotone": monotone(response), "dominant": index,
            "target_change": target_m.mean(axis=0), "unintended": all_m - target_m, "precision": precision,
            "response": response}


def additivity_error(reader, original: dict, edit_a: dict, edit_b: dict, edit_ab: dict) -> float:
    """Σ_b Σ_f |Δ_f(a+b) − Δ_f(a) − Δ_f(b)| / Σ_b Σ_f (|Δ_f(a)| + |Δ_f(b)|) over the B samples, on
    signed changes from the unedited reading: a ratio of sums, so that samples whose edits barely
    move anything (a saturated classifier) do not dominate; NaN where nothing moved at all."""
    change = lambda e: _stack(reader.signed_change(original, e), reader.names)
    da, db, dab = change(edit_a), change(edit_b), change(edit_ab)
    scale = np.sum(np.abs(da)) + np.sum(np.abs(db))
    return float(np.sum(np.abs(dab - da - db)) / scale) if scale > 0 else float("nan")


SUMMARY_SCORES = ("purity", "linearity", "monotone", "target_change", "precision")


def _sizes(alphas) -> list:
    return sorted(set(np.abs(np.asarray(alphas, np.float64))))


def summary_names(alphas: Sequence[float], prefix: str) -> tuple[str, ...]:
    """The numbers `summarize` gives (its "response" list aside)."""
    return (*(prefix + k for k in SUMMARY_SCORES), *(prefix + f"unintended_a{size:g}" for size in _sizes(alphas)))


def summarize(scores: dict, alphas: Sequence[float], prefix: str) -> dict:
    """Means over samples of `alpha_response`'s arrays, named prefix + score; unintended at each
    |α| (averaged over ±α) as prefix + "unintended_a{|α|}"; prefix + "response": the mean signed
    response at each α of the sorted grid with 0 (a list, for the linearity curves)."""
    out = {prefix + k: float(nanmean(scores[k])) for k in SUMMARY_SCORES}
    alphas = np.asarray(alphas, np.float64)
    for size in _sizes(alphas):
        out[prefix + f"unintended_a{size:g}"] = float(np.mean(scores["unintended"][np.abs(alphas) == size]))
    out[prefix + "response"] = [float(v) for v in np.mean(scores["response"], axis=1)]
    return out



def supervised_family(reader, original: dict, read_many: Callable, shifts: dict, *,
                      alphas: Sequence[float] = ALPHAS, pairs=PAIRS, compose_alpha: float = COMPOSE_ALPHA,
                      prefix: str = "") -> dict:
    """Scores of one labelled direction per attribute, edited additively.

    read_many([shift, ...]) -> the reading of the images edited by each shift (added to the
    latent: x_T, h, a control's latent), all asked for at once; shifts {attribute: unit shift
    (one std along the direction)}. Returns `summarize` per attribute (prefix + attribute + "_" +
    score), their means (prefix + precision / linearity / monotone) and the mean additivity error
    over `pairs` at compose_alpha (prefix + "additivity_error")."""
    along = [a * shift for shift in shifts.values() for a in alphas]
    composed = [s for a, b in pairs for s in composition_shifts(shifts[a], shifts[b], compose_alpha)]
    readings = read_many(along + composed)
    out = {}
    for j, name in enumerate(shifts):
        edited = readings[j * len(alphas):(j + 1) * len(alphas)]
        out.update(summarize(alpha_response(reader, original, edited, alphas, target=name), alphas,
                             f"{prefix}{name}_"))
    for key in ("precision", "linearity", "monotone"):
        out[prefix + key] = float(np.mean([out[f"{prefix}{name}_{key}"] for name in shifts]))
    triples = [readings[len(along) + 3 * i:len(along) + 3 * i + 3] for i in range(len(pairs))]
    out[prefix + "additivity_error"] = float(nanmean([additivity_error(reader, original, *t) for t in triples]))
    if (view := continuous_view(reader)) is not None:  # precision and composition without shape flips
        edited = lambda j: readings[j * len(alphas):(j + 1) * len(alphas)]
        out[prefix + "continuous_precision"] = float(np.mean([
            nanmean(alpha_response(view, original, edited(j), alphas, target=name)["precision"])
            for j, name in enumerate(shifts)]))
        out[prefix + "continuous_additivity_error"] = float(nanmean([additivity_error(view, original, *t)
                                                                     for t in triples]))
    return out


def supervised_names(names: Sequence[str], *, alphas: Sequence[float] = ALPHAS, prefix: str = "",
                     continuous: bool = False) -> tuple[str, ...]:
    """The numbers `supervised_family` gives for attributes `names` (their "response" lists
    aside); `continuous`: with a reader that has a continuous view (`continuous_view`)."""
    per_name = tuple(n for name in names for n in summary_names(alphas, f"{prefix}{name}_"))
    overall = ("precision", "linearity", "monotone", "additivity_error")
    overall += ("continuous_precision", "continuous_additivity_error") if continuous else ()
    return (*per_name, *(prefix + key for key in overall))


def numbers_and_curves(scores: dict) -> tuple[dict, dict]:
    """A summary's floats, and its "response" lists (the curves a picture draws) apart."""
    curves = {name: value for name, value in scores.items() if name.endswith("response")}
    return {name: value for name, value in scores.items() if name not in curves}, curves


def composition_shifts(shift_a, shift_b, alpha: float = COMPOSE_ALPHA) -> list:
    """The three edits whose readings `additivity_error` compares: α shift_a, α shift_b and
    α (shift_a + shift_b)."""
    return [alpha * shift_a, alpha * shift_b, alpha * (shift_a + shift_b)]
