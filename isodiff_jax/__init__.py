"""isodiff-jax: Isometric Diffusion in JAX/Flax."""
