"""The training step: diffusion loss plus an optional geometric regularizer (method.md §3-4).

`make_loss_fn` returns the objective as a pure `(params, pl_mean, x0, key, weight) -> (loss,
(pl_mean, metrics))` function; `make_train_step` returns a pure `(state, x0, key, weight) ->
(state, metrics)` function built on it; the caller jits it once. The key and the regularizer's
weight λ are arguments, not constants of the program: the runs of a sweep over seeds or λ share
one compiled step. Timestep gating (method.md §4) is done on the
host by building two steps, one plain with t in [0, pT) and one regularized with t in [pT, T),
so plain steps pay nothing.
"""
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from isodiff_jax import diffusion
from isodiff_jax.isometry import Regularizer
from isodiff_jax.unet import UNet


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    pl_mean: jax.Array  # running mean of |Jᵀy| for the path-length penalty


def make_optimizer(learning_rate, *, b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0):
    """Global-norm gradient clipping then AdamW; learning_rate a float or an optax schedule."""
    return optax.chain(optax.clip_by_global_norm(clip_norm),
                       optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay))


def init_state(model: UNet, optimizer, key, sample_shape) -> TrainState:
    """Fresh state for inputs of shape (B, H, W, C)."""
    params = model.init(key, jnp.zeros(sample_shape, jnp.float32), jnp.zeros(sample_shape[:1], jnp.int32))
    return state_from_params(params, optimizer)


def state_from_params(params, optimizer) -> TrainState:
    """Step 0 from given parameters (fine-tuning): EMA = params, fresh optimizer state."""
    ema_params = jax.tree.map(jnp.copy, params)  # own buffers: the state is donated to the step
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                      opt_state=optimizer.init(params), pl_mean=jnp.zeros((), jnp.float32))


def ema_decay(step, max_decay, power: float = 0.75):
    """Warm-up EMA decay min(max_decay, 1 − (1 + step)^(−power)): the EMA averages over about
    the last (1 + step)^power steps, a window that grows with the run (power 3/4 by default)."""
    return jnp.minimum(max_decay, 1.0 - (1.0 + step) ** -power)


def _t_range(schedule: diffusion.Schedule, t_range) -> tuple[int, int]:
    lo, hi = t_range if t_range is not None else (0, schedule.num_timesteps)
    if not 0 <= lo < hi <= schedule.num_timesteps:
        raise ValueError(f"t_range={t_range} must satisfy 0 <= lo < hi <= {schedule.num_timesteps}")
    return lo, hi


def make_loss_fn(model: UNet, schedule: diffusion.Schedule, *, regularizer: Optional[Regularizer] = None,
                 t_range: Optional[tuple[int, int]] = None, t_weights: Optional[jax.Array] = None,
                 t_sampling: str = "uniform") -> Callable:
    """The objective of method.md §4 as a pure function
    (params, pl_mean, x0 (B, H, W, C), key, weight=None) -> (loss, (new pl_mean, metrics));
    t ~ U{t_range}, drawn independently or stratified over the batch (`diffusion.sample_timesteps`).

    loss = ε-MSE + λ · regularizer (λ = weight, a traced scalar; None: regularizer.weight), with the randomness (t, ε, probes) split from `key`; t_weights
    (T,) weighs each sample's ε-MSE by its t (`diffusion.loss_weights`; None: uniform). A
    regularizer that needs only the encoder's linearization at x_t shares the encoder's forward
    pass with the diffusion loss."""
    lo, hi = _t_range(schedule, t_range)

    def loss_fn(params, pl_mean, x0, key, weight=None):
        k_t, k_eps, k_reg = jax.random.split(key, 3)
        t = diffusion.sample_timesteps(k_t, x0.shape[0], lo, hi, t_sampling)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        x_t = diffusion.q_sample(schedule, x0, t, eps)
        features = lambda x: model.apply(params, x, t, method=UNet.encode_with_skips)
        metrics, reg = {}, 0.0
        if regularizer is not None and regularizer.linearizes_at_x_t:
            # one encoder pass serves both the diffusion loss and the isometry loss
            (h, skips), lin = jax.linearize(features, x_t)
            reg, pl_mean, metrics = regularizer.from_linearization(lambda v: lin(v)[0], x_t, k_reg, pl_mean)
        else:
            h, skips = features(x_t)
            if regularizer is not None:
                encode = lambda x: model.apply(params, x, t, method=UNet.encode)
                reg, pl_mean, metrics = regularizer(encode, x_t, k_reg, pl_mean)
        eps_hat = model.apply(params, h, skips, t, method=UNet.decode)
        loss_eps = diffusion.epsilon_loss(eps, eps_hat, None if t_weights is None else t_weights[t])
        metrics = {"diffusion_loss": loss_eps, **metrics}
        if regularizer is None:
            return loss_eps, (pl_mean, metrics)
        metrics["reg_loss"] = reg
        weight = regularizer.weight if weight is None else weight
        return loss_eps + weight * reg, (pl_mean, metrics)

    return loss_fn


