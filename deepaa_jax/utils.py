"""Run bookkeeping shared by the training and search jobs.

One home for what both jobs need around the pure core: where relative paths
point, the workdir lock, SIGTERM and preemption, the orbax checkpointer, the
metric writer (CLU + a JSONL file), the resume banner, peak memory, and
quiet library logging.

Workdir files go through `etils.epath`, so a workdir may be a local folder or
a URI such as `gs://bucket/run` (epath's TensorFlow or fsspec backend; orbax
writes arrays with tensorstore, TensorBoard events go through TensorFlow's
filesystem). Local folders behave as plain files do: JSON is written to a
temporary file and renamed, `metrics.jsonl` is appended to. Object stores
have neither rename nor append: JSON objects are written in one piece (an
object appears whole when its upload completes) and the JSONL log is kept in
memory and rewritten whole (see `JsonlWriter`).
"""

import atexit
import contextlib
import datetime
import errno
import hashlib
import json
import logging as logging_lib
import os
import pathlib
import resource
import shutil
import signal
import socket
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
import weakref

from absl import logging
from absl import logging as absl_logging
from etils import epath
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from deepaa_jax import errors

PyTree = Any
# A local path is a pathlib.Path (as it always was), a URI an epath.Path.
AnyPath = Union[pathlib.Path, epath.Path]
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def is_remote(path) -> bool:
  """True for a URI (`gs://bucket/x`, `s3://...`): a path that only
  `etils.epath` (not `open`, `os` or `pathlib`) can use."""
  return "://" in os.fspath(path)


def as_path(path) -> AnyPath:
  """`path` as a path object: a URI as an `epath.Path`, kept whole
  (`pathlib` would turn `gs://b/x` into `gs:/b/x`); a local path as a
  `pathlib.Path` with `~` expanded. Both have the same pathlib methods
  (`/`, `read_text`, `write_bytes`, `exists`, ...).

  Args:
    path: str or os.PathLike (`pathlib.Path`, `epath.Path`).
  """
  text = os.fspath(path)
  if is_remote(text):
    return epath.Path(text)
  return pathlib.Path(os.path.expanduser(text))


def resolve_path(path) -> AnyPath:
  """An absolute path for a user-given path: `~` expanded; a relative path is
  looked up in the current directory, then in the repository root (commands
  run from the root by convention, notebooks and tests may not). If it exists
  in neither, the current-directory path is returned, so errors name it.

  Args:
    path: str or os.PathLike; a URI (`gs://...`) is returned as it is.

  Returns:
    pathlib.Path, absolute (it may not exist); an `epath.Path` for a URI.
  """
  if is_remote(path):
    return as_path(path)
  p = pathlib.Path(os.path.expanduser(str(path)))
  if p.is_absolute():
    return p
  for base in (pathlib.Path.cwd(), REPO_ROOT):
    if (base / p).exists():
      return (base / p).resolve()
  return (pathlib.Path.cwd() / p).resolve()


# ---------------------------------------------------------------------------
# Workdirs.
# ---------------------------------------------------------------------------


def prepare_workdir(workdir) -> AnyPath:
  """`workdir` as a path (`as_path`) of a created directory.

  A URI (`gs://bucket/run`) is not created: an object store has no folders
  (a file written under the prefix makes it), and creating one could create
  a bucket. It must not be an existing file (object).

  Args:
    workdir: str or os.PathLike; a local folder or a URI.

  Raises:
    errors.WorkdirError: (one line) it is a file, cannot be created, is not
      writable, or (a URI) cannot be looked up (no access, no such bucket).
  """
  path = as_path(workdir)
  if is_remote(path):
    try:
      is_file = path.exists() and not path.is_dir()
    except Exception as e:  # pylint: disable=broad-except
      raise errors.WorkdirError(
          f"--workdir {path} cannot be looked up ({type(e).__name__}: "
          f"{' '.join(str(e).split())[:200]}).") from e
    if is_file:
      raise errors.WorkdirError(
          f"--workdir {path} is a file (an object), not a directory; pass a "
          "directory prefix.")
    return path
  if path.exists() and not path.is_dir():
    raise errors.WorkdirError(
        f"--workdir {path} is a file, not a directory; pass a directory "
        "(it is created if missing).")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise
    raise errors.WorkdirError(
        f"--workdir {path} cannot be created: {e.strerror or e}.") from e
  if not os.access(path, os.W_OK):
    raise errors.WorkdirError(f"--workdir {path} is not writable.")
  return path


