"""Study 5 of issue 10: how accurate are the Hutchinson estimates of the isometry loss, and at what cost?

On a trained U-Net (default: the base model, runs/experiments/base_model/run) at t ∈ {500, 750, 999}:
real images of its data set noised to x_t (one fixed draw of images and noise, the same at every t).

Exact values. The encoder's ambient Jacobian Jₑ (B, m, n) at x_t is built densely (n JVPs); the exact
per-sample Tr R and Tr R² are `isometry.exact_isometry_traces` of its linearization x ↦ Jₑ x (the
library's own dense reference; checked against `exact_isometry_traces` of the network itself on the first
`check_samples` samples), and Tr R³, Tr R⁴ come from M = P Jₑᵀ Jₑ P for the closed-form variances below.
Exact batch loss L = mean Tr R² / (mean Tr R)², and rank·L (rank = min(m, n − 1)).

Estimates. For each estimator (jvp_vjp, jvp_jvp) and K ∈ {1, 4, 16} probes, `repeats` independent keys;
each key gives the library's per-sample estimates (`isometry.trace_estimates`, averaged over the K probes)
and from them the batch means of Tr R and Tr R² and the loss L̂ as `isometry_loss` computes it (ratio of
batch means). The estimates are drawn on the encoder's exact linearization at x_t (the dense Jₑ): the
estimator sees the same linear map as on the network, so a key gives the same numbers (checked per t on
`check_samples` samples, both estimators), at a small fraction of the cost. Reported: relative std
(std over repeats / exact) of the batch-mean Tr R, Tr R² and of L̂; the relative bias of L̂,
(mean L̂ − L)/L, at the training batch B and at a smaller batch (B split into disjoint groups of
`small_batch`, each against its own exact L); and beside each the closed form for Gaussian probes
(per sample and probe: jvp_vjp Var Tr̂R = 2 Tr R², Var Tr̂R² = 2 Tr R⁴; jvp_jvp Var Tr̂R = Tr R²,
Var Tr̂R² = 6 Tr R⁴ + 2 (Tr R²)²; both Cov = 2 Tr R³; for L̂ the first-order delta method).

Cost. Median wall time (after a warm-up call) of `jax.jit(jax.value_and_grad(loss_fn))` w.r.t. the
parameters, `loss_fn` the training objective of `train.step.make_loss_fn` (ε-MSE + λ·L_iso with the
encoder pass shared, t ~ U{T/2, …, T−1}) at batch B, for each (estimator, K), and for the plain objective
(ε-MSE only) as the reference. Accuracy per unit cost: (rel. std of L̂)² × seconds per step, lower is
better (the variance a fixed time budget buys, whether spent on probes or on steps).

    .venv/bin/python -m experiments.estimator_accuracy            # the study, about 8 minutes on 2 CPU cores
    .venv/bin/python -m experiments.estimator_accuracy --quick --workdir ""   # test setting, random init

Runtime, 2 CPU cores (measured): the exact values and draws 4.4 minutes (with another job on the cores),
the costs 3.7 minutes, a re-run with every part done 5 s; --quick about 1 minute, mostly compiling.

`--workdir ""` uses a random initialisation of configs/test.py's model. Resumable: each part (the exact
values at a t, one (t, estimator, K) setting, one cost) is written to <out>/parts/ as it finishes and
skipped by a re-run; a re-run with other settings is refused (use another --out). Writes
<out>/summary.json (every number and the recommendation) and <out>/estimators.png, and prints a table.
"""
import argparse
import dataclasses
import functools
import io
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
from PIL import Image

from isodiff_jax import diffusion, isometry, storage
from isodiff_jax.analysis import load, sampling
from isodiff_jax.spec import INIT_COMPILER_OPTIONS
from isodiff_jax.train.step import make_loss_fn

ESTIMATORS = isometry.ESTIMATORS  # ("jvp_vjp", "jvp_jvp")
DEFAULT_WORKDIR = os.path.join("runs", "experiments", "base_model", "run")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that determines the study's numbers (besides the model)."""

    batch: int = 64  # the base model's training batch
    small_batch: int = 8  # the ratio-of-means bias is also measured at this batch
    repeats: int = 200  # independent probe draws per setting
    timesteps: tuple = (500, 750, 999)
    probes: tuple = (1, 4, 16)
    cost_repeats: int = 5  # timed calls per cost (after one warm-up call)
    check_samples: int = 8  # samples on which the dense Jacobian is checked against the network
    seed: int = 0  # images, noise and probes
    weight: float = 1e-3  # λ in the timed objective (does not change its cost)


