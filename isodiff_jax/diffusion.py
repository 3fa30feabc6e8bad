"""DDPM forward process, ε-prediction loss, DDIM sampling and inversion (method.md §1, §5).

Notation follows the papers: `abar_t` is ᾱ_t = Π_{s≤t} (1 − β_s), and

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε,        ε ~ N(0, I).

Arrays of samples have a leading batch axis B and any trailing shape: (B, H, W, C) images or
(B, n) vectors. Per-sample schedule values are gathered at integer timesteps t of shape (B,) and
broadcast over the trailing axes. Results take the dtype of the input samples, not of the
schedule, so a float64 schedule can drive a float32 model.

Samplers are pure functions of an `eps_fn(x, t) -> ε̂` (x: (B, ...), t: int32 (B,)); wrap them in
`jax.jit` with the network closed over. The step count, η and the clipping bound are static.
"""
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

SCHEDULE_KINDS = ("linear", "cosine", "scaled_linear")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
T_SAMPLINGS = ("uniform", "stratified")

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x (B, ...), t int32 (B,)) -> ε̂ (B, ...)


@flax.struct.dataclass
class Schedule:
    """A noise schedule; a pytree, so it can be an argument of jitted functions.

    Attributes:
      betas: (T,) per-step variances β_t, t = 0 … T−1.
      alphas_cumprod: (T,) ᾱ_t = Π_{s≤t} (1 − β_s), decreasing.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        """T, read from the (static) shape, so it is a Python int even under `jax.jit`."""
        return self.betas.shape[0]


def _linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """DDPM (Ho et al. 2020): β evenly spaced from beta_start to beta_end. Float64 (T,)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def _scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Latent diffusion's schedule (diffusers' "scaled_linear"): sqrt(β) evenly spaced from
    sqrt(beta_start) to sqrt(beta_end). Float64 (T,)."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def _cosine_betas(num_timesteps: int, s: float) -> np.ndarray:
    """Nichol & Dhariwal (2021): ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

    β_t = 1 − ᾱ(t)/ᾱ(t−1) for t = 1 … T, clipped to ≤ 0.999 so that ᾱ stays positive at the end
    (f(T) = 0 would make x0 unrecoverable). Float64 (T,).
    """
    t = np.arange(num_timesteps + 1, dtype=np.float64)
    f = np.cos((t / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    return np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)


def _shifted_betas(betas: np.ndarray, shift: float) -> np.ndarray:
    """The β of the schedule whose ᾱ is σ(logit(ᾱ) + shift), from float64 β (T,)."""
    log_abar = np.cumsum(np.log1p(-betas))
    logit = log_abar - np.log(-np.expm1(log_abar))  # log(ᾱ / (1 − ᾱ)), stable near ᾱ = 1
    log_shifted = -np.logaddexp(0.0, -(logit + shift))  # log σ(logit + shift)
    return -np.expm1(np.diff(log_shifted, prepend=0.0))  # β_t = 1 − ᾱ'_t / ᾱ'_{t−1}, ᾱ'_{−1} = 1


def make_schedule(
    kind: str,
    num_timesteps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    logsnr_shift: float = 0.0,
    dtype: DTypeLike = jnp.float32,
) -> Schedule:
    """Builds a "linear", "cosine" or "scaled_linear" schedule of `num_timesteps` steps.

    logsnr_shift = c adds c to every step's log-SNR, log(ᾱ/(1 − ᾱ)): ᾱ'_t = σ(logit(ᾱ_t) + c)
    (Hoogeboom et al. 2023, "simple diffusion", shift a schedule by 2·log(r₀/r) when the image
    resolution r differs from the r₀ the schedule was made for; c > 0: less noise at every t).

    Computed in float64 NumPy and cast to `dtype` at the end; ᾱ is always the cumulative product of
    the (possibly clipped, or shifted) betas, so the two fields agree exactly.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        betas = _linear_betas(num_timesteps, beta_start, beta_end)
    elif kind == "scaled_linear":
        betas = _scaled_linear_betas(num_timesteps, beta_start, beta_end)
    else:
        betas = _cosine_betas(num_timesteps, cosine_s)
    if logsnr_shift:
        betas = _shifted_betas(betas, logsnr_shift)
    alphas_cumprod = np.cumprod(1.0 - betas)
    return Schedule(
        betas=jnp.asarray(betas, dtype=dtype),
        alphas_cumprod=jnp.asarray(alphas_cumprod, dtype=dtype),
    )


def sample_timesteps(key: jax.Array, batch: int, lo: int, hi: int, kind: str = "uniform") -> jax.Array:
    """(batch,) integer timesteps, each uniform on {lo, …, hi − 1}.

    "uniform": independent draws. "stratified": the low-discrepancy sampler of Variational
    Diffusion Models (Kingma et al. 2021): [lo, hi) is cut into `batch` equal strata and each
    holds one draw, t_i = lo + ⌊(π(i) + u) (hi − lo) / batch⌋ with one offset u ~ U[0, 1) and a
    random permutation π of the rows; each t_i is still uniform, but the batch covers the range
    evenly, which lowers the variance of the batch's loss and gradient."""
    if kind == "uniform":
        return jax.random.randint(key, (batch,), lo, hi)
    if kind != "stratified":
        raise ValueError(f"unknown timestep sampling {kind!r}; expected one of {T_SAMPLINGS}")
    k_u, k_perm = jax.random.split(key)
    u = jax.random.uniform(k_u, ())
    strata = jax.random.permutation(k_perm, batch)
    t = lo + jnp.floor((strata + u) * ((hi - lo) / batch)).astype(jnp.int32)
    return jnp.minimum(t, hi - 1)  # (batch − 1 + u)·n/batch < n, but float rounding could reach it


def _per_sample(values: jax.Array, like: jax.Array) -> jax.Array:
    """Values (B,) reshaped to (B, 1, …, 1) to broadcast against `like` (B, ...), in its dtype."""
    values = values.astype(like.dtype)
    return values.reshape(values.shape + (1,) * (like.ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Forward process x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε.

    Args:
      schedule: the noise schedule.
      x0: (B, ...) clean samples.
      t: (B,) integer timesteps in [0, T).
      eps: (B, ...) standard Gaussian noise, same shape as x0.
    Returns:
      x_t: (B, ...) in x0's dtype.
    """
    abar_t = _per_sample(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(abar_t) * x0 + jnp.sqrt(1 - abar_t) * eps


def epsilon_loss(eps: jax.Array, eps_hat: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """The simple DDPM loss: mean of (ε − ε̂)² over every element. (B, ...) × 2 -> ().

    weights: (B,) per-sample weights (`loss_weights` at each sample's t); the loss is then the
    batch mean of weight × the sample's mean squared error (None: all 1)."""
    if weights is None:
        return jnp.mean(jnp.square(eps - eps_hat))
    per_sample = jnp.mean(jnp.square(eps - eps_hat), axis=tuple(range(1, eps.ndim)))
    return jnp.mean(weights.astype(per_sample.dtype) * per_sample)


def snr(schedule: Schedule) -> jax.Array:
    """(T,) signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of x_t, decreasing in t."""
    abar = schedule.alphas_cumprod
    return abar / (1 - abar)


def loss_weights(schedule: Schedule, kind: str = "uniform", gamma: float = 5.0) -> jax.Array:
    """(T,) weight of the ε-loss at each t.

    "uniform": 1 (DDPM's simple loss). "min_snr": min(SNR_t, γ) / SNR_t, the ε-prediction form
    of Min-SNR-γ weighting (Hang et al., ICCV 2023): steps whose SNR exceeds γ (little noise,
    fine detail) are down-weighted to γ / SNR_t; noisier steps keep weight 1."""
    if kind not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {kind!r}; expected one of {LOSS_WEIGHTINGS}")
    if kind == "uniform":
        return jnp.ones_like(schedule.alphas_cumprod)
    if not gamma > 0:
        raise ValueError(f"min_snr gamma must be > 0, got {gamma}")
    ratio = snr(schedule)
    return jnp.minimum(ratio, gamma) / ratio


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """The S = num_steps timesteps DDIM visits, ascending: 0, k, 2k, … with k = T // S.

    This is the "leading" spacing of diffusers (without an offset): t = 0 is always included, so
    the last sampling step denoises from ᾱ_0 ≈ 1. Returns int32 (S,).
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    return np.arange(num_steps, dtype=np.int32) * (num_timesteps // num_steps)


def _predict_x0(x: jax.Array, eps_hat: jax.Array, abar_t: jax.Array,
                clip_x0: float | None = None) -> jax.Array:
    """x0_hat = (x − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t), optionally clipped to [−clip_x0, clip_x0]."""
    x0_hat = (x - jnp.sqrt(1 - abar_t) * eps_hat) / jnp.sqrt(abar_t)
    if clip_x0 is not None:
        x0_hat = jnp.clip(x0_hat, -clip_x0, clip_x0)
    return x0_hat


def _ddim_sigma(eta: float, abar_t: jax.Array, abar_prev: jax.Array) -> jax.Array:
    """σ_t(η) of Song et al. (2021), Eq. 16; zero when η = 0 or ᾱ_prev = 1."""
    return eta * jnp.sqrt((1 - abar_prev) / (1 - abar_t)) * jnp.sqrt(1 - abar_t / abar_prev)


def ddim_sample(eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array, num_steps: int, *, eta: float = 0.0,
                key: jax.Array | None = None, clip_x0: float | None = None,
                return_path: bool = False, from_step: int = 0) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DDIM sampling (Song et al. 2021) from x_T down to x_0 in `num_steps` steps, as a `lax.scan`.

    Args:
      eps_fn: (x (B, ...), t int32 (B,)) -> ε̂ (B, ...), or a pair (ε̂ for the predicted x0, ε̂
        for the direction term): Asyrp's h-space editing moves only the first.
      schedule: the noise schedule the model was trained with.
      x_T: (B, ...) starting noise at the largest timestep of `ddim_timesteps`.
      num_steps: S, static.
      eta: η, a static Python float; 0 gives the deterministic ODE sampler, 1 DDPM-like noise.
      key: PRNG key, required when η > 0; step i draws its noise from `fold_in(key, i)`.
      clip_x0: if given, the predicted x0 is clipped to [−clip_x0, clip_x0] at every step.
      return_path: also return the points the steps start from.
      from_step: static; start at step i of the S (x_T is then a point at timestep
        `ddim_timesteps(T, S)[::-1][i]`, e.g. an edited x_t) and run the S − i remaining steps,
        exactly as the last S − i steps of a run from the top.
    Returns:
      x_0: (B, ...) in x_T's dtype. The last step targets ᾱ = 1, so it is that step's x0_hat.
      With return_path, (x_0, path): path (S − from_step, B, ...) holds x at the timesteps
      `ddim_timesteps(T, S)[::-1][from_step:]`, path[0] = x_T.
    """
    eta = float(eta)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and key is None:
        raise ValueError(f"a PRNG key is required when eta > 0 (got eta={eta})")
    if not 0 <= from_step < num_steps:
        raise ValueError(f"from_step must be in [0, {num_steps}), got {from_step}")
    ts = ddim_timesteps(schedule.num_timesteps, num_steps)[::-1]
    abar = schedule.alphas_cumprod.astype(x_T.dtype)
    abar_t = abar[ts]
    abar_prev = jnp.concatenate([abar[ts[1:]], jnp.ones((1,), x_T.dtype)])
    batch = x_T.shape[0]
    keep = (lambda x: x) if return_path else (lambda x: None)

    def step(x, inputs):
        i, t, a_t, a_prev = inputs
        eps_hat = eps_fn(x, jnp.full((batch,), t, jnp.int32))
        eps_hat, eps_dir = eps_hat if isinstance(eps_hat, tuple) else (eps_hat, eps_hat)
        x0_hat = _predict_x0(x, eps_hat, a_t, clip_x0)
        if eta == 0.0:
            return jnp.sqrt(a_prev) * x0_hat + jnp.sqrt(1 - a_prev) * eps_dir, keep(x)
        sigma = _ddim_sigma(eta, a_t, a_prev)
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        # max(·, 0): at η = 1 the coefficient can round to a tiny negative number.
        eps_scale = jnp.sqrt(jnp.maximum(1 - a_prev - sigma**2, 0))
        return jnp.sqrt(a_prev) * x0_hat + eps_scale * eps_dir + sigma * z, keep(x)

    steps = (jnp.arange(num_steps), jnp.asarray(ts, jnp.int32), abar_t, abar_prev)
    steps = tuple(a[from_step:] for a in steps)
    x_0, path = jax.lax.scan(step, x_T, steps)
    return (x_0, path) if return_path else x_0


def ddim_invert(eps_fn: EpsFn, schedule: Schedule, x0: jax.Array, num_steps: int) -> jax.Array:
    """DDIM inversion: the deterministic (η = 0) DDIM ODE run upward from x0, as a `lax.scan`.

    Visits `ddim_timesteps` in ascending order; at t_k it predicts ε̂ = eps_fn(x, t_k) at the
    current point (noise level ᾱ_{t_{k−1}}, or 1 at the start) and moves to level ᾱ_{t_k}.
    `ddim_sample(eps_fn, schedule, ddim_invert(eps_fn, schedule, x0, S), S)` reconstructs x0 up to
    the discretization error of evaluating ε̂ at the other end of each step.

    Args:
      eps_fn: (x (B, ...), t int32 (B,)) -> ε̂ (B, ...).
      schedule: the noise schedule.
      x0: (B, ...) clean samples.
      num_steps: S, static.
    Returns:
      x_T: (B, ...) latents at the largest DDIM timestep, in x0's dtype.
    """
    ts = ddim_timesteps(schedule.num_timesteps, num_steps)
    abar = schedule.alphas_cumprod.astype(x0.dtype)
    abar_next = abar[ts]
    abar_cur = jnp.concatenate([jnp.ones((1,), x0.dtype), abar[ts[:-1]]])
    batch = x0.shape[0]

    def step(x, inputs):
        t, a_cur, a_next = inputs
        eps_hat = eps_fn(x, jnp.full((batch,), t, jnp.int32))
        x0_hat = _predict_x0(x, eps_hat, a_cur)
        return jnp.sqrt(a_next) * x0_hat + jnp.sqrt(1 - a_next) * eps_hat, None

    x_T, _ = jax.lax.scan(step, x0, (jnp.asarray(ts, jnp.int32), abar_cur, abar_next))
    return x_T
