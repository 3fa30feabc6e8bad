"""Singular spectra of per-sample Jacobians, and the MCN / VoR metrics (method.md §6).

For a map f: R^n -> R^m applied row by row to a batch (in the paper f(x) = pool(e_θ(x, t))),
J_b = ∂f(x_b)/∂x_b (m × n) has k = min(m, n) singular values s_b1 ≥ … ≥ s_bk ≥ 0, and

    CN_b = s_max / s_min   over all k values (s_min the k-th);   MCN = mean_b CN_b
    VoR  = Σ_i Var_b[log s_bi]   (sample variance, ddof 1, over samples; s sorted per sample)

`fn` maps x (B, ...) to (B, ...), acts on every row independently (no batch statistics) and
accepts a batch of any size: the dense path calls it on one sample at a time, the matrix-free
path on the whole batch, whose Jacobian is then block diagonal, so one JVP gives J_b v_b for
every b at once (what a vmap over samples would give, without asking fn to be vmappable).

Every singular value the method computed counts (method.md §6): a numerical-rank cut at
max(m, n) · eps · s_max would cap CN at about 1 / (max(m, n) · eps), e.g. 43 for a 256² image in
float32, whatever the true spectrum. The numerical rank (count of s > `nonzero_rtol` · s_max) is
reported beside it as a diagnostic only. A sample with s_min = 0 has CN = inf; VoR is then nan
(log 0).

Two ways to get s:
- Dense (`jacobian_singular_values`): one sample's Jacobian at a time, built from its smaller
  side in chunks of basis vectors (rows by transposed JVPs when m ≤ n, else columns by JVPs) in
  the dtype of x, then an SVD on the host in float64 (an SVD, not Gram eigenvalues, so the
  condition number is not squared). Each s is accurate to about eps(dtype of x) · s_max
  (absolute): ~1e-16 · s_max in float64, ~1e-7 · s_max in float32.
- Matrix-free (`matrix_free_singular_values`): Golub–Kahan–Lanczos bidiagonalization started on
  the smaller side, with full reorthogonalization of both vector sets. It equals Lanczos on the
  smaller Gram operator (J Jᵀ when m ≤ n) but applies J and Jᵀ separately, so its accuracy is
  ~eps · s_max like the dense path rather than ~eps · s_max² / s_min. Only J v (jax.linearize,
  i.e. jvp) and Jᵀ u (its transpose, i.e. vjp) are used. After q = min(m, n) iterations it gives
  the whole spectrum; with q << min(m, n) the extreme Ritz values converge first: the largest
  fast, the smallest more slowly and from above, so CN is then a lower bound: the evaluators say
  so (mcn_is_lower_bound) and report how much s_min still moved over the last quarter of the
  iterations (s_min_change). VoR in this mode is over the computed values only (top-k and
  bottom-k), so compare it only with itself.
"""
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax import sharding
from isodiff_jax.analysis.evaluator import Evaluator, Measured

METHODS = ("dense", "matrix_free")
WHICH = ("top", "bottom")


