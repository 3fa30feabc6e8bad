"""The paper's setting (method.md §4): fine-tune a pretrained 256×256 DDPM (CelebA-HQ) with the
isometry loss. The DDPM U-Net: block_out_channels (128, 128, 256, 256, 512, 512), attention at 16×16,
with google/ddpm-ema-celebahq-256's options (docs/pretrained.md imports it).

Data: `--config.data.name=folder --config.data.data_dir=/path/to/celeba_hq_256` (a folder of images),
or prepared TFDS `celeb_a_hq/256` in data_dir. Parameters to fine-tune: `--config.training.init_from=WORKDIR`.
Meant for a GPU/TPU machine."""
from configs import default


def get_config():
    c = default.get_config()
    c.data.name = "celeb_a_hq/256"
    c.data.resolution = 256
    c.data.random_flip = True
    c.model.block_out_channels = (128, 128, 256, 256, 512, 512)
    c.model.attention_levels = (False, False, False, False, True, False)
    c.model.layers_per_block = 2
    c.model.attention_head_dim = None  # one head per attention block, as in DDPM
    c.model.norm_num_groups = 32
    c.model.norm_eps = 1e-6
    c.model.flip_sin_to_cos = False
    c.model.freq_shift = 1.0
    c.model.downsample_padding = 0
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
    c.training.num_steps = 50_000
    c.training.global_batch_size = 32
    c.checkpoint.every_steps = 2_000
    c.logging.log_every_steps = 100
    c.logging.sample_every_steps = 2_000
    c.logging.num_samples = 16
    return c
