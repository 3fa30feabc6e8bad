"""The training step: shared encoder linearization equals the plain composition; compiles once."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from support import random_params

from isodiff_jax import diffusion, isometry
from isodiff_jax.train import step as train_step
from isodiff_jax.unet import UNet

TINY = dict(block_out_channels=(8, 16), attention_levels=(False, True), layers_per_block=1,
            attention_head_dim=4, norm_num_groups=4)


@pytest.fixture(scope="module")
def setup():
    model = UNet(**TINY, dtype=jnp.float64)
    schedule = diffusion.make_schedule("linear", 1000, dtype=jnp.float64)
    optimizer = train_step.make_optimizer(1e-3)
    # every weight non-zero (the output convolution too, so eps depends on the whole network)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32))
    params = jax.tree.map(jnp.asarray, random_params(shapes, seed=0, dtype=np.float64))
    cast = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, tree)
    state = cast(train_step.state_from_params(params, optimizer))
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3), jnp.float64, -1, 1)
    return model, schedule, optimizer, state, x0


def _reference_loss(model, schedule, reg, params, x0, key, t_range):
    """The objective written out from the public pieces, with the step's key discipline."""
    k_t, k_eps, k_reg = jax.random.split(key, 3)
    t = jax.random.randint(k_t, x0.shape[:1], *t_range)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = diffusion.q_sample(schedule, x0, t, eps)
    eps_hat, _ = model.apply(params, x_t, t)
    encode = lambda x: model.apply(params, x, t, method=UNet.encode)
    iso, _ = isometry.isometry_loss(encode, x_t, k_reg, metric=reg.kind, form=reg.form,
                                    estimator=reg.estimator, radius=reg.radius)
    return diffusion.epsilon_loss(eps, eps_hat) + reg.weight * iso


@pytest.mark.slow  # compiles full training steps
@pytest.mark.parametrize("reg", [isometry.Regularizer("sphere", weight=0.5),
                                 isometry.Regularizer("sphere", weight=0.5, radius="sqrt_n")],
                         ids=["shared-linearization", "separate-encode-sqrt_n"])
def test_regularized_step_equals_reference_objective(setup, reg):
    model, schedule, optimizer, state, x0 = setup
    key = jax.random.PRNGKey(3)
    # eager on purpose: op-by-op executables are shared across tests, whole-step compiles are not
    step = train_step.make_train_step(model, schedule, optimizer, regularizer=reg, t_range=(500, 1000))
    new_state, metrics = step(state, x0, key)
    ref_loss, ref_grads = jax.value_and_grad(_reference_loss, argnums=3)(
        model, schedule, reg, state.params, x0, jax.random.fold_in(key, 0), (500, 1000))
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-10)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(ref_grads), rtol=1e-8)
    assert int(new_state.step) == 1 and metrics["reg_loss"] > 0


@pytest.mark.slow  # compiles full training steps
@pytest.mark.parametrize("kind", ["euclidean", "path_length"])
def test_other_regularizers_run_and_update_state(setup, kind):
    model, schedule, optimizer, state, x0 = setup
    step = train_step.make_train_step(model, schedule, optimizer,
                                      regularizer=isometry.Regularizer(kind, weight=0.1))
    new_state, metrics = step(state, x0, jax.random.PRNGKey(4))
    assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
    assert (float(new_state.pl_mean) > 0) == (kind == "path_length")


@pytest.fixture(scope="module")
def plain_step(setup):
    """The plain step with the EMA's warm-up power 1/2 (not the default 3/4, so that the test
    below sees it reach the EMA), jitted once for the module's tests (a second trace raises)."""
    model, schedule, optimizer, _, _ = setup
    return jax.jit(chex.assert_max_traces(train_step.make_train_step(model, schedule, optimizer, ema_power=0.5), n=1))


@pytest.mark.slow  # compiles a full training step
def test_plain_step_compiles_once_and_updates_ema(setup, plain_step):
    _, _, _, state, x0 = setup
    step = plain_step
    for _ in range(3):  # a second trace would raise
        state, metrics = step(state, x0, jax.random.PRNGKey(5))
    assert int(state.step) == 3 and "reg_loss" not in metrics
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, state.ema_params)
    assert max(jax.tree.leaves(diff)) > 0  # EMA lags the parameters


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kind"):
        isometry.Regularizer("lpips")
    with pytest.raises(ValueError, match="weight"):
        isometry.Regularizer("sphere", weight=-1.0)
    model = UNet(**TINY)
    with pytest.raises(ValueError, match="t_range"):
        train_step.make_train_step(model, diffusion.make_schedule("linear", 10), optax.sgd(0.1), t_range=(5, 20))


