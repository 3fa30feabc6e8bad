"""What pods and clusters do to a run, in one process: a preemption notice or Ctrl-C (the step
reached is saved, the resume is exact), a damaged newest checkpoint (moved aside, trained again),
a full disk during a save (one error naming the last complete checkpoint, then an exact resume).
The same through train.py and across two processes: tests/test_train_processes.py."""
import dataclasses
import errno
import glob
import logging
import os
import shutil
import signal

import pytest
from training_support import STEPS, SignalWhenRun, assert_identical, saved_state, small_config

from isodiff_jax import checkpoint, errors, launch
from isodiff_jax import config as config_lib
from isodiff_jax.train import loop


pytestmark = pytest.mark.slow  # training runs with injected faults


def copy_of(reference, tmp_path, drop_steps=()):
    """The shared uninterrupted run (checkpoints at steps 3 and 6), without `drop_steps`."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    for step in drop_steps:
        shutil.rmtree(workdir / "checkpoints" / str(step))
    return workdir


def test_sigint_saves_the_step_reached_and_the_resume_is_exact(reference, tmp_path, monkeypatch):
    """Ctrl-C after step 4 (between the checkpoints at 3 and 6): step 4 is saved, a SIGTERM during
    that save changes nothing, and resuming gives the uninterrupted run bit for bit."""
    saves = []
    real_save = checkpoint.save

    def save_and_signal(mngr, step, state, **kwargs):
        saves.append(step)
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal while the stop's save runs
        return real_save(mngr, step, state, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_and_signal)
    setup = config_lib.train_setup(small_config())
    setup = dataclasses.replace(setup, settings=dataclasses.replace(setup.settings, evaluate_every=4))
    previous = signal.getsignal(signal.SIGINT)
    summary = loop.train_and_evaluate(setup, str(tmp_path), evaluators=[SignalWhenRun(signal.SIGINT)])
    assert signal.getsignal(signal.SIGINT) is previous  # the run's handlers are gone with it
    assert (summary["stopped_by"], summary["final_step"], summary["steps"]) == ("SIGINT", 4, 4)
    assert saves == [3, 4] and checkpoint.all_steps(str(tmp_path)) == [3, 4]

    monkeypatch.setattr(checkpoint, "save", real_save)
    resumed = launch.train(small_config(), str(tmp_path))
    assert (resumed["steps"], resumed["stopped_by"]) == (STEPS - 4, None)
    assert_identical(saved_state(tmp_path)[1], saved_state(reference[0])[1])


def test_a_stopped_run_stops_its_study_and_the_same_call_resumes(reference, tmp_path, monkeypatch, capsys):
    """experiments/common.train, through which every study trains: a SIGTERM during a run's first
    save stops the study itself (SystemExit with train.py's status 0), naming the step and the
    workdir, instead of letting it go on to its next run; the same call then finishes the run."""
    from experiments import common
    real_save = checkpoint.save

    def save_and_signal(mngr, step, state, **kwargs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(mngr, step, state, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_and_signal)
    with pytest.raises(SystemExit) as stopped:
        common.train(small_config(), str(tmp_path))
    assert stopped.value.code == 0
    step = max(checkpoint.all_steps(str(tmp_path)))
    assert 3 <= step < STEPS
    assert f"stopped by SIGTERM at step {step} of {tmp_path}" in capsys.readouterr().out
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert common.train(small_config(), str(tmp_path))["final_step"] == STEPS
    assert_identical(saved_state(tmp_path)[1], saved_state(reference[0])[1])


def test_a_damaged_newest_step_is_moved_aside_and_trained_again(reference, tmp_path, caplog):
    """The newest step's data files deleted (as the pod-readiness issue did): the run resumes from
    step 3, keeps the damaged step as 6.damaged-<UTC time>, saves step 6 again (Orbax refused to
    before) and ends where the uninterrupted run did. Files a person left in checkpoints/ are
    not the project's: they stay as they were (hardening issue, second rule)."""
    workdir = copy_of(reference, tmp_path)
    for path in glob.glob(str(workdir / "checkpoints" / "6" / "state" / "ocdbt.process_*" / "d" / "*")):
        os.remove(path)
    strays = {"notes.txt": "mine", "old_run/state.npz": "an earlier run", "7.bak/x": "a copy", "best/6": "a link"}
    for name, text in strays.items():
        (workdir / "checkpoints" / name).parent.mkdir(exist_ok=True)
        (workdir / "checkpoints" / name).write_text(text)
    caplog.set_level(logging.WARNING)
    summary = launch.train(small_config(), str(workdir))
    assert summary["steps"] == STEPS - 3
    (aside,) = glob.glob(str(workdir / "checkpoints" / "6.damaged-*"))
    assert os.path.isdir(os.path.join(aside, "state"))  # kept for inspection
    (warning,) = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert f"moved it to {aside}" in warning and "step 6" in warning, warning
    assert "\n" not in warning and "tensorstore_spec" not in warning and len(warning) < 500, warning
    assert checkpoint.all_steps(str(workdir)) == [3, 6]
    assert {name: (workdir / "checkpoints" / name).read_text() for name in strays} == strays
    assert_identical(saved_state(workdir)[1], saved_state(reference[0])[1])


def test_a_full_disk_during_a_save_is_one_error_and_the_same_command_resumes(reference, tmp_path, monkeypatch):
    """An injected ENOSPC at the save of step 6 (after Orbax made its temporary directory): one
    DiskFull error (exit status 1) naming step 3, no partial step left; with space again the same
    call finishes bit for bit. A real full disk (a small tmpfs): tests/test_train_processes.py."""
    workdir = copy_of(reference, tmp_path, drop_steps=(6,))
    real_save = checkpoint.save

    def full_disk(mngr, step, state, **kwargs):
        os.makedirs(os.path.join(str(mngr.directory), f"{step}.orbax-checkpoint-tmp"))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    with pytest.raises(errors.DiskFull) as error:
        launch.train(small_config(), str(workdir))
    message = str(error.value)
    assert "disk is full" in message and "the last complete checkpoint is step 3" in message, message
    assert "\n" not in message and error.value.exit_status == 1
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]

    monkeypatch.setattr(checkpoint, "save", real_save)
    assert launch.train(small_config(), str(workdir))["steps"] == STEPS - 3
    assert_identical(saved_state(workdir)[1], saved_state(reference[0])[1])


@pytest.mark.parametrize("error, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": Failed writing'), True),
    (RuntimeError("wrapped"), True),  # its __cause__ below is the ENOSPC
    (OSError(errno.EACCES, "Permission denied"), False),
    (ValueError("RESOURCE_EXHAUSTED: out of memory allocating 4 GiB"), False),
])
def test_is_disk_full_reads_the_error_and_its_causes(error, full):
    if str(error) == "wrapped":
        error.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert errors.is_disk_full(error) == full
