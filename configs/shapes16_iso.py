"""The README's main job: the built-in shapes at 16×16, trained from scratch with the isometry loss
(sphere, λ_iso = 1e-3, p = 0.5) in 12 to 21 minutes on 2 CPU cores (6.1 to 3.6 steps/s, by CPU).

The recipe that gets the most recognisable shapes out of 15 CPU minutes (docs/benchmarks.md,
"Sample quality within 15 minutes"): 16×16 rather than 32×32 (a quarter of the cost per image),
the cosine noise schedule (the linear one spends most of its steps where a 16-pixel image is
already pure noise), a short warm-up to a higher learning rate (3e-3, Adam β2 = 0.99), and
many small steps (4,200 of batch 32 rather than 1,800 of batch 64: an image costs about the same,
and the steps count more than the images). The model is the λ study's base model
(configs/shapes16.py): a (32, 64, 64) U-Net, h = 4×4×64."""
from configs import shapes16


def get_config():
    c = shapes16.get_config()
    c.regularizer.kind = "sphere"  # the paper's loss (shapes16, the λ study's base, trains without it)
    c.regularizer.weight = 1e-3
    c.diffusion.schedule = "cosine"
    c.optim.lr = 3e-3
    c.optim.b2 = 0.99  # a shorter memory of the squared gradients, for a short run
    c.optim.warmup_steps = 100
    c.training.global_batch_size = 32  # more, smaller steps: 4,200 of 32 beat 1,800 of 64 in the same time
    c.training.num_steps = 4200
    c.checkpoint.every_steps = 1400
    c.logging.log_every_steps = 50
    c.logging.sample_steps = 200  # the final grid: 36 samples, DDIM η = 1
    return c