def read_json(path) -> Optional[Any]:
  """The JSON value in `path` (local or URI), or None when it is missing or
  unreadable (a file cut short by a kill is treated as absent). For a URI,
  only a missing object or invalid JSON gives None: a failed request raises,
  so that a network error is not taken for "no such file"."""
  path = as_path(path)
  if is_remote(path):
    if not path.exists():
      return None
    try:
      return json.loads(path.read_text())
    except ValueError:
      return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def write_bytes(path, data: Union[bytes, str], *,
                make_parents: bool = False) -> AnyPath:
  """Writes a whole file so that a reader never sees half of it: locally a
  temporary file renamed over `path`; for a URI one object upload, which
  appears whole when it completes (object stores have no rename).

  Args:
    path: str or os.PathLike, local or a URI.
    data: bytes, or str (written as UTF-8).
    make_parents: create the missing parent folders of a local path (a URI
      needs none).

  Returns:
    `path` as a path (`as_path`).
  """
  path = as_path(path)
  if isinstance(data, str):
    data = data.encode("utf-8")
  if is_remote(path):
    path.write_bytes(data)
    return path
  if make_parents:
    path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)
  return path


def write_json(path, value: Any) -> None:
  """Writes JSON (indent 1) with `write_bytes`: a kill never leaves half a
  file behind."""
  write_bytes(path, json.dumps(value, indent=1, default=str))


# ---------------------------------------------------------------------------
# The workdir lock.
# ---------------------------------------------------------------------------

LOCK_NAME = "deepaa.lock"
# os.fspath(lock path) -> how many times this process holds it (re-entrant:
# the search job and its search_layers both lock the same workdir).
_HELD: Dict[str, int] = {}


def _process_start(pid: int) -> Optional[int]:
  """Start time of process `pid` in clock ticks after boot (Linux
  `/proc/<pid>/stat`, field 22), which tells a live holder from a later
  process that got its pid; None where there is no /proc."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      return int(f.read().rsplit(b")", 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _process_alive(pid: int, start: Optional[int]) -> bool:
  """True unless process `pid` (of this host) is gone or is another process
  than the one that started at `start`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's live process
  now = _process_start(pid)
  return start is None or now is None or now == start


def _gcs():
  """gcsfs's filesystem for generation preconditions, or None (gcsfs not
  installed)."""
  try:
    import fsspec  # pylint: disable=g-import-not-at-top
    return fsspec.filesystem("gs")
  except (ImportError, ValueError):
    return None


