"""The U-Net: shapes, h-space encode/injection, diffusers layout and parameter count."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import random_params

from isodiff_jax import isometry
from isodiff_jax.unet import UNet, timestep_embedding

TINY = dict(block_out_channels=(8, 16), attention_levels=(False, True), layers_per_block=1,
            attention_head_dim=4, norm_num_groups=4)


@pytest.fixture(scope="module")
def tiny():
    model = UNet(**TINY)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    t = jnp.array([10, 900])
    # every weight non-zero (flax's init leaves conv_out at zero, so that eps ≡ 0), drawn with numpy
    params = random_params(jax.eval_shape(model.init, jax.random.PRNGKey(1), x, t), seed=1)
    return model, params, x, t


def test_shapes_and_encode_equals_h(tiny):
    model, params, x, t = tiny
    eps, h = model.apply(params, x, t)
    assert eps.shape == x.shape and eps.dtype == jnp.float32
    assert h.shape == (2, 4, 4, 16)
    h_enc = model.apply(params, x, t, method=UNet.encode)
    np.testing.assert_allclose(h_enc, h, rtol=1e-6, atol=1e-6)


def test_encode_does_not_need_the_decoder(tiny):
    model, params, x, t = tiny
    encoder_only = {"params": {k: v for k, v in params["params"].items()
                               if not k.startswith(("up_blocks", "conv_out", "conv_norm_out"))}}
    h = model.apply(encoder_only, x, t, method=UNet.encode)
    np.testing.assert_allclose(h, model.apply(params, x, t)[1], rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception):
        model.apply(encoder_only, x, t)


def test_h_injection(tiny):
    model, params, x, t = tiny
    eps, h = model.apply(params, x, t)
    eps_same, h_same = model.apply(params, x, t, h=h)
    np.testing.assert_allclose(eps_same, eps, rtol=1e-6, atol=1e-6)
    eps_edit, h_edit = model.apply(params, x, t, h=h + 1.0)
    np.testing.assert_allclose(h_edit, h + 1.0, rtol=1e-6)
    assert float(jnp.max(jnp.abs(eps_edit - eps))) > 1e-3
    with pytest.raises(ValueError, match="injected h"):
        model.apply(params, x, t, h=h[:, :2])


def test_time_enters_and_scalar_t_broadcasts(tiny):
    model, params, x, _ = tiny
    eps_a, _ = model.apply(params, x, jnp.array([5, 5]))
    eps_b, _ = model.apply(params, x, 5)
    np.testing.assert_allclose(eps_a, eps_b, rtol=1e-6, atol=1e-6)
    eps_c, _ = model.apply(params, x, 700)
    assert float(jnp.max(jnp.abs(eps_c - eps_a))) > 1e-4


def test_timestep_embedding_matches_diffusers_formula():
    t = np.array([0, 3, 999])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=True, freq_shift=0.0)
    freqs = np.exp(-math.log(10000.0) * np.arange(4) / 4)
    args = t[:, None] * freqs[None]
    np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], -1), rtol=1e-5, atol=1e-5)
    emb2 = timestep_embedding(t, 8, flip_sin_to_cos=False, freq_shift=1.0)
    args = t[:, None] * np.exp(-math.log(10000.0) * np.arange(4) / 3)[None]
    np.testing.assert_allclose(emb2, np.concatenate([np.sin(args), np.cos(args)], -1), rtol=1e-5, atol=1e-5)


def test_benchmark_configuration_parameter_count_and_layout():
    """(64, 128, 128), attention at 16×16 and in the middle block: 6,472,195 like the PyTorch model."""
    model = UNet(block_out_channels=(64, 128, 128), attention_levels=(False, True, False),
                 layers_per_block=2, attention_head_dim=8, norm_num_groups=32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)))
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)) == 6_472_195
    p = shapes["params"]
    assert p["up_blocks_1"]["resnets_0"]["conv1"]["kernel"].shape == (3, 3, 256, 128)  # [x, skip]
    assert p["up_blocks_2"]["resnets_0"]["conv_shortcut"]["kernel"].shape == (1, 1, 192, 64)
    assert set(p["mid_block"]) == {"resnets_0", "attentions_0", "resnets_1"}
    assert "attentions_2" in p["up_blocks_1"] and "attentions_0" not in p["down_blocks_0"]


def test_bad_configuration_and_input_are_named():
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(**{**TINY, "attention_levels": (True,)}).init(jax.random.PRNGKey(0), x, 0)
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNet(**{**TINY, "norm_num_groups": 3}).init(jax.random.PRNGKey(0), x, 0)
    with pytest.raises(ValueError, match="NHWC"):
        UNet(**TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 8, 8)), 0)


@pytest.mark.slow  # a dense float64 Jacobian of a U-Net
def test_isometry_loss_on_unet_encoder_float64(tiny):
    """Chart and tangent forms agree on the real encoder; the loss has gradients in every block."""
    model, params, _, _ = tiny
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    model64 = UNet(**TINY, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 3), jnp.float64)
    encode = lambda p: (lambda x_: model64.apply(p, x_, 800, method=UNet.encode))
    tangent = isometry.exact_isometry_traces(encode(params64), x, form="tangent")
    chart = isometry.exact_isometry_traces(encode(params64), x, form="chart")
    np.testing.assert_allclose(chart, tangent, rtol=1e-10)
    grads = jax.grad(lambda p: isometry.isometry_loss(encode(p), x, jax.random.PRNGKey(3))[0])(params64)
    for block in ("conv_in", "down_blocks_0", "down_blocks_1", "mid_block", "time_embedding"):
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads["params"][block])))
        assert jnp.isfinite(norm) and norm > 0, block
    assert all(jnp.all(g == 0) for g in jax.tree.leaves(grads["params"]["up_blocks_0"]))


def test_attention_matches_reference_softmax_attention_and_its_derivatives():
    from isodiff_jax.unet import _softmax_attention
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 6, 3, 4), jnp.float64) * 3 for i in range(3))
    reference = lambda q, k, v: jnp.einsum(
        "bhqk,bkhd->bqhd", jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1), v)
    np.testing.assert_allclose(_softmax_attention(q, k, v), reference(q, k, v), rtol=1e-12)
    loss = lambda f: (lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))))
    for ours, ref in zip(jax.grad(loss(_softmax_attention), (0, 1, 2))(q, k, v),
                         jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    tangent = jax.jvp(_softmax_attention, (q, k, v), (v, q, k))[1]
    np.testing.assert_allclose(tangent, jax.jvp(reference, (q, k, v), (v, q, k))[1], rtol=1e-10, atol=1e-12)


def test_attention_second_derivatives_match_the_reference():
    """What the isometry loss differentiates: a function of the JVP and of the transposed
    linearization, differentiated again with respect to q, k and v (float64, dense reference)."""
    from isodiff_jax.unet import _softmax_attention
    q, k, v, u, w = (jax.random.normal(jax.random.PRNGKey(i), (2, 6, 3, 4), jnp.float64) for i in range(5))
    reference = lambda q, k, v: jnp.einsum(
        "bhqk,bkhd->bqhd", jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1), v)

    def second_order(f):
        def loss(q, k, v):
            out, lin = jax.linearize(f, q, k, v)
            pulled = jax.linear_transpose(lin, q, k, v)(w)
            return jnp.sum(lin(u, w, u) ** 2) + sum(jnp.sum(jnp.tanh(p)) for p in pulled) + jnp.sum(out * w)
        return jax.grad(loss, (0, 1, 2))(q, k, v)

    for ours, ref in zip(second_order(_softmax_attention), second_order(reference)):
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_downsample_padding_zero_pads_only_bottom_and_right():
    """diffusers' Downsample2D with padding 0 (google's DDPM models): one zero row and column at
    the bottom and right, then a VALID stride-2 convolution; padding 1 pads every side."""
    from isodiff_jax.unet import Downsample
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 3), jnp.float32)
    params = Downsample(4, jnp.float32, padding=0).init(jax.random.PRNGKey(1), x)
    kernel, bias = params["params"]["conv"]["kernel"], params["params"]["conv"]["bias"]
    conv = lambda y: jax.lax.conv_general_dilated(y, kernel, (2, 2), "VALID",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    expected = conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))
    np.testing.assert_allclose(Downsample(4, jnp.float32, padding=0).apply(params, x), expected, rtol=1e-5, atol=1e-5)
    symmetric = conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
    np.testing.assert_allclose(Downsample(4, jnp.float32, padding=1).apply(params, x), symmetric, rtol=1e-5, atol=1e-5)
    assert expected.shape == symmetric.shape == (1, 4, 4, 4)


@pytest.mark.parametrize("field, value", [("act_fn", "tanh"), ("resnet_time_scale_shift", "spatial"),
                                          ("downsample_padding", 2)])
def test_unknown_options_are_named(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        UNet(**{**TINY, field: value}).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), 0)
