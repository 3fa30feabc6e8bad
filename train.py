"""Trains Isometric Diffusion: `python train.py --config configs/shapes32.py --workdir runs/shapes32`.

Override any config field with `--config.section.field=value`. Running again with the same
workdir resumes from its newest complete checkpoint. Several processes (multi-host): pass
--coordinator_address, --num_processes and --process_id, or leave them unset on platforms where
`jax.distributed.initialize()` finds them itself (Cloud TPU, SLURM).
"""
from absl import app, flags, logging
from ml_collections import config_flags

from isodiff_jax import runtime

runtime.keep_freed_host_memory()  # before JAX allocates anything

import jax  # noqa: E402

from isodiff_jax import launch  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/shapes32.py", "experiment config file")
flags.DEFINE_string("workdir", "runs/shapes32", "where checkpoints, logs and samples go")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it
    if FLAGS.distributed or FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; others ignore it
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    launch.train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
