"""Helpers of the training tests (tests/test_train_loop.py, tests/test_train_processes.py):
the tiny test config, the real train.py in a subprocess, and saved states."""
import os
import subprocess
import sys

import jax
import numpy as np

from configs import test as test_config
from isodiff_jax import checkpoint, sharding
from isodiff_jax import config as config_lib
from isodiff_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def small_config(**overrides):
    """configs/test.py (constant learning rate, so a shorter first run has the same schedule)."""
    config = test_config.get_config()
    assert config.training.num_steps == STEPS and config.optim.decay == "constant"
    for field, value in overrides.items():
        section, key = field.split("__")
        config[section][key] = value
    return config


def train_py(workdir, *overrides, devices=4, extra=(), wait=True):
    """Runs the real train.py in a subprocess with `devices` simulated CPU devices, with float64
    enabled as in this process (conftest.py) so that both compile the same programs: the same
    numerics and shared entries in the compilation cache."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices), "JAX_ENABLE_X64": "1",
           "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"}
    command = [sys.executable, "train.py", "--config", "configs/test.py", "--workdir", str(workdir),
               *overrides, *extra]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def saved_state(workdir, step=None, devices=None):
    """The TrainState saved in `workdir` (newest step by default) as host numpy arrays."""
    config = config_lib.from_json(checkpoint.saved_config_json(str(workdir)))
    mesh = sharding.make_mesh(devices)
    found, state = checkpoint.restore(checkpoint.manager(str(workdir), read_only=True),
                                      loop.abstract_state(config_lib.train_setup(config), mesh), step)
    assert found is not None, f"no checkpoint in {workdir}"
    return found, jax.device_get(state)


def assert_identical(a, b):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_close(a, b, atol):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))




class SignalWhenRun:
    """An evaluator that sends this process `number` when it runs (at settings.evaluate_every)."""

    def __init__(self, number):
        self.number = number

    def run(self, params):
        os.kill(os.getpid(), self.number)
        yield "signalled", 1.0
