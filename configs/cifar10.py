"""CIFAR-10 from scratch with the isometry loss (DDPM's 35.7M-parameter CIFAR-10 U-Net layout).

Needs the prepared TFDS data: `tfds build cifar10 --data_dir DIR` on a machine with internet, then
`--config.data.data_dir=DIR`. Meant for a GPU/TPU machine."""
from configs import default


def get_config():
    c = default.get_config()
    c.data.name = "cifar10"
    c.data.random_flip = True
    c.model.block_out_channels = (128, 256, 256, 256)
    c.model.attention_levels = (False, True, False, False)
    c.model.layers_per_block = 2
    c.model.attention_head_dim = 64
    c.model.norm_num_groups = 32
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 5000
    c.training.num_steps = 800_000
    c.training.global_batch_size = 128
    c.checkpoint.every_steps = 10_000
    c.logging.log_every_steps = 100
    c.logging.sample_every_steps = 10_000
    c.logging.num_samples = 64
    return c
