"""Command-line entry point: `python -m deepaa_jax.main --config=... --workdir=...`.

Only parses flags and dispatches on `config.job`; all work is done by library
functions that a notebook can call the same way.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.")
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  logging.info("JAX process %d / %d, devices: %s", jax.process_index(),
               jax.process_count(), jax.devices())
  config = FLAGS.config
  if config.job == "demo":
    from deepaa_jax import demo  # pylint: disable=g-import-not-at-top
    demo.run_demo(config, FLAGS.workdir)
  else:
    raise app.UsageError(
        f"config.job must be one of ('demo',), got {config.job!r}")


if __name__ == "__main__":
  app.run(main)
