"""The VQ autoencoder of latent diffusion (diffusers' `VQModel`), NHWC.

    x → encoder → quant_conv → z                     (encode: the latent the U-Net diffuses)
    z → vector quantizer → post_quant_conv → decoder → x̂   (decode)

Laid out like diffusers' `VQModel` (same blocks, parameter shapes and names), so that
`isodiff_jax.pretrained` converts its weights: the encoder is `conv_in`, DownEncoderBlock2D levels
(resnets without time embedding, a stride-2 convolution padded bottom/right between levels), a
middle block (resnet, one-head attention, resnet), GroupNorm, SiLU, `conv_out`; the decoder
mirrors it with UpDecoderBlock2D levels (one more resnet per level, nearest ×2 upsampling). Every
GroupNorm has epsilon 1e-6, as in diffusers' Encoder and Decoder. The layers are the U-Net's.

The latent is the encoder's output before quantization, as CompVis' latent diffusion trains on
(its `encode` returns it unquantized; its `decode` quantizes first). `scaling_factor` multiplies
it on the way in and divides it on the way out, as diffusers' pipelines do: z = s·encode(x),
decode(z) = decoder(quantize(z / s)). The autoencoder is frozen here: it is never trained, so no
codebook loss is computed; the quantizer passes gradients straight through (z + sg(z_q − z)), as
diffusers' does.
"""
import io
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from isodiff_jax import storage
from isodiff_jax.errors import InvalidValue, MissingPath
from isodiff_jax.unet import ACTIVATIONS, AttentionBlock, Downsample, ResnetBlock, Upsample

EPS = 1e-6  # diffusers' Encoder/Decoder GroupNorm epsilon (resnets, attention, output norm)


class _MidBlock(nn.Module):
    """resnet → attention (one head over all channels) → resnet, no time embedding."""

    features: int
    groups: int
    act: str
    attention: bool
    dtype: jnp.dtype

    def setup(self) -> None:
        self.resnets = [ResnetBlock(self.features, self.groups, EPS, self.dtype, act=self.act) for _ in range(2)]
        self.attentions = [AttentionBlock(None, self.groups, EPS, self.dtype)] if self.attention else []

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x, None)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x, None)


class _Level(nn.Module):
    """DownEncoderBlock2D / UpDecoderBlock2D: resnets, then a stride-2 convolution (padded
    bottom/right, diffusers' downsample_padding 0) or a nearest ×2 upsampling."""

    features: int
    num_layers: int
    groups: int
    act: str
    dtype: jnp.dtype
    downsample: bool = False
    upsample: bool = False

    def setup(self) -> None:
        self.resnets = [ResnetBlock(self.features, self.groups, EPS, self.dtype, act=self.act)
                        for _ in range(self.num_layers)]
        if self.downsample:
            self.downsampler = Downsample(self.features, self.dtype, padding=0)
        if self.upsample:
            self.upsampler = Upsample(self.features, self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x, None)
        if self.downsample:
            x = self.downsampler(x)
        return self.upsampler(x) if self.upsample else x


class _Coder(nn.Module):
    """The encoder (upward=False: image → latent_channels) or the decoder (upward=True)."""

    out_channels: int
    block_out_channels: Sequence[int]
    layers_per_block: int
    groups: int
    act: str
    mid_attention: bool
    upward: bool
    dtype: jnp.dtype

    def setup(self) -> None:
        boc, last = tuple(self.block_out_channels), len(self.block_out_channels) - 1
        common = dict(groups=self.groups, act=self.act, dtype=self.dtype)
        self.conv_in = nn.Conv(boc[-1] if self.upward else boc[0], (3, 3), padding=1, dtype=self.dtype)
        if self.upward:
            self.up_blocks = [_Level(c, self.layers_per_block + 1, upsample=i < last, **common)
                              for i, c in enumerate(boc[::-1])]
        else:
            self.down_blocks = [_Level(c, self.layers_per_block, downsample=i < last, **common)
                                for i, c in enumerate(boc)]
        self.mid_block = _MidBlock(boc[-1], attention=self.mid_attention, **common)
        self.conv_norm_out = nn.GroupNorm(self.groups, epsilon=EPS, dtype=self.dtype)
        self.conv_out = nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x.astype(self.dtype))
        if self.upward:
            x = self.mid_block(x)
            for level in self.up_blocks:
                x = level(x)
        else:
            for level in self.down_blocks:
                x = level(x)
            x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))  # SiLU whatever act_fn is, as diffusers


class VectorQuantizer(nn.Module):
    """Each vector (last axis) replaced by its nearest codebook entry (Euclidean distance; the
    first of equally near ones); gradients pass straight through."""

    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z (..., features) -> (z_q, indices (...))."""
        bound = 1.0 / self.num_embeddings  # U(−1/n, 1/n), diffusers' initialisation
        init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
        codebook = self.param("embedding", init, (self.num_embeddings, self.features))
        indices = nearest(z, codebook)
        z_q = jnp.take(codebook, indices, axis=0).astype(z.dtype)
        return z + jax.lax.stop_gradient(z_q - z), indices


def nearest(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the codebook row (K, D) nearest to each z (..., D), by |z|² − 2 z·e + |e|² in
    float32 (what torch.cdist computes for more than 25 rows)."""
    z = z.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    distances = (jnp.sum(z * z, axis=-1, keepdims=True) - 2 * z @ codebook.T
                 + jnp.sum(codebook * codebook, axis=-1))
    return jnp.argmin(distances, axis=-1)


