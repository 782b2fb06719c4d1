"""Command-line entry point: `python -m deepaa_jax.main --config=... --workdir=...`.

Only parses flags and dispatches on `config.job`; all work is done by library
functions that a notebook can call the same way. One error boundary: config
mistakes, data and policy file problems, workdir problems (one in use by
another run), a refused resume, divergence, a full disk, Ctrl-C and SIGTERM
each end with one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback. The console is quiet by default (library INFO logs
off, the job's own progress and results on); `--verbosity=1` brings every log
line and every traceback back.
"""

import errno
import math
import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from deepaa_jax import config as config_lib
from deepaa_jax import demo
from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import inspect_job
from deepaa_jax import search_job
from deepaa_jax import train
from deepaa_jax import utils

FLAGS = flags.FLAGS
JOBS = ("search", "train", "demo", "inspect")

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


def _config_file(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def override_paths(argv: Sequence[str]) -> List[Tuple[str, List[str]]]:
  """(argument, ["train", "num_epochs"]) for each `--config.a.b=v` in argv."""
  out = []
  for arg in argv:
    if arg.startswith("--config."):
      out.append((arg, arg[len("--config."):].split("=", 1)[0].split(".")))
  return out


def unknown_override(config, argv: Sequence[str]) -> Optional[str]:
  """One line for the first `--config.*` override naming a field that the
  config (from its file, before overrides) does not have, else None.

  e.g. "--config.train.num_epoch=3: no field 'num_epoch' in config.train;
  did you mean 'num_epochs'?". Checked against the config's own keys, not by
  parsing library error text.
  """
  for arg, path in override_paths(argv):
    node, parents = config, ["config"]
    for field in path:
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if field not in keys:
        hint = errors.did_you_mean(field, keys)
        return f"{arg}: no field {field!r} in {'.'.join(parents)}{hint}"
      node, parents = node[field], parents + [field]
  return None


def bad_override_value(config, argv: Sequence[str]) -> Optional[str]:
  """One line for the first `--config.*=value` whose value cannot be an
  integer field's value, else None.

  e.g. "--config.train.num_steps=1e12: config.train.num_steps is an
  integer; write 1000000000000 (digits, no exponent or decimal point)",
  where the flag parser would say "invalid literal for int()".
  """
  for arg, path in override_paths(argv):
    if "=" not in arg:
      continue
    node = config
    for field in path:
      if not hasattr(node, "keys") or field not in node.keys():
        node = None
        break
      node = node[field]
    if not isinstance(node, int) or isinstance(node, bool):
      continue
    text = arg.split("=", 1)[1].strip()
    try:
      int(text)
      continue
    except ValueError:
      pass
    name = "config." + ".".join(path)
    try:
      number = float(text)
    except ValueError:
      number = None
    if number is not None and math.isfinite(number) and number.is_integer():
      return (f"{arg}: {name} is an integer; write {int(number)} (digits, no "
              "exponent or decimal point)")
    return f"{arg}: {name} must be an integer, got {text!r}"
  return None


def _unknown_override(argv) -> str:
  """The first `--config.x.y=` naming no field of the config file, or giving
  an integer field a value that is not an integer (`1e12`), if any."""
  path = _config_file(argv)
  if not path or not os.path.isfile(path.split(":", 1)[0]):
    return ""
  try:
    file_config = config_lib.load_config_file(path.split(":", 1)[0])
  except Exception:  # pylint: disable=broad-except
    return ""  # the file's own error is reported by the flag parser
  return (unknown_override(file_config, argv) or
          bad_override_value(file_config, argv) or "")


def parse_flags(argv):
  """absl flag parsing and config validation; errors as one line."""
  try:
    unknown = _unknown_override(argv)
    if unknown:
      raise errors.ConfigError(unknown)
    argv = FLAGS(argv)
    initialize_distributed()  # before validation asks for jax.device_count()
    config_lib.validate(FLAGS.config)
    return argv
  except (flags.Error, errors.DeepAAError, AttributeError, KeyError, OSError,
          TypeError, ValueError) as e:
    # The one prefix of every user error (not absl's "FATAL Flags parsing
    # error:"), as `main` prints the errors of a run.
    sys.stderr.write(f"ERROR: {errors.one_line(e)}\n")
    sys.exit(1)


def _disk_full(error: BaseException) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def run(config, workdir) -> None:
  """The job named by `config.job`: what a notebook would call. Training
  and search lock their workdir themselves; the demo and inspect jobs,
  which write files too, are locked here (`utils.WorkdirLock`)."""
  if config.job == "search":
    search_job.run(config, workdir)
  elif config.job == "train":
    train.run(config, workdir)
  else:
    with utils.workdir_lock(utils.prepare_workdir(workdir), config.job):
      if config.job == "demo":
        demo.run(config, workdir)
      elif config.job == "inspect":
        inspect_job.run(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  verbose = FLAGS.verbosity >= 1
  utils.quiet_library_logs(verbose)
  if FLAGS.config.job in ("train", "search"):  # CLU imports TF: hide GPUs first.
    input_pipeline.import_tf()
  jax.config.update("jax_threefry_partitionable", True)
  logging.info("JAX %s, process %d / %d, devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  # SIGTERM (a scheduler's stop, a TPU VM's preemption) is Ctrl-C: the
  # current step is saved; the exit status is 143 (128 + SIGTERM) then.
  with utils.sigterm_as_interrupt() as sigterm:
    try:
      run(FLAGS.config, FLAGS.workdir)
    except KeyboardInterrupt as e:
      if verbose:
        raise
      message = (errors.one_line(e) if isinstance(e, errors.Interrupted)
                 else "Interrupted. Rerun the same command to resume from "
                 "the last checkpoint.")
      if sigterm["received"]:
        message = "SIGTERM: " + message
      sys.stderr.write(f"{message}\n")
      sys.exit(143 if sigterm["received"] else 130)
    except Exception as e:  # pylint: disable=broad-except
      if verbose:
        raise
      if _disk_full(e):
        # The unfinished checkpoint's temporary folder takes space and is
        # of no use: orbax resumes from the last committed one.
        removed = utils.remove_partial_checkpoints(FLAGS.workdir)
        sys.stderr.write(
            f"ERROR: no space left on the device holding {FLAGS.workdir} "
            f"({type(e).__name__})"
            f"{'; its partial checkpoint was removed' if removed else ''}. "
            "Free space and rerun the same command to resume from the last "
            "complete checkpoint.\n")
        # orbax's background save threads are left failing on the full disk
        # and print tracebacks when the interpreter shuts down: skip that
        # shutdown (the job's own finally blocks, the lock included, ran).
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)  # pylint: disable=protected-access
      if isinstance(e, errors.DeepAAError):
        sys.stderr.write(f"ERROR: {errors.one_line(e)}\n")
        sys.exit(1)
      raise  # a bug: keep the traceback


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO
  app.run(main, flags_parser=parse_flags)
