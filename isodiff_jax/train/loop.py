"""The training loop: `train_and_evaluate(config, workdir)`.

One `jax.jit` per step kind over the ("data",) mesh: batch sharded, state replicated and
donated. Timestep gating (method.md §4) picks, on the host, the plain step (t < pT) or the
regularized one (t >= pT) from (seed, step) alone; the data of step s is a function of
(seed, s) and the step's randomness is fold_in(key, s), so a resumed run repeats exactly what an
uninterrupted one would have done.
"""
import dataclasses
import functools
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from isodiff_jax import config as config_lib
from isodiff_jax import data, diffusion
from isodiff_jax.analysis import suite, trained
from isodiff_jax.data import pipeline
from isodiff_jax.train import checkpoint, sharding
from isodiff_jax.train import step as step_lib
from isodiff_jax.train.monitor import Monitor, all_finite, host_floats
from isodiff_jax.unet import UNet


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything the loop builds from the config once."""
    model: UNet
    schedule: diffusion.Schedule
    optimizer: object
    regularizer: step_lib.Regularizer | None
    sample_shape: tuple  # (global batch, H, W, C)
    keys: dict  # "init", "step", "samples": PRNG keys (host constants, identical on every process)


def make_setup(config, channels: int = 3) -> Setup:
    root = jax.random.PRNGKey(config.seed)
    k_init, k_step, k_samples = jax.random.split(root, 3)
    r = config.data.resolution
    return Setup(model=config_lib.unet(config, channels), schedule=config_lib.schedule(config),
                 optimizer=config_lib.optimizer(config), regularizer=config_lib.regularizer(config),
                 sample_shape=(config.training.global_batch_size, r, r, channels),
                 keys={"init": k_init, "step": k_step, "samples": k_samples})


def regularized_step(config, step: int) -> bool:
    """The gate of method.md §4 for `step`: True with probability 1 − p, a function of (seed, step)."""
    if config.regularizer.kind == "none":
        return False
    return np.random.default_rng([config.seed, step, 0x6A7E]).random() >= config.regularizer.p


def compile_steps(config, setup: Setup, mesh) -> dict:
    """{regularized: compiled (state, x0) -> (state, metrics)} for the step kinds the config uses.

    Compiled ahead of time, before the first step: with several processes, a process still
    compiling when another reaches the first collective would make the CPU collectives time out,
    so all processes meet at a barrier once everything is compiled.
    """
    T = setup.schedule.num_timesteps
    split = int(config.regularizer.p * T)
    kinds = {False: (None, (0, T))}
    if setup.regularizer is not None:
        kinds = {True: (setup.regularizer, (split, T))}
        if split > 0:
            kinds[False] = (None, (0, split))
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    state = abstract_state(setup, mesh)
    x0 = jax.ShapeDtypeStruct(setup.sample_shape, np.float32, sharding=batch)
    steps = {}
    for regularized, (reg, t_range) in kinds.items():
        fn = step_lib.make_train_step(setup.model, setup.schedule, setup.optimizer, regularizer=reg,
                                      t_range=t_range, ema_max_decay=config.optim.ema_max_decay,
                                      accum_steps=config.optim.grad_accum_steps)
        fn = functools.partial(fn, key=setup.keys["step"])
        jitted = jax.jit(lambda state, x0, fn=fn: fn(state, x0), donate_argnums=0,
                         in_shardings=(replicated, batch), out_shardings=replicated)
        steps[regularized] = jitted.lower(state, x0).compile()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("isodiff_jax: train steps compiled")
    return steps


def abstract_state(setup: Setup, mesh):
    shape = (1, *setup.sample_shape[1:])
    shapes = jax.eval_shape(lambda k: step_lib.init_state(setup.model, setup.optimizer, k, shape),
                            setup.keys["init"])
    return checkpoint.abstract(shapes, sharding.replicated(mesh))


def fresh_state(config, setup: Setup, mesh):
    """A new state (replicated), or one whose parameters come from training.init_from."""
    shape = (1, *setup.sample_shape[1:])
    init = jax.jit(lambda k: step_lib.init_state(setup.model, setup.optimizer, k, shape),
                   out_shardings=sharding.replicated(mesh))
    state = init(setup.keys["init"])
    if config.training.init_from:
        params = load_params(config.training.init_from, mesh)
        _check_same_structure(params, state.params, config.training.init_from)
        state = jax.jit(lambda p: step_lib.state_from_params(p, setup.optimizer),
                        out_shardings=sharding.replicated(mesh))(params)
    return state


def restore_workdir(workdir: str, mesh, step: int | None = None):
    """-> (config, setup, step, state) of another training workdir, replicated on `mesh`."""
    config = config_lib.from_json(checkpoint.saved_config_json(workdir))
    setup = make_setup(config)
    found, state = checkpoint.restore(checkpoint.manager(workdir, read_only=True),
                                      abstract_state(setup, mesh), step)
    if found is None:
        raise FileNotFoundError(f"{checkpoint.checkpoint_dir(workdir)} holds no complete checkpoint")
    return config, setup, found, state


def load_params(workdir: str, mesh, *, ema: bool = True, step: int | None = None):
    """The (EMA by default) parameters saved in another training workdir, replicated on `mesh`."""
    _, _, _, state = restore_workdir(workdir, mesh, step)
    return state.ema_params if ema else state.params


def _check_same_structure(loaded, expected, source):
    a = jax.tree.map(lambda x: (x.shape, x.dtype), loaded)
    b = jax.tree.map(lambda x: (x.shape, x.dtype), expected)
    if a != b:
        raise ValueError(f"parameters in {source} do not fit config.model (different U-Net); "
                         f"first differing leaves: {_first_difference(a, b)}")


def _first_difference(a, b):
    fa = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    for path in sorted(set(fa) | set(fb), key=str):
        if fa.get(path) != fb.get(path):
            return f"{jax.tree_util.keystr(path)}: {fa.get(path)} vs {fb.get(path)}"
    return "none"


def make_sampler(config, setup: Setup, mesh):
    """jitted ema_params -> (num_samples, H, W, C) DDIM samples (η = logging.sample_eta) from
    fixed x_T and, for η > 0, fixed noise."""
    n, (_, r, _, c) = config.logging.num_samples, setup.sample_shape
    k_x, k_noise = jax.random.split(setup.keys["samples"])
    x_T = jax.random.normal(k_x, (n, r, r, c))
    lg = config.logging

    def sample(params):
        eps_fn = lambda x, t: setup.model.apply(params, x, t)[0]
        return diffusion.ddim_sample(eps_fn, setup.schedule, x_T, lg.sample_steps, eta=lg.sample_eta,
                                     key=k_noise, clip_x0=1.0)

    return jax.jit(sample, out_shardings=sharding.replicated(mesh))


def make_evaluation(config, setup: Setup):
    """(step, EMA parameters) -> {metric: float} with the evaluators of config.evaluation.

    Every process evaluates its own host copy of the (replicated) parameters on its own devices,
    with the same seeds, so no collective is involved; process 0 reports."""
    metrics, options = config_lib.evaluation_metrics(config), config_lib.evaluation_options(config)
    ev = config.evaluation
    resources = suite.load_resources(ev.oracle_dir, ev.inception_file, ev.lpips_file)

    def evaluate(step: int, ema_params) -> dict:
        params = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), ema_params)
        model = trained.Trained(config=config, model=setup.model, schedule=setup.schedule, params=params, step=step)
        return {name: value for name, value in suite.evaluate(model, metrics, options, resources)
                if isinstance(value, float)}
    return evaluate


def _check_resumable(workdir: str, config) -> None:
    """A workdir's checkpoints only fit the same model and images: refuse a changed config early."""
    try:
        saved = config_lib.from_json(checkpoint.saved_config_json(workdir))
    except FileNotFoundError:
        return
    for section, keys in (("model", None), ("data", ("resolution",))):
        old, new = saved[section], config[section]
        for key in keys or new.keys():
            if key in old and tuple(np.atleast_1d(old[key])) != tuple(np.atleast_1d(new[key])):
                raise config_lib.ConfigError(
                    f"config.{section}.{key}={new[key]!r} differs from {old[key]!r} in the checkpoints "
                    f"of {workdir}: use a new workdir (or training.init_from to fine-tune from it)")


