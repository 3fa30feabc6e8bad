"""The training loop: `train_and_evaluate(setup, workdir, mesh, evaluators)`.

It takes typed values only (a `TrainSetup`, built from a config at the entry point) and knows
evaluators only as objects with `run(params) -> Iterator[(name, value)]`.

One `jax.jit` per step kind over the ("data",) mesh: batch sharded, state replicated and
donated. Timestep gating (method.md §4) picks, on the host, the plain step (t < pT) or the
regularized one (t >= pT) from (seed, step) alone; the data of step s is a function of
(seed, s) and the step's randomness is fold_in(key, s), so a resumed run repeats exactly what an
uninterrupted one would have done.

The host does not wait for the device between steps: each step adds its metrics to running
sums kept on the device, and records there the first step whose loss, gradient or updated
state (parameters, EMA, optimizer moments) is not finite. The host fetches them only at the logging, checkpoint, sample and
evaluation cadences, and never saves a state after a non-finite step.
"""
import concurrent.futures
import dataclasses
import time
from typing import Callable, Iterable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from isodiff_jax import checkpoint, diffusion, errors, runtime, sharding, storage
from isodiff_jax.data import latent_cache, pipeline, workers
from isodiff_jax.errors import InvalidValue
from isodiff_jax.isometry import Regularizer
from isodiff_jax.spec import INIT_COMPILER_OPTIONS, ModelSpec, Params
from isodiff_jax.train import latents, lock, preemption
from isodiff_jax.train.profile import StepProfiler
from isodiff_jax.train import step as step_lib
from isodiff_jax.train.monitor import Monitor


class Evaluator(Protocol):
    def run(self, params: Params) -> Iterable[tuple[str, object]]: ...


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How long, how big and how often."""
    num_steps: int
    global_batch_size: int
    seed: int = 0  # root of every random key and of the data order
    gate_p: float = 0.5  # steps with t < pT are plain, t >= pT regularized
    grad_accum_steps: int = 1
    ema_max_decay: float = 0.9999
    ema_power: float = 0.75  # EMA warm-up: decay 1 − (1 + step)^(−power), up to ema_max_decay
    loss_weighting: str = "uniform"  # of the ε-loss over t: diffusion.LOSS_WEIGHTINGS
    min_snr_gamma: float = 5.0  # γ of "min_snr"
    t_sampling: str = "uniform"  # of each batch's timesteps: diffusion.T_SAMPLINGS
    init_from: str = ""  # a workdir whose EMA parameters start the run
    random_flip: bool = False
    latent_cache: str = ""  # latent diffusion: a directory of the data set's latents, made once ("": encode each batch)
    prefetch: int = 3
    workers: int = 0  # loading processes (grain); 0: one thread
    checkpoint_every: int = 200
    checkpoint_keep: int = 3
    log_every: int = 20
    sample_every: int = 0  # 0: only at the end
    num_samples: int = 36
    sample_steps: int = 200
    sample_eta: float = 1.0
    evaluate_every: int = 0  # 0: never (with evaluators: at the end only)
    progress_bar: bool = True
    profile_steps: tuple = ()  # (START, STOP): a jax.profiler trace of steps START..STOP-1 (train/profile.py)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything a run computes with, as typed values."""
    spec: ModelSpec
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule  # for the logs (the optimizer holds its own)
    regularizer: Optional[Regularizer]
    settings: TrainSettings
    config_json: str = "{}"  # the run's config, saved with every checkpoint as its record
    # What the compiled steps depend on (`config.step_key`): setups with equal keys share their
    # compiled steps (`compile_steps`); None: compiled for this run alone.
    step_key: Optional[str] = None

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return (self.settings.global_batch_size, *self.spec.image_shape)

    def keys(self) -> dict:
        """"init", "step", "samples": PRNG keys from the seed (host constants, identical on every process)."""
        k_init, k_step, k_samples = jax.random.split(jax.random.PRNGKey(self.settings.seed), 3)
        return {"init": k_init, "step": k_step, "samples": k_samples}


