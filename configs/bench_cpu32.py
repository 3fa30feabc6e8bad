"""The 6,472,195-parameter benchmark model (docs/benchmarks.md) on shapes at 32×32, batch 8."""
from configs import default


def get_config():
    c = default.get_config()
    c.model.block_out_channels = (64, 128, 128)
    c.model.attention_levels = (False, True, False)
    c.model.layers_per_block = 2
    c.model.attention_head_dim = 8
    c.model.norm_num_groups = 32
    c.training.global_batch_size = 8
    return c
