"""Tiny, for tests: latent diffusion of the LDM family (configs/celebahq256_ldm.py) at toy size:
16×16 images, a two-level VQ autoencoder (8×8×3 latents), configs/test.py's U-Net on them.
The autoencoder's weights: --config.autoencoder.params_file (any .npz of its shapes)."""
from configs import test


def get_config():
    c = test.get_config()
    a = c.autoencoder
    a.kind = "vq"
    a.block_out_channels = (8, 16)
    a.layers_per_block = 1
    a.norm_num_groups = 4
    a.num_vq_embeddings = 32
    c.diffusion.schedule = "scaled_linear"
    c.diffusion.beta_start, c.diffusion.beta_end = 0.0015, 0.0195
    c.training.num_steps = 2
    c.checkpoint.every_steps = 2
    return c
