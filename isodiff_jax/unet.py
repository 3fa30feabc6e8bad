"""The diffusion U-Net with its semantic space H (method.md §1), NHWC.

Laid out like diffusers' `UNet2DModel` (same blocks, same parameter shapes and a parameter tree
named after its modules) so that a diffusers checkpoint can be converted into it:

    conv_in → down_blocks_i (resnets_j [+ attentions_j], downsample) → mid_block → h
    h → up_blocks_i (resnets_j on [x, skip] [+ attentions_j], upsample) → norm, SiLU → conv_out → ε̂

`encode(x, t)` runs only the down path and the middle block; `__call__(x, t, h)` returns
(ε̂, h) and, when `h` is given, replaces the middle block's output with it (h-space injection).
GroupNorm only (no mutable batch statistics), so `jax.jvp` through `encode` stays simple.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike


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
    """GroupNorm-SiLU-Conv twice, time embedding added in between, 1×1 shortcut if channels change."""

    features: int
    groups: int
    eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        norm = lambda name: nn.GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, name=name)
        conv = lambda name: nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name=name)
        y = conv("conv1")(nn.silu(norm("norm1")(x)))
        y = y + nn.Dense(self.features, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
        y = conv("conv2")(nn.silu(norm("norm2")(y)))
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="conv_shortcut")(x)
        return x + y


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over the H·W positions, heads of `head_dim` channels."""

    head_dim: int
    groups: int
    eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        if c % self.head_dim:
            raise ValueError(f"attention_head_dim={self.head_dim} does not divide {c} channels")
        heads = c // self.head_dim
        y = nn.GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, name="group_norm")(x)
        y = y.reshape(b, hgt * wid, c)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
        split = lambda a: a.reshape(b, hgt * wid, heads, self.head_dim)
        q, k, v = (split(dense(n)(y)) for n in ("to_q", "to_k", "to_v"))
        y = _softmax_attention(q / math.sqrt(self.head_dim), k, v).reshape(b, hgt * wid, c)
        y = dense("to_out")(y)
        return x + y.reshape(b, hgt, wid, c)


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q kᵀ) v per head, (B, L, heads, d) each; normalised after the value product.

    Dividing the (B, L, heads, d) output instead of the (B, heads, L, L) weights saves a pass
    over the largest array; the max shift is exact under stop_gradient (softmax is shift
    invariant), so derivatives of every order are unchanged.
    """
    upcast = jnp.promote_types(q.dtype, jnp.float32)  # exp and sums in ≥ float32 (bf16 safe)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(upcast)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).astype(upcast)
    norm = jnp.sum(weights, axis=-1).transpose(0, 2, 1)[..., None]  # (B, L, heads, 1)
    return (out / norm).astype(v.dtype)


class Downsample(nn.Module):
    """3×3 convolution with stride 2 (padding 1)."""

    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(self.features, (3, 3), strides=2, padding=1, dtype=self.dtype, name="conv")(x)


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
    (one bool per level: attention after each resnet of that level, down and up);
    layers_per_block resnets per down level (one more per up level); mid_attention; attention
    head dim; GroupNorm groups/eps; flip_sin_to_cos and freq_shift of the time embedding.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (64, 128, 128)
    attention_levels: Sequence[bool] = (False, True, False)
    layers_per_block: int = 2
    mid_attention: bool = True
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        boc = tuple(self.block_out_channels)
        if len(self.attention_levels) != len(boc):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, "
                             f"block_out_channels {len(boc)}: give one bool per level")
        for c in boc:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide {c} channels")
        common = dict(groups=self.norm_num_groups, eps=self.norm_eps,
                      head_dim=self.attention_head_dim, dtype=self.dtype)
        self.time_embedding = TimeEmbedding(4 * boc[0], boc[0], self.flip_sin_to_cos,
                                            self.freq_shift, self.dtype)
        self.conv_in = nn.Conv(boc[0], (3, 3), padding=1, dtype=self.dtype)
        last = len(boc) - 1
        self.down_blocks = [
            _Level(**common, features=c, num_layers=self.layers_per_block, with_attention=att,
                   downsample=i < last)
            for i, (c, att) in enumerate(zip(boc, self.attention_levels))]
        self.mid_block = _MidBlock(**common, features=boc[-1], with_attention=self.mid_attention)
        self.up_blocks = [
            _Level(**common, features=c, num_layers=self.layers_per_block + 1, with_attention=att,
                   upsample=i < last)
            for i, (c, att) in enumerate(zip(boc[::-1], self.attention_levels[::-1]))]
        self.conv_norm_out = nn.GroupNorm(self.norm_num_groups, epsilon=self.norm_eps,
                                          dtype=self.dtype)
        self.conv_out = nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype,
                                kernel_init=nn.initializers.zeros)

    def _time(self, t: ArrayLike, batch: int) -> jax.Array:
        return self.time_embedding(jnp.broadcast_to(jnp.asarray(t), (batch,)))

    def _encode(self, x: jax.Array, temb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """Down path + middle block -> (h, skips)."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be NHWC with {self.in_channels} channels, got {x.shape}")
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
        y = nn.silu(self.conv_norm_out(y))
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
    """Shared fields of the blocks below: GroupNorm groups/eps, attention head dim, dtype."""

    groups: int
    eps: float
    head_dim: int
    dtype: jnp.dtype

    def _resnet(self, features: int) -> ResnetBlock:
        return ResnetBlock(features, self.groups, self.eps, self.dtype)

    def _attention(self) -> AttentionBlock:
        return AttentionBlock(self.head_dim, self.groups, self.eps, self.dtype)


class _MidBlock(_Blocks):
    """resnet → attention → resnet at the lowest resolution; its output is h."""

    features: int = 0
    with_attention: bool = True

    def setup(self) -> None:
        self.resnets = [self._resnet(self.features) for _ in range(2)]
        self.attentions = [self._attention()] if self.with_attention else []

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
    upsample: bool = False

    def setup(self) -> None:
        self.resnets = [self._resnet(self.features) for _ in range(self.num_layers)]
        self.attentions = [self._attention() for _ in range(self.num_layers * self.with_attention)]
        if self.downsample:
            self.downsampler = Downsample(self.features, self.dtype)
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
