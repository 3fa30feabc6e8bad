"""The built-in shapes data set at 32×32 with the isometry loss: the README's main job (about 15
minutes on 2 CPU cores). One sample grid, at the end: a 200-step grid costs about half a minute
of CPU here."""
from configs import default


def get_config():
    c = default.get_config()
    c.logging.sample_every_steps = 0  # only at the end
    return c
