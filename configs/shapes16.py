"""The base model of the λ study (issue 10): shapes at 16×16, trained without the isometry loss,
long enough that its samples are recognisable (experiments/base_model.py measures that with the
16 px factor oracle). Fine-tuned copies then add the loss (experiments/lambda_study.py)."""
from configs import default


def get_config():
    c = default.get_config()
    c.data.resolution = 16
    c.model.block_out_channels = (32, 64, 64)  # h at 4×4×64
    c.model.attention_levels = (False, False, False)
    c.regularizer.kind = "none"  # the pretrained model the paper fine-tunes is trained without it
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.training.num_steps = 8000
    c.training.global_batch_size = 64
    c.checkpoint.every_steps = 500
    c.logging.log_every_steps = 50
    c.logging.sample_every_steps = 0  # one grid, at the end
    c.logging.sample_steps = 100
    return c
