"""Trains Isometric Diffusion: `python train.py --config configs/shapes16_iso.py --workdir runs/shapes16_iso`.

Override any config field with `--config.section.field=value`. Running again with the same
workdir resumes from its newest complete checkpoint. Several processes (multi-host): pass
--coordinator_address, --num_processes and --process_id, or leave them unset on platforms where
`jax.distributed.initialize()` finds them itself (Cloud TPU, SLURM).

SIGTERM (a preemption notice) or SIGINT (Ctrl-C) stops the run after its current step, saves that
step and exits with status 0 (SIGTERM) or 130 (SIGINT); the same command resumes it.

A bad flag or config value prints one line `error: ...` and exits with status 2, a full disk one
line and status 1 (ISODIFF_TRACEBACK=1 shows the traceback); any other failure keeps its
traceback. ISODIFF_VERBOSE=1 shows the third-party messages that are dropped (isodiff_jax.quiet).
"""
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from isodiff_jax import runtime

runtime.keep_freed_host_memory()  # before JAX allocates anything

import jax  # noqa: E402

from isodiff_jax import errors, launch, quiet  # noqa: E402
from isodiff_jax.train import preemption  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/shapes16_iso.py", "experiment config file")
flags.DEFINE_string("workdir", "runs/shapes16_iso", "where checkpoints, logs and samples go")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection")
FLAGS = flags.FLAGS


def parse_flags(argv):
    """absl's flag parsing, with every input error (an unknown flag or config field, a value of
    the wrong type, a missing config file, a stray argument) as a UserError."""
    try:
        rest = FLAGS(argv)
    except flags.Error as error:
        raise errors.UserError(_flag_error(error, argv)) from error
    except SyntaxError as error:  # --config names a file that is not Python (README.md, a JSON file)
        raise errors.UserError(f"--config {_config_path(argv)}: not a Python config file ({error.msg}, line "
                               f"{error.lineno})") from error
    except (KeyError, AttributeError) as error:  # only ml_collections' --config.<unknown field> raise these here
        raise errors.UserError(_unknown_field(error, argv)) from error
    except OSError as error:  # ml_collections: an override of a config file that did not load
        raise errors.UserError(_config_not_loaded(argv)) from error
    if not isinstance(FLAGS.config, ml_collections.ConfigDict):  # ml_collections defers load errors
        raise errors.UserError(_config_not_loaded(argv))
    if len(rest) > 1:
        raise errors.UserError(f"unexpected arguments {rest[1:]}: train.py takes only flags (see --help)")
    return rest


def _flag_error(error: Exception, argv) -> str:
    """absl's message, without the traceback that ml_collections embeds when get_config fails
    (`--config file.py:argument` for a get_config that takes none): its last line says why."""
    text = str(error)
    if "Error whilst parsing config file" not in text:
        return text
    reason = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
    return f"--config {_config_path(argv)}: its get_config() failed: {reason}"


def _unknown_field(error: Exception, argv) -> str:
    """ml_collections' KeyError("'name'\nDid you mean ...?"), maybe wrapped in an AttributeError,
    as one line naming the flag."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    name, _, hint = str(error.args[0] if error.args else error).partition("\n")
    name = name.strip("'\"")
    flag = next((a for a in argv[1:] if a.startswith("--config.") and name in a.split("=")[0].split(".")), None)
    where = f" in {flag}" if flag else ""
    return f"the config has no field {name!r}{where}" + (f": {hint[0].lower()}{hint[1:]}" if hint else "")


def _config_path(argv) -> str:
    """The value of the last --config in argv."""
    path = ""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg[len("--config="):]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def _config_not_loaded(argv) -> str:
    """Why the last --config in argv did not load (ml_collections keeps only a deferred error)."""
    path = _config_path(argv)
    file = path.split(":")[0]  # config_file:argument passes the argument to get_config
    reason = "no such file" if not os.path.exists(file) else "not a file" if not os.path.isfile(file) else \
        "it did not load"
    return f"--config {path}: {reason} (a Python file whose get_config() returns a ConfigDict)"


def main(argv):
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it
    quiet.quiet_third_party()  # ISODIFF_VERBOSE=1 keeps Orbax's and asyncio's messages
    if FLAGS.distributed or FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; others ignore it
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    with errors.exit_on_user_error():
        _check_backend()
        try:
            summary = launch.train(FLAGS.config, FLAGS.workdir)
        except KeyboardInterrupt:  # Ctrl-C before training began (during the set-up): nothing to save
            print("interrupted before training began: nothing was saved", file=sys.stderr, flush=True)
            raise SystemExit(preemption.EXIT_STATUS["SIGINT"]) from None
    if summary["stopped_by"]:
        raise SystemExit(preemption.EXIT_STATUS[summary["stopped_by"]])


def _check_backend() -> None:
    """The devices of the backend JAX_PLATFORMS asks for, or one line saying it is not here
    (JAX_PLATFORMS=cuda on a machine without a GPU raised a bare AssertionError inside JAX)."""
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as error:
        asked = os.environ.get("JAX_PLATFORMS", "")
        why = str(error).strip().splitlines()[0] if str(error).strip() else "no such backend on this machine"
        raise errors.Unavailable(f"JAX cannot start the backend JAX_PLATFORMS={asked!r} asks for: {why}. "
                                 f"Unset JAX_PLATFORMS (or set it to cpu) on a machine without that "
                                 f"accelerator") from None


def _parse_flags_or_exit(argv):
    with errors.exit_on_user_error():
        return parse_flags(argv)


def run(argv=None):
    """The command (argv: sys.argv by default)."""
    app.run(main, argv=argv, flags_parser=_parse_flags_or_exit)


if __name__ == "__main__":
    run()
