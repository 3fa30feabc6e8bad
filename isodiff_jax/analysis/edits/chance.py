"""Chance levels of the edit scores under a measuring protocol (method.md §6b).

What a score gives when an edit tells nothing: every edited image is read as an image unrelated to
its original (a fresh draw of the data set's attributes: shapes factors drawn as the data set
draws them, or class probabilities from a flat Dirichlet). The chance level of each score is its
mean over `draws` such measurements, each with the protocol's samples, directions and α grid,
scored by the same functions as a model's edits (`scoring`, `pullback.score_directions`), so
that it moves with the protocol as the real scores do: coverage over 4 directions cannot reach
the 6 a control can show, a monotone share over 5 points is easier than over 9, and on shapes the
spread of consistency at 8 samples is about three times that at 64 (0.085 against 0.030). The
spread over draws is the score's standard deviation under chance.
"""
import numpy as np

from isodiff_jax.analysis.edits import pullback, scoring
from isodiff_jax.data import shapes


def random_readings(reader, count: int, rng: np.random.Generator) -> dict:
    """Readings of `count` images unrelated to any other: {name: (count,)} for `reader`'s names."""
    if isinstance(reader, scoring.FactorReader):
        drawn = shapes.sample_factors(int(rng.integers(2**63)), np.arange(count))
        return {name: drawn[name] for name in reader.names}
    p = rng.dirichlet(np.ones(len(reader.names)), size=count)
    return {name: p[:, i] for i, name in enumerate(reader.names)}


def pullback_chance(reader, *, samples: int, k: int, alphas=pullback.ALPHAS, draws: int = 400,
                    seed: int = 0) -> dict:
    """{score: (mean, std)} of `summarize_directions`' overall scores (purity, linearity,
    monotone, consistency, coverage) and the additivity error, for k directions on `samples`
    samples whose every edit is read as an unrelated image."""
    rng = np.random.default_rng(seed)
    scores = ("purity", "linearity", "monotone", "consistency", "coverage", "additivity_error")
    keys = scores + (tuple(f"continuous_{key}" for key in scores) if scoring.continuous_view(reader) else ())
    values = {key: [] for key in keys}
    for _ in range(draws):
        original = random_readings(reader, samples, rng)
        edited = [[random_readings(reader, samples, rng) for _ in alphas] for _ in range(k)]
        summary = pullback.score_directions(reader, original, edited, alphas, "")
        summary |= pullback.composition_error(reader, original, *(random_readings(reader, samples, rng)
                                                                  for _ in range(3)), "")
        for key in keys:
            values[key].append(summary[key])
    return {key: (float(np.nanmean(v)), float(np.nanstd(v))) for key, v in values.items()}


def supervised_chance(reader, targets, *, samples: int, alphas=scoring.ALPHAS, draws: int = 400,
                      seed: int = 0) -> dict:
    """{score: (mean, std)} of the supervised scores (precision, linearity, monotone, means over
    the `targets` attributes) on `samples` samples whose every edit is read as an unrelated image."""
    rng = np.random.default_rng(seed)
    view = scoring.continuous_view(reader)
    values = {key: [] for key in ("precision", "linearity", "monotone") + (("continuous_precision",) if view else ())}
    for _ in range(draws):
        original = random_readings(reader, samples, rng)
        edited = [[random_readings(reader, samples, rng) for _ in alphas] for _ in targets]
        scores = [scoring.alpha_response(reader, original, e, alphas, target=target) for e, target in zip(edited, targets)]
        for key in ("precision", "linearity", "monotone"):
            values[key].append(np.mean([scoring.nanmean(s[key]) for s in scores]))
        if view:
            values["continuous_precision"].append(np.mean([scoring.nanmean(scoring.alpha_response(
                view, original, e, alphas, target=target)["precision"]) for e, target in zip(edited, targets)]))
    return {key: (float(np.nanmean(v)), float(np.nanstd(v))) for key, v in values.items()}
