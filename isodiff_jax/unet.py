"""The diffusion U-Net with its semantic space H (method.md §1), NHWC.

Laid out like diffusers' `UNet2DModel` (same blocks, same parameter shapes and a parameter tree
named after its modules) so that a diffusers checkpoint can be converted into it:

    conv_in → down_blocks_i (resnets_j [+ attentions_j], downsample) → mid_block → h
    h → up_blocks_i (resnets_j on [x, skip] [+ attentions_j], upsample) → norm, SiLU → conv_out → ε̂

`encode(x, t)` runs only the down path and the middle block; `__call__(x, t, h)` returns
(ε̂, h) and, when `h` is given, replaces the middle block's output with it (h-space injection).
GroupNorm only (no mutable batch statistics), so `jax.jvp` through `encode` stays simple.

Mixed precision: `dtype` is the compute dtype (bfloat16 on accelerators); parameters stay
float32 (flax casts them per layer). GroupNorm statistics and the attention softmax run in at
least float32 whatever `dtype` is, ε̂ is returned in float32, h in `dtype`.

Rematerialisation: `remat` names a `jax.checkpoint` policy applied (with flax's `nn.remat`) to
every resnet and attention block, trading recomputation in the backward pass for activation
memory (a larger batch per chip); values and derivatives are unchanged, and so is the parameter tree.

Every option of UNet2DModel that changes what it computes is a field here, with diffusers' meaning
(`downsample_padding`, `act_fn`, `resnet_time_scale_shift`, `center_input_sample`,
`mid_block_scale_factor`, the time-embedding and norm options); the defaults are diffusers' own
except where this project's earlier default was kept (see `UNet`). `isodiff_jax.pretrained`
translates a diffusers config into these fields and refuses the options that have none.
"""
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike


def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


# diffusers' `get_activation` names; torch's GELU is the exact (erf) one
ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "mish": _mish,
               "gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": nn.relu}
TIME_SCALE_SHIFTS = ("default", "scale_shift")
# remat option -> what each block keeps for the backward pass (the rest is recomputed)
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: every intermediate is kept
    "blocks": jax.checkpoint_policies.nothing_saveable,  # only each block's inputs
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # matmul and convolution outputs
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # not q·kᵀ
}


def _at_least_f32(dtype: DTypeLike) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _group_norm(groups: int, eps: float, dtype: DTypeLike, name: str):
    """GroupNorm in ≥ float32 (mean, variance and normalisation: in bfloat16 they lose the small
    differences the norm divides by), its output cast to the compute dtype. The module computes in
    float32 itself rather than relying on a flax default that older versions lack."""
    norm = nn.GroupNorm(groups, epsilon=eps, dtype=_at_least_f32(dtype), name=name)
    return lambda x: norm(x).astype(dtype)


def timestep_embedding(t: ArrayLike, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """Sinusoidal embedding of timesteps t (B,) -> (B, dim), as diffusers' `get_timestep_embedding`."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=dtype) / (half - freq_shift)
    angles = jnp.asarray(t, dtype)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (diffusers' TimestepEmbedding)."""

    features: int
    sinusoid_dim: int
    flip_sin_to_cos: bool
    freq_shift: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        emb = timestep_embedding(t, self.sinusoid_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift,
                                 dtype=jnp.promote_types(self.dtype, jnp.float32)).astype(self.dtype)
        emb = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(emb)
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(emb))