def average_pool(h, factor: int):
    """Average pooling of h (B, H, W, C) over factor × factor windows -> (B, H/f, W/f, C)."""
    if h.ndim != 4:
        raise ValueError(f"h must have shape (B, H, W, C), got shape {h.shape}")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    b, height, width, c = h.shape
    if height % factor or width % factor:
        raise ValueError(f"factor {factor} does not divide the spatial shape {(height, width)}")
    if factor == 1:
        return h
    windows = h.reshape(b, height // factor, factor, width // factor, factor, c)
    return windows.mean(axis=(2, 4))


def map_dims(fn: Callable, x) -> tuple[int, int]:
    """(m, n): output and input dimension per sample of fn at a batch x (B, ...)."""
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of shape (B, ...), got shape {x.shape}")
    out = jax.eval_shape(fn, x)
    if out.ndim < 1 or out.shape[0] != x.shape[0]:
        raise ValueError(f"fn must map (B, ...) to (B, ...); got {x.shape} -> {out.shape}")
    return math.prod(out.shape[1:]), math.prod(x.shape[1:])


def nonzero_rtol(m: int, n: int, dtype) -> float:
    """Relative threshold for a non-zero singular value of an m × n Jacobian in dtype."""
    return max(m, n) * float(jnp.finfo(dtype).eps)



def _flat_products(lin, x, out):
    """(jvp, vjp) on flat per-sample coordinates from lin, a linearization of fn at x (B, ...)
    whose value is out; x, out give only shapes and dtypes. jvp: (B, n) -> (B, m), vjp back."""
    batch = x.shape[0]
    lin_t = jax.linear_transpose(lin, jax.ShapeDtypeStruct(x.shape, x.dtype))
    # probes may come in another dtype (float64 Lanczos vectors for a float32 model)
    jvp = lambda v: lin(v.reshape(x.shape).astype(x.dtype)).reshape(batch, -1)
    vjp = lambda u: lin_t(u.reshape(out.shape).astype(out.dtype))[0].reshape(batch, -1)
    return jvp, vjp


def _jacobian_chunk(fn: Callable, params, x_b, start, *, m: int, n: int, chunk: int):
    """Rows start … start + chunk − 1 (m ≤ n) or those columns, transposed (m > n), of the
    Jacobian of fn(params, ·) at one sample x_b (1, ...): (chunk, max(m, n)); indices past the end give 0."""
    out, lin = jax.linearize(lambda x: fn(params, x), x_b)
    jvp, vjp = _flat_products(lin, x_b, out)
    # From the smaller side: m transposed products for rows, or n products for columns.
    side, product = (m, vjp) if m <= n else (n, jvp)
    basis = jax.nn.one_hot(start + jnp.arange(chunk), side, dtype=x_b.dtype)
    return jax.vmap(lambda e: product(e[None])[0])(basis)


def sample_jacobian_fn(fn: Callable, x, *, chunk_size: int = 64, params_like=None) -> Callable:
    """The map (params, x_b (1, ...)) -> dense Jacobian (m, n) of fn(params, ·) at one sample, in
    the dtype of x_b, for fn(params, x (B, ...)) -> (B, ...).

    x (B, ...) gives the per-sample shape and params_like (arrays or ShapeDtypeStructs) the
    parameters' shapes; the parameters are an argument, so new ones compile nothing. One jitted
    chunk of products, compiled at the first call, run by a host loop: XLA:CPU ran the network's products ~10× slower inside a device
    loop (lax.map), measured on the benchmark model (docs/benchmarks.md, "MCN").
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    m, n = map_dims(lambda x: jax.eval_shape(fn, params_like, x), x)
    side = min(m, n)
    chunk = min(chunk_size, side)
    run = jax.jit(functools.partial(_jacobian_chunk, fn, m=m, n=n, chunk=chunk))

    def jacobian(params, x_b):
        vectors = jnp.concatenate([run(params, x_b, start) for start in range(0, side, chunk)])[:side]
        return vectors if m <= n else vectors.T
    return jacobian


def jacobian_singular_values(fn: Callable, x, *, chunk_size: int = 64) -> np.ndarray:
    """Exact singular values of each sample's Jacobian, from dense Jacobians.

    Args: fn (B, ...) -> (B, ...) per sample; x (B, ...); chunk_size basis vectors per
    vectorized product (memory ∝ chunk_size × one sample's activations).
    Returns: (B, k) float64 numpy array, k = min(m, n), descending per row. Only one sample's
    Jacobian (m × n, dtype of x) exists at a time; the SVD runs on the host in float64.
    """
    return dense_singular_values(sample_jacobian_fn(lambda _, x: fn(x), x, chunk_size=chunk_size), None, x)


def dense_singular_values(jacobian: Callable, params, x) -> np.ndarray:
    """(B, k) float64 singular values, descending, from jacobian = `sample_jacobian_fn(...)`."""
    rows = []
    for b in range(x.shape[0]):
        jac = np.asarray(jacobian(params, x[b:b + 1]), dtype=np.float64)
        rows.append(np.linalg.svd(jac, compute_uv=False))
    return np.stack(rows)


def _orthogonalize(w, basis):
    """w (B, d) minus its projection on the rows of basis (r, B, d), twice ("twice is enough")."""
    for _ in range(2):
        coeff = jnp.einsum("rbd,bd->rb", basis, w)
        w = w - jnp.einsum("rb,rbd->bd", coeff, basis)
    return w


def _norm(w):
    return jnp.sqrt(jnp.sum(w * w, axis=-1))


def _next_vector(w, basis, key, scale, tol):
    """Normalize w (B, d), or restart with a random unit vector ⊥ basis where |w| ≤ tol · scale.

    Returns: (vector (B, d), coefficient (B,)); the coefficient is 0 where restarted, which
    splits the bidiagonal matrix into blocks whose singular values are still those of J.
    """
    w = _orthogonalize(w, basis)
    size = _norm(w)
    broke = size <= tol * scale
    fresh = _orthogonalize(jax.random.normal(key, w.shape, w.dtype), basis)
    fresh_size = _norm(fresh)  # 0 only once the space is exhausted; that vector is never used
    fresh = fresh / jnp.where(fresh_size > 0, fresh_size, 1)[:, None]
    vector = jnp.where(broke[:, None], fresh, w / jnp.where(broke, 1, size)[:, None])
    return vector, jnp.where(broke, 0, size)


def _gkl_init(x, key, *, d: int, p: int, num_iters: int):
    """Empty Lanczos bases us (q, B, p), vs (q + 1, B, d) with a random unit v_1; coefficients
    (2, q, B); the running scale (B,)."""
    batch, dtype = x.shape[0], x.dtype
    v_1 = jax.random.normal(jax.random.fold_in(key, 0), (batch, d), dtype)
    vs = jnp.zeros((num_iters + 1, batch, d), dtype).at[0].set(v_1 / _norm(v_1)[:, None])
    us = jnp.zeros((num_iters, batch, p), dtype)
    return us, vs, jnp.zeros((2, num_iters, batch), dtype), jnp.zeros((batch,), dtype)


def _gkl_step(lin, carry, j, key, *, x, out, tol: float):
    """Golub–Kahan–Lanczos step j for every sample at once, from the linearization lin at x.

    With L = Jᵀ (m ≤ n) or J (m > n), so that L is tall p × d, d = min(m, n):
    α_j u_j = L v_j − β_{j−1} u_{j−1} and β_j v_{j+1} = Lᵀ u_j − α_j v_j, the subtractions done
    by full reorthogonalization against the bases in carry (as `_gkl_init` makes them).
    """
    us, vs, coeffs, scale = carry
    jvp, vjp = _flat_products(lin, x, out)
    lin_l, lin_lt = (vjp, jvp) if math.prod(out.shape) <= math.prod(x.shape) else (jvp, vjp)
    w = lin_l(vs[j])
    scale = jnp.maximum(scale, _norm(w))  # a running lower bound on |J|, per sample
    u_j, alpha = _next_vector(w, us, jax.random.fold_in(key, 2 * j + 1), scale, tol)
    w = lin_lt(u_j)
    scale = jnp.maximum(scale, _norm(w))
    v_next, beta = _next_vector(w, vs, jax.random.fold_in(key, 2 * j + 2), scale, tol)
    coeffs = coeffs.at[:, j].set(jnp.stack([alpha, beta]))
    return us.at[j].set(u_j), vs.at[j + 1].set(v_next), coeffs, scale


def bidiagonalize_fn(fn: Callable, x, *, num_iters: int, params_like=None, bases: bool = False) -> Callable:
    """The map (params, x (B, ...), key) -> (alpha, beta), each (B, num_iters): the coefficients
    of num_iters Golub–Kahan–Lanczos steps (`_gkl_step`) on the Jacobian of fn(params, ·) for
    every sample at once; the upper bidiagonal matrix has diagonal alpha and superdiagonal
    beta[:, :-1]. fn(params, x (B, ...)) -> (B, ...). With bases, (alpha, beta, us, vs): also the
    Lanczos vectors, us (q, B, max(m, n)) and vs (q, B, min(m, n)), with L vs = us B (L as in
    `_gkl_step`), from which `pullback.local_basis` makes singular vectors.

    x and params_like give the shapes; the parameters are an argument, so new ones compile
    nothing. The linearization and one step are jitted (compiled at the first call) and the
    steps run from a host loop: XLA:CPU ran the network's products ~8× slower inside a
    device loop (fori_loop), measured on the benchmark model (docs/benchmarks.md, "MCN").
    """
    m, n = map_dims(lambda x: jax.eval_shape(fn, params_like, x), x)
    if not 1 <= num_iters <= min(m, n):
        raise ValueError(f"num_iters must be in [1, min(m, n) = {min(m, n)}], got {num_iters}")
    # A coupling this small is rounding noise of a reorthogonalized vector: treat it as zero.
    tol = math.sqrt(max(m, n)) * float(jnp.finfo(x.dtype).eps)
    out = jax.eval_shape(fn, params_like, x)
    linearize = jax.jit(lambda params, x: jax.linearize(lambda x: fn(params, x), x)[1])
    init = jax.jit(functools.partial(_gkl_init, d=min(m, n), p=max(m, n), num_iters=num_iters))
    step = jax.jit(functools.partial(_gkl_step, x=jax.ShapeDtypeStruct(x.shape, x.dtype), out=out,
                                     tol=tol), donate_argnums=1)

    def run(params, x, key):
        lin, carry = linearize(params, x), init(x, key)
        for j in range(num_iters):
            carry = step(lin, carry, j, key)
        us, vs, coeffs, _ = carry
        return (coeffs[0].T, coeffs[1].T) + ((us, vs[:num_iters]) if bases else ())
    return run


def bidiagonal_singular_values(alpha, beta) -> np.ndarray:
    """Singular values (B, q), descending, of the upper bidiagonal matrices with diagonal alpha
    (B, q) and superdiagonal beta[:, :-1] (beta (B, q) as `bidiagonalize_fn` returns it); float64,
    on the host. Leading blocks alpha[:, :j], beta[:, :j] give the Ritz values after j iterations."""
    alpha, beta = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
    q = alpha.shape[1]
    mats = np.zeros(alpha.shape + (q,))
    idx = np.arange(q)
    mats[:, idx, idx] = alpha
    mats[:, idx[:-1], idx[1:]] = beta[:, :-1]
    return np.linalg.svd(mats, compute_uv=False)


def _select(s, k: int, which: tuple[str, ...]) -> np.ndarray:
    """The top-k and/or bottom-k columns of s (B, q), descending; all q when they overlap."""
    q = s.shape[1]
    if which == ("top",):
        return s[:, :k]
    if which == ("bottom",):
        return s[:, q - k:]
    return s if 2 * k >= q else np.concatenate([s[:, :k], s[:, q - k:]], axis=1)


def _check_which(which) -> tuple[str, ...]:
    which = (which,) if isinstance(which, str) else tuple(which)
    if not which or any(w not in WHICH for w in which) or len(set(which)) != len(which):
        raise ValueError(f"which must be a non-empty subset of {WHICH}, got {which!r}")
    return tuple(w for w in WHICH if w in which)


def matrix_free_singular_values(fn: Callable, x, key, *, k: int, which=WHICH,
                                num_iters: int | None = None) -> np.ndarray:
    """Extreme singular values of each sample's Jacobian, from J v and Jᵀ u products only.

    Args: fn (B, ...) -> (B, ...) per sample; x (B, ...); key a PRNG key (start vectors);
    k how many values at each selected end, 1 ≤ k ≤ min(m, n); which "top", "bottom" or both;
    num_iters Lanczos iterations q, k ≤ q ≤ min(m, n), default min(min(m, n), max(4k, 64))
    (q = min(m, n) gives the whole spectrum).
    Returns: (B, c) float64 numpy array, descending per row: the top-k and/or bottom-k Ritz
    singular values (c = k, or 2k for both, or q when top and bottom overlap). Memory: the
    Lanczos vectors, at most (2q + 1) · B · max(m, n) numbers in the dtype of x.
    """
    which = _check_which(which)
    num_iters = lanczos_iterations(k, num_iters, min(*map_dims(fn, x)))
    alpha, beta = bidiagonalize_fn(lambda _, x: fn(x), x, num_iters=num_iters)(None, x, key)
    return _select(bidiagonal_singular_values(alpha, beta), k, which)



def lanczos_iterations(k: int, num_iters: int | None, d: int) -> int:
    """The Lanczos iteration count for the top (or bottom) k of d = min(m, n) singular values:
    num_iters, checked to lie in [k, d], or by default min(d, max(4k, 64))."""
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, min(m, n) = {d}], got {k}")
    num_iters = min(d, max(4 * k, 64)) if num_iters is None else num_iters
    if not k <= num_iters <= d:
        raise ValueError(f"num_iters must be in [k = {k}, min(m, n) = {d}], got {num_iters}")
    return num_iters


def ranks(s, *, rtol: float) -> np.ndarray:
    """Numerical rank per sample of s (B, k): the count of s > rtol · s_max (a diagnostic; MCN
    and VoR use every value). Returns (B,) ints."""
    s = np.asarray(s)
    return np.sum(s > rtol * s.max(axis=-1, keepdims=True), axis=-1)


def condition_numbers(s) -> np.ndarray:
    """CN per sample of s (B, k): s_max / s_min over every value given (method.md §6: no
    numerical-rank cut); inf where s_min = 0, nan where s_max = 0."""
    s = np.asarray(s, np.float64)
    s_max, s_min = s.max(axis=-1), s.min(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s_max > 0, s_max / s_min, np.nan)


def mcn(s) -> float:
    """Mean condition number over samples of s (B, k)."""
    return float(np.mean(condition_numbers(s)))


def vor(s) -> float:
    """Σ_i Var_b[log s_bi] over every sorted column i of s (B, k), with the sample variance
    (ddof 1) as the original code computes it; nan with fewer than 2 samples or a zero value."""
    s = -np.sort(-np.asarray(s, np.float64), axis=-1)
    if s.shape[0] < 2 or np.any(s <= 0):
        return float("nan")
    return float(np.sum(np.var(np.log(s), axis=0, ddof=1)))


def convergence(alpha, beta, *, lag: int | None = None) -> float:
    """How much the smallest Ritz value moved over the last `lag` Lanczos iterations (default a
    quarter of them): mean_b |s_min(q − lag) − s_min(q)| / s_min(q). Ritz values approach s_min
    from above, so a large change means s_min (and CN) have not converged yet."""
    q = np.asarray(alpha).shape[1]
    lag = max(1, q // 4) if lag is None else lag
    if q - lag < 1:
        return float("nan")
    now = bidiagonal_singular_values(alpha, beta)[:, -1]
    before = bidiagonal_singular_values(np.asarray(alpha)[:, :q - lag], np.asarray(beta)[:, :q - lag])[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.abs(before - now) / now))


def spectrum_metrics(fn: Callable, x, *, method: str = "dense", key=None, prefix: str = "",
                     chunk_size: int = 64, k: int = 8, num_iters: int | None = None,
                     rtol: float | None = None) -> Measured:
    """The spectrum of fn's Jacobians at x, measured once: values prefix + mcn, vor, s_max, s_min
    (means), rank (a numerical-rank diagnostic) and, in matrix-free mode, mcn_is_lower_bound (1
    unless all min(m, n) iterations ran) and s_min_change (see `convergence`); picture prefix +
    singular_values (the (B, c) array itself).

    Args: fn, x as `jacobian_singular_values`; method "dense" or "matrix_free" (needs key; k,
    num_iters as `matrix_free_singular_values`); rtol, for the rank only, defaults to
    `nonzero_rtol`. In matrix-free mode rank is measured only when the whole spectrum was computed.
    """
    _check_method(method, key)
    m, n = map_dims(fn, x)
    if method == "dense":
        s = jacobian_singular_values(fn, x, chunk_size=chunk_size)
        return Measured(spectrum_values(s, m, n, x.dtype, rtol=rtol, prefix=prefix), {prefix + "singular_values": s})
    k, d = min(k, m, n), min(m, n)
    num_iters = min(d, max(4 * k, 64)) if num_iters is None else num_iters
    alpha, beta = bidiagonalize_fn(lambda _, x: fn(x), x, num_iters=num_iters)(None, x, key)
    s = _select(bidiagonal_singular_values(alpha, beta), k, WHICH)
    values = {**spectrum_values(s, m, n, x.dtype, rtol=rtol, prefix=prefix), **_convergence_values(alpha, beta, d, prefix)}
    return Measured(values, {prefix + "singular_values": s})


def whole_spectrum(method: str, m: int, n: int, k: int = 8, num_iters: int | None = None) -> bool:
    """Whether `Spectrum` computes every singular value of m × n Jacobians (which gives the rank):
    dense, or matrix-free with all min(m, n) iterations and the top and bottom k covering them."""
    d = min(m, n)
    if method == "dense":
        return True
    k = min(k, d)
    return min(d, max(4 * k, 64) if num_iters is None else num_iters) == d and 2 * k >= d


def value_names(method: str, whole_spectrum: bool, prefix: str = "") -> tuple[str, ...]:
    """The values `spectrum_metrics` and `Spectrum` measure; whole_spectrum: whether every
    singular value is computed (dense, or matrix-free with k = min(m, n)), which gives the rank."""
    names = ("mcn", "vor", "s_max", "s_min") + (("rank",) if whole_spectrum else ())
    names += ("mcn_is_lower_bound", "s_min_change") if method == "matrix_free" else ()
    return tuple(prefix + name for name in names)


def _check_method(method: str, key) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "matrix_free" and key is None:
        raise ValueError("method='matrix_free' needs a PRNG key")


def spectrum_values(s, m: int, n: int, dtype, *, rtol: float | None = None, prefix: str = "") -> dict:
    """The values of `spectrum_metrics` from singular values s (B, c) of m × n Jacobians in dtype:
    mcn, vor, s_max, s_min from every value; rank, the numerical rank with rtol (default
    `nonzero_rtol`), only as a diagnostic and only when the whole spectrum was computed."""
    s = np.asarray(s, np.float64)
    out = {prefix + "mcn": mcn(s), prefix + "vor": vor(s), prefix + "s_max": float(np.mean(s.max(axis=-1))),
           prefix + "s_min": float(np.mean(s.min(axis=-1)))}
    if s.shape[1] == min(m, n):
        rtol = nonzero_rtol(m, n, dtype) if rtol is None else rtol
        out[prefix + "rank"] = float(np.mean(ranks(s, rtol=rtol)))
    return out


def _convergence_values(alpha, beta, d: int, prefix: str) -> dict:
    """Matrix-free only: whether MCN is exact (all d = min(m, n) iterations) or a lower bound,
    and the relative change of s_min over the last quarter of the iterations (0 when exact)."""
    bound = np.asarray(alpha).shape[1] < d
    return {prefix + "mcn_is_lower_bound": float(bound),
            prefix + "s_min_change": convergence(alpha, beta) if bound else 0.0}  # all d iterations: exact


class Spectrum(Evaluator):
    """Evaluator: `spectrum_metrics` of fn(params, x) at fixed inputs x (B, ...), with the
    Jacobian products jitted once (params_like gives the parameters' shapes), so `run(params)`
    on new parameters compiles nothing. num_iters is capped at min(m, n)."""

    def __init__(self, fn: Callable, x, *, params_like, method: str = "dense", key=None, prefix: str = "",
                 chunk_size: int = 64, k: int = 8, num_iters: int | None = None):
        _check_method(method, key)
        self.x, self.key, self.prefix, self.method, self.k, self.num_iters = x, key, prefix, method, k, num_iters
        self.m, self.n = map_dims(lambda x: jax.eval_shape(fn, params_like, x), x)
        if method == "dense":
            self._jacobian = sample_jacobian_fn(fn, x, chunk_size=chunk_size, params_like=params_like)
        else:
            self.k = min(k, self.m, self.n)
            num_iters = min(self.m, self.n, max(4 * self.k, 64) if num_iters is None else num_iters)
            self._bidiagonalize = bidiagonalize_fn(fn, x, num_iters=num_iters, params_like=params_like)

    @property
    def names(self) -> tuple[str, ...]:
        """The values `measure` gives."""
        return value_names(self.method, whole_spectrum(self.method, self.m, self.n, self.k, self.num_iters), self.prefix)

    def measure(self, params) -> Measured:
        if self.method == "dense":
            s = dense_singular_values(self._jacobian, params, self.x)
            values = spectrum_values(s, self.m, self.n, self.x.dtype, prefix=self.prefix)
        else:
            alpha, beta = (sharding.to_host(c) for c in self._bidiagonalize(params, self.x, self.key))
            s = _select(bidiagonal_singular_values(alpha, beta), self.k, WHICH)
            values = {**spectrum_values(s, self.m, self.n, self.x.dtype, prefix=self.prefix),
                      **_convergence_values(alpha, beta, min(self.m, self.n), self.prefix)}
        return Measured(values, {self.prefix + "singular_values": s})
