"""Toy S² (the paper's Fig. 3): an MLP autoencoder S² → R² → S² trained three ways.

Variants, same seeds (same initial parameters, same data stream), same steps:
  recon      reconstruction only
  euclidean  + λ·L_iso of the encoder with G = I over all of R³ (the paper's "G = I" ablation)
  sphere     + λ·L_iso of the encoder on the sphere's tangent space (the paper's loss)

Data: fresh points every step, uniform by area on S² ⊂ R³ minus the open polar cap of half-angle
`--cap-deg` around the north pole (0, 0, 1): by default 90°, i.e. the southern hemisphere; 30°
keeps 93 % of the sphere. Some cap must go: no continuous map S² → R² is injective (Borsuk–Ulam),
so on the whole sphere an MLP encoder must fold and no decoder can undo it, while the sphere less
a cap is a disk, which embeds. No piece of S² maps isometrically into R² either (Gauss: curvature
1 against 0), so rank·L_iso stays above 1: the question is which loss gets closest. Classical
maps centred on the south pole (azimuthal equidistant, Lambert equal-area, stereographic) are
measured the same way as yardsticks.

Model: encoder MLP R³ → R² and decoder MLP R² → R³, each `depth` (3) hidden layers of `width`
(64) SiLU units (smooth, so the Jacobians and their parameter gradients are smooth); the decoder's
output is divided by its norm, so reconstructions lie on S². Loss: mean_b |x − x̂|² + λ·L_iso,
L_iso = `isometry.isometry_loss(encode, x, key, metric=...)` (tangent form, one Gaussian probe
per point, ratio of batch means). λ = 1: L_iso is scale-invariant and reconstruction only needs an
injective encoder (the decoder can invert any), so the terms compete only where the encoder
nearly folds; on the hemisphere λ = 0.1 and 1 gave the same sphere-variant numbers (one seed),
and λ = 1 is the one that lets L_iso act on the 30° domain (docs/results.md shows both there).
Adam, learning rate 1e-3 cosine-decayed to 0, batch 256, 4000 steps.

Metrics, after training, on 4096 held-out points (one fixed draw, the same for every run):
  rank_l_iso_sphere     rank·L_iso on the tangent spaces (rank 2), exact (dense Jacobians), ratio
                        of means over all held-out points; 1 only for a scaled isometry. The
                        number this study is about.
  rank_l_iso_euclidean  the same with G = I over R³ (what the euclidean variant minimizes)
  cn_mean/std/median    over points of CN = s_max/s_min of the tangent Jacobian J·[e1 e2]
                        (e1, e2 an orthonormal tangent basis): anisotropy only
  log_scale_std         std over points of log √(s_max·s_min): how much the local scale varies
                        (rank·L_iso is large when either this or the anisotropy is)
  ambient_cn_median     median CN of the encoder's full Jacobian Jₑ (2 × 3) in R³
  normal_fraction       mean over points of |Jₑ x|² / |Jₑ|²_F, the share of Jₑ along the normal
                        x, a direction the data never moves in
  recon_mse             mean over points of |x − x̂|² (squared distance in R³)
Summary: mean ± std (ddof 1) over seeds of each run's numbers.

Outputs under --out (runs/experiments/toy_sphere): runs/<variant>_seed<s>.json (every number of
one run) and .msgpack (its parameters), written as each run finishes. A re-run skips finished
runs (an interrupted run restarts from its step 0), re-measures saved parameters when a metric
was added, and refuses runs made with other settings. Then summary.json (settings, every run,
the aggregate, the yardsticks), toy_sphere_latitudes.png (latent images of latitude circles and
meridians, and held-out points coloured by log10 CN: the first seed of each variant and the
azimuthal equidistant map) and toy_sphere_cn.png (CN per variant, all seeds pooled). Prints a
summary table.

Runtime, 2 CPU cores (measured): default (3 variants × 5 seeds × 4000 steps) 2.5 minutes;
--cap-deg 30 --seeds 0,1,2 1.6 minutes; --quick (1 seed, 20 steps, small nets) 25 s, mostly
compiling; a re-run with every run done 15 s (pictures).

Usage: python -m experiments.toy_sphere [--steps 4000] [--seeds 0,1,2,3,4] [--out DIR] [--quick]
       [--iso-weight 1.0] [--cap-deg 90] [--no-progress]
"""
import argparse
import dataclasses
import io
import json
import math
import os
import sys
import time

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from PIL import Image
from tqdm import tqdm