class ResnetBlock(nn.Module):
    """GroupNorm-act-Conv twice, the time embedding in between (none when temb is None), 1×1
    shortcut if channels change; (x + y) / output_scale.

    time_scale_shift "default" adds the projected embedding before the second GroupNorm;
    "scale_shift" projects it to 2·features (scale, shift) and applies norm2(y)·(1 + scale) + shift.
    """

    features: int
    groups: int
    eps: float
    dtype: jnp.dtype
    act: str = "silu"
    time_scale_shift: str = "default"
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, temb: Optional[jax.Array]) -> jax.Array:
        act = ACTIVATIONS[self.act]
        norm = lambda name: _group_norm(self.groups, self.eps, self.dtype, name)
        conv = lambda name: nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name=name)
        y = conv("conv1")(act(norm("norm1")(x)))
        shift_too = self.time_scale_shift == "scale_shift"
        if temb is None:  # no time embedding (an autoencoder's resnets: diffusers' temb_channels=None)
            y = norm("norm2")(y)
        else:
            temb = nn.Dense(self.features * (2 if shift_too else 1), dtype=self.dtype,
                            name="time_emb_proj")(act(temb))[:, None, None, :]
            if shift_too:
                scale, shift = jnp.split(temb, 2, axis=-1)
                y = norm("norm2")(y) * (1 + scale) + shift
            else:
                y = norm("norm2")(y + temb)
        y = conv("conv2")(act(y))
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="conv_shortcut")(x)
        return x + y if self.output_scale == 1 else (x + y) / self.output_scale


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over the H·W positions, heads of `head_dim` channels
    (None: one head), after a GroupNorm of `groups` groups (None: no norm, as diffusers' middle
    block with resnet_time_scale_shift "scale_shift"); (x + y) / output_scale."""

    head_dim: Optional[int]
    groups: Optional[int]
    eps: float
    dtype: jnp.dtype
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        head_dim = c if self.head_dim is None else self.head_dim
        if c % head_dim:
            raise ValueError(f"attention_head_dim={head_dim} does not divide {c} channels")
        heads = c // head_dim
        y = x
        if self.groups is not None:
            y = _group_norm(self.groups, self.eps, self.dtype, "group_norm")(y)
        y = y.reshape(b, hgt * wid, c)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
        split = lambda a: a.reshape(b, hgt * wid, heads, head_dim)
        q, k, v = (split(dense(n)(y)) for n in ("to_q", "to_k", "to_v"))
        y = _softmax_attention(q / math.sqrt(head_dim), k, v).reshape(b, hgt * wid, c)
        y = dense("to_out")(y).reshape(b, hgt, wid, c)
        return x + y if self.output_scale == 1 else (x + y) / self.output_scale


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q kᵀ) v per head, (B, L, heads, d) each; normalised after the value product.

    Dividing the (B, L, heads, d) output instead of the (B, heads, L, L) weights saves a pass
    over the largest array; the max shift is exact under stop_gradient (softmax is shift
    invariant), so derivatives of every order are unchanged. With bfloat16 inputs both products
    accumulate into float32 and the logits, exp and sums stay float32; only the weights enter
    the value product in bfloat16.

    Layout: keys and values are held as (B, heads, d, L), behind an optimization barrier. Their
    cotangents, Σ_q P[q, k] g[q, d] and the like, are then computed as (d, L) products that
    contract the big (L, L) arrays along their rows, and the barrier stops XLA from turning them
    back into (L, d) products that contract those arrays along their columns: 3× slower on CPU
    (measured in docs/benchmarks.md).
    """
    upcast = _at_least_f32(q.dtype)
    q = q.transpose(0, 2, 1, 3)  # (B, heads, L, d)
    k, v = (jax.lax.optimization_barrier(a.transpose(0, 2, 3, 1)) for a in (k, v))  # (B, heads, d, L)
    logits = jnp.einsum("bhqd,bhdk->bhqk", q, k, preferred_element_type=upcast)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits)
    out = jnp.einsum("bhqk,bhdk->bhqd", weights.astype(v.dtype), v, preferred_element_type=upcast)
    out = out / jnp.sum(weights, axis=-1, keepdims=True)
    return out.transpose(0, 2, 1, 3).astype(v.dtype)


