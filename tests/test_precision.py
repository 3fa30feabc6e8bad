"""Mixed precision (bfloat16 compute, float32 parameters) and rematerialisation, on the U-Net of
configs/test.py.

bfloat16 keeps 8 significant bits (relative spacing 2⁻⁸ ≈ 0.4 %); through the tiny U-Net its
ε̂ and h stay within TOLERANCE of float32's (max |bf16 − f32| / max |f32|), and the diffusion
loss, the isometry loss and its traces within LOSS_TOLERANCE (relative; measured: ε̂ 1.5 %,
h 0.9 %, losses and traces ≤ 0.13 %).
Remat recomputes the same operations: equal to float32 rounding.

The compiled objectives are few and shared, and compiled at XLA's backend optimisation level 0:
each runs once, and compiles about 40 % faster so (still ~10 s of CPU each).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from isodiff_jax import config as config_lib
from isodiff_jax import diffusion
from isodiff_jax.isometry import Regularizer
from isodiff_jax.train import step as train_step
from isodiff_jax.unet import REMAT_POLICIES, UNet

TOLERANCE = 3e-2
LOSS_TOLERANCE = 1e-2
REG = Regularizer("sphere", weight=0.5)
KEY = jax.random.PRNGKey(2)


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def _random_params(model, x, seed=0):
    """Parameters drawn with numpy at the shapes of model.init (compiling the init costs more
    than the tests): unit GroupNorm scales, small biases, kernels of variance 1/fan-in."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, jnp.zeros(x.shape[:1], jnp.int32))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return np.ones(leaf.shape, np.float32)
        scale = 0.05 if name.endswith("['bias']") else 1 / np.sqrt(np.prod(leaf.shape[:-1]))
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _run(fn, *args):
    """fn(*args), jitted and compiled for compile speed (see the module docstring)."""
    compiled = jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    return compiled(*args)


def _loss_fn(model):
    """The regularized objective, t in [50, 100) of T = 100."""
    return train_step.make_loss_fn(model, diffusion.make_schedule("linear", 100), regularizer=REG, t_range=(50, 100))


def _value_and_grad(model, params, x0):
    """value_and_grad of the objective with the key of the first training step."""
    return _run(jax.value_and_grad(_loss_fn(model), has_aux=True), params, jnp.zeros(()), x0,
                jax.random.fold_in(KEY, 0))


@pytest.fixture(scope="module")
def reference():
    """(config, model, params, x0, float32 value_and_grad of the objective with the first step's key)."""
    config = test_config.get_config()
    model = config_lib.unet(config)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), jnp.float32, -1, 1)
    params = _random_params(model, x0)
    return config, model, params, x0, _value_and_grad(model, params, x0)


@pytest.mark.slow  # compiles the regularized objective and its gradient in several variants
def test_bfloat16_agrees_with_float32(reference):
    config, model, params, x0, ((_, (_, metrics32)), _) = reference
    model16 = model.clone(dtype=jnp.bfloat16)
    t = jnp.array([5, 90])
    (eps32, h32), (eps16, h16) = _run(lambda p: (model.apply(p, x0, t), model16.apply(p, x0, t)), params)
    assert eps16.dtype == jnp.float32 and h16.dtype == jnp.bfloat16
    assert _relative(eps16, eps32) < TOLERANCE and _relative(h16, h32) < TOLERANCE

    _, (_, metrics16) = _run(_loss_fn(model16), params, jnp.zeros(()), x0, jax.random.fold_in(KEY, 0))
    for name in ("diffusion_loss", "reg_loss", "rank_loss", "tr_r", "tr_r2"):
        assert metrics16[name].dtype == jnp.float32, name  # the traces are reduced in float32
        assert abs(metrics16[name] / metrics32[name] - 1) < LOSS_TOLERANCE, (name, metrics16[name], metrics32[name])

    # after a bf16 step, parameters, EMA and Adam's moments are still float32 (dtypes are static:
    # the step's output types say it without running it; tests/test_recipe_ddpm.py runs one)
    optimizer = config_lib.optimizer(config)
    step = train_step.make_train_step(model16, diffusion.make_schedule("linear", 100), optimizer,
                                      regularizer=REG, t_range=(50, 100))
    state, _ = jax.eval_shape(step, train_step.state_from_params(params, optimizer), x0, KEY)
    floats = [a for a in jax.tree.leaves((state.params, state.ema_params, state.opt_state))
              if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.float32 for a in floats)


@pytest.mark.slow  # compiles the regularized objective and its gradient in several variants
def test_remat_is_exact_in_value_and_gradient(reference):
    """The regularized objective (encoder linearization, JVP and transpose, decoder) and its
    gradient with every resnet and attention block rematerialised; the parameter tree is the same."""
    _, model, params, x0, ((loss, (_, metrics)), grads) = reference
    remat = model.clone(remat="blocks")
    shapes = jax.eval_shape(remat.init, jax.random.PRNGKey(0), x0, jnp.zeros((2,), jnp.int32))
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    (loss_r, (_, metrics_r)), grads_r = _value_and_grad(remat, params, x0)
    assert metrics["reg_loss"] > 0
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    np.testing.assert_allclose(metrics_r["reg_loss"], metrics["reg_loss"], rtol=1e-6)
    # some gradients are zero up to rounding (the key biases: softmax ignores a shift of the logits)
    atol = 1e-6 * max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads))
    for (path, g), g_r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(g_r, g, rtol=1e-4, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_remat_choices_are_checked():
    assert set(REMAT_POLICIES) >= {"none", "blocks", "dots_saveable"}
    model = UNet(block_out_channels=(8,), attention_levels=(False,), norm_num_groups=4, remat="everything")
    with pytest.raises(ValueError, match="remat='everything'"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)), jnp.zeros((1,), jnp.int32))


def test_remat_and_dtype_do_not_change_what_a_run_is():
    """A run may resume with another remat policy (same values), and fine-tune (init_from)
    parameters saved with another compute dtype or policy; a run recorded before model.remat
    existed reads as "none"."""
    import json
    from isodiff_jax.train import loop
    config = test_config.get_config()
    record = json.loads(config_lib.to_json(config))
    del record["model"]["remat"]
    config.model.remat = "blocks"
    assert config_lib.resume_differences(json.dumps(record), config) == []
    config_lib.validate(config, num_devices=1)
    saved = config_lib.model_spec(test_config.get_config())
    config.model.dtype = "bfloat16"
    loop._check_same_unet(saved, config_lib.model_spec(config), "elsewhere")  # does not raise