from isodiff_jax import geometry, isometry, storage

VARIANTS = ("recon", "euclidean", "sphere")
LABELS = {"recon": "reconstruction only", "euclidean": "+ L_iso, G = I", "sphere": "+ L_iso, sphere metric"}
METRICS = ("rank_l_iso_sphere", "rank_l_iso_euclidean", "cn_mean", "cn_std", "cn_median",
           "log_scale_std", "ambient_cn_median", "normal_fraction", "recon_mse")
OFF_SPHERE = ("rank_l_iso_euclidean", "ambient_cn_median", "normal_fraction")  # depend on the map off S²
EVAL_SEED = 12345  # the held-out points: one draw shared by every run
NUM_LATITUDES, NUM_MERIDIANS = 9, 12
SCATTER_POINTS = 2048  # held-out points drawn (all are measured)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that determines a run's result, besides its variant and seed."""

    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 1e-3
    iso_weight: float = 1.0  # λ
    num_probes: int = 1  # Hutchinson probes per point in L_iso
    width: int = 64
    depth: int = 3  # hidden layers of each MLP
    cap_deg: float = 90.0  # half-angle of the polar cap left out of the data
    eval_points: int = 4096
    chunk: int = 100  # steps per compiled call


QUICK = {"steps": 20, "batch_size": 64, "width": 32, "depth": 2, "eval_points": 256, "chunk": 10}
DEFAULT_SEEDS = "0,1,2,3,4"


# ----------------------------------------------------------------------------- data


def sample_domain(key: jax.Array, count: int, cap_deg: float) -> jax.Array:
    """(count, 3) float32 points uniform by area on S² minus the polar cap of half-angle cap_deg.

    By Archimedes' theorem the height z of a uniform point is uniform, so z ~ U[−1, cos cap].
    """
    kz, kphi = jax.random.split(key)
    z = jax.random.uniform(kz, (count,), jnp.float32, -1.0, math.cos(math.radians(cap_deg)))
    phi = jax.random.uniform(kphi, (count,), jnp.float32, 0.0, 2 * math.pi)
    rho = jnp.sqrt(jnp.clip(1 - z * z, 0.0))
    return jnp.stack([rho * jnp.cos(phi), rho * jnp.sin(phi), z], axis=-1)


def spherical_points(polar_deg, phi) -> np.ndarray:
    """Points on S² at polar angles polar_deg (from the north pole) and azimuths phi, broadcast."""
    theta = np.radians(polar_deg)
    return np.stack(np.broadcast_arrays(np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi),
                                        np.cos(theta)), axis=-1).astype(np.float32)


def latitude_angles(cap_deg: float) -> np.ndarray:
    """NUM_LATITUDES polar angles (degrees) evenly spread over the data's band [cap, 180°]."""
    return cap_deg + (180.0 - cap_deg) * (np.arange(NUM_LATITUDES) + 0.5) / NUM_LATITUDES


# ----------------------------------------------------------------------------- model


class MLP(nn.Module):
    """`depth` SiLU layers of `width`, then a linear output of `features`; optionally onto S²."""

    width: int
    depth: int
    features: int
    on_sphere: bool = False

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = nn.silu(nn.Dense(self.width, name=f"hidden_{i}")(x))
        y = nn.Dense(self.features, name="out")(x)
        return y / jnp.linalg.norm(y, axis=-1, keepdims=True) if self.on_sphere else y


