"""Test set-up: runs before JAX starts.

Four simulated CPU devices (data-parallel tests), float64 available for numerical references
(library code always passes explicit dtypes), and a persistent compilation cache so repeated
runs skip XLA compiles.
"""
import fcntl
import json
import os
import shutil
import subprocess

# XLA's CPU back end without its expensive passes: most of the suite's time is compiling many
# small programs, and these compile about a third faster; the few tests that train for longer run
# slower. Subprocesses (train.py, the notebook's kernel) inherit it. Set it to 0 to test the
# optimised programs.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (after the environment above)

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_enable_x64", True)
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("ISODIFF_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


import pytest  # noqa: E402  (after the JAX configuration above)

# The longest test files (minutes each on 2 cores, measured with --durations), run first: the
# suite runs on two pytest-xdist workers, one file per worker at a time (--dist loadfile), and a
# long file that starts last would leave the other worker idle at the end. (pyproject.toml's
# --no-loadscope-reorder keeps this order: by default xdist sends the files with the most tests
# first, which put these few-test files last.)
LONGEST_FIRST = ("test_train_processes.py", "test_experiments_lambda.py", "test_experiments_disentanglement.py",
                 "test_train_loop.py", "test_train_faults.py",
                 "test_experiments_estimators.py", "test_notebook.py", "test_latent.py", "test_pretrained.py",
                 "test_train_step.py", "test_pretrained_latent.py", "test_analysis_load.py",
                 "test_experiments_base_model.py", "test_recipe_ddpm.py", "test_analysis_factors.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def once_per_session(tmp_path_factory, name: str, build):
    """`build(directory)` run once per test session, not once per pytest-xdist worker: the first
    worker to ask builds into a directory both share, under a file lock, and records the JSON
    result; the others wait for it and read it. (A session fixture is per worker process, and the
    shared training runs below take minutes.) Returns (directory as a pathlib.Path, result)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's temporary directory, above each worker's own
    directory, record = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or if the worker dies
        if not record.exists():
            shutil.rmtree(directory, ignore_errors=True)  # a build that failed part-way
            directory.mkdir()
            result = build(str(directory))
            record.write_text(json.dumps(result, default=float))
    return directory, json.loads(record.read_text())


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """A test-config run of 4 steps with checkpoints at steps 2 and 4 and evaluators (mRTL, linear
    probes) at both; the analysis tests share it (read-only)."""
    def build(path):
        from configs import test as test_config
        from isodiff_jax import launch
        config = test_config.get_config()
        config.training.num_steps, config.checkpoint.every_steps = 4, 2  # compiled programs shared with test_train_loop
        ev = config.evaluation
        ev.every_steps, ev.metrics, ev.num_pairs, ev.sample_steps, ev.timesteps = 2, "mrtl,probe", 4, 4, (50,)
        launch.train(config, path)
    return str(once_per_session(tmp_path_factory, "trained", build)[0])


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """configs/test.py's 6 steps in one uninterrupted in-process run on the 4 simulated devices
    (the training tests compare resumed, killed, other-device and multi-process runs with it).
    Returns (workdir, the run's summary)."""
    def build(path):
        from training_support import small_config
        from isodiff_jax import launch
        return launch.train(small_config(), path)
    return once_per_session(tmp_path_factory, "reference", build)


@pytest.fixture(scope="session")
def oracle16(tmp_path_factory):
    """A factor oracle for the test config's 16×16 images, briefly trained (good enough to run
    the oracle-based metrics; its accuracy is tested at 24 px in test_oracle.py)."""
    from isodiff_jax.analysis.networks import oracle
    build = lambda path: oracle.save(oracle.train(16, steps=150, batch_size=32, progress=False), path, {})
    return oracle.load(str(once_per_session(tmp_path_factory, "oracle16", build)[0]))


@pytest.fixture(scope="module")
def train_py():
    """train.py as a module, for in-process runs of its `run(argv)`. Its absl flags are defined
    once per process (support.load_module caches it); afterwards the flags are unparsed and the
    per-field override flags that ml_collections defined for this module's configs
    (--config.a.b) are removed, so another test file in the same worker can parse another config."""
    from support import load_module
    module = load_module("train.py")
    yield module
    module.FLAGS.unparse_flags()
    for name in [n for n in module.FLAGS if n.startswith("config.")]:
        delattr(module.FLAGS, name)


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs, unmounted afterwards (fill it with support.fill); skipped where this
    process may not mount one."""
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs is not allowed here ({mounted.stderr.strip() or mounted.returncode}); "
                    f"test_train_faults.py injects the error of a full disk instead")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


class CompileCounter:
    """Counts the XLA programs this process builds (each new executable is lowered to MLIR once,
    whether or not the persistent cache then spares the XLA compile)."""

    EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

    def __init__(self):
        self.count = 0

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc_info):
        jax.monitoring.unregister_event_duration_listener(self._listen)


@pytest.fixture
def count_compiles():
    return CompileCounter


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server on localhost (tests/gcs_emulator.py), one per test worker, with the
    environment pointing gcsfs and TensorStore at it (set here, so subprocesses inherit it)."""
    from gcs_emulator import Emulator
    server = Emulator(str(tmp_path_factory.mktemp("gcs") / "server.log"))
    saved = {name: os.environ.get(name) for name in server.environment}
    os.environ.update(server.environment)
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


@pytest.fixture
def bucket(gcs_server):
    """A new, empty bucket of the emulator -> its URL "gs://name"."""
    import uuid
    return gcs_server.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