def initial_state(config, setup: Setup, mesh, mngr):
    """-> (state, message): the newest complete checkpoint in the workdir, else a fresh state."""
    step, state = checkpoint.restore(mngr, abstract_state(setup, mesh))
    if step is not None:
        return state, f"resumed from the checkpoint at step {step}"
    state = fresh_state(config, setup, mesh)
    origin = f"parameters from {config.training.init_from}" if config.training.init_from else "random init"
    return state, f"started at step 0 ({origin})"


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
    """Trains (or resumes) in `workdir` up to training.num_steps; returns a summary dict.

    devices: the devices to shard the batch over (all devices of all processes by default).
    """
    mesh = sharding.make_mesh(devices)
    config_lib.validate(config, mesh.size)
    d = config.data
    source = data.make_source(d.name, resolution=d.resolution, seed=config.seed,
                              data_dir=d.data_dir or None, split=d.split)
    _check_resumable(workdir, config)
    setup = make_setup(config)
    config_json = config_lib.to_json(config)
    mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep)
    checkpoint.write_config(workdir, config_json)
    state, how = initial_state(config, setup, mesh, mngr)
    start, total = int(jax.device_get(state.step)), config.training.num_steps
    monitor = Monitor(workdir, total_steps=total, start_step=start, progress_bar=config.logging.progress_bar)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    monitor.print(f"{how}; {n_params:,} parameters; {mesh.size} devices in "
                  f"{jax.process_count()} processes; global batch {config.training.global_batch_size}")
    batches = pipeline.prefetch_batches(
        source, start, seed=config.seed, global_batch=config.training.global_batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        random_flip=d.random_flip, buffer_size=d.prefetch)
    started = time.perf_counter()
    try:
        run = _Run(config, setup, mesh, mngr, monitor, config_json)
        state = run.loop(state, start, total, batches)
    finally:
        batches.close()
        mngr.wait_until_finished()
        monitor.close()
    seconds = time.perf_counter() - started
    summary = {"steps": total - start, "final_step": total, "seconds": seconds,
               "input_wait_share": batches.wait_seconds / max(seconds, 1e-9),
               "metrics": dict(monitor.last), "workdir": os.path.abspath(workdir),
               "checkpoints": checkpoint.checkpoint_dir(workdir), "logs": monitor.log_dir,
               "samples": run.last_sample_path}
    monitor.print(_summary_text(summary))
    return summary


