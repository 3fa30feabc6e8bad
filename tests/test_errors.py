"""Input errors at the entry points: one line `error: ...` on stderr and exit status 2, no
traceback (unless asked for); other exceptions keep theirs. train.py is run in-process (its flag
parsing and main) and once for real, in a subprocess."""
import os
import subprocess
import sys

import pytest
from support import ROOT

from isodiff_jax import errors
from isodiff_jax.config import ConfigError


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_user_error_is_one_line_and_status_2_unless_a_traceback_is_asked_for(capsys, monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as exit, errors.exit_on_user_error():
        raise ConfigError("config.seed=-1 is invalid: allowed an integer in [0, 2**31)")
    assert exit.value.code == 2 and exit.value.__suppress_context__
    assert one_error_line(capsys) == "error: config.seed=-1 is invalid: allowed an integer in [0, 2**31)"
    with pytest.raises(KeyError), errors.exit_on_user_error():  # a bug keeps its traceback
        raise KeyError("x")
    with pytest.raises(errors.MissingPath), errors.exit_on_user_error(traceback=True):
        raise errors.MissingPath("runs/x does not exist")
    monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
    with pytest.raises(errors.InvalidValue), errors.exit_on_user_error():
        raise errors.InvalidValue("pool=0")
    assert capsys.readouterr().err == ""


def _argv(workdir, *flags):
    return ["train.py", "--config", os.path.join(ROOT, "configs", "test.py"), "--workdir", str(workdir), *flags]


@pytest.mark.parametrize("flag, message", [
    ("--config.trainig.num_steps=1", "error: the config has no field 'trainig' in --config.trainig.num_steps=1: "
                                     'did you mean "training" instead of "trainig"?'),
    ("--config.training.num_step=1", "error: the config has no field 'num_step' in --config.training.num_step=1: "
                                     'did you mean "num_steps" instead of "num_step"?'),
    ("--config.training.num_steps=abc", "error: flag --config.training.num_steps=abc: invalid literal for int() "
                                        "with base 10: 'abc'"),
    ("--config=no_such_config.py", "error: --config no_such_config.py: no such file (a Python file whose "
                                   "get_config() returns a ConfigDict)"),
    ("stray_argument", "error: unexpected arguments ['stray_argument']: train.py takes only flags (see --help)"),
])
def test_train_py_flag_errors_are_one_clean_line(train_py, tmp_path, capsys, monkeypatch, flag, message):
    argv = _argv(tmp_path, flag)
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the --config.* overrides from sys.argv
    with pytest.raises(SystemExit) as exit:
        train_py._parse_flags_or_exit(argv)
    assert exit.value.code == 2
    assert one_error_line(capsys) == message  # not ml_collections' KeyError('\'trainig\'\nDid you mean ...')


def test_train_py_main_turns_a_user_error_of_training_into_one_line(train_py, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)
    train_py.parse_flags(_argv(tmp_path))

    def fails(config, workdir):
        raise ConfigError("config.optim.lr=inf is invalid: allowed a finite learning rate > 0")
    monkeypatch.setattr(train_py.launch, "train", fails)
    with pytest.raises(SystemExit) as exit:
        train_py.main(["train.py"])
    assert exit.value.code == 2
    assert one_error_line(capsys) == "error: config.optim.lr=inf is invalid: allowed a finite learning rate > 0"


@pytest.mark.slow  # starts a train.py process
def test_an_error_after_tensorboard_starts_prints_no_second_traceback_at_exit(tmp_path):
    """The real command, in a fresh interpreter: a config error raised once the Monitor (and
    tensorboardX's SummaryWriter, with its atexit hook) exists is one line and status 2; nothing
    is printed at exit."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from support import load_module\n"
        "train = load_module('train.py')\n"
        "from isodiff_jax.config import ConfigError\n"
        "from isodiff_jax.train.monitor import Monitor\n"
        "def fails(config, workdir):\n"
        "    monitor = Monitor(workdir, total_steps=2, start_step=0, progress_bar=False)\n"
        "    monitor.flush(1, {'loss': 1.0})\n"
        "    raise ConfigError('config.x=1 is invalid: allowed 0')\n"
        "train.launch.train = fails\n"
        f"train.run({_argv(tmp_path / 'run')!r})\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.path.join(ROOT, "tests")}
    env.pop(errors.TRACEBACK_ENV, None)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["error: config.x=1 is invalid: allowed 0"], result.stderr
    assert os.listdir(tmp_path / "run" / "logs")  # the event file was written


def test_a_full_disk_exits_with_status_1_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit, errors.exit_on_user_error():
        raise errors.DiskFull("the disk is full: ...; the last complete checkpoint is step 3")
    assert exit.value.code == 1 and capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("verbose", ["", "1"])
def test_quiet_drops_orbax_records_and_closed_loop_errors_unless_verbose(verbose, monkeypatch, caplog):
    """What a resume, a damaged checkpoint or a full disk printed before: Orbax's warnings (logged
    through absl's logger) and TensorStore's 'Event loop is closed' through sys.unraisablehook."""
    import logging
    from isodiff_jax import quiet
    monkeypatch.setenv(quiet.VERBOSE_ENV, verbose)
    absl = logging.getLogger("absl")
    # without the filter that an in-process train.py main (an earlier test) may have installed
    monkeypatch.setattr(absl, "filters", [f for f in absl.filters if not isinstance(f, quiet._DropOrbax)])
    monkeypatch.setattr(logging.getLogger("asyncio"), "level", logging.getLogger("asyncio").level)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(str(unraisable.exc_value)))
    assert quiet.quiet_third_party() == (not verbose)
    caplog.set_level(logging.WARNING)
    orbax_file = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
    for name, path in (("absl", orbax_file), ("absl", "mine.py")):
        absl.handle(absl.makeRecord(name, logging.WARNING, path, 1, f"from {path}", (), None))
    class Unraisable:
        def __init__(self, error):
            self.exc_value = error
    for error in (RuntimeError("Event loop is closed"), RuntimeError("something else")):
        sys.unraisablehook(Unraisable(error))
    kept = [r.getMessage() for r in caplog.records]
    if verbose:
        assert kept == [f"from {orbax_file}", "from mine.py"] and len(seen) == 2
    else:
        assert kept == ["from mine.py"] and seen == ["something else"]


@pytest.mark.parametrize("metrics", ["", ",", " "])
def test_an_analysis_with_no_metric_named_is_refused_before_anything_is_written(tmp_path, capsys, metrics):
    """`--metrics ""` exited 0 with no metrics, and recorded timesteps the model does not have."""
    from isodiff_jax.analysis import cli
    with pytest.raises(SystemExit) as exit:
        cli.main(["--workdir", str(tmp_path), "--metrics", metrics, "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    assert one_error_line(capsys).startswith(f"error: --metrics {metrics!r} names no metric: give some of mrtl,")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # starts train.py processes
@pytest.mark.parametrize("config, environment, status, message", [
    ("README.md", {}, 2, "error: --config README.md: not a Python config file (unterminated string literal"),
    ("configs/test.py:bogus_arg", {}, 2, "error: --config configs/test.py:bogus_arg: its get_config() failed: "
                                         "TypeError: get_config() takes 0 positional arguments but 1 was given"),
    ("configs/test.py", {"JAX_PLATFORMS": "cuda"}, 1, "error: JAX cannot start the backend JAX_PLATFORMS='cuda' "
                                                      "asks for"),
])
def test_train_py_input_and_backend_faults_are_one_line(tmp_path, config, environment, status, message):
    """Each printed a traceback (hardening issue, cases 4 and 5); nothing is written."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **environment}
    result = subprocess.run([sys.executable, "train.py", "--config", config, "--workdir", str(tmp_path / "run")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "run").exists()
