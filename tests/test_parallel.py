"""Data parallelism: 8 forced CPU devices (and 2 processes) equal 1 device.

XLA's host device count is fixed when JAX starts, so every check runs in
subprocesses (`tests/parallel_worker.py`) with
`XLA_FLAGS=--xla_force_host_platform_device_count=N JAX_PLATFORMS=cpu`; the
one-device reference and the sharded run start together (two cores compile
at once). Per-example keys come from the global example index, so the runs
differ only by the floating-point order of cross-device reductions.

The two-process check uses `jax.distributed.initialize` on localhost with
the CPU backend's gloo collectives (the default of the pinned JAX 0.10.2:
`jax.config.jax_cpu_collectives_implementation == "gloo"`).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import CIFAR10_NPZ

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "parallel_worker.py"
TIMEOUT_S = 900


def _env(devices: int):
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return env


def _start(check, out, devices, *args):
  return subprocess.Popen(
      [sys.executable, str(WORKER), check, str(out), *args],
      env=_env(devices), cwd=str(REPO), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _wait(*procs):
  outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  for p, output in zip(procs, outputs):
    assert p.returncode == 0, output[-4000:]


def _run(check, out, devices, *args):
  _wait(_start(check, out, devices, *args))
  return dict(np.load(out))


def _load(path):
  with np.load(path) as data:
    return dict(data)


@pytest.mark.parametrize("stage,loop", [(1, "auto"), (2, "scan")])
def test_sharded_search_equals_one_device(stage, loop, tmp_path):
  """search_layer, 2 steps of 16 search images: 8 devices (2 images each,
  the sharded step; its chunk loop unrolled ("auto" = "host" on CPU) or a
  lax.scan) vs 1 device (the plain step with the CPU host loop)."""
  one, eight = tmp_path / "one.npz", tmp_path / "eight.npz"
  _wait(_start("search", one, 1, f"--stage={stage}"),
        _start("search", eight, 8, f"--stage={stage}", f"--loop={loop}"))
  one, eight = _load(one), _load(eight)
  assert int(one["device_count"]) == 1 and int(eight["device_count"]) == 8
  np.testing.assert_allclose(eight["logits"], one["logits"], rtol=1e-5,
                             atol=1e-6)
  diags = [k for k in one if k.startswith("diag_")]
  assert "diag_cos_sim" in diags and "diag_reward_std" in diags
  for k in diags:
    # expected_reward is ~1e-8 in stage 1 (sum_n p_n r_n = 0): atol.
    np.testing.assert_allclose(eight[k], one[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """The 16x16 four-class npz of test_train.py."""
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  labels = np.arange(64) % 4
  images = rng.integers(0, 64, (64, 16, 16, 3)) + 48 * labels[:, None, None,
                                                               None]
  test_labels = np.arange(20) % 4
  test = rng.integers(0, 64, (20, 16, 16, 3)) + 48 * test_labels[
      :, None, None, None]
  np.savez(path, train_images=images.astype(np.uint8), train_labels=labels,
           test_images=test.astype(np.uint8), test_labels=test_labels)
  return path


def _train_args(npz, workdir):
  return [f"--npz={npz}", f"--workdir={workdir}", "--ba_copies=2"]


@pytest.fixture(scope="module")
def one_device_training(tiny_data, tmp_path_factory):
  """3 steps of WRN-10-1, batch 8 x 2 BA copies, on one device."""
  d = tmp_path_factory.mktemp("one")
  return _run("train", d / "out.npz", 1, *_train_args(tiny_data, d / "w"))


def _assert_same_training(got, want):
  params = sorted(k for k in want if k.startswith("param_"))
  assert params and params == sorted(k for k in got if k.startswith("param_"))
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)
  np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(got["test_loss"], want["test_loss"], rtol=1e-5)


def test_sharded_training_equals_one_device(one_device_training, tiny_data,
                                            tmp_path):
  """train(): the batch and its BA copies over 8 devices (1 row each per
  copy), BN statistics over the global batch, replicated parameters."""
  got = _run("train", tmp_path / "out.npz", 8,
             *_train_args(tiny_data, tmp_path / "w"))
  assert int(got["device_count"]) == 8
  _assert_same_training(got, one_device_training)


@pytest.mark.skipif(not CIFAR10_NPZ.is_file(),
                    reason=f"validates configs/cifar10.py, whose data "
                    f"{CIFAR10_NPZ} is absent")
def test_bad_batch_for_the_devices_names_the_field(tmp_path):
  out = _run("errors", tmp_path / "out.npz", 8)
  messages = json.loads(str(out["messages"]))
  for name in ("validate_search", "step_settings"):
    assert messages[name].startswith(
        "config.search.num_images=12 must be divisible by the number of "
        "devices (8, jax.device_count())"), messages[name]
    assert "config.search.data_parallel=False" in messages[name]
  assert messages["validate_search_single"] == ""  # one device: no constraint
  assert messages["validate_train"].startswith(
      "config.train.batch_size=12 must be divisible by the number of devices "
      "(8"), messages["validate_train"]
  np.testing.assert_array_equal(out["rows"], [[0, 8], [0, 16]])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _restore_params(checkpoint):
  """The params leaves of an orbax TrainState checkpoint, on one device."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(checkpoint).item_metadata.tree)
  state = checkpointer.restore(checkpoint, abstract)
  return {f"param_{i}": np.asarray(x)
          for i, x in enumerate(jax.tree.leaves(state["params"]))}