class AutoEncoder(nn.Module):
    """S² ⊂ R³ → R² → S²: encode (B, 3) -> (B, 2), decode (B, 2) -> (B, 3) on the unit sphere."""

    width: int
    depth: int

    def setup(self):
        self.encoder = MLP(self.width, self.depth, 2)
        self.decoder = MLP(self.width, self.depth, 3, on_sphere=True)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, h):
        return self.decoder(h)

    def __call__(self, x):
        return self.decode(self.encode(x))


def make_model(settings: Settings) -> AutoEncoder:
    return AutoEncoder(settings.width, settings.depth)


def init_params(model: AutoEncoder, seed: int):
    """Initial parameters of seed `seed`: the same for every variant."""
    return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 3), jnp.float32))


def encoder_of(model: AutoEncoder, params):
    """encode (B, 3) -> (B, 2) with params fixed."""
    return lambda x: model.apply(params, x, method=AutoEncoder.encode)


# ----------------------------------------------------------------------------- training


def make_loss(model: AutoEncoder, variant: str, settings: Settings):
    """-> loss(params, x (B, 3), key) -> (scalar, {"recon": .., "l_iso": ..})."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")

    def loss(params, x, key):
        x_hat = model.apply(params, x)
        recon = jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1))
        if variant == "recon":
            return recon, {"recon": recon, "l_iso": jnp.zeros_like(recon)}
        l_iso, _ = isometry.isometry_loss(encoder_of(model, params), x, key, metric=variant,
                                          num_probes=settings.num_probes)
        return recon + settings.iso_weight * l_iso, {"recon": recon, "l_iso": l_iso}

    return loss


def make_train_chunk(model: AutoEncoder, variant: str, settings: Settings, optimizer, length: int):
    """-> jitted chunk(params, opt_state, first_step, data_key) running `length` steps.

    Step s draws its batch and probes from fold_in(data_key, s), so a run is reproducible and
    the variants of one seed see the same batches. Returns (params, opt_state, mean metrics).
    """
    grad_fn = jax.value_and_grad(make_loss(model, variant, settings), has_aux=True)

    @jax.jit
    def chunk(params, opt_state, first_step, data_key):
        def step(carry, step_index):
            params, opt_state = carry
            k_data, k_probe = jax.random.split(jax.random.fold_in(data_key, step_index))
            x = sample_domain(k_data, settings.batch_size, settings.cap_deg)
            (_, metrics), grads = grad_fn(params, x, k_probe)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), metrics

        (params, opt_state), metrics = jax.lax.scan(step, (params, opt_state), first_step + jnp.arange(length))
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    return chunk


def train(variant: str, seed: int, settings: Settings, progress: bool = True):
    """-> (params, history): the trained parameters and per-chunk mean losses."""
    model = make_model(settings)
    params = init_params(model, seed)
    schedule = optax.cosine_decay_schedule(settings.learning_rate, settings.steps)
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)
    length = math.gcd(settings.steps, settings.chunk)  # equal chunks: one compile
    chunk = make_train_chunk(model, variant, settings, optimizer, length)
    data_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    history = []
    num_chunks = settings.steps // length
    bar = tqdm(range(num_chunks), desc=f"{variant} seed {seed}", disable=not progress, leave=False)
    for c in bar:
        params, opt_state, metrics = chunk(params, opt_state, c * length, data_key)
        history.append({k: float(v) for k, v in metrics.items()})
        bar.set_postfix(recon=f"{history[-1]['recon']:.2e}", l_iso=f"{history[-1]['l_iso']:.3f}")
    return params, history


# ----------------------------------------------------------------------------- metrics


def tangent_basis(x: jax.Array) -> jax.Array:
    """(B, 3) points on S² -> (B, 3, 2): columns e1, e2, an orthonormal basis of each tangent plane.

    e1 is the tangent part of whichever coordinate axis is least aligned with x; e2 = x × e1.
    """
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    axis = jax.nn.one_hot(jnp.argmin(jnp.abs(x), axis=-1), 3, dtype=x.dtype)
    e1 = axis - x * jnp.sum(axis * x, axis=-1, keepdims=True)
    e1 = e1 / jnp.linalg.norm(e1, axis=-1, keepdims=True)
    return jnp.stack([e1, jnp.cross(x, e1)], axis=-1)


def tangent_singular_values(encode, x: jax.Array) -> jax.Array:
    """Singular values of the encoder's Jacobian on the tangent plane, J·[e1 e2] (m × 2) per point.

    encode: (B, 3) -> (B, m), sample by sample; x (B, 3) on S². Returns (B, min(m, 2)), descending.
    """
    _, jvp = jax.linearize(encode, x)
    basis = tangent_basis(x)
    columns = jax.vmap(jvp, in_axes=-1, out_axes=-1)(basis)  # (B, m, 2)
    return jnp.linalg.svd(columns, compute_uv=False)


def condition_numbers(encode, x: jax.Array) -> jax.Array:
    """CN = s_max / s_min of the tangent Jacobian per point: (B, 3) on S² -> (B,)."""
    s = tangent_singular_values(encode, x)
    return s[:, 0] / s[:, -1]


def exact_rank_l_iso(encode, x: jax.Array, metric: str) -> jax.Array:
    """rank · mean_b Tr R_b² / (mean_b Tr R_b)² from dense Jacobians over the whole set x (B, 3).

    rank = min(m, 2) on the sphere's tangent space, min(m, 3) for G = I over R³; 1 exactly for a
    scaled isometry (with respect to that metric).
    """
    tr_r, tr_r2 = isometry.exact_isometry_traces(encode, x, metric=metric)
    m = jax.eval_shape(encode, x).shape[-1]
    rank = min(m, x.shape[-1] - 1 if metric == "sphere" else x.shape[-1])
    return rank * jnp.mean(tr_r2) / jnp.mean(tr_r) ** 2


def eval_points(settings: Settings) -> jax.Array:
    """The held-out points (settings.eval_points, 3), the same draw for every run."""
    return sample_domain(jax.random.PRNGKey(EVAL_SEED), settings.eval_points, settings.cap_deg)


def ambient_jacobian(encode, x: jax.Array) -> jax.Array:
    """The encoder's Jacobian in R³, (B, m, 3), at points x (B, 3)."""
    _, jvp = jax.linearize(encode, x)
    return jax.vmap(jvp, in_axes=-1, out_axes=-1)(jnp.broadcast_to(jnp.eye(3, dtype=x.dtype), x.shape + (3,)))


