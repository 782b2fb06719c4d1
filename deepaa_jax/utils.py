"""Run bookkeeping shared by the training and search jobs.

One home for what both jobs need around the pure core: where relative paths
point, the orbax checkpointer, the metric writer (CLU + a JSONL file), the
resume banner, peak memory, and quiet library logging.
"""

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def resolve_path(path) -> pathlib.Path:
  """An absolute path for a user-given path: `~` expanded; a relative path is
  looked up in the current directory, then in the repository root (commands
  run from the root by convention, notebooks and tests may not). If it exists
  in neither, the current-directory path is returned, so errors name it.

  Args:
    path: str or os.PathLike.

  Returns:
    pathlib.Path, absolute (it may not exist).
  """
  p = pathlib.Path(os.path.expanduser(str(path)))
  if p.is_absolute():
    return p
  for base in (pathlib.Path.cwd(), REPO_ROOT):
    if (base / p).exists():
      return (base / p).resolve()
  return (pathlib.Path.cwd() / p).resolve()