def make_train_step(model: UNet, schedule: diffusion.Schedule, optimizer: optax.GradientTransformation, *,
                    regularizer: Optional[Regularizer] = None, t_range: Optional[tuple[int, int]] = None,
                    ema_max_decay: float = 0.9999, ema_power: float = 0.75, accum_steps: int = 1,
                    t_weights: Optional[jax.Array] = None, t_sampling: str = "uniform") -> Callable:
    """A pure step (state, x0 (B, H, W, C), key, weight=None) -> (state, metrics) on
    `make_loss_fn`'s objective (weight: λ, see there).

    The step's randomness is fold_in(key, state.step), so it depends only on the root key and
    the step number (a resumed run repeats it exactly). With accum_steps = A > 1 the batch is
    split into A micro-batches whose gradients are averaged before one optimizer update; row i
    goes to micro-batch i mod A, so a batch sharded over devices splits without moving data
    (B / A must divide over the devices). L_iso is then a ratio of means per micro-batch.
    """
    _t_range(schedule, t_range)
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    loss_fn = make_loss_fn(model, schedule, regularizer=regularizer, t_range=t_range, t_weights=t_weights,
                           t_sampling=t_sampling)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, pl_mean, x0, key, weight):
        """grad_fn averaged over accum_steps micro-batches (pl_mean threaded through them)."""
        if accum_steps == 1:
            return grad_fn(params, pl_mean, x0, key, weight)
        if x0.shape[0] % accum_steps:
            raise ValueError(f"batch of {x0.shape[0]} does not split into accum_steps={accum_steps}")
        micro = jnp.swapaxes(x0.reshape(x0.shape[0] // accum_steps, accum_steps, *x0.shape[1:]), 0, 1)

        def body(carry, inputs):
            pl_mean, grads = carry
            a, x = inputs
            (loss, (pl_mean, metrics)), g = grad_fn(params, pl_mean, x, jax.random.fold_in(key, a), weight)
            return (pl_mean, jax.tree.map(jnp.add, grads, g)), (loss, metrics)

        zeros = jax.tree.map(jnp.zeros_like, params)
        (pl_mean, grads), (loss, metrics) = jax.lax.scan(
            body, (pl_mean, zeros), (jnp.arange(accum_steps), micro))
        mean = lambda v: jnp.mean(v, axis=0)
        grads = jax.tree.map(lambda g: g / accum_steps, grads)
        return (mean(loss), (pl_mean, jax.tree.map(mean, metrics))), grads

    def step(state: TrainState, x0, key, weight=None):
        key = jax.random.fold_in(key, state.step)
        (loss, (pl_mean, metrics)), grads = accumulated(state.params, state.pl_mean, x0, key, weight)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(state.step, ema_max_decay, ema_power)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                                  opt_state=opt_state, pl_mean=pl_mean)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

    return step