GATE_P = 0.5  # share of plain training steps (configs/default.py regularizer.p), for the "gated" cost
QUICK = {"batch": 4, "small_batch": 2, "repeats": 32, "probes": (1,), "cost_repeats": 2, "check_samples": 2}


# ----------------------------------------------------------------------------- model and inputs


def load_model(workdir: str):
    """(spec, params, description); workdir "" means a random initialisation of configs/test.py's model."""
    if workdir:
        spec, params, step = load.load(workdir)
        return spec, params, {"workdir": workdir, "step": int(step)}
    spec, params = _random_test_model()
    return spec, params, {"workdir": "", "step": None, "init": "random, configs/test.py, PRNGKey(0)"}


@functools.cache
def _random_test_model():
    """configs/test.py's model spec and its parameters from PRNGKey(0), made once per process."""
    from configs import test as test_config
    from isodiff_jax import config as config_lib
    spec = config_lib.model_spec(test_config.get_config())
    key = jax.random.PRNGKey(0)
    init = jax.jit(spec.init_params).lower(key).compile(INIT_COMPILER_OPTIONS)
    return spec, init(key)


def noised_images(spec, count: int, t: int, seed: int) -> jax.Array:
    """x_t (count, H, W, C) float32: real images of the model's data set (seed) noised to t (noise
    from seed too; the same images and noise at every t)."""
    x0 = jnp.asarray(sampling.real_images(spec, count, seed), jnp.float32)
    eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape, jnp.float32)
    return diffusion.q_sample(spec.noise_schedule, x0, jnp.full((count,), t, jnp.int32), eps).astype(jnp.float32)


def encoder(spec, params, t):
    """x (B, H, W, C) -> h (B, ...) at timestep t (a traced scalar)."""
    return lambda x: spec.encode(params, x, jnp.full((x.shape[0],), t, jnp.int32))


def linear_encoder(jac: jax.Array):
    """The encoder's linearization at x_t as a map (B, ...) -> (B, m): x ↦ Jₑ x, sample by sample."""
    return lambda x: jnp.einsum("bmn,bn->bm", jac, x.reshape(x.shape[0], -1))


