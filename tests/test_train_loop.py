"""The training system in one process: exact resume, device counts, non-finite stops, the resume
rules, the workdir lock, fine-tuning. Uses configs/test.py (a tiny U-Net); the shared
uninterrupted run is conftest.py's `reference`. Subprocess runs: tests/test_train_processes.py."""
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from training_support import STEPS, assert_close, assert_identical, saved_state, small_config

from isodiff_jax import checkpoint, launch
from isodiff_jax import config as config_lib
from isodiff_jax.train import loop


pytestmark = pytest.mark.slow  # in-process training runs (the shared reference run and its variants)


def test_resume_is_exact(reference, tmp_path):
    launch.train(small_config(training__num_steps=3), str(tmp_path))
    summary = launch.train(small_config(), str(tmp_path))
    assert summary["steps"] == STEPS - 3
    assert_identical(saved_state(tmp_path)[1], saved_state(reference[0])[1])


def test_one_and_four_devices_agree(reference, tmp_path):
    launch.train(small_config(), str(tmp_path), devices=jax.devices()[:1])
    assert_close(saved_state(tmp_path)[1], saved_state(reference[0])[1], atol=2e-5)


def test_restores_on_a_different_number_of_devices(reference):
    _, on_four = saved_state(reference[0])
    _, on_one = saved_state(reference[0], devices=jax.devices()[:1])
    assert_identical(on_one, on_four)


