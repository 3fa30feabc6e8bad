"""Entry point. For now the core-library demo (isodiff_jax/demo.py); see README."""
from isodiff_jax import runtime

runtime.keep_freed_host_memory()

from isodiff_jax import demo  # noqa: E402  (after the allocator setting, before JAX works)

if __name__ == "__main__":
    demo.main()