def test_two_processes_train_like_one_device(one_device_training, tiny_data,
                                             tmp_path):
  """The CLI with --distributed in two CPU processes of 2 devices each (a
  4-device mesh): each process feeds its half of every batch, orbax saves
  from both, only process 0 writes the logs; the same parameters as one
  device."""
  workdir = tmp_path / "w"
  port = _free_port()
  overrides = [
      "--config.input.name=tiny", f"--config.input.npz_path={tiny_data}",
      "--config.input.train_subset=0", "--config.train.batch_size=8",
      "--config.train.eval_batch_size=16", "--config.train.num_steps=3",
      "--config.train.checkpoint_every_steps=2",
      "--config.train.log_every_steps=3", "--config.train.ba_copies=2"]
  env = dict(_env(2), JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # as the worker
  procs = [subprocess.Popen(
      [sys.executable, "-m", "deepaa_jax.main", "--config=configs/test.py",
       f"--workdir={workdir}", "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}", *overrides],
      env=env, cwd=str(REPO), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  _wait(*procs)
  results = json.loads((workdir / "results.json").read_text())
  assert results["num_devices"] == 4 and results["num_processes"] == 2
  assert results["config"]["train"]["ba_copies"] == 2
  got = _restore_params(workdir / "checkpoints" / "3" / "state")
  got.update(train_loss=results["train_loss"], test_loss=results["test_loss"])
  _assert_same_training(got, one_device_training)
  records = [json.loads(l) for l in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [3, 3]  # train, test; once each


def test_two_processes_search_like_one_device(tmp_path):
  """search_layer (stage 1) in two processes of 4 devices each, joined by
  jax.distributed.initialize: the 16 search images over 8 devices, the
  rewards gathered across processes; the same policy as one device."""
  coordinator = f"--coordinator=localhost:{_free_port()}"
  procs = [_start("search", tmp_path / f"out{i}.npz", 4, "--stage=1",
                  coordinator, "--num_processes=2", f"--process_id={i}")
           for i in range(2)]
  procs.append(_start("search", tmp_path / "one.npz", 1, "--stage=1"))
  _wait(*procs)
  one = _load(tmp_path / "one.npz")
  for i in range(2):
    got = _load(tmp_path / f"out{i}.npz")
    assert int(got["device_count"]) == 8 and int(got["process_count"]) == 2
    np.testing.assert_allclose(got["logits"], one["logits"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(got["diag_cos_sim"], one["diag_cos_sim"],
                               rtol=1e-5)


def test_process_batches_are_the_rows_of_the_global_batches(tiny_data):
  """Each process's input (`train._process_batches`) is its block of rows
  of `input_pipeline.batches`, in order, resumable mid-epoch."""
  from deepaa_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from deepaa_jax import train  # pylint: disable=g-import-not-at-top
  with np.load(tiny_data) as data:
    split = input_pipeline.Split(data["train_images"], data["train_labels"])
  for start in (0, 3):
    whole = list(input_pipeline.batches(split, 16, seed=1, epoch=2,
                                        start_step=start))
    halves = [list(train._process_batches(  # pylint: disable=protected-access
        split, 16, seed=1, epoch=2, start_step=start, rows=rows))
              for rows in (slice(0, 8), slice(8, 16))]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 4 - start
    for batch, first, second in zip(whole, *halves):
      for k in ("image", "label"):
        np.testing.assert_array_equal(
            np.concatenate([first[k], second[k]]), batch[k])
