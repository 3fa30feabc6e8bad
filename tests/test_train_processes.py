"""The training system across processes: the real train.py end to end and resumed, a SIGKILL in
the middle of a save, two processes joined by jax.distributed. Uses configs/test.py; the shared
uninterrupted run is conftest.py's `reference`."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import jax
import pytest
from PIL import Image
from support import fill
from training_support import STEPS, assert_close, assert_identical, saved_state, small_config, train_py

from isodiff_jax import checkpoint, launch
from isodiff_jax import config as config_lib
from isodiff_jax.analysis import load, suite
from isodiff_jax.analysis.options import Options


pytestmark = pytest.mark.slow  # train.py in subprocesses, one or two processes each


def test_killed_run_restarts_from_last_complete_checkpoint_and_loses_nothing(reference, tmp_path):
    """SIGKILL as soon as the first save begins (mid-save), then restart: the result is bit-identical."""
    process = train_py(tmp_path, "--config.checkpoint.every_steps=1", wait=False)
    saves = tmp_path / "checkpoints"
    complete = lambda: [p for p in glob.glob(str(saves / "*")) if os.path.basename(p).isdigit()]
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if complete() and glob.glob(str(saves / "*tmp*")):  # a checkpoint exists and the next save is under way
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    kept = checkpoint.manager(str(tmp_path), read_only=True).all_steps()
    assert kept and max(kept) < STEPS, f"not killed between saves (complete steps: {kept})"
    summary = launch.train(small_config(checkpoint__every_steps=1), str(tmp_path))
    assert summary["steps"] == STEPS - max(kept)
    assert not glob.glob(str(tmp_path / "checkpoints" / "*tmp*")), "a partial save was left behind"
    assert_identical(saved_state(tmp_path)[1], saved_state(reference[0])[1])
    logged = lambda workdir: [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert logged(tmp_path) == logged(reference[0])  # steps logged after the last checkpoint not repeated


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _signal_after_first_log_line(process, workdir, number, timeout=300):
    """Sends `number` to `process` as soon as the run has logged its first step."""
    log, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + timeout
    while process.poll() is None and time.time() < deadline and not (os.path.exists(log) and os.path.getsize(log)):
        time.sleep(0.002)
    process.send_signal(number)


def _stopped_at(output: str) -> int:
    (line,) = [line for line in output.splitlines() if line.startswith("stopped by")]
    return int(line.split(" at step ")[1].split(":")[0])


# saving and logging every step slows the 6 steps enough for the signal to land before the end
EVERY_STEP = ("--config.checkpoint.every_steps=1", "--config.logging.log_every_steps=1")


def test_train_py_stopped_by_sigint_saves_the_step_reached_and_resumes_exactly(reference, tmp_path):
    """The real train.py: Ctrl-C after the first logged step saves the step reached and exits 130
    without a traceback; the same command resumes there and writes checkpoints, samples,
    TensorBoard logs and config.json, ending bit-identical to the uninterrupted run.
    (`reference` is built first: its in-process run compiles the programs that train.py then
    finds in the compilation cache.)"""
    process = train_py(tmp_path, *EVERY_STEP, wait=False)
    _signal_after_first_log_line(process, tmp_path, signal.SIGINT)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 130, output
    step = _stopped_at(output)
    assert 1 <= step < STEPS and "Traceback" not in output and "started at step 0" in output, output
    assert max(checkpoint.all_steps(str(tmp_path))) == step

    output = train_py(tmp_path)  # the same workdir: resumes, does not start over
    assert f"resumed from the checkpoint at step {step}" in output, output
    assert f"trained {STEPS - step} steps to step {STEPS}" in output, output
    assert len(output.splitlines()) == 5, output  # no Orbax warnings ("read only", "Sharding info not provided")
    assert max(checkpoint.all_steps(str(tmp_path))) == STEPS
    (png,) = glob.glob(str(tmp_path / "samples" / "*.png"))
    assert Image.open(png).size[0] > 16
    assert glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
    assert config_lib.from_json(checkpoint.saved_config_json(str(tmp_path))).training.num_steps == STEPS
    assert_identical(saved_state(tmp_path)[1], saved_state(reference[0])[1])
    assert launch.train(small_config(), str(tmp_path))["steps"] == 0  # finished: nothing to do


def test_two_processes_train_evaluate_and_stop_together_on_a_signal_to_one(reference, tmp_path):
    """Two processes × 2 CPU devices (gloo collectives) = the single-process run on 4 devices.
    The in-training evaluator splits its batches over both processes' devices and reports what
    one process computes from the saved checkpoint. Ctrl-C to process 1: it passes the notice
    to JAX's preemption service as a SIGTERM, both processes save the same step and exit (130
    for the one interrupted, 0 for the other), and a resume ends where the single-process run
    does."""
    address = f"localhost:{_free_port()}"
    evaluation = ("--config.evaluation.every_steps=1", "--config.evaluation.metrics=mrtl",
                  "--config.evaluation.num_pairs=4", "--config.evaluation.timesteps=(50,)")
    processes = [train_py(tmp_path, *EVERY_STEP, *evaluation, devices=2, wait=False,
                          extra=("--coordinator_address", address, "--num_processes", "2", "--process_id", str(i)))
                 for i in range(2)]
    _signal_after_first_log_line(processes[1], tmp_path, signal.SIGINT)
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 130], outputs
    assert "4 devices in 2 processes" in outputs[0], outputs[0]
    step = _stopped_at(outputs[0])
    assert 1 <= step < STEPS and max(checkpoint.all_steps(str(tmp_path))) == step, outputs

    lines = {record["step"]: record for record in map(json.loads, open(tmp_path / "evaluation.jsonl"))}
    assert sorted(lines) == list(range(1, step + 1)), lines
    spec, params, _ = load.load(str(tmp_path), step=step, devices=jax.devices()[:1])
    again = dict(suite.Suite(spec, ["mrtl"], Options(num_pairs=4, timesteps=(50,))).run(params))
    assert lines[step]["mrtl"] == pytest.approx(again["mrtl"], rel=1e-5)

    launch.train(small_config(checkpoint__every_steps=1), str(tmp_path))
    assert_close(saved_state(tmp_path)[1], saved_state(reference[0])[1], atol=2e-5)


def test_a_full_disk_stops_in_one_line_and_the_same_command_resumes_once_freed(reference, small_disk):
    """The uninterrupted run's step 3 on the disk, then the disk filled up to 1 MB (a checkpoint
    takes 4): train.py stops at the save of step 6 in one line with status 1 and leaves only step
    3; once the filler is gone the run resumes and ends where the uninterrupted one did."""
    workdir = small_disk / "run"
    shutil.copytree(reference[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    fill(small_disk, leave=1 << 20)
    process = train_py(workdir, wait=False)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 1, output
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "disk is full" in error and "the last complete checkpoint is step 3" in error, output
    assert "Traceback" not in output and len(output.splitlines()) <= 3, output
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
    os.remove(small_disk / "filler")
    assert launch.train(small_config(), str(workdir))["steps"] == STEPS - 3  # what train.py runs, in process
    assert_identical(saved_state(workdir)[1], saved_state(reference[0])[1])


def _two_processes(workdir, *overrides):
    """train.py as 2 processes × 1 CPU device (gloo collectives): a 2-device slice."""
    address = f"localhost:{_free_port()}"
    processes = [train_py(workdir, *overrides, devices=1, wait=False,
                          extra=("--coordinator_address", address, "--num_processes", "2", "--process_id", str(i)))
                 for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    return outputs[0]


def test_a_run_moves_from_one_process_to_two_and_back(reference, tmp_path, capsys):
    """The uninterrupted run's step 3 (4 devices, 1 process) resumed by 2 processes × 1 device to
    step 5, then by 1 process on 4 devices to the end; the bound is test_train_loop's (2e-5,
    float32 sums split otherwise over the devices)."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    output = _two_processes(workdir, "--config.training.num_steps=5", "--config.checkpoint.every_steps=1")
    assert ("resumed from the checkpoint at step 3 (saved on 4 devices in 1 processes, resumed on 2 in 2: "
            "the global batch is unchanged)") in output, output
    capsys.readouterr()
    launch.train(small_config(), str(workdir))
    assert ("resumed from the checkpoint at step 5 (saved on 2 devices in 2 processes, resumed on 4 in 1: "
            "the global batch is unchanged)") in capsys.readouterr().out
    assert_close(saved_state(workdir)[1], saved_state(reference[0])[1], atol=2e-5)