def geometry_of(encode, x: jax.Array) -> dict:
    """The encoder's isometry numbers on points x (B, 3) of S²: rank·L_iso (both metrics), CN and
    local scale on the tangent plane; the median CN of the ambient Jacobian Jₑ (m × 3) and the
    share of its energy along the normal, |Jₑ x|² / |Jₑ|²_F (mean over points)."""
    s = tangent_singular_values(encode, x)
    cn = s[:, 0] / s[:, -1]
    jac = ambient_jacobian(encode, x)
    s_amb = jnp.linalg.svd(jac, compute_uv=False)
    normal = jnp.einsum("bmi,bi->bm", jac, x)
    return {"rank_l_iso_sphere": exact_rank_l_iso(encode, x, "sphere"),
            "rank_l_iso_euclidean": exact_rank_l_iso(encode, x, "euclidean"),
            "cn_mean": jnp.mean(cn), "cn_std": jnp.std(cn), "cn_median": jnp.median(cn),
            "log_scale_std": jnp.std(0.5 * jnp.log(s[:, 0] * s[:, -1])),
            "ambient_cn_median": jnp.median(s_amb[:, 0] / s_amb[:, -1]),
            "normal_fraction": jnp.mean(jnp.sum(normal**2, -1) / jnp.sum(jac**2, axis=(1, 2)))}