class WorkdirLock:
  """A lock on a workdir, held while a job writes it (a context manager).

  The lock is the file `<workdir>/deepaa.lock`, a JSON record of the holder:
  host, pid, the pid's start time and the job's start time. It is created
  atomically: locally a complete temporary file hard-linked to the name
  (`link` fails if the name exists); on `gs://` an object written with the
  precondition `ifGenerationMatch=0` (gcsfs, `mode="create"`), which fails
  if the object exists. Other URIs (and gs:// without gcsfs) fall back to a
  check then a write, which two runs starting in the same second can both
  pass.

  A lock whose holder is on this host and whose process is gone (or its pid
  now belongs to a later process) is stale: it is taken over with one
  warning line. A lock held by a live process, or by a process on another
  host (which cannot be checked), refuses the run with one line naming the
  holder and the file to delete if that run is gone. The lock is released
  (deleted) on exit, on errors too. Only process 0 of a multi-host run
  locks (every process runs the same command on the same workdir).
  Re-entrant within a process.

  Args:
    workdir: the workdir (local or a URI); it must exist (`prepare_workdir`).
    job: what holds it ("training", "search", ...), for the messages.

  Raises:
    errors.WorkdirError: (on entering) another live run holds the workdir.
  """

  def __init__(self, workdir, job: str):
    self.path = as_path(workdir) / LOCK_NAME
    self.job = job
    self._key = os.fspath(self.path)
    self._record = None

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    if self._key not in _HELD:
      self._acquire()
    _HELD[self._key] = _HELD.get(self._key, 0) + 1
    return self

  def __exit__(self, *unused) -> bool:
    if self._key in _HELD:
      _HELD[self._key] -= 1
      if not _HELD[self._key]:
        del _HELD[self._key]
        self._release()
    return False

  # The record and the three storage cases.

  def _new_record(self) -> bytes:
    pid = os.getpid()
    self._record = {
        "host": socket.gethostname(), "pid": pid,
        "pid_start": _process_start(pid),
        "start": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "job": self.job}
    return json.dumps(self._record).encode()

  def _create(self, data: bytes) -> bool:
    """Creates the lock with `data`; False if it exists."""
    if not is_remote(self.path):
      tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
      tmp.write_bytes(data)
      try:
        os.link(tmp, self.path)
        return True
      except FileExistsError:
        return False
      finally:
        tmp.unlink()
    fs = _gcs() if os.fspath(self.path).startswith("gs://") else None
    if fs is not None:
      try:
        fs.pipe_file(self._key, data, mode="create")  # ifGenerationMatch=0
        return True
      except FileExistsError:
        return False
    if self.path.exists():
      return False
    self.path.write_bytes(data)
    return True

  def _read(self) -> Tuple[Optional[bytes], Any]:
    """(content, version) of the lock; (None, None) when it is gone.
    `version` is the gs:// generation (else None)."""
    try:
      if is_remote(self.path) and self._key.startswith("gs://") and _gcs():
        fs = _gcs()
        fs.invalidate_cache(self._key)
        generation = fs.info(self._key).get("generation")
        return fs.cat_file(self._key), generation
      return self.path.read_bytes(), None
    except FileNotFoundError:
      return None, None

  def _remove(self, content: bytes, version: Any) -> bool:
    """Removes the lock if it still holds `content` (gs://: `version`);
    False if another run has replaced it meanwhile."""
    if not is_remote(self.path):
      aside = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.old")
      try:
        os.rename(self.path, aside)  # atomic: one remover wins
      except FileNotFoundError:
        return False
      if aside.read_bytes() != content:  # a new holder's lock: put it back
        with contextlib.suppress(FileExistsError):
          os.link(aside, self.path)
        aside.unlink()
        return False
      aside.unlink()
      return True
    fs = _gcs() if self._key.startswith("gs://") else None
    if fs is not None and version is not None:
      from fsspec import asyn  # pylint: disable=g-import-not-at-top
      bucket, key, _ = fs.split_path(self._key)
      delete = fs._call  # pylint: disable=protected-access
      try:  # only the generation that was judged stale
        asyn.sync(fs.loop, delete, "DELETE", "b/{}/o/{}", bucket, key,
                  ifGenerationMatch=str(version))
      except (FileExistsError, FileNotFoundError):
        return False
      fs.invalidate_cache(self._key)
      return True
    try:
      self.path.unlink()
    except FileNotFoundError:
      return False
    return True

  # Acquire and release.

  def _acquire(self) -> None:
    data = self._new_record()
    for _ in range(5):
      if self._create(data):
        return
      content, version = self._read()
      if content is None:  # released meanwhile
        continue
      try:
        holder = json.loads(content)
        if not isinstance(holder, dict):
          raise ValueError(holder)
      except ValueError:
        holder = {}
      who = (f"{holder.get('job', 'a run')} started "
             f"{holder.get('start', '?')} by pid {holder.get('pid', '?')} on "
             f"host {holder.get('host', '?')}")
      stale = (holder.get("host") == socket.gethostname() and
               isinstance(holder.get("pid"), int) and
               not _process_alive(holder["pid"], holder.get("pid_start")))
      if not stale:
        raise errors.WorkdirError(
            f"--workdir {self.path.parent} is in use by another run ({who}; "
            f"lock file {self.path}). Wait for it to end or use another "
            f"--workdir; if that run is gone (e.g. killed on another "
            f"machine), delete {self.path} and rerun.")
      if self._remove(content, version):
        logging.warning("Taking over the stale lock %s: its run (%s) is "
                        "gone.", self.path, who)
    raise errors.WorkdirError(
        f"--workdir {self.path.parent}: the lock {self.path} keeps changing "
        "(several runs starting at once?); rerun when only one is left.")

  def _release(self) -> None:
    try:
      content, version = self._read()
      if content is not None and json.loads(content) == self._record:
        self._remove(content, version)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Could not remove the lock %s (%s: %s); delete it "
                      "before the next run.", self.path, type(e).__name__,
                      " ".join(str(e).split())[:160])


