"""The built-in shapes data set at 32×32 with the isometry loss: the README's main job (about 15
minutes on 2 CPU cores)."""
from configs import default


def get_config():
    return default.get_config()
