"""The paper's latent-diffusion recipe (method.md §4): fine-tune CompVis/ldm-celebahq-256 (a VQ
autoencoder, f = 4, and a U-Net on its 64×64×3 latents) with the isometry loss on the latent x_t
(n = 3·64·64), as the released LDM script does: AdamW lr 1e-5 constant, β (0.95, 0.999), wd 1e-6,
EMA, gating p = 0.5, λ_iso 1e-3, 256² images center-cropped, random flips, 5 epochs of CelebA-HQ
(30 000 images: 5 · ⌈30 000 / batch⌉ steps, 4 690 at batch 32, as configs/celebahq256.py counts them).

The U-Net, the autoencoder and the schedule are those of the import (docs/pretrained.md):

    python -m isodiff_jax.pretrained ldm-celebahq-256 --workdir runs/ldm_pretrained
    python train.py --config configs/celebahq256_ldm.py --workdir runs/ldm_iso \\
        --config.training.init_from=runs/ldm_pretrained \\
        --config.autoencoder.params_file=runs/ldm_pretrained/autoencoder.npz \\
        --config.data.name=folder --config.data.data_dir=/data/celeba_hq_256

Images are encoded by the frozen autoencoder batch by batch; samples, FID, PPL (LPIPS) and
inversion decode through it. Meant for a GPU/TPU machine."""
import ml_collections

from configs import celebahq256, default


def get_config():
    c = default.get_config()
    c.data.name = "celeb_a_hq/256"
    c.data.resolution = 256
    c.data.random_flip = True
    a = c.autoencoder  # CompVis/ldm-celebahq-256's vqvae/config.json
    a.kind = "vq"
    a.block_out_channels = (128, 256, 512)
    a.layers_per_block = 2
    a.latent_channels = 3
    a.vq_embed_dim = 3
    a.num_vq_embeddings = 8192
    a.norm_num_groups = 32
    a.act_fn = "silu"
    a.mid_attention = True
    a.scaling_factor = 1.0  # its config.json has none: the U-Net was trained on unscaled latents
    m = c.model  # its unet/config.json
    m.block_out_channels = (224, 448, 672, 896)
    m.attention_levels = (False, True, True, True)
    m.layers_per_block = 2
    m.attention_head_dim = 32
    m.norm_num_groups = 32
    m.norm_eps = 1e-5
    m.flip_sin_to_cos = True
    m.freq_shift = 0.0
    m.downsample_padding = 1
    c.diffusion.schedule = "scaled_linear"  # its scheduler (DDIMScheduler)
    c.diffusion.num_timesteps = 1000
    c.diffusion.beta_start = 0.0015
    c.diffusion.beta_end = 0.0195
    c.regularizer.weight = 1e-3
    c.regularizer.p = 0.5
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.b1 = 0.95
    c.optim.b2 = 0.999
    c.optim.weight_decay = 1e-6
    c.optim.clip_norm = 1.0
    c.optim.ema_max_decay = 0.9999
    batch = ml_collections.FieldReference(32)
    c.training.global_batch_size = batch
    c.training.num_steps = celebahq256.EPOCHS * ((celebahq256.CELEBA_HQ_IMAGES + batch - 1) // batch)  # as the DDPM's
    c.checkpoint.every_steps = 500
    c.logging.log_every_steps = 50
    c.logging.sample_every_steps = 1_000
    c.logging.num_samples = 16
    c.logging.sample_steps = 50
    c.logging.sample_eta = 0.0
    return c