def workdir_lock(workdir, job: str) -> WorkdirLock:
  """`WorkdirLock(workdir, job)`: `with utils.workdir_lock(w, "training"):`."""
  return WorkdirLock(workdir, job)


# ---------------------------------------------------------------------------
# SIGTERM and preemption.
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt():
  """Within the block, SIGTERM (a scheduler's stop, a TPU VM's preemption
  notice) raises `KeyboardInterrupt` in the main thread, as Ctrl-C does, so
  that a job saves its current step and says how to resume. Later SIGTERMs
  are ignored while that save runs. The previous handler is restored on
  leaving.

  Nothing is installed outside the main thread, nor in a multi-process run:
  there JAX's preemption service owns SIGTERM and every process saves the
  same step (`preemption_reached`).

  Yields:
    dict with "received": bool, True once a SIGTERM arrived.
  """
  state = {"received": False}
  if (threading.current_thread() is not threading.main_thread() or
      jax.process_count() > 1):
    yield state
    return

  def handler(signum, frame):
    del signum, frame
    if not state["received"]:
      state["received"] = True
      raise KeyboardInterrupt("SIGTERM")

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield state
  finally:
    signal.signal(signal.SIGTERM, previous)


def preemption_reached(step: int) -> bool:
  """True at the step where every process of a multi-process run saves
  after one of them got a preemption notice (SIGTERM): JAX's
  `multihost_utils.reached_preemption_sync_point`, to be called by every
  process at every step. False in a single-process run (SIGTERM is
  `sigterm_as_interrupt`'s there) and when JAX's preemption service is off.
  """
  if jax.process_count() == 1:
    return False
  try:
    return bool(multihost_utils.reached_preemption_sync_point(int(step)))
  except RuntimeError:  # jax_enable_preemption_service is off
    return False


# ---------------------------------------------------------------------------
# Run identity.
# ---------------------------------------------------------------------------


def hash_array(h, what: str, array) -> None:
  """Feeds `what`, dtype, shape and the raw bytes of `array` into the
  hashlib object `h` (little-endian: the same digest on any host)."""
  array = np.ascontiguousarray(np.asarray(array))
  if array.dtype.byteorder == ">":
    array = array.astype(array.dtype.newbyteorder("<"))
  h.update(f"{what} {array.dtype.str} {array.shape}\n".encode())
  if array.size:  # memoryview cannot cast an empty array (a 0-layer policy)
    h.update(memoryview(array).cast("B"))


