"""Tiny, for tests: a 16×16 two-level U-Net, a few steps; compiles in seconds."""
from configs import default


def get_config():
    c = default.get_config()
    c.data.resolution = 16
    c.model.block_out_channels = (16, 32)
    c.model.attention_levels = (False, False)
    c.model.attention_head_dim = 16
    c.model.norm_num_groups = 4
    c.diffusion.num_timesteps = 100
    c.optim.warmup_steps = 2
    c.optim.decay = "constant"  # a shorter first run then has the same schedule (resume tests)
    c.training.num_steps = 6
    c.training.global_batch_size = 8
    c.checkpoint.every_steps = 3
    c.logging.log_every_steps = 2
    c.logging.sample_every_steps = 0
    c.logging.num_samples = 4
    c.logging.sample_steps = 4
    c.logging.progress_bar = False
    return c