def evaluate(model: AutoEncoder, params, settings: Settings) -> dict:
    """-> every metric of METRICS, as floats, on the held-out points."""
    x = eval_points(settings)
    numbers = geometry_of(encoder_of(model, params), x)
    numbers["recon_mse"] = jnp.mean(jnp.sum((x - model.apply(params, x)) ** 2, axis=-1))
    return {k: float(numbers[k]) for k in METRICS}


# Classical maps of the sphere centred on the south pole, as yardsticks: none is an isometry
# (none can be); equidistant keeps radial lengths (CN = ρ/sin ρ at angle ρ from the south pole),
# Lambert keeps areas (CN = 1/cos²(ρ/2)), stereographic keeps angles (CN = 1, scale 1/(1 − z)).
REFERENCES = {
    "azimuthal_equidistant": lambda x: x[:, :2] * jnp.arccos(-x[:, 2:]) / jnp.linalg.norm(x[:, :2], axis=-1,
                                                                                         keepdims=True),
    "lambert_equal_area": lambda x: x[:, :2] * jnp.sqrt(2 / (1 - x[:, 2:])),
    "stereographic": lambda x: geometry.stereographic(x, 1.0),
}


def reference_numbers(settings: Settings) -> dict:
    """{map: its numbers on the held-out points} for REFERENCES, without OFF_SPHERE (which depend
    on how a map is extended off the sphere)."""
    x = eval_points(settings)
    numbers = {name: geometry_of(encode, x) for name, encode in REFERENCES.items()}
    return {name: {k: float(v) for k, v in n.items() if k not in OFF_SPHERE} for name, n in numbers.items()}


# ----------------------------------------------------------------------------- runs


def run_paths(out: str, variant: str, seed: int) -> tuple[str, str]:
    """(JSON of the run's numbers, msgpack of its parameters)."""
    stem = os.path.join(out, "runs", f"{variant}_seed{seed}")
    return stem + ".json", stem + ".msgpack"


