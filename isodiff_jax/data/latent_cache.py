"""A data set encoded once by a frozen autoencoder: latent-diffusion batches without the encoder.

A cache directory holds

    latents.npy           float32 (N, h, w, c): the latent of every example of the source, in order
    latents_flipped.npy   the same for each image flipped horizontally (only when made with flips:
                          the latent of a flipped image is not the flipped latent)
    cache.json            what made it (`identity`: the autoencoder, the sha256 of its weights file,
                          the data set, its resolution and size) and whether flips are included

`cache.json` is written last, so a directory without it is an unfinished cache and is rebuilt.
Batches are read with the pipeline's own indices and flips (`pipeline.batch_indices`,
`pipeline.flip_mask`): the batch of step s is the same function of (seed, s) as when the images
are encoded on the fly, and a resumed run continues exactly. The arrays are memory-mapped.

This module knows nothing of autoencoders: `build` takes the encoding function and the identity.
"""
import fcntl
import functools
import hashlib
import json
import os
from typing import Callable, Optional

import numpy as np

from isodiff_jax import storage
from isodiff_jax.data import pipeline
from isodiff_jax.data.source import Source
from isodiff_jax.errors import InvalidValue

FORMAT = 1
META, LATENTS, FLIPPED = "cache.json", "latents.npy", "latents_flipped.npy"


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes (the autoencoder's weights: the cache's fingerprint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LatentCache:
    """An opened cache: `len(cache)` examples, `get(indices, flip)` -> float32 latents."""

    def __init__(self, directory: str):
        self.meta = storage.read_record(os.path.join(directory, META),
                                        f"move the folder {directory} away, and it is made again")
        self.directory = directory
        self.latents = np.load(os.path.join(directory, LATENTS), mmap_mode="r")
        self.flipped = np.load(os.path.join(directory, FLIPPED), mmap_mode="r") if self.meta["flips"] else None

    def __len__(self) -> int:
        return len(self.latents)

    def get(self, indices: np.ndarray, flip: Optional[np.ndarray] = None) -> np.ndarray:
        """Latents of `indices` (B,); rows where `flip` (B,) is True are those of the flipped images."""
        out = np.array(self.latents[indices], np.float32)  # a copy: the flipped rows are written into it
        if flip is not None and flip.any():
            if self.flipped is None:
                raise InvalidValue(f"the latent cache {self.directory} was made without flipped images")
            out[flip] = self.flipped[indices[flip]]
        return out


def _mismatches(found: dict, expected: dict) -> list:
    return [f"{k}: the cache's {found.get(k)!r}, this run's {v!r}" for k, v in expected.items() if found.get(k) != v]


def check(directory: str, identity: dict, flips: bool) -> Optional[LatentCache]:
    """The finished cache in `directory` if it was made from `identity` (with flips when `flips`);
    None when there is none yet, or its record is damaged (moved aside with a warning: the cache is
    made again); InvalidValue naming every difference otherwise."""
    if storage.read_saved(os.path.join(directory, META)) is None:
        return None
    cache = LatentCache(directory)
    differences = _mismatches(cache.meta["identity"], {"format": FORMAT, **identity})
    if differences:
        raise InvalidValue(f"the latent cache {directory} was made from other inputs ({'; '.join(differences)}): "
                           f"give another data.latent_cache directory, or delete this one to encode the data again")
    if flips and not cache.meta["flips"]:
        raise InvalidValue(f"the latent cache {directory} holds no latents of flipped images, which "
                           f"data.random_flip needs: give another data.latent_cache directory, or delete this one")
    return cache


def build(directory: str, source: Source, encode: Callable, identity: dict, *, flips: bool,
          batch_size: int = 64, progress: Optional[Callable[[int, int], None]] = None) -> LatentCache:
    """Encodes every image of `source` with encode(images float32 (B, R, R, 3) in [-1, 1]) ->
    latents (B, h, w, c) (always called with `batch_size` images, the last batch padded) into
    `directory`, and the flipped images too when `flips`; progress(done, total) after each batch."""
    os.makedirs(directory, exist_ok=True)
    n = len(source)
    arrays = {}
    for name, flip in ((LATENTS, False), (FLIPPED, True))[:2 if flips else 1]:
        out = None
        for start in range(0, n, batch_size):
            indices = np.arange(start, min(start + batch_size, n))
            images = source.get(indices)[:, :, ::-1] if flip else source.get(indices)
            images = pipeline.to_unit_range(images)
            padded = np.concatenate([images, np.zeros((batch_size - len(images), *images.shape[1:]), np.float32)])
            latents = np.asarray(encode(padded), np.float32)[:len(images)]
            if out is None:
                out = np.lib.format.open_memmap(os.path.join(directory, name), "w+", np.float32, (n, *latents.shape[1:]))
            out[start:start + len(images)] = latents
            if progress is not None:
                progress(start + len(images) + (n if flip else 0), n * (2 if flips else 1))
        out.flush()
        arrays[name] = out.shape
    meta = {"identity": {"format": FORMAT, **identity}, "flips": flips, "shape": list(arrays[LATENTS])}
    tmp = os.path.join(directory, META + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(directory, META))  # last: the cache is complete
    return LatentCache(directory)


def open_or_build(directory: str, source: Source, encode: Callable, identity: dict, *, flips: bool,
                  batch_size: int = 64, progress=None) -> LatentCache:
    """The cache in `directory`, built first if it is not there (under a file lock, so that two
    runs sharing it encode the data once); refused when made from other inputs (`check`)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = check(directory, identity, flips)
        if cache is None:
            cache = build(directory, source, encode, identity, flips=flips, batch_size=batch_size, progress=progress)
    if len(cache) != len(source):
        raise InvalidValue(f"the latent cache {directory} holds {len(cache)} examples, the data set {len(source)}")
    return cache


def load_batch(cache: LatentCache, step: int, *, seed: int, global_batch: int, process_index: int = 0,
               process_count: int = 1, random_flip: bool = False) -> np.ndarray:
    """This process's part of the latents of the batch of `step`: the rows `pipeline.load_batch`
    gives for the same arguments, encoded."""
    rows = pipeline.process_rows(global_batch, process_index, process_count)
    indices = pipeline.batch_indices(seed, step, global_batch, len(cache))[rows]
    flip = pipeline.flip_mask(seed, step, global_batch)[rows] if random_flip else None
    return cache.get(indices, flip)


def prefetch_batches(cache: LatentCache, start_step: int, *, seed: int, global_batch: int, process_index: int = 0,
                     process_count: int = 1, random_flip: bool = False, buffer_size: int = 2) -> pipeline.Prefetcher:
    """A `pipeline.Prefetcher` of `load_batch(cache, step, ...)` from `start_step` on."""
    pipeline.process_rows(global_batch, process_index, process_count)
    pipeline.batch_indices(seed, start_step, global_batch, len(cache))
    load = functools.partial(load_batch, cache, seed=seed, global_batch=global_batch, process_index=process_index,
                             process_count=process_count, random_flip=random_flip)
    return pipeline.Prefetcher(load, start_step, buffer_size=buffer_size)