class Downsample(nn.Module):
    """3×3 convolution with stride 2: padding 1 pads every side, padding 0 one row and column at
    the bottom and right only (diffusers' Downsample2D with padding 0, as Ho et al.'s DDPM)."""

    features: int
    dtype: jnp.dtype
    padding: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((0, 1), (0, 1)) if self.padding == 0 else ((1, 1), (1, 1))
        return nn.Conv(self.features, (3, 3), strides=2, padding=pad, dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 convolution."""

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name="conv")(x)


class UNet(nn.Module):
    """ε-prediction U-Net; its middle block's output is h.

    Attributes mirror diffusers' UNet2DModel: block_out_channels per level; attention_levels
    (one bool per level: attention after each resnet of that level, down and up, i.e.
    AttnDownBlock2D/AttnUpBlock2D rather than DownBlock2D/UpBlock2D); layers_per_block resnets
    per down level (one more per up level); mid_attention (diffusers' add_attention);
    attention_head_dim channels per head (None: one head per attention block); GroupNorm
    groups/eps; flip_sin_to_cos and freq_shift of the time embedding; downsample_padding of the
    stride-2 convolutions (0: bottom/right only); act_fn of the resnets; resnet_time_scale_shift
    ("default" or "scale_shift"); center_input_sample (x -> 2x − 1 first); mid_block_scale_factor
    (the middle block's residual outputs are divided by it). Defaults are today's behaviour
    (attention_head_dim 8, the rest diffusers' defaults). dtype: the compute dtype; remat: a
    REMAT_POLICIES name (neither changes the parameters or, beyond rounding, the outputs).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (64, 128, 128)
    attention_levels: Sequence[bool] = (False, True, False)
    layers_per_block: int = 2
    mid_attention: bool = True
    attention_head_dim: Optional[int] = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    downsample_padding: int = 1
    act_fn: str = "silu"
    resnet_time_scale_shift: str = "default"
    center_input_sample: bool = False
    mid_block_scale_factor: float = 1.0
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"

    def _check_fields(self) -> None:
        boc = tuple(self.block_out_channels)
        if len(self.attention_levels) != len(boc):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, "
                             f"block_out_channels {len(boc)}: give one bool per level")
        for c in boc:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide {c} channels")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r}: expected one of {tuple(ACTIVATIONS)}")
        if self.resnet_time_scale_shift not in TIME_SCALE_SHIFTS:
            raise ValueError(f"resnet_time_scale_shift={self.resnet_time_scale_shift!r}: "
                             f"expected one of {TIME_SCALE_SHIFTS}")
        if self.downsample_padding not in (0, 1):  # others change the size: the skips would not fit
            raise ValueError(f"downsample_padding={self.downsample_padding!r}: expected 0 or 1")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: expected one of {tuple(REMAT_POLICIES)}")

    def setup(self) -> None:
        self._check_fields()
        boc = tuple(self.block_out_channels)
        common = dict(groups=self.norm_num_groups, eps=self.norm_eps, head_dim=self.attention_head_dim,
                      act=self.act_fn, time_scale_shift=self.resnet_time_scale_shift, dtype=self.dtype,
                      remat=self.remat)
        self.time_embedding = TimeEmbedding(4 * boc[0], boc[0], self.flip_sin_to_cos,
                                            self.freq_shift, self.dtype)
        self.conv_in = nn.Conv(boc[0], (3, 3), padding=1, dtype=self.dtype)
        last = len(boc) - 1
        self.down_blocks = [
            _Level(**common, features=c, num_layers=self.layers_per_block, with_attention=att,
                   downsample=i < last, downsample_padding=self.downsample_padding)
            for i, (c, att) in enumerate(zip(boc, self.attention_levels))]
        self.mid_block = _MidBlock(**common, features=boc[-1], with_attention=self.mid_attention,
                                   output_scale=self.mid_block_scale_factor)
        self.up_blocks = [
            _Level(**common, features=c, num_layers=self.layers_per_block + 1, with_attention=att,
                   upsample=i < last)
            for i, (c, att) in enumerate(zip(boc[::-1], self.attention_levels[::-1]))]
        self.conv_norm_out = nn.GroupNorm(self.norm_num_groups, epsilon=self.norm_eps,
                                          dtype=_at_least_f32(self.dtype))  # see _group_norm
        self.conv_out = nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype,
                                kernel_init=nn.initializers.zeros)

    def _time(self, t: ArrayLike, batch: int) -> jax.Array:
        return self.time_embedding(jnp.broadcast_to(jnp.asarray(t), (batch,)))

    def _encode(self, x: jax.Array, temb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """Down path + middle block -> (h, skips)."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be NHWC with {self.in_channels} channels, got {x.shape}")
        if self.center_input_sample:
            x = 2 * x - 1.0
        y = self.conv_in(x.astype(self.dtype))
        skips = [y]
        for block in self.down_blocks:
            y, outs = block.down(y, temb)
            skips.extend(outs)
        return self.mid_block(y, temb), skips

    def _decode(self, h: jax.Array, skips: Sequence[jax.Array], temb: jax.Array) -> jax.Array:
        y, skips = h, list(skips)
        for block in self.up_blocks:
            y = block.up(y, skips, temb)
        y = nn.silu(self.conv_norm_out(y).astype(self.dtype))
        return self.conv_out(y).astype(jnp.float32)

    def encode(self, x: jax.Array, t: ArrayLike) -> jax.Array:
        """h = e_θ(x, t): (B, H, W, C), t (B,) or scalar -> (B, H/2^L, W/2^L, C_last)."""
        return self._encode(x, self._time(t, x.shape[0]))[0]

    def encode_with_skips(self, x: jax.Array, t: ArrayLike) -> tuple[jax.Array, list[jax.Array]]:
        """(h, skips): h and the down path's outputs that `decode` needs."""
        return self._encode(x, self._time(t, x.shape[0]))

    def decode(self, h: jax.Array, skips: Sequence[jax.Array], t: ArrayLike) -> jax.Array:
        """Up path from h and the skips of `encode_with_skips` -> ε̂ (B, H, W, out_channels)."""
        return self._decode(h, skips, self._time(t, h.shape[0]))

    def __call__(self, x: jax.Array, t: ArrayLike,
                 h: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(ε̂, h); a given h replaces the middle block's output (h-space injection)."""
        temb = self._time(t, x.shape[0])
        h_mid, skips = self._encode(x, temb)
        if h is not None:
            if h.shape != h_mid.shape:
                raise ValueError(f"injected h has shape {h.shape}, the model's h is {h_mid.shape}")
            h_mid = h.astype(h_mid.dtype)
        return self._decode(h_mid, skips, temb), h_mid


class _Blocks(nn.Module):
    """Shared fields of the blocks below: GroupNorm groups/eps, attention head dim, the resnets'
    activation and time-embedding mode, dtype, and the remat policy of each resnet and attention."""

    groups: int
    eps: float
    head_dim: Optional[int]
    act: str
    time_scale_shift: str
    dtype: jnp.dtype
    remat: str = "none"

    def _block(self, cls: type) -> type:
        """cls, or cls under jax.checkpoint with the remat policy (same parameters, same names)."""
        if self.remat == "none":
            return cls
        return nn.remat(cls, policy=REMAT_POLICIES[self.remat])

    def _resnet(self, features: int, output_scale: float = 1.0) -> ResnetBlock:
        return self._block(ResnetBlock)(features, self.groups, self.eps, self.dtype, act=self.act,
                                         time_scale_shift=self.time_scale_shift, output_scale=output_scale)

    def _attention(self, output_scale: float = 1.0, norm: bool = True) -> AttentionBlock:
        return self._block(AttentionBlock)(self.head_dim, self.groups if norm else None, self.eps, self.dtype,
                                           output_scale=output_scale)


class _MidBlock(_Blocks):
    """resnet → attention → resnet at the lowest resolution; its output is h. Each residual
    output is divided by output_scale (diffusers' mid_block_scale_factor); with time_scale_shift
    "scale_shift" the attention has no GroupNorm, as in diffusers' UNetMidBlock2D."""

    features: int = 0
    with_attention: bool = True
    output_scale: float = 1.0

    def setup(self) -> None:
        self.resnets = [self._resnet(self.features, self.output_scale) for _ in range(2)]
        norm = self.time_scale_shift != "scale_shift"
        self.attentions = [self._attention(self.output_scale, norm)] if self.with_attention else []

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        x = self.resnets[0](x, temb)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x, temb)


class _Level(_Blocks):
    """One resolution level: resnets (+ attention after each), then down- or upsampling."""

    features: int = 0
    num_layers: int = 0
    with_attention: bool = False
    downsample: bool = False
    downsample_padding: int = 1
    upsample: bool = False

    def setup(self) -> None:
        self.resnets = [self._resnet(self.features) for _ in range(self.num_layers)]
        self.attentions = [self._attention() for _ in range(self.num_layers * self.with_attention)]
        if self.downsample:
            self.downsampler = Downsample(self.features, self.dtype, self.downsample_padding)
        if self.upsample:
            self.upsampler = Upsample(self.features, self.dtype)

    def _layer(self, j: int, y: jax.Array, temb: jax.Array) -> jax.Array:
        y = self.resnets[j](y, temb)
        return self.attentions[j](y) if self.attentions else y

    def down(self, y: jax.Array, temb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """-> (output, outputs of every layer and of the downsampler, for the skips)."""
        outs = []
        for j in range(self.num_layers):
            y = self._layer(j, y, temb)
            outs.append(y)
        if self.downsample:
            y = self.downsampler(y)
            outs.append(y)
        return y, outs

    def up(self, y: jax.Array, skips: list[jax.Array], temb: jax.Array) -> jax.Array:
        """Consumes skips from the end of the list (mutates it)."""
        for j in range(self.num_layers):
            y = self._layer(j, jnp.concatenate([y, skips.pop()], axis=-1), temb)
        return self.upsampler(y) if self.upsample else y
