"""A short demo of the core library: a tiny U-Net trained for a few steps with the isometry loss.

Timestep gating as in method.md §4: each step is, with probability p, a plain diffusion step
with t < pT, otherwise a regularized step with t ≥ pT; the two are separate compiled functions
chosen on the host. Data: soft coloured discs on a coloured background, drawn on the fly.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from isodiff_jax import diffusion
from isodiff_jax.train import step as train_step
from isodiff_jax.unet import UNet

TINY = dict(block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=1,
            attention_head_dim=16, norm_num_groups=8)


def disc_images(key, batch, size):
    """(batch, size, size, 3) in [-1, 1]: one soft disc of random colour, radius and position."""
    k_c, k_b, k_r, k_p = jax.random.split(key, 4)
    colour = jax.random.uniform(k_c, (batch, 1, 1, 3), minval=-1, maxval=1)
    background = jax.random.uniform(k_b, (batch, 1, 1, 3), minval=-1, maxval=1)
    radius = jax.random.uniform(k_r, (batch, 1, 1), minval=0.15, maxval=0.35) * size
    centre = jax.random.uniform(k_p, (batch, 2), minval=0.3, maxval=0.7) * size
    yy, xx = jnp.mgrid[:size, :size] + 0.5
    dist = jnp.sqrt((yy - centre[:, None, None, 0]) ** 2 + (xx - centre[:, None, None, 1]) ** 2)
    inside = jax.nn.sigmoid((radius - dist) * 2.0)[..., None]
    return inside * colour + (1 - inside) * background


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--iso-weight", type=float, default=1e-3, help="λ_iso")
    parser.add_argument("--p", type=float, default=0.5, help="timestep gating ratio")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.p < 1:
        parser.error(f"--p must be in [0, 1), got {args.p}")

    model = UNet(**TINY)
    schedule = diffusion.make_schedule("linear", 1000)
    optimizer = train_step.make_optimizer(3e-4)
    split = int(args.p * schedule.num_timesteps)
    reg = train_step.Regularizer("sphere", weight=args.iso_weight)
    steps = {
        "plain": jax.jit(train_step.make_train_step(model, schedule, optimizer, t_range=(0, max(split, 1))),
                         donate_argnums=0),
        "iso": jax.jit(train_step.make_train_step(model, schedule, optimizer, regularizer=reg,
                                                  t_range=(split, schedule.num_timesteps)),
                       donate_argnums=0),
    }
    root = jax.random.PRNGKey(args.seed)
    k_init, k_data, k_step = jax.random.split(root, 3)
    state = train_step.init_state(model, optimizer, k_init, (args.batch, args.size, args.size, 3))
    gate = np.random.default_rng(args.seed)
    print(f"tiny U-Net, {sum(a.size for a in jax.tree.leaves(state.params)):,} parameters; "
          f"{args.steps} steps of batch {args.batch} at {args.size}×{args.size}, λ_iso={args.iso_weight}, p={args.p}")
    start = time.perf_counter()
    for s in range(args.steps):
        kind = "plain" if gate.random() < args.p else "iso"
        x0 = disc_images(jax.random.fold_in(k_data, s), args.batch, args.size)
        state, m = steps[kind](state, x0, k_step)
        line = f"step {s + 1:3d} {kind:5s} loss={float(m['loss']):.4f} diffusion={float(m['diffusion_loss']):.4f}"
        if kind == "iso":
            line += f" L_iso={float(m['reg_loss']):.3e} rank·L_iso={float(m['rank_loss']):.1f}"
        print(line, flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s (including two compilations)")


if __name__ == "__main__":
    main()