@functools.partial(jax.jit, static_argnums=0)
def dense_jacobian(spec, params, x: jax.Array, t) -> jax.Array:
    """Jₑ = ∂h/∂x at every sample of x: (B, m, n), n JVPs (64 basis vectors at a time)."""
    _, lin = jax.linearize(encoder(spec, params, t), x)
    n, chunk = math.prod(x.shape[1:]), 64
    rows = -(-n // chunk) * chunk
    basis = jnp.eye(rows, n, dtype=x.dtype).reshape(rows // chunk, chunk, *x.shape[1:])
    columns = jax.lax.map(lambda e: jax.vmap(lambda v: lin(jnp.broadcast_to(v, x.shape)))(e), basis)
    columns = columns.reshape(rows, x.shape[0], -1)[:n]  # (n, B, m)
    return jnp.moveaxis(columns, 0, -1)


# ----------------------------------------------------------------------------- exact values


@jax.jit
def _powers(jac: jax.Array, x: jax.Array) -> dict:
    """Exact per-sample Tr R^k, k = 1..4 (B,) each: Tr R, Tr R² from `exact_isometry_traces` of the
    linearization, Tr R³, Tr R⁴ from M = P Jₑᵀ Jₑ P (n × n)."""
    tr_r, tr_r2 = isometry.exact_isometry_traces(linear_encoder(jac), x, metric="sphere")
    flat = x.reshape(x.shape[0], -1)
    unit = flat / jnp.linalg.norm(flat, axis=-1, keepdims=True)
    a = jac - jnp.einsum("bmn,bn->bm", jac, unit)[:, :, None] * unit[:, None, :]  # Jₑ P
    m = jnp.einsum("bkn,bkl->bnl", a, a)
    m2 = m @ m
    return {"tr_r": tr_r, "tr_r2": tr_r2, "tr_r3": jnp.sum(m * m2, axis=(1, 2)), "tr_r4": jnp.sum(m2 * m2, axis=(1, 2))}


def batch_loss(tr_r, tr_r2, axis=-1):
    """The ratio of batch means, mean Tr R² / (mean Tr R)², over `axis`."""
    return np.mean(tr_r2, axis=axis) / np.mean(tr_r, axis=axis) ** 2


def exact_values(spec, params, jac, x, t, settings: Settings, rank: int) -> dict:
    """Exact traces per sample, the batch loss at B and at small_batch, and the checks of the dense
    Jacobian against the network (exact traces, and the estimators for one key)."""
    p = {k: np.asarray(v, np.float64) for k, v in _powers(jac, x).items()}
    groups = groups_of(p["tr_r"].size, settings.small_batch)
    group_loss = batch_loss(p["tr_r"][groups], p["tr_r2"][groups])
    loss = float(batch_loss(p["tr_r"], p["tr_r2"]))
    return {"t": t, "per_sample": {k: v.tolist() for k, v in p.items()},
            "tr_r_mean": float(np.mean(p["tr_r"])), "tr_r2_mean": float(np.mean(p["tr_r2"])),
            "loss": loss, "rank_loss": rank * loss,
            "effective_rank": _mean_std(p["tr_r"] ** 2 / p["tr_r2"]),
            "small_batch_loss": _mean_std(group_loss), "small_batch_rank_loss": _mean_std(rank * group_loss),
            "check": check_against_network(spec, params, jac, x, t, settings.check_samples)}


def check_against_network(spec, params, jac, x, t, count: int) -> dict:
    """Max differences, on the first `count` samples, between the network and its dense linearization,
    relative to the sample's exact Tr R or Tr R² (a jvp_jvp estimate of Tr R² can be near 0): the exact
    traces, and each estimator's per-sample estimates for one key (K = 2)."""
    x, jac = x[:count], jac[:count]
    net, lin = _network_traces(spec, params, x, t), _linear_traces(jac, x)
    scale = net
    rel = lambda a, b, s: float(jnp.max(jnp.abs(a - b) / s))
    out = {"samples": count, "exact_tr_r": rel(lin[0], net[0], scale[0]), "exact_tr_r2": rel(lin[1], net[1], scale[1])}
    key = jax.random.PRNGKey(7)
    for estimator in ESTIMATORS:
        net = _network_estimates(spec, params, x, t, key, estimator)
        lin = _linear_estimates(jac, x, key, estimator)
        out[f"{estimator}_tr_r"] = rel(lin[0], net[0], scale[0])
        out[f"{estimator}_tr_r2"] = rel(lin[1], net[1], scale[1])
    return out


@functools.partial(jax.jit, static_argnums=0)
def _network_traces(spec, params, x, t):
    return isometry.exact_isometry_traces(encoder(spec, params, t), x)


@jax.jit
def _linear_traces(jac, x):
    return isometry.exact_isometry_traces(linear_encoder(jac), x)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _network_estimates(spec, params, x, t, key, estimator):
    return isometry.trace_estimates(encoder(spec, params, t), x, key, estimator=estimator, num_probes=2)


@functools.partial(jax.jit, static_argnums=3)
def _linear_estimates(jac, x, key, estimator):
    return isometry.trace_estimates(linear_encoder(jac), x, key, estimator=estimator, num_probes=2)


def groups_of(batch: int, size: int) -> np.ndarray:
    """(batch // size, size) indices: the batch split into disjoint consecutive groups."""
    if batch % size:
        raise ValueError(f"small_batch={size} must divide batch={batch}")
    return np.arange(batch).reshape(-1, size)


def _mean_std(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if values.size > 1 else 0.0}


# ----------------------------------------------------------------------------- estimates


def draw_estimates(jac, x, key, estimator: str, num_probes: int, repeats: int):
    """Per-sample estimates of Tr R and Tr R² (each (repeats, B), the mean over K probes), one
    independent key per repeat, by the library's `trace_estimates` on the linearization x ↦ Jₑ x."""
    keys = jax.random.split(key, repeats)
    return _draws(jac, x, keys, estimator=estimator, num_probes=num_probes)


@functools.partial(jax.jit, static_argnames=("estimator", "num_probes"))
def _draws(jac, x, keys, *, estimator, num_probes):
    def one(key):
        tr_r, tr_r2 = isometry.trace_estimates(linear_encoder(jac), x, key, estimator=estimator,
                                               num_probes=num_probes)
        return jnp.mean(tr_r, axis=0), jnp.mean(tr_r2, axis=0)
    return jax.lax.map(one, keys, batch_size=max(1, 64 // num_probes))


def theory(p: dict, estimator: str, num_probes: int) -> dict:
    """Closed forms for Gaussian probes, batch means over the samples of p (per-sample exact Tr R^k):
    relative std of the batch-mean Tr R, Tr R² and (delta method) of L̂, and L̂'s relative bias."""
    p1, p2, p3, p4 = (np.asarray(p[k], np.float64) for k in ("tr_r", "tr_r2", "tr_r3", "tr_r4"))
    var_r, var_r2 = (2 * p2, 2 * p4) if estimator == "jvp_vjp" else (p2, 6 * p4 + 2 * p2**2)
    scale = num_probes * p1.size**2  # Var of a batch mean of K-probe averages
    b, a = np.mean(p1), np.mean(p2)
    vb, va, cov = np.sum(var_r) / scale / b**2, np.sum(var_r2) / scale / a**2, np.sum(2 * p3) / scale / (a * b)
    return {"tr_r_rel_std": math.sqrt(vb), "tr_r2_rel_std": math.sqrt(va),
            "loss_rel_std": math.sqrt(max(va + 4 * vb - 4 * cov, 0.0)), "loss_rel_bias": 3 * vb - 2 * cov}


def summarize_draws(tr_r, tr_r2, exact: dict, settings: Settings, estimator: str, num_probes: int) -> dict:
    """Every number of one (t, estimator, K) setting from its draws (repeats, B) and the exact values."""
    p = {k: np.asarray(v, np.float64) for k, v in exact["per_sample"].items()}
    tr_r, tr_r2 = np.asarray(tr_r, np.float64), np.asarray(tr_r2, np.float64)
    reps = tr_r.shape[0]
    mean_r, mean_r2, loss = tr_r.mean(1), tr_r2.mean(1), batch_loss(tr_r, tr_r2)
    out = {"estimator": estimator, "num_probes": num_probes, "repeats": reps,
           "theory": theory(p, estimator, num_probes)}
    for name, values, true in (("tr_r", mean_r, exact["tr_r_mean"]), ("tr_r2", mean_r2, exact["tr_r2_mean"])):
        std = float(np.std(values, ddof=1))
        out[name] = {"exact": true, "mean": float(values.mean()), "rel_std": std / true,
                     "z_of_mean": float((values.mean() - true) / (std / math.sqrt(reps)))}
    std = float(np.std(loss, ddof=1))
    out["loss"] = {"exact": exact["loss"], "mean": float(loss.mean()), "rel_std": std / exact["loss"],
                   "rel_bias": float(loss.mean() / exact["loss"] - 1),
                   "rel_bias_se": std / math.sqrt(reps) / exact["loss"]}
    out["small_batch"] = small_batch_numbers(tr_r, tr_r2, p, settings.small_batch, estimator, num_probes)
    out["draws"] = {"tr_r_mean": mean_r.tolist(), "tr_r2_mean": mean_r2.tolist(), "loss": loss.tolist()}
    return out


def small_batch_numbers(tr_r, tr_r2, p: dict, size: int, estimator: str, num_probes: int) -> dict:
    """L̂ on disjoint groups of `size` samples (the same draws), each against its group's exact L:
    relative std and bias averaged over the groups (bias ± its standard error)."""
    groups = groups_of(tr_r.shape[1], size)
    exact = batch_loss(p["tr_r"][groups], p["tr_r2"][groups])  # (G,)
    loss = batch_loss(tr_r[:, groups], tr_r2[:, groups])  # (repeats, G)
    rel = loss / exact - 1
    reps, count = rel.shape
    group_theory = [theory({k: v[g] for k, v in p.items()}, estimator, num_probes) for g in groups]
    return {"batch": size, "groups": count, "rel_std": float(np.mean(np.std(rel, axis=0, ddof=1))),
            "rel_bias": float(rel.mean()),
            "rel_bias_se": float(math.sqrt(np.sum(np.var(rel, axis=0, ddof=1) / reps)) / count),
            "theory_rel_std": float(np.mean([g["loss_rel_std"] for g in group_theory])),
            "theory_rel_bias": float(np.mean([g["loss_rel_bias"] for g in group_theory]))}


# ----------------------------------------------------------------------------- cost


def step_cost(spec, params, x0, estimator: str | None, num_probes: int, settings: Settings) -> dict:
    """Median seconds of one jitted value_and_grad of the training objective w.r.t. the parameters
    (estimator None: the plain ε-MSE objective), after one warm-up call."""
    regularizer = None
    if estimator is not None:
        regularizer = isometry.Regularizer(kind="sphere", weight=settings.weight, estimator=estimator,
                                           num_probes=num_probes)
    num_t = spec.schedule.num_timesteps
    loss_fn = make_loss_fn(spec.unet, spec.noise_schedule, regularizer=regularizer, t_range=(num_t // 2, num_t))
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    pl_mean, key = jnp.zeros((), jnp.float32), jax.random.PRNGKey(settings.seed)
    started = time.perf_counter()
    jax.block_until_ready(grad_fn(params, pl_mean, x0, key))
    first = time.perf_counter() - started
    seconds = []
    for i in range(settings.cost_repeats):
        started = time.perf_counter()
        jax.block_until_ready(grad_fn(params, pl_mean, x0, jax.random.fold_in(key, i + 1)))
        seconds.append(time.perf_counter() - started)
    return {"estimator": estimator, "num_probes": num_probes if estimator else 0, "median_s": float(np.median(seconds)),
            "min_s": min(seconds), "max_s": max(seconds), "seconds": seconds, "first_call_s": first}


# ----------------------------------------------------------------------------- parts, resuming


def _write(path: str, value) -> None:
    storage.write_json(path, value, indent=1)


def check_settings(out: str, fingerprint: dict) -> None:
    """Writes <out>/settings.json, or refuses to mix parts made with other settings or another model."""
    path = os.path.join(out, "settings.json")
    if os.path.exists(path) and (saved := storage.read_record(path, "use another --out")) != fingerprint:
        raise SystemExit(f"{out} holds parts made with other settings ({saved}); use another --out")
    _write(path, fingerprint)


def part(out: str, name: str, compute):
    """The saved part `name`, or compute() written as it finishes."""
    path = os.path.join(out, "parts", name + ".json")
    if (saved := storage.read_saved(path)) is not None:
        print(f"  {name}: skipped (done)", flush=True)
        return saved
    started = time.perf_counter()
    value = compute()
    value["seconds"] = time.perf_counter() - started
    _write(path, value)
    print(f"  {name}: finished in {value['seconds']:.1f} s", flush=True)
    return value


def accuracy_parts(out, spec, params, settings: Settings, rank: int) -> dict:
    """{t: {"exact": ..., estimator: {K: ...}}}; the dense Jacobian at t is built only when a part
    at t is missing."""
    results = {}
    for t in settings.timesteps:
        names = [f"t{t}_{e}_K{k}" for e in ESTIMATORS for k in settings.probes]
        missing = [n for n in [f"t{t}_exact"] + names if not os.path.exists(os.path.join(out, "parts", n + ".json"))]
        jac = x = None
        if missing:
            x = noised_images(spec, settings.batch, t, settings.seed)
            jac = dense_jacobian(spec, params, x, t)
        exact = part(out, f"t{t}_exact", functools.partial(exact_values, spec, params, jac, x, t, settings, rank))
        results[t] = {"exact": exact}
        for i, estimator in enumerate(ESTIMATORS):
            results[t][estimator] = {}
            for k in settings.probes:
                key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(settings.seed + 1), 1000 * t + i), k)
                compute = functools.partial(estimate_setting, jac, x, key, exact, settings, estimator, k)
                results[t][estimator][k] = part(out, f"t{t}_{estimator}_K{k}", compute)
    return results


def estimate_setting(jac, x, key, exact: dict, settings: Settings, estimator: str, num_probes: int) -> dict:
    """Draws of one (t, estimator, K) setting and their numbers."""
    tr_r, tr_r2 = draw_estimates(jac, x, key, estimator, num_probes, settings.repeats)
    return summarize_draws(tr_r, tr_r2, exact, settings, estimator, num_probes)


def cost_parts(out, spec, params, settings: Settings) -> dict:
    """{"plain": ..., estimator: {K: ...}}."""
    x0 = jnp.asarray(sampling.real_images(spec, settings.batch, settings.seed), jnp.float32)
    cost = functools.partial(step_cost, spec, params, x0, settings=settings)
    costs = {"plain": part(out, "cost_plain", functools.partial(cost, None, 0))}
    for estimator in ESTIMATORS:
        costs[estimator] = {k: part(out, f"cost_{estimator}_K{k}", functools.partial(cost, estimator, k))
                            for k in settings.probes}
    return costs


# ----------------------------------------------------------------------------- summary


def efficiency(results: dict, costs: dict, settings: Settings) -> dict:
    """Per (estimator, K): (rel. std of L̂)² × seconds per regularized step at each t, their geometric
    mean over t, and that relative to jvp_vjp with K = 1 (lower is better); and the same with the
    seconds of an average training step ("gated": a share GATE_P of the steps is plain, method.md §4)."""
    table = {}
    plain = costs["plain"]["median_s"]
    geomean = lambda values: float(np.exp(np.mean(np.log(values))))
    for estimator in ESTIMATORS:
        for k in settings.probes:
            seconds = costs[estimator][k]["median_s"]
            variance = np.asarray([results[t][estimator][k]["loss"]["rel_std"] ** 2 for t in settings.timesteps])
            average_step = GATE_P * plain + (1 - GATE_P) * seconds
            table[f"{estimator}_K{k}"] = {
                "estimator": estimator, "num_probes": k, "step_s": seconds, "average_step_s": average_step,
                "work_variance": {str(t): float(v * seconds) for t, v in zip(settings.timesteps, variance)},
                "geomean": geomean(variance * seconds), "gated_geomean": geomean(variance * average_step)}
    base = table[f"jvp_vjp_K{settings.probes[0]}"]
    for row in table.values():
        row["relative"] = row["geomean"] / base["geomean"]
        row["gated_relative"] = row["gated_geomean"] / base["gated_geomean"]
    return table


def data_noise(exact: dict, batch: int) -> float:
    """Relative std of the exact L over random batches of `batch` images (not probes): the ratio
    estimator's delta method, Var/L² ≈ (Var a/A² + 4 Var b/B² − 4 Cov(a, b)/(A B)) / batch, with the
    per-image variances of a = Tr R², b = Tr R taken over the study's images."""
    b, a = (np.asarray(exact["per_sample"][k], np.float64) for k in ("tr_r", "tr_r2"))
    cov = np.cov(a, b)  # ddof 1
    rel_var = cov[0, 0] / a.mean() ** 2 + 4 * cov[1, 1] / b.mean() ** 2 - 4 * cov[0, 1] / (a.mean() * b.mean())
    return float(math.sqrt(max(rel_var, 0.0) / batch))


def recommendation(results: dict, costs: dict, eff: dict, settings: Settings) -> str:
    """A paragraph from the numbers: which setting buys the most accuracy per second, and the bias."""
    best = min(eff.values(), key=lambda r: r["geomean"])
    k0 = settings.probes[0]
    ts = settings.timesteps
    rel = lambda e, k: [results[t][e][k]["loss"]["rel_std"] for t in ts]
    fmt = lambda values, digits=1: "/".join(f"{100 * v:.{digits}f}" for v in values)
    plain = costs["plain"]["median_s"]
    step = lambda e, k: costs[e][k]["median_s"]
    ratio_jj = np.mean([results[t]["jvp_jvp"][k]["loss"]["rel_std"] / results[t]["jvp_vjp"][k]["loss"]["rel_std"]
                        for t in ts for k in settings.probes])
    loss = lambda t, k=k0: results[t]["jvp_vjp"][k]
    bias = fmt([loss(t)["loss"]["rel_bias"] for t in ts], 2)
    bias_th = fmt([loss(t)["theory"]["loss_rel_bias"] for t in ts], 2)
    small = fmt([loss(t)["small_batch"]["rel_bias"] for t in ts], 2)
    small_th = fmt([loss(t)["small_batch"]["theory_rel_bias"] for t in ts], 2)
    more = "".join(f"; K = {k}: {fmt(rel('jvp_vjp', k))} %" for k in settings.probes[1:])
    gated = {name: f"{row['gated_relative']:.2f}" for name, row in eff.items() if row["estimator"] == "jvp_vjp"}
    text = (f"Most accuracy per second: {best['estimator']} with K = {best['num_probes']} "
            f"({best['relative']:.2f}× the variance × time of jvp_vjp, K = {k0}; counting the plain steps "
            f"(p = {GATE_P}) too, jvp_vjp K = {'/'.join(str(k) for k in settings.probes)}: "
            f"{'/'.join(gated.values())}×). "
            f"Relative std of L̂ at batch {settings.batch}, t = {'/'.join(map(str, ts))}: jvp_vjp K = {k0}: "
            f"{fmt(rel('jvp_vjp', k0))} %{more}; jvp_jvp has {ratio_jj:.1f}× the std of jvp_vjp at equal K. "
            f"One step costs {plain:.2f} s plain, {step('jvp_vjp', k0):.2f} s with jvp_vjp K = {k0}"
            + "".join(f", {step('jvp_vjp', k):.2f} s with K = {k}" for k in settings.probes[1:])
            + f", {step('jvp_jvp', k0):.2f} s with jvp_jvp K = {k0}. Ratio-of-means bias of L̂ (jvp_vjp, K = {k0}): "
            f"{bias} % at batch {settings.batch} (delta method {bias_th} %), {small} % at batch "
            f"{settings.small_batch} ({small_th} %). For scale, L itself varies by "
            f"{fmt([data_noise(results[t]['exact'], settings.batch) for t in ts])} % from one batch of "
            f"{settings.batch} images to the next (delta method over the images). ")
    if best["estimator"] == "jvp_vjp" and best["num_probes"] == k0:
        text += (f"Recommended defaults: estimator = \"jvp_vjp\", num_probes = {k0} (the current ones): more probes "
                 f"cost more time than the variance they remove.")
    else:
        text += (f"Recommended defaults: estimator = \"{best['estimator']}\", num_probes = {best['num_probes']} "
                 f"(configs/default.py has \"jvp_vjp\", 1).")
    return text


def summary_table(results: dict, costs: dict, eff: dict, settings: Settings) -> str:
    head = (f"| t | estimator | K | rel. std Tr R (theory) | rel. std Tr R² (theory) | rel. std L̂ (theory) | "
            f"rel. bias L̂ @{settings.batch} | rel. bias L̂ @{settings.small_batch} | step s | var×time rel. "
            f"(with plain steps) |\n" + "| --- " * 10 + "|")
    pct = lambda v: f"{100 * v:.2f}"
    rows = []
    for t in settings.timesteps:
        for e in ESTIMATORS:
            for k in settings.probes:
                r = results[t][e][k]
                th, sb = r["theory"], r["small_batch"]
                rows.append(f"| {t} | {e} | {k} | {pct(r['tr_r']['rel_std'])} ({pct(th['tr_r_rel_std'])}) | "
                            f"{pct(r['tr_r2']['rel_std'])} ({pct(th['tr_r2_rel_std'])}) | "
                            f"{pct(r['loss']['rel_std'])} ({pct(th['loss_rel_std'])}) | "
                            f"{pct(r['loss']['rel_bias'])} ± {pct(r['loss']['rel_bias_se'])} | "
                            f"{pct(sb['rel_bias'])} ± {pct(sb['rel_bias_se'])} | {costs[e][k]['median_s']:.2f} | "
                            f"{eff[f'{e}_K{k}']['relative']:.2f} ({eff[f'{e}_K{k}']['gated_relative']:.2f}) |")
    return head + "\n" + "\n".join(rows)


def exact_table(results: dict, settings: Settings) -> str:
    rows = [("| t | mean Tr R | mean Tr R² | L | rank·L | effective rank (Tr R)²/Tr R² | rank·L at batch "
             f"{settings.small_batch} |"), "| --- " * 7 + "|"]
    for t in settings.timesteps:
        e = results[t]["exact"]
        rows.append(f"| {t} | {e['tr_r_mean']:.4g} | {e['tr_r2_mean']:.4g} | {e['loss']:.4g} | {e['rank_loss']:.3f} | "
                    f"{e['effective_rank']['mean']:.1f} ± {e['effective_rank']['std']:.1f} | "
                    f"{e['small_batch_rank_loss']['mean']:.3f} ± {e['small_batch_rank_loss']['std']:.3f} |")
    return "\n".join(rows)


def figure(results: dict, costs: dict, settings: Settings) -> Figure:
    """Relative std of L̂ against K and against the step's cost, both estimators, every t (log-log)."""
    fig = Figure(figsize=(8.4, 3.3), layout="constrained")
    by_k, by_cost = fig.subplots(1, 2)
    colours = dict(zip(settings.timesteps, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    styles = {"jvp_vjp": ("-", "o"), "jvp_jvp": ("--", "s")}
    ks = np.asarray(settings.probes, np.float64)
    for t in settings.timesteps:
        for e in ESTIMATORS:
            rel = [100 * results[t][e][k]["loss"]["rel_std"] for k in settings.probes]
            cost = [costs[e][k]["median_s"] for k in settings.probes]
            line, marker = styles[e]
            by_k.plot(ks, rel, line, marker=marker, color=colours[t], ms=4, label=f"t={t}, {e}")
            by_cost.plot(cost, rel, line, marker=marker, color=colours[t], ms=4)
    t0 = settings.timesteps[0]
    closed = [100 * results[t0]["jvp_vjp"][k]["theory"]["loss_rel_std"] for k in settings.probes]
    by_k.plot(ks, closed, ":", color="grey", label=f"closed form, t={t0}, jvp_vjp")
    by_cost.axvline(costs["plain"]["median_s"], color="grey", ls=":", label="plain step")
    label = r"rel. std of $\hat{L}_{iso}$ (%)"
    by_k.set(xscale="log", yscale="log", xlabel="probes K", ylabel=label,
             title=f"batch {settings.batch}, {settings.repeats} draws")
    by_cost.set(xscale="log", yscale="log", xlabel="seconds per training step (value_and_grad)", ylabel=label,
                title="accuracy against cost")
    for ax in (by_k, by_cost):
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
    by_k.set_xticks(ks, [str(k) for k in settings.probes])
    by_k.legend(fontsize=6.5, ncol=2)
    by_cost.legend(fontsize=7)
    return fig


def save_png(fig: Figure, path: str, dpi: int = 90) -> None:
    """A 256-colour PNG (small enough for docs/)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def _strip_draws(results: dict) -> dict:
    """The results without per-repeat draws and per-sample values (those stay in parts/)."""
    out = {}
    for t, r in results.items():
        exact = {k: v for k, v in r["exact"].items() if k != "per_sample"}
        out[str(t)] = {"exact": exact, **{e: {str(k): {n: v for n, v in s.items() if n != "draws"}
                                              for k, s in r[e].items()} for e in ESTIMATORS}}
    return out


# ----------------------------------------------------------------------------- entry point


def parse(argv) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help='training workdir ("": random init, test model)')
    parser.add_argument("--batch", type=int, help="samples per batch (default 64, the base model's)")
    parser.add_argument("--small-batch", type=int, help="the smaller batch of the bias (default 8)")
    parser.add_argument("--repeats", type=int, help="independent probe draws per setting (default 200)")
    parser.add_argument("--timesteps", help="comma-separated (default 500,750,999; --quick: T − 1)")
    parser.add_argument("--probes", help="comma-separated K (default 1,4,16)")
    parser.add_argument("--cost-repeats", type=int, help="timed calls per cost (default 5)")
    parser.add_argument("--out", default=os.path.join("runs", "experiments", "estimators"))
    parser.add_argument("--quick", action="store_true", help="tiny setting for tests: " + str(QUICK))
    args = parser.parse_args(argv)
    fields = dict(QUICK) if args.quick else {}
    for name in ("batch", "small_batch", "repeats", "cost_repeats"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    for name in ("timesteps", "probes"):
        if getattr(args, name):
            fields[name] = tuple(int(v) for v in getattr(args, name).split(","))
    return fields, args


def main(argv=None) -> dict:
    started = time.perf_counter()
    fields, args = parse(argv)
    spec, params, model = load_model(args.workdir)
    num_t = spec.schedule.num_timesteps
    if args.quick and "timesteps" not in fields:
        fields["timesteps"] = (num_t - 1,)
    settings = Settings(**fields)
    if not all(0 <= t < num_t for t in settings.timesteps):
        raise SystemExit(f"timesteps {settings.timesteps} must lie in [0, {num_t})")
    groups_of(settings.batch, settings.small_batch)
    n, m = math.prod(spec.image_shape), math.prod(spec.h_shape)
    rank = min(m, n - 1)
    model.update({"image_shape": list(spec.image_shape), "h_shape": list(spec.h_shape), "n": n, "m": m,
                  "rank": rank, "num_timesteps": num_t})
    check_settings(args.out, {"settings": json.loads(json.dumps(dataclasses.asdict(settings))), "model": model})
    print(f"estimator accuracy: {model['workdir'] or 'random init'} (step {model['step']}), n = {n}, m = {m}, "
          f"batch {settings.batch}, {settings.repeats} draws, t = {settings.timesteps}", flush=True)

    results = accuracy_parts(args.out, spec, params, settings, rank)
    costs = cost_parts(args.out, spec, params, settings)
    eff = efficiency(results, costs, settings)
    advice = recommendation(results, costs, eff, settings)
    picture = os.path.join(args.out, "estimators.png")
    save_png(figure(results, costs, settings), picture)
    argv = sys.argv[1:] if argv is None else argv
    summary = {"study": "estimator_accuracy",
               "command": " ".join(["python -m experiments.estimator_accuracy"] + list(argv)),
               "settings": dataclasses.asdict(settings), "model": model,
               "cost_measure": ("median wall time, after one warm-up call, of jax.jit(jax.value_and_grad) of the "
                                "training objective (train.step.make_loss_fn: eps-MSE + weight * L_iso, encoder pass "
                                f"shared, t ~ U[T/2, T)) w.r.t. the parameters at batch {settings.batch}; "
                                f"{jax.device_count()} {jax.devices()[0].platform} device(s)"),
               "results": _strip_draws(results), "cost": _json_keys(costs), "efficiency": eff,
               "data_noise": {str(t): {f"batch_{b}": data_noise(results[t]["exact"], b)
                                       for b in (settings.batch, settings.small_batch)} for t in settings.timesteps},
               "recommendation": advice, "picture": os.path.basename(picture),
               "seconds_this_call": time.perf_counter() - started}
    _write(os.path.join(args.out, "summary.json"), summary)
    print(exact_table(results, settings))
    print(summary_table(results, costs, eff, settings))
    print(advice)
    print(f"wrote {args.out}/summary.json and {os.path.basename(picture)} in {time.perf_counter() - started:.0f} s")
    return summary


def _json_keys(tree):
    """Dict keys as strings (JSON)."""
    if isinstance(tree, dict):
        return {str(k): _json_keys(v) for k, v in tree.items()}
    return tree


if __name__ == "__main__":
    from isodiff_jax import errors
    with errors.exit_on_user_error():  # a damaged record or a bad path: one line, not a traceback
        main()