def regularized_step(setup: TrainSetup, step: int) -> bool:
    """The gate of method.md §4 for `step`: True with probability 1 − p, a function of (seed, step)."""
    if setup.regularizer is None:
        return False
    return np.random.default_rng([setup.settings.seed, step, 0x6A7E]).random() >= setup.settings.gate_p


def step_kinds(setup: TrainSetup) -> dict:
    """{regularized: (regularizer or None, t_range)} for the step kinds the run uses."""
    T = setup.spec.schedule.num_timesteps
    split = int(setup.settings.gate_p * T)
    if setup.regularizer is None:
        return {False: (None, (0, T))}
    kinds = {True: (setup.regularizer, (split, T))}
    if split > 0:
        kinds[False] = (None, (0, split))
    return kinds


def make_step(setup: TrainSetup, regularized: bool):
    """The pure (state, x0, key, weight) -> (state, metrics) step of one kind: its randomness from
    the step key (`setup.keys()["step"]`), its regularizer's weight λ an argument too."""
    regularizer, t_range = step_kinds(setup)[regularized]
    s, schedule = setup.settings, setup.spec.noise_schedule
    t_weights = (None if s.loss_weighting == "uniform" else
                 diffusion.loss_weights(schedule, s.loss_weighting, s.min_snr_gamma))
    return step_lib.make_train_step(setup.spec.unet, schedule, setup.optimizer,
                                    regularizer=regularizer, t_range=t_range, ema_max_decay=s.ema_max_decay,
                                    ema_power=s.ema_power, accum_steps=s.grad_accum_steps, t_weights=t_weights,
                                    t_sampling=s.t_sampling)


def step_arguments(setup: TrainSetup, mesh: Mesh) -> tuple:
    """(key, weight): what a run passes to its compiled steps besides the state and the batch."""
    weight = setup.regularizer.weight if setup.regularizer is not None else 0.0
    return jax.device_put((setup.keys()["step"], np.float32(weight)), sharding.replicated(mesh))


# ---- metrics kept on the device between fetches ------------------------------------------

def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def empty_totals(names) -> dict:
    """Running sums and counts of each metric, and the first non-finite step (−1: none yet)."""
    zeros = {n: jnp.zeros((), jnp.float32) for n in names}
    return {"sums": zeros, "counts": dict(zeros), "first_non_finite": jnp.array(-1, jnp.int32),
            "bad_metrics": dict(zeros)}


def add_step(totals: dict, step: jax.Array, metrics: dict, state) -> dict:
    """totals after a step `step` that produced `metrics` and the new `state` (pure, on device;
    the whole state is checked: Adam's second moment can overflow while the parameters are
    still finite, and would poison the next step)."""
    finite = _all_finite(metrics) & _all_finite(state)
    newly_bad = (totals["first_non_finite"] < 0) & ~finite
    sums, counts, bad = dict(totals["sums"]), dict(totals["counts"]), dict(totals["bad_metrics"])
    for name, value in metrics.items():
        value = value.astype(jnp.float32)
        sums[name] = sums[name] + value
        counts[name] = counts[name] + 1
        bad[name] = jnp.where(newly_bad, value, bad[name])
    return {"sums": sums, "counts": counts, "bad_metrics": bad,
            "first_non_finite": jnp.where(newly_bad, step, totals["first_non_finite"])}


# Compiled steps by (TrainSetup.step_key, devices): the runs of a sweep in one process (seeds, λ,
# data sets of one image size) reuse one set. Bounded: a few sweeps' worth of programs.
_COMPILED: dict = {}
_COMPILED_MAX = 4


