"""Latent diffusion trained from pre-encoded data: the frozen autoencoder's latents of the whole
data set, computed once into `settings.latent_cache` (`isodiff_jax.data.latent_cache`) instead of
encoding every batch on the fly.

A cache records what made it: the autoencoder's architecture, the sha256 of its weights file, the
data set and its resolution and size. A run whose inputs differ in any of these is refused by
name, so a cache is never read by a model it was not made for.
"""
import jax
from jax.experimental import multihost_utils

from isodiff_jax.data import latent_cache
from isodiff_jax.data.source import Source
from isodiff_jax.errors import InvalidValue
from isodiff_jax.spec import ModelSpec

ENCODE_BATCH = 64  # images per encoder call while the cache is built


def cache_identity(spec: ModelSpec, num_examples: int) -> dict:
    """What the latents of `spec`'s data set depend on (JSON-ready)."""
    d = spec.data
    data = {"name": d.name, "data_dir": d.data_dir, "split": d.split, "resolution": d.resolution,
            "channels": d.channels}
    if d.name == "shapes":
        data["seed"] = d.seed  # the generated images depend on it; stored data sets do not
    return {"autoencoder": spec.to_dict()["latent"]["autoencoder"],
            "params_sha256": latent_cache.file_sha256(spec.latent.params_file), "data": data,
            "num_examples": num_examples}


def encoder(spec: ModelSpec):
    """images (B, R, R, C) in [-1, 1] -> latents, with the weights of spec.latent.params_file."""
    params = {"autoencoder": spec.latent.load_params()["params"]}
    encode = jax.jit(spec.to_x0)
    return lambda images: encode(params, images)


def open_cache(spec: ModelSpec, source: Source, directory: str, *, flips: bool) -> latent_cache.LatentCache:
    """The cache of `source`'s latents in `directory`, encoded first by process 0 when missing.
    Every process checks an existing cache first (so a mismatch stops them all, before anything
    waits); the directory must be on a file system that every process sees."""
    if spec.latent is None:
        raise InvalidValue(f"data.latent_cache={directory!r} is for latent diffusion: this model diffuses images")
    identity = cache_identity(spec, len(source))
    cache = latent_cache.check(directory, identity, flips)
    if cache is None and jax.process_index() == 0:
        print(f"encoding {len(source)} images{' (and their mirror images)' if flips else ''} into the latent "
              f"cache {directory}", flush=True)
        cache = latent_cache.open_or_build(directory, source, encoder(spec), identity, flips=flips,
                                           batch_size=ENCODE_BATCH)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("isodiff_jax: latent cache ready")
        cache = cache or latent_cache.check(directory, identity, flips)
        if cache is None:
            raise InvalidValue(f"process {jax.process_index()} does not see the latent cache that process 0 wrote "
                               f"to {directory}: put data.latent_cache on a file system every process shares")
    if len(cache) != len(source):
        raise InvalidValue(f"the latent cache {directory} holds {len(cache)} examples, the data set {len(source)}")
    return cache