@pytest.mark.slow  # compiles full training steps
def test_gradient_accumulation_averages_micro_batches(setup):
    """accum_steps=2: micro-batch a holds rows a::2 and draws from fold_in(step key, a)."""
    model, schedule, optimizer, state, _ = setup
    x0 = jax.random.uniform(jax.random.PRNGKey(6), (4, 8, 8, 3), jnp.float64, -1, 1)
    reg, key = isometry.Regularizer("sphere", weight=0.5), jax.random.PRNGKey(7)
    step = train_step.make_train_step(model, schedule, optimizer, regularizer=reg, t_range=(500, 1000),
                                      accum_steps=2)
    _, metrics = step(state, x0, key)
    loss_fn = train_step.make_loss_fn(model, schedule, regularizer=reg, t_range=(500, 1000))
    value_and_grad = jax.value_and_grad(lambda p, x, k: loss_fn(p, state.pl_mean, x, k)[0])
    losses, grads = zip(*[value_and_grad(state.params, x0[a::2], jax.random.fold_in(jax.random.fold_in(key, 0), a))
                          for a in range(2)])
    mean_grads = jax.tree.map(lambda *g: sum(g) / 2, *grads)
    np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-10)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(mean_grads), rtol=1e-8)
    with pytest.raises(ValueError, match="accum_steps=3"):
        train_step.make_train_step(model, schedule, optimizer, accum_steps=3)(state, x0, key)


def test_loss_weights_over_t_weigh_each_samples_epsilon_loss(setup):
    """t_weights (Min-SNR-γ) multiply each sample's ε-MSE at its own t; the regularizer is untouched."""
    model, schedule, _, state, x0 = setup
    weights = diffusion.loss_weights(schedule, "min_snr", 5.0)
    key = jax.random.PRNGKey(8)
    loss_fn = train_step.make_loss_fn(model, schedule, t_range=(0, 100), t_weights=weights)
    loss, (_, metrics) = jax.jit(loss_fn)(state.params, state.pl_mean, x0, key)
    k_t, k_eps, _ = jax.random.split(key, 3)
    t = jax.random.randint(k_t, x0.shape[:1], 0, 100)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    eps_hat, _ = jax.jit(model.apply)(state.params, diffusion.q_sample(schedule, x0, t, eps), t)
    per_sample = np.mean((np.asarray(eps) - np.asarray(eps_hat)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(loss, np.mean(np.asarray(weights)[np.asarray(t)] * per_sample), rtol=1e-10)
    assert float(metrics["diffusion_loss"]) == float(loss) and np.all(np.asarray(weights)[np.asarray(t)] < 1)


def test_the_ema_decay_follows_its_power():
    """decay_s = min(max, 1 − (1 + s)^(−power))."""
    for power in (0.5, 0.75, 0.9):
        for step in (0, 1, 10, 1800):
            expected = min(0.9999, 1 - (1 + step) ** -power)
            assert float(train_step.ema_decay(step, 0.9999, power)) == pytest.approx(expected, rel=1e-12)
    assert float(train_step.ema_decay(10**9, 0.99, 0.9)) == pytest.approx(0.99)


@pytest.mark.slow  # compiles a full training step
def test_the_step_warms_its_ema_up_with_its_power(setup, plain_step):
    """Step 0 copies the parameters, step 1 mixes with decay 1 − 2^(−1/2) (the power 1/2 of the
    module's compiled plain step)."""
    _, _, _, state, x0 = setup
    first, _ = plain_step(state, x0, jax.random.PRNGKey(9))
    second, _ = plain_step(first, x0, jax.random.PRNGKey(9))
    decay = 1 - 2 ** -0.5
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, first.ema_params, second.params)
    chex.assert_trees_all_close(first.ema_params, first.params, rtol=0, atol=0)
    chex.assert_trees_all_close(second.ema_params, expected, rtol=1e-12)