def compile_steps(setup: TrainSetup, mesh: Mesh) -> tuple[dict, Callable]:
    """-> ({regularized: compiled (state, totals, x0, key, weight) -> (state, totals)}, a jitted
    () -> fresh totals), reused for every setup with the same `step_key` on the same devices.

    Compiled ahead of time, before the first step: with several processes, a process still
    compiling when another reaches the first collective would make the CPU collectives time out,
    so all processes meet at a barrier once everything is compiled.
    """
    key = None if setup.step_key is None else (setup.step_key, tuple(d.id for d in mesh.devices.flat))
    if key is not None and key in _COMPILED:
        return _COMPILED[key]
    compiled = _compile_steps(setup, mesh)
    if key is not None:
        while len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = compiled
    return compiled


def _compile_steps(setup: TrainSetup, mesh: Mesh) -> tuple[dict, Callable]:
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    state = abstract_state(setup, mesh)
    x0 = jax.ShapeDtypeStruct(setup.batch_shape, np.float32, sharding=batch)
    key, weight = (jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated) for a in step_arguments(setup, mesh))
    # Each kind is traced once: the metric names (the structure of the totals) come from that
    # trace, and tracing `run` below reuses it (jit's trace cache) instead of tracing the model again.
    fns = {regularized: jax.jit(make_step(setup, regularized)) for regularized in step_kinds(setup)}
    names = sorted({name for fn in fns.values() for name in fn.trace(state, x0, key, weight).out_info[1]})
    fresh_totals = jax.jit(lambda: empty_totals(names), out_shardings=replicated)
    totals = checkpoint.abstract(jax.eval_shape(fresh_totals), replicated)
    lowered = {}
    for regularized, fn in fns.items():

        def run(state, totals, x0, key, weight, fn=fn):
            new_state, metrics = fn(state, x0, key, weight)
            return new_state, add_step(totals, state.step, metrics, new_state)

        jitted = jax.jit(run, donate_argnums=(0, 1), in_shardings=(replicated, replicated, batch, replicated, replicated),
                         out_shardings=replicated)
        lowered[regularized] = jitted.lower(state, totals, x0, key, weight)
    # XLA compiles without the GIL, mostly on one core: the kinds compile side by side
    with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
        steps = dict(zip(lowered, pool.map(lambda program: program.compile(), lowered.values())))
    runtime.release_freed_host_memory()  # the compiler's heap, before the steps allocate theirs
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("isodiff_jax: train steps compiled")
    return steps, fresh_totals


def abstract_state(setup: TrainSetup, mesh: Mesh):
    shapes = jax.eval_shape(lambda p: step_lib.state_from_params(p, setup.optimizer), setup.spec.abstract_params())
    return checkpoint.abstract(shapes, sharding.replicated(mesh))


def fresh_state(setup: TrainSetup, mesh: Mesh):
    """A new state (replicated), or one whose parameters come from settings.init_from."""
    source = setup.settings.init_from
    if source:
        loaded = checkpoint.load_params(source, mesh=mesh)
        _check_same_unet(loaded.spec, setup.spec, source)
        _check_same_structure(loaded.params, setup.spec.abstract_params(), source)
        params = loaded.params
    else:
        key = setup.keys()["init"]
        init = jax.jit(setup.spec.init_params, out_shardings=sharding.replicated(mesh)).lower(key)
        params = init.compile(INIT_COMPILER_OPTIONS)(key)
    return jax.jit(lambda p: step_lib.state_from_params(p, setup.optimizer),
                   out_shardings=sharding.replicated(mesh))(params)