def _summary_text(s: dict) -> str:
    m = s["metrics"]
    losses = ", ".join(f"{k}={m[k]:.4g}" for k in ("loss", "diffusion_loss", "reg_loss", "rank_loss") if k in m)
    return (f"trained {s['steps']} steps to step {s['final_step']} in {s['seconds']:.0f} s "
            f"(input wait {100 * s['input_wait_share']:.1f}%); last step: {losses}\n"
            f"  checkpoints: {s['checkpoints']}\n  TensorBoard: {s['logs']}\n  samples: {s['samples']}")


class _Run:
    """The per-step work of one run (compiled steps, logging, saving, sampling)."""

    def __init__(self, config, setup, mesh, mngr, monitor, config_json):
        self.config, self.mesh, self.mngr, self.monitor = config, mesh, mngr, monitor
        self.config_json = config_json
        self.steps = compile_steps(config, setup, mesh)
        self.sampler = make_sampler(config, setup, mesh)
        self.learning_rate = config_lib.learning_rate(config)
        self.last_sample_path = None
        self._waited = 0.0  # the prefetcher's wait_seconds at the last flush
        self.evaluation = make_evaluation(config, setup) if config.evaluation.every_steps else None

    def loop(self, state, start: int, total: int, batches):
        c = self.config
        for s in range(start, total):
            x0 = sharding.global_batch(next(batches), self.mesh)
            state, metrics = self.steps[regularized_step(c, s)](state, x0)
            metrics = host_floats(metrics)
            if not all_finite(metrics):
                self._stop_non_finite(s, metrics)
            done = s + 1
            self.monitor.step(done, metrics)
            last = done == total
            if done % c.logging.log_every_steps == 0 or last:
                waited, self._waited = batches.wait_seconds - self._waited, batches.wait_seconds
                self.monitor.flush(done, {"lr": float(self.learning_rate(s)), "input_wait_seconds": waited})
            if done % c.checkpoint.every_steps == 0 or last:
                checkpoint.save(self.mngr, done, state, self.config_json)
            if (c.logging.sample_every_steps and done % c.logging.sample_every_steps == 0) or last:
                self.last_sample_path = self.monitor.samples(done, self.sampler(state.ema_params))
            if self.evaluation and (done % c.evaluation.every_steps == 0 or last):
                self.monitor.evaluation(done, self.evaluation(done, state.ema_params))
        return state

    def _stop_non_finite(self, s: int, metrics: dict):
        self.mngr.wait_until_finished()
        bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
        raise FloatingPointError(
            f"non-finite values at step {s} (the step that would make step {s + 1}): {bad}; nothing "
            f"after it was saved, the last good checkpoint is step {self.mngr.latest_step()} in "
            f"{self.mngr.directory}")
