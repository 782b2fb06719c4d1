"""Command-line entry point: `python -m deepaa_jax.main --config=... --workdir=...`.

Only parses flags and dispatches on `config.job`; all work is done by library
functions that a notebook can call the same way. Config mistakes (an unknown
field in an override, an invalid value) end with one line on stderr.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from deepaa_jax import config as config_lib
from deepaa_jax import input_pipeline

FLAGS = flags.FLAGS
JOBS = ("search", "train", "demo")

flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.")
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
# Multi-host (TPU VM pod slices, GPU clusters): see docs/tpu.md.
flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() before anything touches the devices "
    "(every host runs the same command). TPU VMs, Slurm and Open MPI need no "
    "more; elsewhere also give --coordinator_address, --num_processes and "
    "--process_id (or JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_string("coordinator_address", None,
                    "With --distributed: host:port of process 0.")
flags.DEFINE_integer("num_processes", None,
                     "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None,
                     "With --distributed: this process, 0..num_processes-1.")


def initialize_distributed() -> None:
  """`jax.distributed.initialize` from the flags (with --distributed)."""
  if not FLAGS.distributed:
    return
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes,
                             process_id=FLAGS.process_id)


def parse_flags(argv):
  """absl flag parsing and config validation; errors as one line."""
  try:
    argv = FLAGS(argv)
    initialize_distributed()  # before validation asks for jax.device_count()
    job = FLAGS.config.get("job")
    if job not in JOBS:
      raise ValueError(f"config.job must be one of {JOBS}, got {job!r}")
    if job == "train":
      config_lib.validate(FLAGS.config)
    elif job == "search":
      from deepaa_jax import search  # pylint: disable=g-import-not-at-top
      search.validate_search_config(FLAGS.config)
    return argv
  except (flags.Error, AttributeError, KeyError, OSError, TypeError,
          ValueError) as e:
    sys.stderr.write("FATAL Flags parsing error: "
                     f"{config_lib.describe_override_error(e, argv)}\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  if FLAGS.config.job in ("train", "search"):  # CLU imports TF: hide GPUs first.
    input_pipeline._import_tf()  # pylint: disable=protected-access
  jax.config.update("jax_threefry_partitionable", True)
  logging.info("JAX %s, process %d / %d, devices: %s, "
               "jax_threefry_partitionable=%s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices(),
               jax.config.jax_threefry_partitionable)
  config = FLAGS.config
  if config.job == "search":
    from deepaa_jax import search  # pylint: disable=g-import-not-at-top
    search.run(config, FLAGS.workdir)
  elif config.job == "train":
    from deepaa_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, FLAGS.workdir)
  elif config.job == "demo":
    from deepaa_jax import demo  # pylint: disable=g-import-not-at-top
    demo.run_demo(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
