"""Test set-up: runs before JAX starts.

Four simulated CPU devices (data-parallel tests), float64 available for numerical references
(library code always passes explicit dtypes), and a persistent compilation cache so repeated
runs skip XLA compiles.
"""
import os

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_enable_x64", True)
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("ISODIFF_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
