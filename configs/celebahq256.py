"""The paper's DDPM recipe (method.md §4), as the released script runs it: fine-tune
google/ddpm-ema-celebahq-256 on CelebA-HQ with the isometry loss. AdamW lr 1e-5 constant (no
warm-up), β (0.95, 0.999), weight decay 1e-6, gradient clipping 1.0, EMA (max decay 0.9999,
warm-up 1 − (1 + step)^(−3/4)), gating p = 0.5, λ_iso 1e-3, 256² images center-cropped with
random flips, 5 epochs of CelebA-HQ's 30 000 images: num_steps = 5 · ⌈30 000 / batch⌉ (4 690 at
the script's batch of 32 = 1 per GPU × 8 accumulated × 4 GPUs; it follows
--config.training.global_batch_size unless num_steps is given too).

The released shell script passes --lambda_iso=1e-6; the paper and method.md give 1e-3, which is
kept here (--config.regularizer.weight=1e-6 for the script's value). It trains in fp16 mixed
precision; here bf16 compute with float32 parameters and optimizer state (model.dtype, use
--config.model.dtype=float32 to compute in float32).

The U-Net is google's (block_out_channels (128, 128, 256, 256, 512, 512), attention at 16×16,
its diffusers options). Import it first (docs/pretrained.md walks through the whole job):

    python -m isodiff_jax.pretrained ddpm-ema-celebahq-256 --workdir runs/celebahq256_pretrained
    python train.py --config configs/celebahq256.py --workdir runs/celebahq256_iso \\
        --config.data.name=folder --config.data.data_dir=/data/celeba_hq_256

training.init_from points at that import; a run without it stops naming the missing workdir.
Data: a folder of images (data.name=folder) or prepared TFDS `celeb_a_hq/256` in data_dir.
Meant for a GPU/TPU machine (model.remat trades recomputation for batch size there).
"""
import ml_collections

from configs import default

CELEBA_HQ_IMAGES = 30_000
EPOCHS = 5


def get_config():
    c = default.get_config()
    c.data.name = "celeb_a_hq/256"
    c.data.resolution = 256  # center crop (always) to 256²
    c.data.random_flip = True
    m = c.model
    m.block_out_channels = (128, 128, 256, 256, 512, 512)
    m.attention_levels = (False, False, False, False, True, False)
    m.layers_per_block = 2
    m.attention_head_dim = None  # one head per attention block, as in DDPM
    m.norm_num_groups = 32
    m.norm_eps = 1e-6
    m.flip_sin_to_cos = False
    m.freq_shift = 1.0
    m.downsample_padding = 0
    m.dtype = "bfloat16"
    c.regularizer.kind = "sphere"
    c.regularizer.weight = 1e-3
    c.regularizer.p = 0.5
    o = c.optim
    o.lr = 1e-5
    o.warmup_steps = 0
    o.decay = "constant"
    o.b1 = 0.95
    o.b2 = 0.999
    o.weight_decay = 1e-6
    o.clip_norm = 1.0
    o.ema_max_decay = 0.9999
    batch = ml_collections.FieldReference(32)
    c.training.global_batch_size = batch
    c.training.num_steps = EPOCHS * ((CELEBA_HQ_IMAGES + batch - 1) // batch)  # follows the batch size
    c.training.init_from = "runs/celebahq256_pretrained"
    c.checkpoint.every_steps = 1_000
    c.logging.log_every_steps = 50
    c.logging.sample_every_steps = 1_000
    c.logging.num_samples = 16
    c.logging.sample_steps = 100
    return c