def _check_same_unet(saved: ModelSpec, spec: ModelSpec, source: str) -> None:
    """Equal parameter shapes are not enough: options such as downsample_padding or norm_eps
    change what the same parameters compute (the compute dtype and remat policy may differ)."""
    a, b = saved.to_dict()["unet"], spec.to_dict()["unet"]
    differing = [f"model.{k}={b[k]!r} (theirs: {a[k]!r})" for k in sorted(a)
                 if k not in ("dtype", "remat") and a[k] != b[k]]
    if differing:
        raise InvalidValue(f"parameters in {source} belong to another U-Net than this run's: {'; '.join(differing)}; "
                           f"set these config fields to the values of {source}")
    theirs, ours = (s.latent.autoencoder if s.latent is not None else None for s in (saved, spec))
    if theirs != ours:  # the U-Net was trained on another latent space (or on images)
        raise InvalidValue(f"parameters in {source} belong to a model with the autoencoder {theirs}, this run's is "
                           f"{ours}: set the config's autoencoder section to {source}'s")


def _check_same_structure(loaded, expected, source):
    a = jax.tree.map(lambda x: (x.shape, x.dtype), loaded)
    b = jax.tree.map(lambda x: (x.shape, x.dtype), expected)
    if a != b:
        raise InvalidValue(f"parameters in {source} do not fit this run's model (a different U-Net); "
                         f"first differing leaves: {_first_difference(a, b)}")


def _first_difference(a, b):
    fa = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    for path in sorted(set(fa) | set(fb), key=str):
        if fa.get(path) != fb.get(path):
            return f"{jax.tree_util.keystr(path)}: {fa.get(path)} vs {fb.get(path)}"
    return "none"


def make_sampler(setup: TrainSetup, mesh: Mesh):
    """jitted (ema_params, autoencoder_params) -> (num_samples, H, W, C) DDIM samples (η =
    settings.sample_eta) from fixed x_T and, for η > 0, fixed noise; latent samples are decoded
    (autoencoder_params: None for pixel-space diffusion)."""
    s, spec = setup.settings, setup.spec
    k_x, k_noise = jax.random.split(setup.keys()["samples"])
    x_T = jax.random.normal(k_x, (s.num_samples, *spec.image_shape))

    def sample(params, autoencoder_params):
        eps_fn = lambda x, t: spec.eps(params, x, t)
        x0 = diffusion.ddim_sample(eps_fn, spec.noise_schedule, x_T, s.sample_steps, eta=s.sample_eta,
                                   key=k_noise, clip_x0=spec.clip_x0)
        return spec.to_images(spec.with_autoencoder(params, autoencoder_params), x0)

    return jax.jit(sample, out_shardings=sharding.replicated(mesh))


def make_encoder(setup: TrainSetup, mesh: Mesh):
    """jitted (autoencoder_params, images (B, H, W, C) batch-sharded) -> x0 batch-sharded: the
    frozen autoencoder's latents (latent diffusion), computed on the fly for each batch."""
    spec, batch = setup.spec, sharding.batch_sharded(mesh)
    encode = lambda ae_params, images: spec.to_x0({"autoencoder": ae_params["params"]}, images)
    return jax.jit(encode, in_shardings=(sharding.replicated(mesh), batch), out_shardings=batch)


def autoencoder_params(setup: TrainSetup, mesh: Mesh):
    """The frozen autoencoder's parameters, replicated (None for pixel-space diffusion)."""
    if setup.spec.latent is None:
        return None
    return jax.device_put(setup.spec.latent.load_params(), sharding.replicated(mesh))


def initial_state(setup: TrainSetup, mesh: Mesh, mngr):
    """-> (state, message): the newest intact checkpoint in the workdir (newer damaged ones are
    moved aside, so the run can save those steps again), else a fresh state."""
    step, state = checkpoint.restore(mngr, abstract_state(setup, mesh), move_damaged_aside=True)
    if step is not None:
        how = f"resumed from the checkpoint at step {step}"
        saved, now = checkpoint.saved_topology(mngr, step), checkpoint.topology(state)
        if saved is not None and saved != now:  # another slice: same global batch, so the same run
            how += (f" (saved on {saved['devices']} devices in {saved['processes']} processes, resumed on "
                    f"{now['devices']} in {now['processes']}: the global batch is unchanged)")
        return state, how
    state = fresh_state(setup, mesh)
    origin = f"parameters from {setup.settings.init_from}" if setup.settings.init_from else "random init"
    return state, f"started at step 0 ({origin})"


