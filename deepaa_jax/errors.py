"""The project's exception hierarchy: user and data errors, told apart from bugs.

`main` catches `DeepAAError` and prints its message on one line (no
traceback; `--verbosity=1` shows it). Anything else is a bug and keeps its
traceback. Each class also derives from the builtin a caller would expect
(`ValueError`, `OSError`, ...), so `except ValueError` keeps working in
notebooks.

`did_you_mean` is the one spelling-suggestion helper for these messages, and
`one_line` is how `main` (and scripts) print any of them.
"""

import difflib
from typing import Callable, Iterable


class DeepAAError(Exception):
  """A mistake in the input (config, data, files, workdir), not a bug."""


class ConfigError(DeepAAError, ValueError):
  """A config field has a bad value; the message names `config.<field>`."""


class DataError(DeepAAError, ValueError):
  """A dataset file or split is missing, unreadable, malformed or empty."""


class DatasetNotFoundError(DataError, FileNotFoundError):
  """The requested dataset is not available locally (nothing is downloaded)."""


class PolicyFileError(DeepAAError, ValueError):
  """A policy file is corrupt, truncated, or does not fit the search space."""


class ArgumentError(DeepAAError, ValueError):
  """A library function was asked an impossible question (a negative or
  fractional step, a row outside the batch); the message names the
  argument and its valid range."""


class ImageContractError(DeepAAError, ValueError):
  """Images given to a public function break its contract (rank, channels,
  dtype, value range [0, 255], finiteness)."""


class WorkdirError(DeepAAError, OSError):
  """The workdir cannot be used (it is a file, not writable, ...)."""


class ResumeRefusedError(DeepAAError, ValueError):
  """The workdir holds a run with different settings or different data."""


class DivergedError(DeepAAError, FloatingPointError):
  """The loss, gradients, parameters or policy became NaN or infinite."""


class DiskFullError(DeepAAError, OSError):
  """No space left on the device that holds the workdir."""


class Interrupted(DeepAAError, KeyboardInterrupt):
  """Ctrl-C: the current step was saved; the message says how to resume."""


def did_you_mean(name: str, choices: Iterable[str], *,
                 show: Callable[[str], str] = repr) -> str:
  """The hint that ends a one-line error about a misspelt name.

  Args:
    name: what the user wrote, e.g. "num_epoch".
    choices: the valid names, e.g. a config section's keys.
    show: how the suggestion is written (default `repr`: 'num_epochs').

  Returns:
    "; did you mean 'num_epochs'?" for the closest choice (`difflib`), or ""
    when none is close.
  """
  close = difflib.get_close_matches(name, list(choices), n=1)
  return f"; did you mean {show(close[0])}?" if close else ""


def one_line(error: BaseException) -> str:
  """An exception message on one line (ml_collections' KeyErrors are
  repr-quoted and span lines)."""
  message = error.args[0] if error.args else str(error)
  message = str(message)
  if isinstance(error, (KeyError, AttributeError)):
    message = message.strip("'\"").replace("\\'", "'")
  return " ".join(message.replace("\\n", "\n").split())