def content_hash(tree: PyTree, *, label: str = "") -> str:
  """16 hex digits: blake2b of `label` and every leaf of a pytree of arrays
  (host or device), for run identity (a policy, a pretrained network)."""
  h = hashlib.blake2b(digest_size=8)
  h.update(label.encode())
  for i, leaf in enumerate(jax.tree.leaves(jax.device_get(tree))):
    hash_array(h, str(i), leaf)
  return h.hexdigest()


def flat_config(config) -> Dict[str, Any]:
  """{"train.batch_size": 128, ...}: the config flattened, JSON-ready."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  flat = traverse_util.flatten_dict(d, sep=".")
  return json.loads(json.dumps(
      {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()},
      default=str))


def run_identity(config, *, ignore: Sequence[str] = (),
                 **content: str) -> Dict[str, Any]:
  """What must match for a checkpoint to be resumed: every config field that
  changes results (all but `ignore`, e.g. logging periods and file paths,
  whose CONTENT is compared instead) and content fingerprints (`content`:
  data=..., policy=...)."""
  fields = {k: v for k, v in flat_config(config).items()
            if not any(k == p or k.startswith(p + ".") for p in ignore)}
  return {"config": fields, **{k: str(v) for k, v in content.items()}}


def identity_differences(old: Mapping[str, Any],
                         new: Mapping[str, Any]) -> List[str]:
  """Human-readable differences between two `run_identity` values."""
  diffs = []
  for key in sorted(set(old) | set(new)):
    if key == "config":
      a, b = old.get("config", {}), new.get("config", {})
      diffs += [f"config.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    elif old.get(key) != new.get(key):
      diffs.append(f"{key} content: {old.get(key)} -> {new.get(key)}")
  return diffs


def check_identity(saved: Optional[Mapping[str, Any]],
                   current: Mapping[str, Any], workdir) -> None:
  """`errors.ResumeRefusedError` when a checkpoint belongs to another run."""
  if saved is None:
    return
  diffs = identity_differences(saved, current)
  if diffs:
    raise errors.ResumeRefusedError(
        f"{workdir} holds a run with different settings or data, so it is not "
        f"resumed: {'; '.join(diffs)}. To start afresh, use a new --workdir "
        "(or delete this one).")


# ---------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------


def move_tree(source, target) -> None:
  """Moves the folder `source` to `target` (its parent is created). Locally
  one rename (`shutil.move`); for a URI every file is copied, then `source`
  is deleted (object stores rename nothing, epath's rename of a "folder"
  needs the target's parent to exist, which an empty prefix never does)."""
  source, target = as_path(source), as_path(target)
  if not is_remote(source):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(os.fspath(source), os.fspath(target))
    return
  # fsspec's walk names folders without the scheme: compare without it.
  root = os.fspath(source).split("://", 1)[-1].rstrip("/")
  for folder, _, files in source.walk():
    relative = os.fspath(folder).split("://", 1)[-1].rstrip("/")[len(root):]
    for name in files:
      (source / relative.strip("/") / name).copy(
          target / relative.strip("/") / name)
  source.rmtree()


PARTIAL_CHECKPOINT = ".orbax-checkpoint-tmp"


def remove_partial_checkpoints(root) -> List[str]:
  """Deletes the temporary folders of checkpoints that never committed
  (`*.orbax-checkpoint-tmp*`, left by a full disk or a kill mid-save)
  anywhere under the local folder `root`; returns their paths. A URI is
  left alone (orbax commits there with a marker file, not a rename)."""
  if is_remote(root) or not as_path(root).is_dir():
    return []
  removed = []
  for folder, names, _ in os.walk(as_path(root)):
    for name in list(names):
      if PARTIAL_CHECKPOINT in name:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        removed.append(os.path.join(folder, name))
        names.remove(name)
  return removed


class Checkpointer:
  """Orbax checkpoints of one job: the state and a JSON `meta` record (run
  identity, last metrics), saved together (`ocp.args.Composite`) and
  asynchronously; `should_save(step)` follows `save_interval_steps`.

  `restore_latest` falls back past a checkpoint that does not restore (a
  truncated file, a kill mid-write): it says so in one line, moves the bad
  step aside to `<directory>_corrupt/<step>` for inspection and tries the
  next older one.
  """

  def __init__(self, directory, *, keep: int = 2,
               save_interval_steps: int = 0):
    directory = as_path(directory)
    # orbax takes an epath.Path: a gs:// directory is written through
    # tensorstore's gcs driver and committed with a marker file, not a rename.
    self.directory = directory if is_remote(directory) else directory.resolve()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            save_interval_steps=max(int(save_interval_steps), 0) or 2**62,
            enable_async_checkpointing=True))

  def should_save(self, step: int) -> bool:
    return bool(self.manager.should_save(step))

  def all_steps(self) -> List[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any]) -> None:
    """Saves (asynchronously) unless `step` is already saved. Host numpy
    leaves are copied first: the caller may change its arrays in place."""
    if step in self.manager.all_steps():
      return
    state = jax.tree.map(
        lambda x: np.array(x) if isinstance(x, np.ndarray) else x, state)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(json.loads(json.dumps(meta, default=str)))),
                      force=True)

  def restore(self, step: int, like: PyTree, *,
              with_sharding: bool = False) -> Tuple[PyTree, Dict[str, Any]]:
    """(state shaped like `like`, meta) of `step`; with `with_sharding`
    each array is restored with `like`'s sharding."""
    def abstract(x):
      struct = ocp.utils.to_shape_dtype_struct(
          x if hasattr(x, "dtype") else np.asarray(x))
      if with_sharding and hasattr(x, "sharding"):
        struct = jax.ShapeDtypeStruct(struct.shape, struct.dtype,
                                      sharding=x.sharding)
      return struct
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree.map(abstract, like)),
        meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"] or {})

  def restore_latest(self, like: PyTree, *, with_sharding: bool = False):
    """(step, state, meta) of the newest checkpoint that restores, or
    (None, None, None) when there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, like, with_sharding=with_sharding)
        return step, state, meta
      except Exception as e:  # pylint: disable=broad-except
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
          raise
        aside = self.directory.parent / (self.directory.name + "_corrupt")
        target = aside / f"{step}.{int(time.time())}"
        move_tree(self.directory / str(step), target)
        self.manager.reload()
        logging.warning(
            "Checkpoint %d in %s does not restore (%s: %s); moved it to %s "
            "and falling back to the previous one.", step, self.directory,
            type(e).__name__, " ".join(str(e).split())[:160], target)
    return None, None, None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# ---------------------------------------------------------------------------
# Metrics and progress.
# ---------------------------------------------------------------------------


# Remote JSONL writers with records not yet uploaded: uploaded at exit too
# (main's error boundary exits through sys.exit, which runs atexit hooks).
_UNFLUSHED = weakref.WeakSet()


@atexit.register
def _flush_remote_jsonl() -> None:
  for writer in list(_UNFLUSHED):
    try:
      writer.flush()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Could not upload %s at exit: %s", writer.path, e)


class JsonlWriter:
  """A CLU MetricWriter (its interface, duck-typed: CLU imports TensorFlow,
  which must not happen before `main` hides the GPUs from it) that writes
  one JSON line per `write_scalars` call: {step_key: step, **scalars}.
  Non-scalar summaries are ignored (they go to TensorBoard).
  `truncate_after(step)` drops the records a resumed run will write again.

  A local file is appended to, line by line. An object store (a `gs://`
  path) has no append: the writer keeps the file's lines in memory and
  uploads the whole file again on `flush()`/`close()`, at exit, and at a
  `write_scalars` when `upload_every_s` seconds have passed since the last
  upload. A kill (not an error or Ctrl-C, which exit normally) can thus
  lose the last `upload_every_s` seconds of records; checkpoints and results
  are not affected.
  """

  def __init__(self, path, *, step_key: str = "step",
               upload_every_s: float = 30.0):
    self.path = as_path(path)
    self.step_key = step_key
    self.upload_every_s = float(upload_every_s)
    self._lines = None  # remote: the file's lines (read at first use)
    self._dirty = False
    self._uploaded_at = time.monotonic()

  def _remote_lines(self) -> List[str]:
    if self._lines is None:
      self._lines = (self.path.read_text().splitlines()
                     if self.path.exists() else [])
    return self._lines

  def truncate_after(self, step: Optional[int]) -> None:
    """Keeps the records with step <= `step` (None: none, a fresh run)."""
    remote = is_remote(self.path)
    if remote:
      lines = list(self._remote_lines())
    elif self.path.exists():
      lines = self.path.read_text().splitlines()
    else:
      return
    kept, cut, before = [], [], None  # cut: (last step before, next after)
    if step is not None:
      for line in lines:
        try:
          record = json.loads(line)
          at = int(record.get(self.step_key, 0))
        except (ValueError, TypeError, AttributeError):  # cut short
          cut.append([before, None])
          continue
        if cut and cut[-1][1] is None:
          cut[-1][1] = at
        before = at
        if at <= step:
          kept.append(line)
    for after, upto in cut:  # records lost before the resumed step: say so
      if after is not None and after >= step:
        continue  # beyond the checkpoint: written again
      first = 1 if after is None else after + 1
      lost = (f"the records of steps {first} to {step} are lost"
              if upto is None or upto > step else
              f"the record(s) between step {first - 1} and step {upto} are "
              "lost")
      logging.warning("%s has a line cut short (a kill or a full disk "
                      "mid-write): %s; the log continues after step %d.",
                      self.path, lost, step)
    if kept != lines:  # a finished run's rerun leaves the file untouched
      if remote:
        self._lines = kept
        self._upload()
      else:
        self.path.write_text("".join(l + "\n" for l in kept))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {self.step_key: int(step)}
    record.update({k: v if isinstance(v, (int, str)) else float(v)
                   for k, v in scalars.items()})
    if not is_remote(self.path):
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
      return
    self._remote_lines().append(json.dumps(record))
    self._dirty = True
    _UNFLUSHED.add(self)
    if time.monotonic() - self._uploaded_at >= self.upload_every_s:
      self._upload()

  def _upload(self) -> None:
    """The whole file in one object write (remote paths)."""
    write_bytes(self.path, "".join(l + "\n" for l in self._remote_lines()))
    self._dirty = False
    self._uploaded_at = time.monotonic()
    _UNFLUSHED.discard(self)

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    """Uploads the records not yet uploaded (remote paths; local lines are
    written at once)."""
    if self._dirty:
      self._upload()

  def close(self):
    self.flush()


class GuardedWriter:
  """A CLU MetricWriter that wraps another (TensorBoard's) and survives it:
  the first failure of any call (storage out of reach: TensorFlow's GCS
  client retries for minutes, then raises `AbortedError`) is one warning
  line, and the writer is off for the rest of the run. The JSONL log and
  the checkpoints do not depend on it.

  Args:
    create: () -> the wrapped writer (called at once; a failure there is
      the first failure).
    where: the logdir, for the message.
  """

  def __init__(self, create, where: str):
    self.where = where
    self._writer = None
    self._writer = self._guard(create)

  def _guard(self, fn):
    """fn()'s value; None after a failure, said in one warning line (the
    writer is off from then on)."""
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      self._writer = None
      logging.warning(
          "TensorBoard events cannot be written to %s (%s: %s); continuing "
          "without them (the metrics JSONL log and the checkpoints are "
          "kept).", self.where, type(e).__name__,
          " ".join(str(e).split())[:160])
      return None

  def __getattr__(self, name):
    if not name.startswith("write_") and name not in ("flush", "close"):
      raise AttributeError(name)

    def call(*args, **kwargs):
      if self._writer is not None:
        self._guard(lambda: getattr(self._writer, name)(*args, **kwargs))
    return call


def metric_writer(logdir, jsonl_path, *, step_key: str = "step"):
  """(writer, jsonl, tensorboard): one `write_scalars` call goes to the JSONL
  file (process 0), TensorBoard and the log (CLU's default writer). The
  JSONL writer is returned for its `truncate_after`; the TensorBoard writer
  for `ReportProgress` (steps/s), which should not add lines to the JSONL.
  TensorBoard is a `GuardedWriter`: a storage failure there is one warning
  line, not the end of the run."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  main_process = jax.process_index() == 0
  # os.fspath keeps a URI whole (TensorFlow's filesystem writes gs:// events).
  where = os.fspath(as_path(logdir))
  tensorboard = GuardedWriter(
      lambda: metric_writers.create_default_writer(
          where, just_logging=not main_process), where)
  jsonl = JsonlWriter(jsonl_path, step_key=step_key)
  writers = [tensorboard] + ([jsonl] if main_process else [])
  return metric_writers.MultiWriter(writers), jsonl, tensorboard


def progress_reporter(total: int, writer, every_steps: int):
  """CLU's ReportProgress: steps/s and ETA every `every_steps` steps."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  return periodic_actions.ReportProgress(
      num_train_steps=total, writer=writer, every_steps=max(1, every_steps))


def resume_banner(what: str, workdir, detail: str) -> None:
  """A loud warning that a job resumes from a checkpoint, not from scratch."""
  bar = "=" * 72
  logging.warning(
      "\n%s\nRESUMING %s from %s\n%s\nTo start afresh, use a new --workdir "
      "or delete this one.\n%s", bar, what, workdir, detail, bar)


def peak_memory_bytes() -> int:
  """Peak device memory (accelerators) or peak RSS of this process (CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      return int(stats["peak_bytes_in_use"])
  except Exception:  # pylint: disable=broad-except
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------
# Quiet logs.
# ---------------------------------------------------------------------------

# Below WARNING, only these sources reach the console by default: the
# project's own progress and results, and CLU's steps/s + ETA notes.
_VISIBLE_INFO = (os.sep + "deepaa_jax" + os.sep,
                 os.sep + "experiments" + os.sep,
                 os.sep + os.path.join("clu", "platform") + os.sep)


_DISK_FULL = ("No space left on device", "[Errno 28]")


def _about_disk_full(record: logging_lib.LogRecord) -> bool:
  text = record.getMessage()
  if record.exc_info and record.exc_info[1] is not None:
    text += " " + str(record.exc_info[1])
  return any(s in text for s in _DISK_FULL)


class _ProjectInfoOnly(logging_lib.Filter):
  """Passes WARNING and above from anywhere, INFO only from `_VISIBLE_INFO`.
  A library's record about a full disk is dropped: orbax's and asyncio's
  threads log one traceback per failed write (hundreds of lines), and
  `main` ends a full disk with one line of its own."""

  def filter(self, record):
    project = any(s in record.pathname for s in _VISIBLE_INFO)
    if record.levelno >= logging_lib.WARNING:
      return project or not _about_disk_full(record)
    return project


def quiet_library_logs(verbose: bool = False) -> None:
  """Library INFO logs (orbax: ~20 lines per checkpoint; CLU's scalar log;
  TensorFlow) off, the job's own INFO lines kept. `verbose` brings all back.

  Installs one filter on the absl handler (idempotent).
  """
  handler = absl_logging.get_absl_handler()
  for f in list(handler.filters):
    if isinstance(f, _ProjectInfoOnly):
      handler.removeFilter(f)
  if not verbose:
    handler.addFilter(_ProjectInfoOnly())
