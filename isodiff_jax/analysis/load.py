"""Loading a training workdir for analysis: the model spec and the (EMA or raw) parameters of
the newest or a given checkpoint, on any number of devices; nothing else is read (no optimizer
state, no data, no config)."""
from typing import Optional

import jax

from isodiff_jax import checkpoint, sharding
from isodiff_jax.checkpoint import Loaded

__all__ = ["Loaded", "load"]


def load(workdir: str, *, step: Optional[int] = None, ema: bool = True, devices=None) -> Loaded:
    """(spec, params, step) of the checkpoint of `workdir` at `step` (newest by default), EMA
    parameters unless ema=False, replicated over `devices` (all by default). For latent diffusion
    the params carry the autoencoder's beside the U-Net's (`ModelSpec.with_autoencoder`), read
    from the file the spec names, since the evaluators decode."""
    mesh = sharding.make_mesh(devices)
    loaded = checkpoint.load_params(workdir, step=step, ema=ema, mesh=mesh)
    if loaded.spec.latent is None:
        return loaded
    autoencoder = jax.device_put(loaded.spec.latent.load_params(), sharding.replicated(mesh))
    return loaded._replace(params=loaded.spec.with_autoencoder(loaded.params, autoencoder))