def _write(path: str, data, binary: bool = False):
    """Writes atomically (a killed run leaves no half-written file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb" if binary else "w") as f:
        if binary:
            f.write(data)
        else:
            json.dump(data, f, indent=1, allow_nan=False)
    os.replace(path + ".tmp", path)


def run_one(out: str, variant: str, seed: int, settings: Settings, progress: bool = True) -> dict:
    """Trains and evaluates one (variant, seed), or loads it when already done with these settings."""
    json_path, params_path = run_paths(out, variant, seed)
    record = storage.read_saved(json_path) if os.path.exists(params_path) else None  # damaged: trained again
    if record is not None:
        if record["settings"] != dataclasses.asdict(settings):
            raise SystemExit(f"{json_path} was made with other settings {record['settings']}; "
                             "choose another --out or delete it")
        if set(METRICS) - record["metrics"].keys():  # made before a metric was added: no retraining
            record["metrics"] = evaluate(make_model(settings), load_params(out, variant, seed, settings), settings)
            _write(json_path, record)
        print(f"skipped {variant} seed {seed}: done ({json_path})")
        return record
    start = time.perf_counter()
    params, history = train(variant, seed, settings, progress)
    metrics = evaluate(make_model(settings), params, settings)
    record = {"variant": variant, "seed": seed, "settings": dataclasses.asdict(settings),
              "metrics": metrics, "seconds": time.perf_counter() - start, "history": history}
    _write(params_path, flax.serialization.to_bytes(params), binary=True)
    _write(json_path, record)
    print(f"finished {variant} seed {seed} in {record['seconds']:.0f} s: "
          + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return record


def load_params(out: str, variant: str, seed: int, settings: Settings):
    model = make_model(settings)
    with open(run_paths(out, variant, seed)[1], "rb") as f:
        return flax.serialization.from_bytes(init_params(model, seed), f.read())


def aggregate(records: list) -> dict:
    """{variant: {metric: {"mean", "std" (ddof 1; None for one seed), "values"}}}."""
    table = {}
    for variant in VARIANTS:
        runs = sorted((r for r in records if r["variant"] == variant), key=lambda r: r["seed"])
        if not runs:
            continue
        table[variant] = {}
        for metric in METRICS + ("seconds",):
            values = [r["seconds"] if metric == "seconds" else r["metrics"][metric] for r in runs]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            table[variant][metric] = {"mean": float(np.mean(values)), "std": std, "values": values}
    return table


def summary_table(table: dict, references: dict, seeds) -> str:
    """Mean ± std over seeds, one row per variant, then the reference maps' numbers."""
    fmt = lambda e: f"{e['mean']:.4g}" + ("" if e["std"] is None else f" ± {e['std']:.2g}")
    columns = METRICS + ("seconds",)
    rows = [["variant"] + list(columns)] + [[v] + [fmt(table[v][c]) for c in columns] for v in table]
    rows += [[name] + [f"{numbers[c]:.4g}" if c in numbers else "—" for c in columns]
             for name, numbers in references.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return f"Toy S², mean ± std over seeds {list(seeds)}:\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- pictures


def latent_curves(encode, settings: Settings) -> dict:
    """Latent images under encode of the latitude circles (L, P, 2) and meridians (M, P, 2), and
    the held-out points' latents (N, 2) with their log10 CN (N,)."""
    encode = jax.jit(encode)
    phi = np.linspace(0, 2 * np.pi, 241)
    lats = spherical_points(latitude_angles(settings.cap_deg)[:, None], phi[None, :])
    polar = np.linspace(settings.cap_deg, 180.0 - 1e-3, 121)  # stops short of the south pole
    azimuths = np.linspace(0, 2 * np.pi, NUM_MERIDIANS, endpoint=False)
    meridians = spherical_points(polar[None, :], azimuths[:, None])
    flat = lambda p: np.asarray(encode(jnp.asarray(p.reshape(-1, 3)))).reshape(p.shape[:-1] + (2,))
    x = eval_points(settings)
    return {"latitudes": flat(lats), "meridians": flat(meridians), "points": flat(np.asarray(x)),
            "log_cn": np.log10(np.asarray(condition_numbers(encode, x)))}


def latitudes_figure(curves: dict, lat_deg) -> Figure:
    """curves: {panel title: latent_curves(...)} -> 2 rows: latitude circles coloured by latitude
    with the meridians in grey; the held-out points coloured by log10 CN (one colour scale)."""
    fig = Figure(figsize=(3.6 * len(curves), 7.4), layout="constrained")
    axes = fig.subplots(2, len(curves), squeeze=False)
    colors = [(c, 0.3, 1 - c) for c in np.linspace(0, 1, len(lat_deg))]
    top = max(0.3, max(float(np.percentile(c["log_cn"], 99)) for c in curves.values()))
    for j, (title, c) in enumerate(curves.items()):
        ax = axes[0, j]
        for line in c["meridians"]:
            ax.plot(line[:, 0], line[:, 1], color="0.75", lw=0.6)
        for line, color, deg in zip(c["latitudes"], colors, lat_deg):
            ax.plot(line[:, 0], line[:, 1], color=color, lw=1.3, label=f"{90 - deg:+.0f}°")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal", "datalim")
        ax = axes[1, j]
        shown = slice(0, SCATTER_POINTS)
        sc = ax.scatter(c["points"][shown, 0], c["points"][shown, 1], c=c["log_cn"][shown], s=2, cmap="magma",
                        vmin=0.0, vmax=top, rasterized=True)
        ax.set_aspect("equal", "datalim")
        ax.set_title("held-out points, colour log10 CN", fontsize=8)
    axes[0, -1].legend(title="latitude", fontsize=7, title_fontsize=7, loc="center left",
                       bbox_to_anchor=(1.0, 0.5))
    fig.colorbar(sc, ax=axes[1, -1], label="log10 CN")
    return fig


def cn_figure(cn: dict) -> Figure:
    """cn: {label: per-point CN} -> box plot (log scale, whiskers 1st–99th percentile)."""
    fig = Figure(figsize=(1.6 * len(cn) + 0.8, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.boxplot(list(cn.values()), whis=(1, 99), showfliers=False, showmeans=True)
    ax.set_xticks(range(1, len(cn) + 1), [label.replace(", ", ",\n") for label in cn], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_ylabel("CN of the tangent Jacobian")
    ax.set_title("held-out points (whiskers 1–99 %, triangle = mean)", fontsize=9)
    return fig


def draw(out: str, settings: Settings, seeds) -> list:
    """Writes both pictures from the saved parameters; returns their paths. The latitude picture
    shows the first seed and the azimuthal equidistant map; the CN picture pools all seeds."""
    model = make_model(settings)
    encoders = {v: [encoder_of(model, load_params(out, v, seed, settings)) for seed in seeds] for v in VARIANTS}
    reference = "azimuthal_equidistant"
    curves = {f"{LABELS[v]} (seed {seeds[0]})": latent_curves(encoders[v][0], settings) for v in VARIANTS}
    curves["azimuthal equidistant (reference)"] = latent_curves(REFERENCES[reference], settings)
    x = eval_points(settings)
    cn = {f"{LABELS[v]}, {len(seeds)} seeds": np.concatenate([condition_numbers(e, x) for e in encoders[v]])
          for v in VARIANTS}
    cn["azimuthal equidistant (reference)"] = np.asarray(condition_numbers(REFERENCES[reference], x))
    paths = [os.path.join(out, "toy_sphere_latitudes.png"), os.path.join(out, "toy_sphere_cn.png")]
    save_png(latitudes_figure(curves, latitude_angles(settings.cap_deg)), paths[0], dpi=72)
    save_png(cn_figure(cn), paths[1], dpi=90)
    return paths


def save_png(fig: Figure, path: str, dpi: int):
    """Writes fig as a 256-colour PNG (a few times smaller than matplotlib's RGBA, for docs/)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


# ----------------------------------------------------------------------------- entry point


def parse(argv) -> tuple[Settings, list, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="training steps per run (default 4000)")
    parser.add_argument("--seeds", default=None, help=f"comma-separated seeds (default {DEFAULT_SEEDS})")
    parser.add_argument("--out", default=os.path.join("runs", "experiments", "toy_sphere"))
    parser.add_argument("--iso-weight", type=float, help="λ (default 1.0)")
    parser.add_argument("--cap-deg", type=float, help="polar cap left out of the data (default 90)")
    parser.add_argument("--quick", action="store_true", help="tiny setting for tests: " + str(QUICK))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    fields = dict(QUICK) if args.quick else {}
    for name in ("steps", "iso_weight", "cap_deg"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else DEFAULT_SEEDS)).split(",")]
    return Settings(**fields), seeds, args


def main(argv=None) -> dict:
    """Runs every (variant, seed) not yet done, then writes summary.json and the pictures."""
    settings, seeds, args = parse(argv)
    start = time.perf_counter()
    records = [run_one(args.out, v, s, settings, not args.no_progress) for s in seeds for v in VARIANTS]
    table = aggregate(records)
    references = reference_numbers(settings)
    pictures = draw(args.out, settings, seeds)
    argv = sys.argv[1:] if argv is None else argv
    runs = [{k: r[k] for k in ("variant", "seed", "metrics", "seconds")} for r in records]
    summary = {"study": "toy_sphere", "command": " ".join(["python -m experiments.toy_sphere"] + list(argv)),
               "settings": dataclasses.asdict(settings), "seeds": seeds, "variants": LABELS,
               "aggregate": table, "references": references, "runs": runs,
               "pictures": [os.path.basename(p) for p in pictures]}
    _write(os.path.join(args.out, "summary.json"), summary)
    print(summary_table(table, references, seeds))
    print(f"wrote {args.out}/summary.json and {', '.join(summary['pictures'])} in {time.perf_counter() - start:.0f} s")
    return summary


if __name__ == "__main__":
    from isodiff_jax import errors
    with errors.exit_on_user_error():  # a damaged record or a bad path: one line, not a traceback
        main()