def test_a_run_resumes_on_fewer_and_then_more_devices(reference, tmp_path, capsys):
    """A pod that comes back as another slice, twice: the uninterrupted run's step 3 (4 devices)
    resumed on 1 device to step 5, then on 4 again to the end (1 device, not 2: the programs of
    test_one_and_four_devices_agree, already in the compilation cache; the 2-device slice is
    test_train_processes.py's two processes). The data of a step is a function
    of (seed, step) and the global batch is unchanged, so it is the same run; only the split of
    the batch's sums over devices changes, which float32 rounds differently. Bound: 2e-5 absolute
    on every parameter, EMA and moment after 6 Adam steps, as for one against four devices over
    the whole run (test_one_and_four_devices_agree)."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    capsys.readouterr()
    launch.train(small_config(training__num_steps=5, checkpoint__every_steps=1), str(workdir),
                 devices=jax.devices()[:1])
    assert ("resumed from the checkpoint at step 3 (saved on 4 devices in 1 processes, resumed on 1 in 1: the "
            "global batch is unchanged)") in capsys.readouterr().out
    summary = launch.train(small_config(logging__profile_steps=(5, 6)), str(workdir))
    assert summary["steps"] == 1
    assert ("resumed from the checkpoint at step 5 (saved on 1 devices in 1 processes, resumed on 4 in 1: the "
            "global batch is unchanged)") in capsys.readouterr().out
    assert_close(saved_state(workdir)[1], saved_state(reference[0])[1], atol=2e-5)
    # the profile of step 5, on 4 devices: a trace that TensorBoard's profile plugin and Perfetto open
    (run,) = glob.glob(str(workdir / "profile" / "plugins" / "profile" / "*"))
    (xplane,) = glob.glob(os.path.join(run, "*.xplane.pb"))
    assert os.path.getsize(xplane) > 1000
    with gzip.open(os.path.join(run, "perfetto_trace.json.gz")) as f:
        names = {event.get("name", "") for event in json.load(f)["traceEvents"]}
    assert any("jit_run" in name for name in names), sorted(names)[:50]  # the compiled training step


def test_a_resume_on_another_slice_still_refuses_another_global_batch(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    with pytest.raises(config_lib.ConfigError, match="training.global_batch_size"):
        launch.train(small_config(training__global_batch_size=16), str(workdir), devices=jax.devices()[:2])


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    config = small_config(optim__lr=1e30, optim__warmup_steps=0, checkpoint__every_steps=1)
    with pytest.raises(FloatingPointError, match=r"non-finite values at step 1 .*last good checkpoint is step 1"):
        launch.train(config, str(tmp_path))
    assert checkpoint.manager(str(tmp_path), read_only=True).all_steps() == [1]


def test_device_totals_record_the_first_step_with_non_finite_parameters():
    """The loop's device-side record: finite metrics but a NaN parameter after the update mark
    the step; later steps do not move the mark; sums and counts go on per metric."""
    import jax.numpy as jnp
    totals = loop.empty_totals(["loss", "reg_loss"])
    finite, broken = {"w": jnp.ones(3)}, {"w": jnp.array([1.0, jnp.nan, 1.0])}
    totals = loop.add_step(totals, jnp.int32(0), {"loss": jnp.float32(2.0)}, finite)
    assert int(totals["first_non_finite"]) == -1
    totals = loop.add_step(totals, jnp.int32(1), {"loss": jnp.float32(1.0), "reg_loss": jnp.float32(3.0)}, broken)
    totals = loop.add_step(totals, jnp.int32(2), {"loss": jnp.float32(jnp.inf)}, finite)
    assert int(totals["first_non_finite"]) == 1 and float(totals["bad_metrics"]["loss"]) == 1.0
    assert float(totals["counts"]["loss"]) == 3 and float(totals["counts"]["reg_loss"]) == 1
    assert float(totals["sums"]["reg_loss"]) == 3.0


def test_the_loop_fetches_metrics_only_at_its_cadences(tmp_path, monkeypatch):
    """Logging every 3 steps and saving every 6 of 6 steps: the host waits for the device twice
    (and once per step kind, after its first step, to hand freed memory back)."""
    fetched, released = [], []
    original = loop._Run._fetch
    monkeypatch.setattr(loop._Run, "_fetch", lambda self, done, *args: fetched.append(done) or
                        original(self, done, *args))
    monkeypatch.setattr(loop.runtime, "release_freed_host_memory", lambda: released.append(True) or True)
    monkeypatch.setattr(loop, "_COMPILED", {})  # compiled here, not taken from an earlier test's run
    config = small_config(logging__log_every_steps=3, checkpoint__every_steps=6)
    summary = launch.train(config, str(tmp_path))
    assert fetched == [3, 6]
    # the heap is handed back after compiling and after the first step of each kind, not again
    kinds = {loop.regularized_step(config_lib.train_setup(config), step) for step in range(6)}
    assert len(released) == 1 + len(kinds)
    assert np.isfinite(summary["metrics"]["loss"]) and summary["metrics"]["steps_per_s"] > 0
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [line["step"] for line in logged] == [3, 6] and logged[-1]["loss"] == summary["metrics"]["loss"]


def test_bad_input_stops_before_anything_is_written(tmp_path):
    config = small_config(data__name="folder", data__data_dir=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        launch.train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_changed_model_refuses_to_resume(reference):
    config = small_config(model__block_out_channels=(16, 16))
    with pytest.raises(config_lib.ConfigError, match="config.model.block_out_channels"):
        launch.train(config, str(reference[0]))


@pytest.mark.parametrize("field, value", [("seed", 1), ("diffusion.schedule", "cosine"), ("diffusion.beta_end", 0.03),
                                          ("regularizer.kind", "none"), ("optim.lr", 2e-3), ("data.random_flip", True),
                                          ("training.global_batch_size", 16)])
def test_a_resume_that_would_compute_something_else_is_refused(reference, field, value):
    """Every field outside the documented set is compared, named when it differs, and the
    record of the earlier run (config.json) is left as it was."""
    config = small_config()
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    record = open(reference[0] / "config.json").read()
    with pytest.raises(config_lib.ConfigError, match=rf"Differing: config\.{field}={value!r} \(was "):
        launch.train(config, str(reference[0]))
    assert open(reference[0] / "config.json").read() == record


def test_a_resume_may_change_length_and_cadences(reference):
    config = small_config(training__num_steps=60, logging__log_every_steps=7, checkpoint__every_steps=9,
                          checkpoint__keep=5, evaluation__every_steps=11, data__prefetch=1, logging__progress_bar=True)
    saved = checkpoint.read_configs(str(reference[0]))
    assert sorted(saved) == [3, 6]
    assert [config_lib.resume_differences(text, config) for text in saved.values()] == [[], []]
    config_lib.check_resumable(str(reference[0]), config)


def test_a_config_json_without_checkpoints_does_not_block_a_new_run(tmp_path):
    """A run that died before its first save left only config.json: another config may start."""
    other = small_config(model__block_out_channels=(16, 16))
    (tmp_path / "config.json").write_text(config_lib.to_json(other))
    config_lib.check_resumable(str(tmp_path), small_config())


def test_without_config_json_the_checkpoints_own_config_decides(reference, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(reference[0], copy)
    os.remove(copy / "config.json")
    with pytest.raises(config_lib.ConfigError, match=r"config\.seed=3"):
        config_lib.check_resumable(str(copy), _with_seed(3))
    config_lib.check_resumable(str(copy), small_config())


def _with_seed(seed):
    config = small_config()
    config.seed = seed
    return config


def test_num_steps_below_the_newest_checkpoint_stops_before_anything_changes(reference):
    record = open(reference[0] / "config.json").read()
    with pytest.raises(config_lib.ConfigError, match="at step 6, past training.num_steps=4"):
        launch.train(small_config(training__num_steps=4), str(reference[0]))
    assert open(reference[0] / "config.json").read() == record


def test_a_second_run_on_a_locked_workdir_stops_at_once(reference, tmp_path):
    from isodiff_jax.train import lock
    path = lock.acquire(str(tmp_path))  # this (live) process holds it
    try:
        with pytest.raises(lock.WorkdirLocked, match=rf"in use by another training run \(pid {os.getpid()} on host"):
            launch.train(small_config(), str(tmp_path))
    finally:
        lock.release(path)
    assert os.listdir(tmp_path) == []  # nothing was written
    launch.train(small_config(), str(reference[0]))  # a finished run: takes and releases its lock
    assert not os.path.exists(reference[0] / lock.LOCK_FILE)


def test_a_stale_lock_is_taken_over_and_a_foreign_one_is_not(tmp_path, caplog):
    import logging
    import socket
    from isodiff_jax.train import lock
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock_file = tmp_path / lock.LOCK_FILE
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": 0}))
    caplog.set_level(logging.WARNING)
    path = lock.acquire(str(tmp_path))
    assert json.loads(lock_file.read_text())["pid"] == os.getpid() and "stale lock" in caplog.text
    lock.release(path)
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": gone.pid, "started": 0}))
    with pytest.raises(lock.WorkdirLocked, match=rf"host 'elsewhere'.*delete {lock_file}"):
        lock.acquire(str(tmp_path))


def test_a_resume_drops_the_log_lines_written_after_its_checkpoint(tmp_path):
    """A run killed after logging steps past its last checkpoint trains those steps again; their
    old lines go, so metrics.jsonl and evaluation.jsonl hold each step once, in order."""
    from isodiff_jax.train.monitor import Monitor
    for name, steps in (("metrics.jsonl", (2, 4, 6)), ("evaluation.jsonl", (4, 6))):
        (tmp_path / name).write_text("".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in steps))
    Monitor(str(tmp_path), total_steps=8, start_step=4, progress_bar=False).close()
    steps = lambda name: [json.loads(line)["step"] for line in open(tmp_path / name)]
    assert steps("metrics.jsonl") == [2, 4] and steps("evaluation.jsonl") == [4]
    assert not list(tmp_path.glob("*.tmp"))


def test_fine_tuning_starts_from_another_workdirs_ema_parameters(reference, tmp_path):
    config = small_config(training__init_from=str(reference[0]), training__num_steps=1,
                          checkpoint__every_steps=1, optim__warmup_steps=0)
    launch.train(config, str(tmp_path))
    _, before = saved_state(reference[0])
    _, after = saved_state(tmp_path)
    assert after.step == 1
    deltas = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.ema_params))]
    assert 0 < max(deltas) < 2e-3  # one Adam step (lr 1e-3) away from the EMA it started from


def test_a_sweep_over_seeds_and_lambda_in_one_process_compiles_its_steps_once(tmp_path, monkeypatch,
                                                                               count_compiles):
    """λ and the seed are arguments of the compiled steps: the second run of the sweep compiles no
    step, and its logged losses are its own λ's (loss = ε-loss + λ · reg_loss on regularized steps)."""
    monkeypatch.setattr(loop, "_COMPILED", {})
    built, real = [], loop._compile_steps
    monkeypatch.setattr(loop, "_compile_steps", lambda setup, mesh: built.append(setup) or real(setup, mesh))
    counts = []
    for seed, weight in ((0, 0.5), (1, 3.0)):
        config = small_config(training__num_steps=4, logging__log_every_steps=1, checkpoint__every_steps=4)
        config.seed, config.regularizer.weight = seed, weight
        with count_compiles() as counter:
            launch.train(config, str(tmp_path / f"seed{seed}"))
        counts.append(counter.count)
        lines = [json.loads(line) for line in open(tmp_path / f"seed{seed}" / "metrics.jsonl")]
        regularized = [line for line in lines if "reg_loss" in line]
        assert regularized, "no regularized step in this run: choose more steps"
        for line in regularized:
            assert line["loss"] == pytest.approx(line["diffusion_loss"] + weight * line["reg_loss"], rel=1e-5)
    kinds = len(loop.step_kinds(config_lib.train_setup(config)))
    assert len(built) == 1 and counts[1] <= counts[0] - kinds, counts