def train_and_evaluate(setup: TrainSetup, workdir: str, mesh: Optional[Mesh] = None,
                       evaluators: Iterable[Evaluator] = ()) -> dict:
    """Trains (or resumes) in `workdir` up to settings.num_steps; returns a summary dict.

    mesh: the ("data",) mesh to shard the batch over (all devices of all processes by default).
    evaluators: run on the EMA parameters every settings.evaluate_every steps and at the end.
    """
    mesh = sharding.make_mesh() if mesh is None else mesh
    s = setup.settings
    if s.global_batch_size % (mesh.size * s.grad_accum_steps):
        raise InvalidValue(f"global batch {s.global_batch_size} does not divide over {mesh.size} devices × "
                         f"{s.grad_accum_steps} gradient-accumulation steps")
    source = setup.spec.data.source()  # a missing data set stops here, before anything is written
    with lock.held(workdir):
        return _train_locked(setup, workdir, mesh, evaluators, source)


def _train_locked(setup: TrainSetup, workdir: str, mesh: Mesh, evaluators, source) -> dict:
    stop = preemption.StopSignals()
    with stop.installed():  # from here on SIGTERM / SIGINT stop the run at the next step boundary
        return _train_until_stopped(setup, workdir, mesh, evaluators, source, stop)


def _train_until_stopped(setup: TrainSetup, workdir: str, mesh: Mesh, evaluators, source,
                         stop: preemption.StopSignals) -> dict:
    s = setup.settings
    mngr = checkpoint.manager(workdir, keep=s.checkpoint_keep)
    state, how = initial_state(setup, mesh, mngr)
    start, total = int(jax.device_get(state.step)), s.num_steps
    if start > total:
        raise InvalidValue(f"the newest checkpoint in {checkpoint.checkpoint_dir(workdir)} is at step {start}, past "
                         f"training.num_steps={total}: raise num_steps to train on, or use another workdir")
    cache = None
    if s.latent_cache and start < total:  # a cache made from other inputs is refused here
        cache = latents.open_cache(setup.spec, source, s.latent_cache, flips=s.random_flip)
    checkpoint.write_config(workdir, setup.config_json)  # once the run is known to go ahead
    if start == total:  # finished: compile nothing, change nothing
        summary = {"steps": 0, "final_step": total, "seconds": 0.0, "input_wait_share": 0.0, "metrics": {},
                   "workdir": storage.absolute(workdir), "checkpoints": checkpoint.checkpoint_dir(workdir),
                   "logs": storage.join(workdir, "logs"), "samples": None, "stopped_by": None}
        if jax.process_index() == 0:
            print(f"{how}; already at training.num_steps={total}: nothing to train", flush=True)
        return summary
    monitor = Monitor(workdir, total_steps=total, start_step=start, progress_bar=s.progress_bar)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    monitor.print(f"{how}; {n_params:,} parameters; {mesh.size} devices in "
                  f"{jax.process_count()} processes; global batch {s.global_batch_size}")
    batches = input_batches(setup, source, start, cache)
    started, failed = time.perf_counter(), True
    try:
        run = _Run(setup, mesh, mngr, monitor, list(evaluators), encode=cache is None,
                   profiler=StepProfiler(workdir, s.profile_steps))
        state, reached = run.loop(state, start, total, batches, stop)
        run.profiler.stop(state)
        mngr.wait_until_finished()
        failed = False
    except Exception as error:
        if errors.is_disk_full(error):
            raise checkpoint.disk_full(mngr, error) from error
        raise
    finally:
        _close(batches, mngr, monitor, failed)
    seconds = time.perf_counter() - started
    summary = {"steps": reached - start, "final_step": reached, "seconds": seconds,
               "input_wait_share": batches.wait_seconds / max(seconds, 1e-9),
               "metrics": dict(monitor.last), "workdir": storage.absolute(workdir),
               "checkpoints": checkpoint.checkpoint_dir(workdir), "logs": monitor.log_dir,
               "samples": run.last_sample_path, "stopped_by": stop.reason if reached < total else None}
    monitor.print(_summary_text(summary))
    return summary


