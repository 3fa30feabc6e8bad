"""Pretrained models from diffusers, and back (docs/pretrained.md).

    from isodiff_jax import pretrained
    model = pretrained.from_diffusers("ddpm-ema-celebahq-256")   # Pretrained(unet, params, schedule, ...)
    eps_hat, h = model.unet.apply(model.params, x, t)
    pretrained.to_diffusers(model.unet, model.params, model.schedule, "exported")

The command `python -m isodiff_jax.pretrained` (see `cli`) turns a folder into a training workdir
and a workdir's checkpoint back into a folder. This package is in the model layer (it imports
the model spec, never training); the command is an entry point.
"""
from isodiff_jax.pretrained.folder import (Pretrained, autoencoder_from_diffusers, from_diffusers, locate,
                                           to_diffusers, write_autoencoder)
from isodiff_jax.pretrained.translate import Unsupported

__all__ = ["Pretrained", "Unsupported", "autoencoder_from_diffusers", "from_diffusers", "locate", "to_diffusers",
           "write_autoencoder"]