class VQAutoencoder(nn.Module):
    """diffusers' VQModel (DownEncoderBlock2D / UpDecoderBlock2D levels, GroupNorm).

    Attributes: in/out_channels of the images; block_out_channels per level (one 2× down- and
    upsampling between levels); layers_per_block resnets per encoder level (one more per decoder
    level); latent_channels of the encoder and decoder ends; vq_embed_dim channels of the latent
    and of the codebook's num_vq_embeddings entries; norm_num_groups; act_fn of the resnets;
    mid_attention (diffusers' mid_block_add_attention); scaling_factor (see the module docstring).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 3
    vq_embed_dim: int = 3
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_attention: bool = True
    scaling_factor: float = 1.0
    dtype: jnp.dtype = jnp.float32

    def _check_fields(self) -> None:
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide {c} channels")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r}: expected one of {tuple(ACTIVATIONS)}")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor={self.scaling_factor!r}: expected a number > 0")

    def setup(self) -> None:
        self._check_fields()
        common = dict(block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
                      groups=self.norm_num_groups, act=self.act_fn, mid_attention=self.mid_attention,
                      dtype=self.dtype)
        self.encoder = _Coder(self.latent_channels, upward=False, **common)
        self.quant_conv = nn.Conv(self.vq_embed_dim, (1, 1), dtype=self.dtype)
        self.quantize = VectorQuantizer(self.num_vq_embeddings, self.vq_embed_dim)
        self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1), dtype=self.dtype)
        self.decoder = _Coder(self.out_channels, upward=True, **common)

    @property
    def downsampling(self) -> int:
        """The factor from the image side to the latent side."""
        return 2 ** (len(self.block_out_channels) - 1)

    def encode(self, x: jax.Array) -> jax.Array:
        """Images (B, H, W, in_channels) in [-1, 1] -> latents z (B, H/f, W/f, vq_embed_dim), unquantized."""
        return (self.quant_conv(self.encoder(x)) * self.scaling_factor).astype(jnp.float32)

    def quantize_latents(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z -> (its quantized value, on z's scale; the codebook indices (B, H/f, W/f))."""
        z_q, indices = self.quantize(z / self.scaling_factor)
        return z_q * self.scaling_factor, indices

    def decode(self, z: jax.Array, quantize: bool = True) -> jax.Array:
        """Latents (B, h, w, vq_embed_dim) -> images (B, f·h, f·w, out_channels), float32;
        quantized first unless quantize=False (diffusers' force_not_quantize)."""
        z = z / self.scaling_factor
        if quantize:
            z = self.quantize(z)[0]
        return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)

    def __call__(self, x: jax.Array, quantize: bool = True) -> jax.Array:
        """decode(encode(x)): the reconstruction."""
        return self.decode(self.encode(x), quantize)


def abstract_params(autoencoder: VQAutoencoder, side: Optional[int] = None):
    """Shapes and dtypes of the parameters (they do not depend on the image size)."""
    side = side or autoencoder.downsampling
    x = jax.ShapeDtypeStruct((1, side, side, autoencoder.in_channels), jnp.float32)
    return jax.eval_shape(autoencoder.init, jax.random.PRNGKey(0), x)


def save_params(path: str, params) -> str:
    """Writes Flax variables {'params': ...} to `path` (.npz, one array per '/'-joined path)."""
    flat = traverse_util.flatten_dict(jax.device_get(params["params"]), sep="/")
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
    storage.write_bytes(path, buffer.getvalue())
    return path


def load_params(path: str, autoencoder: VQAutoencoder):
    """Flax variables {'params': ...} of `autoencoder` from a file of `save_params`; MissingPath
    or InvalidValue naming the file and every missing, unexpected, mis-shaped or non-finite array."""
    if not storage.exists(path):
        raise MissingPath(f"{path} does not exist: the autoencoder's weights (written by "
                          f"`python -m isodiff_jax.pretrained`) are needed for latent diffusion")
    expected = traverse_util.flatten_dict(abstract_params(autoencoder)["params"], sep="/")
    with np.load(storage.open_read(path)) as f:
        arrays = {k: f[k] for k in f.files}
    problems = [f"missing {k}" for k in expected if k not in arrays]
    problems += [f"unexpected {k}" for k in arrays if k not in expected]
    problems += [f"{k} has shape {arrays[k].shape}, expected {tuple(v.shape)}" for k, v in expected.items()
                 if k in arrays and arrays[k].shape != tuple(v.shape)]
    problems += [f"{k} is not finite" for k in expected if k in arrays and not np.all(np.isfinite(arrays[k]))]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise InvalidValue(f"{path} does not hold the weights of the autoencoder {autoencoder}: {shown}")
    params = {k: jnp.asarray(arrays[k], jnp.float32) for k in expected}
    return {"params": traverse_util.unflatten_dict(params, sep="/")}