def _close(batches, mngr, monitor: Monitor, failed: bool) -> None:
    """Stops the input threads, joins the last save and closes the logs; after a failure, their
    own errors (a full disk again, a save that failed the same way) do not hide the first one."""
    for close in (batches.close, mngr.wait_until_finished, monitor.close):
        try:
            close()
        except Exception:  # noqa: BLE001 - re-raised unless another error is already on its way
            if not failed:
                raise


def input_batches(setup: TrainSetup, source, start: int, cache=None) -> pipeline.Prefetcher | workers.WorkerPrefetcher:
    """This process's batches from step `start` on: images in [-1, 1], or with a latent cache
    (`latents.open_cache`) the latents of the same rows, flipped the same way."""
    s = setup.settings
    common = dict(seed=s.seed, global_batch=s.global_batch_size, process_index=jax.process_index(),
                  process_count=jax.process_count(), random_flip=s.random_flip, buffer_size=s.prefetch)
    if cache is not None:  # latents are read, not decoded: one thread keeps up
        return latent_cache.prefetch_batches(cache, start, **common)
    return pipeline.prefetch_batches(source, start, workers=s.workers, **common)


def _summary_text(s: dict) -> str:
    m = s["metrics"]
    losses = ", ".join(f"{k}={m[k]:.4g}" for k in ("loss", "diffusion_loss", "reg_loss", "rank_loss") if k in m)
    if s["stopped_by"]:
        return (f"stopped by {s['stopped_by']} at step {s['final_step']}: its checkpoint is in {s['checkpoints']}; "
                f"run the same command to resume")
    return (f"trained {s['steps']} steps to step {s['final_step']} in {s['seconds']:.0f} s "
            f"(input wait {100 * s['input_wait_share']:.1f}%); last logged: {losses}\n"
            f"  checkpoints: {s['checkpoints']}\n  TensorBoard: {s['logs']}\n  samples: {s['samples']}")


class _Run:
    """The per-step work of one run (compiled steps, fetching, logging, saving, sampling)."""

    def __init__(self, setup: TrainSetup, mesh: Mesh, mngr, monitor: Monitor, evaluators: list,
                 encode: bool = True, profiler: StepProfiler | None = None):
        self.setup, self.mesh, self.mngr, self.monitor = setup, mesh, mngr, monitor
        self.profiler = profiler or StepProfiler("", ())
        self.steps, self._empty_totals = compile_steps(setup, mesh)
        self.totals = self._empty_totals()
        self.names = sorted(self.totals["sums"])
        self.arguments = step_arguments(setup, mesh)  # (key, λ)
        self.sampler = make_sampler(setup, mesh)
        self.autoencoder_params = autoencoder_params(setup, mesh)
        # latent diffusion: images encoded batch by batch, unless the batches are cached latents
        self.encoder = make_encoder(setup, mesh) if encode and self.autoencoder_params is not None else None
        self.evaluators = evaluators
        self.last_sample_path = None
        self._waited = 0.0  # the prefetcher's wait_seconds at the last flush
        self._settled = set()  # step kinds that have run once (see _settle_heap)

    def _settle_heap(self, kind: bool, state) -> None:
        """After the first step of each kind, hands the heap's freed memory back to the OS: the
        first execution leaves its buffers where the next one's do not fit, and keeping them
        made the process peak at 1.4-1.6× its steady memory (docs/benchmarks.md). One host
        sync per step kind and run."""
        if kind not in self._settled:
            jax.block_until_ready(state)
            runtime.release_freed_host_memory()
            self._settled.add(kind)

    def loop(self, state, start: int, total: int, batches, stop: preemption.StopSignals) -> tuple:
        """-> (state, the step reached): `total`, or the step at which `stop` asked to stop."""
        s = self.setup.settings
        every = lambda n, done: bool(n) and done % n == 0
        self.monitor.begin()
        for step in range(start, total):
            if stop.reached(step):
                self._save_on_stop(step, state, batches)
                return state, step
            x0 = sharding.global_batch(next(batches), self.mesh)
            if self.encoder is not None:  # latent diffusion: the batch's latents
                x0 = self.encoder(self.autoencoder_params, x0)
            kind = regularized_step(self.setup, step)
            self.profiler.before_step(step, state)
            state, self.totals = self.steps[kind](state, self.totals, x0, *self.arguments)
            self._settle_heap(kind, state)
            done = step + 1
            self.profiler.after_step(done, state)
            self.monitor.step(done)
            last = done == total
            log, save = every(s.log_every, done) or last, every(s.checkpoint_every, done) or last
            sample = every(s.sample_every, done) or last
            evaluate = bool(self.evaluators) and (every(s.evaluate_every, done) or last)
            if not (log or save or sample or evaluate):
                continue  # no host sync: the next step is dispatched at once
            self._fetch(done, batches, log)
            if save:
                checkpoint.save(self.mngr, done, state, spec=self.setup.spec, config_json=self.setup.config_json)
            if sample:
                self.last_sample_path = self.monitor.samples(done, self.sampler(state.ema_params,
                                                                                self.autoencoder_params))
            if evaluate:
                self.monitor.evaluation(done, self._evaluate(state.ema_params))
        return state, total

    def _save_on_stop(self, step: int, state, batches) -> None:
        """Logs the steps since the last log line and saves `step` unless it is saved already (the
        step the run started from, or one just saved at its cadence)."""
        self._fetch(step, batches, log=True)
        if step not in self.mngr.all_steps() and step > 0:
            checkpoint.save(self.mngr, step, state, spec=self.setup.spec, config_json=self.setup.config_json)

    def _fetch(self, done: int, batches, log: bool) -> None:
        """Brings the device totals to the host (the only sync), stops at a non-finite step, and
        writes the interval's means when `log`."""
        totals = jax.device_get(self.totals)
        self.monitor.synced()  # the steps so far are done: the bar moves now, not at dispatch
        if totals["first_non_finite"] >= 0:
            self._stop_non_finite(int(totals["first_non_finite"]), totals["bad_metrics"])
        means = {n: float(totals["sums"][n] / totals["counts"][n]) for n in self.names if totals["counts"][n]}
        if not log or not means:  # nothing since the last line (a stop right after it)
            return
        waited, self._waited = batches.wait_seconds - self._waited, batches.wait_seconds
        self.monitor.flush(done, means, {"lr": float(self.setup.learning_rate(done - 1)), "input_wait_seconds": waited})
        self.totals = self._empty_totals()

    def _evaluate(self, params) -> dict:
        params = self.setup.spec.with_autoencoder(params, self.autoencoder_params)  # evaluators decode
        return {name: value for evaluator in self.evaluators for name, value in evaluator.run(params)
                if isinstance(value, float)}

    def _stop_non_finite(self, s: int, metrics: dict):
        self.mngr.wait_until_finished()
        bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
        what = f"non-finite metrics {bad}" if bad else "non-finite values in the state (parameters, EMA or optimizer moments) after the update"
        latest = self.mngr.latest_step()
        kept = (f"the last good checkpoint is step {latest} in {self.mngr.directory}" if latest is not None
                else "no checkpoint was saved")
        raise FloatingPointError(f"non-finite values at step {s} (the step that would make step {s + 1}): "
                                 f"{what}; nothing after it was saved, {kept}")
