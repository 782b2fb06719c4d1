"""Tests of deepaa_jax/streaming.py: the tf.data path for datasets that do not
fit in memory (ImageNet). Real prepared TFDS datasets are written with
`tfds.dataset_builders.store_as_tfds_dataset`; ImageNet itself is TFDS's mock
`imagenet2012` (`tfds.testing.mock_data`: the real TFDS reading code with
random JPEGs of 5..50 px)."""

import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import streaming
from deepaa_jax import train
from tests.conftest import mock_tfds

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compiles")

NUM_TRAIN, NUM_VAL = 20, 10


def _input_config(name, data_dir, **overrides):
  config = input_pipeline.default_input_config()
  config.update(dict(name=name, source="tfds", data_dir=str(data_dir),
                     pipeline="stream", image_size=16, resize_size=16,
                     shuffle_buffer=8, stats_images=NUM_TRAIN))
  config.update(overrides)
  return config


def _images(count, seed):
  rng = np.random.default_rng(seed)
  shapes = [(int(rng.integers(16, 40)), int(rng.integers(16, 40)))
            for _ in range(count)]
  return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
  """A prepared TFDS dataset 'deepaa_stream' (PNG, varied sizes, label i =
  example i, file order kept) and its images."""
  data_dir = tmp_path_factory.mktemp("tfds")
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=NUM_TRAIN)})
  train_images, val_images = _images(NUM_TRAIN, 0), _images(NUM_VAL, 1)
  tfds.dataset_builders.store_as_tfds_dataset(
      name="deepaa_stream", version="1.0.0", features=features,
      split_datasets={
          "train": [(i, {"image": im, "label": i})
                    for i, im in enumerate(train_images)],
          "validation": [(i, {"image": im, "label": i})
                         for i, im in enumerate(val_images)]},
      data_dir=str(data_dir), disable_shuffling=True)
  return data_dir, train_images, val_images


def _labels(batches):
  return np.concatenate([b["label"] for b in batches])


# ---------------------------------------------------------------------------
# The S x S rule.
# ---------------------------------------------------------------------------


def test_resize_center_crop_is_the_torchvision_crop():
  rng = np.random.default_rng(0)
  # No resize (shorter side already 41): exactly a crop at torchvision's
  # round-half-even offsets, (41 - 32) / 2 = 4.5 -> 4, (63 - 32) / 2 -> 16.
  image = rng.integers(0, 256, (41, 63, 3), dtype=np.uint8)
  out = streaming.resize_center_crop(tf, tf.constant(image), 41, 32).numpy()
  np.testing.assert_array_equal(out, image[4:36, 16:48])
  # Portrait: the long side is int(size * long / short) = int(20 * 50 / 30).
  image = np.full((50, 30, 3), 77, np.uint8)
  out = streaming.resize_center_crop(tf, tf.constant(image), 20, 16).numpy()
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, 77)  # constant stays constant
  # Downscaling averages (antialias): a 2x2 checkerboard of 0/254 halved in
  # size becomes mid-grey, not a sampled 0 or 254.
  board = np.kron(np.indices((16, 16)).sum(0) % 2, np.ones((2, 2)))
  board = np.repeat((board * 254).astype(np.uint8)[..., None], 3, -1)
  out = streaming.resize_center_crop(tf, tf.constant(board), 16, 16).numpy()
  assert 90 < out[4:12, 4:12].mean() < 164
  assert streaming.default_resize(224) == 256


# ---------------------------------------------------------------------------
# A prepared dataset.
# ---------------------------------------------------------------------------


def test_open_sizes_classes_and_cached_statistics(stored, tmp_path, monkeypatch):
  data_dir, _, _ = stored
  ds = streaming.open_streaming(_input_config("deepaa_stream", data_dir),
                                stats_dir=tmp_path)
  assert (ds.train.size, ds.test.size) == (NUM_TRAIN, NUM_VAL)
  assert ds.test.spec == "validation" and ds.num_classes == NUM_TRAIN
  assert ds.image_shape == (16, 16, 3)
  # No published constants: the channel statistics of the S x S images.
  pool = ds.take(NUM_TRAIN)
  np.testing.assert_array_equal(pool.labels, np.arange(NUM_TRAIN))
  x = pool.images.astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, x.mean((0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(ds.std, x.std((0, 1, 2)), rtol=1e-6)
  cached = json.loads((tmp_path / "input_stats.json").read_text())
  assert cached["fingerprint"] == ds.fingerprint()
  # Reopening reads the cache: nothing is decoded.
  monkeypatch.setattr(streaming.StreamingDataset, "take",
                      lambda *a, **k: pytest.fail("statistics recomputed"))
  again = streaming.open_streaming(_input_config("deepaa_stream", data_dir),
                                   stats_dir=tmp_path)
  assert again.mean == ds.mean and again.fingerprint() == ds.fingerprint()
  # Another S is another dataset for run identity.
  other = dataclasses.replace(ds, image_size=8)
  assert other.fingerprint() != ds.fingerprint()


def test_epoch_order_is_seeded_and_resumes_exactly(stored):
  data_dir, _, _ = stored
  ds = streaming.open_streaming(_input_config("deepaa_stream", data_dir))
  full = list(ds.train_batches(4, seed=0, epoch=0))
  assert len(full) == ds.steps_per_epoch(4) == 5
  assert all(b["image"].shape == (4, 16, 16, 3) and
             b["image"].dtype == np.uint8 for b in full)
  np.testing.assert_array_equal(np.sort(_labels(full)), np.arange(NUM_TRAIN))
  assert not np.array_equal(_labels(full), np.arange(NUM_TRAIN))  # shuffled
  # Same seed and epoch: the same batches; resuming at step 2 yields exactly
  # the batches 2.. of the uninterrupted epoch.
  again = list(ds.train_batches(4, seed=0, epoch=0))
  tail = list(ds.train_batches(4, seed=0, epoch=0, start_step=2))
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert len(tail) == 3
  for a, b in zip(full[2:], tail):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Another epoch or seed: another order.
  for kwargs in ({"seed": 0, "epoch": 1}, {"seed": 1, "epoch": 0}):
    other = _labels(ds.train_batches(4, **kwargs))
    assert not np.array_equal(other, _labels(full))
  assert list(ds.train_batches(4, seed=0, epoch=0, start_step=5)) == []


def test_each_process_reads_its_own_share(stored):
  data_dir, _, _ = stored
  ds = streaming.open_streaming(_input_config("deepaa_stream", data_dir))
  shares = [list(ds.train_batches(4, seed=0, epoch=0, process_index=p,
                                  process_count=2)) for p in range(2)]
  assert [len(s) for s in shares] == [ds.steps_per_epoch(4, 2)] * 2 == [5, 5]
  assert all(b["label"].shape == (2,) for s in shares for b in s)
  labels = [set(_labels(s).tolist()) for s in shares]
  assert not labels[0] & labels[1]  # disjoint shards
  assert labels[0] | labels[1] == set(range(NUM_TRAIN))


def test_eval_batches_in_file_order_padded(stored):
  data_dir, _, val_images = stored
  ds = streaming.open_streaming(_input_config("deepaa_stream", data_dir,
                                              resize_size=0))
  batches = list(ds.eval_batches(4))
  assert len(batches) == 3
  np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]),
                                [1] * NUM_VAL + [0] * 2)
  np.testing.assert_array_equal(_labels(batches)[:NUM_VAL], np.arange(NUM_VAL))
  # Example 0 is the TF resize + crop of the stored image.
  expected = streaming.resize_center_crop(
      tf, tf.constant(val_images[0]), ds.resize_size, 16).numpy()
  np.testing.assert_array_equal(batches[0]["image"][0], expected)
  # Two processes: equal batch counts (lockstep), every example once.
  shares = [list(ds.eval_batches(4, process_index=p, process_count=2))
            for p in range(2)]
  assert len(shares[0]) == len(shares[1])
  real = np.concatenate([_labels(s)[np.concatenate([b["mask"] for b in s])
                                    > 0] for s in shares])
  np.testing.assert_array_equal(np.sort(real), np.arange(NUM_VAL))


# ---------------------------------------------------------------------------
# Bad input: one line, naming the problem.
# ---------------------------------------------------------------------------


def _one_line(error):
  text = str(error)
  assert "\n" not in text and "Traceback" not in text
  return text


def test_not_prepared_and_missing_split(stored, tmp_path):
  data_dir, _, _ = stored
  with pytest.raises(errors.DatasetNotFoundError) as info:
    streaming.open_streaming(_input_config("deepaa_stream", tmp_path))
  assert str(tmp_path) in _one_line(info.value)
  with pytest.raises(errors.DataError, match="'nosuch'") as info:
    streaming.open_streaming(_input_config("deepaa_stream", data_dir,
                                           tfds_train_split="nosuch"))
  assert "tfds_train_split" in _one_line(info.value)


def _copy_dataset(stored, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  data_dir, _, _ = stored
  shutil.copytree(data_dir, tmp_path / "tfds")
  return tmp_path / "tfds"


def test_corrupt_record_is_one_line(stored, tmp_path):
  data_dir = _copy_dataset(stored, tmp_path)
  (record,) = sorted(data_dir.glob("deepaa_stream/1.0.0/*train.tfrecord*"))
  raw = bytearray(record.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 64] = bytes(64)  # breaks a record's CRC
  record.write_bytes(bytes(raw))
  with pytest.raises(errors.DataError) as info:
    # (Opening reads the first images for the normalisation statistics.)
    ds = streaming.open_streaming(_input_config("deepaa_stream", data_dir))
    list(ds.train_batches(4, seed=0, epoch=0))
  text = _one_line(info.value)
  assert "deepaa_stream" in text and "'train'" in text
  assert "corrupt" in text or "cannot be decoded" in text


def test_undecodable_image_is_one_line(tmp_path):
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=2)})
  good = np.zeros((20, 20, 3), np.uint8)
  examples = [(i, {"image": good, "label": 0}) for i in range(3)]
  examples.append((3, {"image": io.BytesIO(b"\xff\xd8 not a jpeg"),
                       "label": 1}))
  tfds.dataset_builders.store_as_tfds_dataset(
      name="deepaa_badimage", version="1.0.0", features=features,
      split_datasets={"train": examples, "test": examples[:1]},
      data_dir=str(tmp_path), disable_shuffling=True)
  ds = streaming.open_streaming(_input_config(
      "deepaa_badimage", tmp_path, stats_images=1))
  with pytest.raises(errors.DataError) as info:
    list(ds.train_batches(2, seed=0, epoch=0))
  text = _one_line(info.value)
  assert "deepaa_badimage" in text and "examples" in text


# ---------------------------------------------------------------------------
# Mock ImageNet: open, train, kill, resume.
# ---------------------------------------------------------------------------


def _imagenet_config(tmp_path, policy_path):
  config = config_lib.load_config_file(REPO / "configs" /
                                       "imagenet_resnet50.py")
  config.policy.path = policy_path  # imagenet_1, or a stand-in without ../shared
  config.model.name = "resnet18_w4"
  config.input.update(dict(data_dir=str(tmp_path / "tfds"), image_size=32,
                           resize_size=0, shuffle_buffer=16))
  config.train.update(dict(num_epochs=0, num_steps=3, batch_size=8,
                           eval_batch_size=16, warmup_epochs=0.0,
                           learning_rate=0.05, checkpoint_every_steps=1,
                           log_every_steps=1, bf16=False,
                           eval_every_epochs=0))
  return config


def test_imagenet_trains_streamed_and_resumes_exactly(tmp_path, monkeypatch,
                                                     imagenet_policy):
  config = _imagenet_config(tmp_path, imagenet_policy)
  with mock_tfds(40, tmp_path / "tfds"):
    ds = streaming.open_dataset(config.input)
    assert streaming.is_streaming(ds) and ds.num_classes == 1000
    assert ds.mean == input_pipeline.IMAGENET_MEAN
    straight, m = train.train(config, tmp_path / "a")
    assert m["complete"] and 0 <= m["test_accuracy"] <= m["test_accuracy_top5"]
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["dataset"]["pipeline"] == "stream"
    assert results["dataset"]["test_images"] == 40
    # A corrupt record at step 2: one DataError, step 1 kept on disk.
    real = streaming.StreamingDataset.train_batches

    def failing(self, *args, **kwargs):
      for i, batch in enumerate(real(self, *args, **kwargs)):
        if i == 1:
          raise errors.DataError("deepaa: a corrupt record (injected)")
        yield batch
    monkeypatch.setattr(streaming.StreamingDataset, "train_batches", failing)
    with pytest.raises(errors.DataError, match="stopped at step 1; saved"):
      train.train(config, tmp_path / "b")
    # The rerun resumes at step 1 and ends where the straight run did.
    monkeypatch.setattr(streaming.StreamingDataset, "train_batches", real)
    resumed, m2 = train.train(config, tmp_path / "b")
    # Ctrl-C (a kill) while batch 4 is read (2 ahead of step 2, prefetch):
    # step 2 is saved, then resumed.
    def interrupted(self, *args, **kwargs):
      for i, batch in enumerate(real(self, *args, **kwargs)):
        if i == 3:
          raise KeyboardInterrupt
        yield batch
    monkeypatch.setattr(streaming.StreamingDataset, "train_batches",
                        interrupted)
    with pytest.raises(errors.Interrupted, match="saved at step 2"):
      train.train(config, tmp_path / "c")
    monkeypatch.setattr(streaming.StreamingDataset, "train_batches", real)
    killed, m3 = train.train(config, tmp_path / "c")
  assert (m2["resumed_from_step"], m3["resumed_from_step"]) == (1, 2)
  for run in (resumed, killed):
    for a, b in zip(jax.tree.leaves(straight.params),
                    jax.tree.leaves(run.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert m2["test_accuracy"] == m3["test_accuracy"] == m["test_accuracy"]
  assert m2["test_loss"] == m3["test_loss"] == m["test_loss"]


# ---------------------------------------------------------------------------
# Memory: never the whole dataset.
# ---------------------------------------------------------------------------

_RSS_SCRIPT = r"""
import resource, sys
import numpy as np
import tensorflow_datasets as tfds
from deepaa_jax import input_pipeline, streaming
mode, n = sys.argv[1], int(sys.argv[2])
config = input_pipeline.default_input_config()
config.update(dict(name="imagenet2012", source="tfds", data_dir="/nonexistent",
                   pipeline="stream", image_size=96, shuffle_buffer=64))
def rss():  # current resident set, bytes
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize()
with tfds.testing.mock_data(num_examples=n):
  ds = streaming.open_streaming(config)
  for _ in ds.train_batches(32, seed=0, epoch=0):  # warm up TF's pipeline
    break
  base, high, seen = rss(), 0, 0
  if mode == "stream":
    for batch in ds.train_batches(32, seed=0, epoch=0):
      seen += batch["label"].size
      high = max(high, rss())
  else:  # what an in-memory load holds: the whole split at S x S
    held = ds.take(n)
    seen, high = held.size, rss()
print(seen, high - base)
"""


def _peak_growth(mode, n):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, mode, str(n)],
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  seen, growth = map(int, out.stdout.split()[-2:])
  return seen, growth


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                    reason="reads the resident set from /proc (Linux)")
def test_peak_rss_stays_flat_as_the_dataset_grows():
  small, large = 256, 2048
  seen_small, grow_small = _peak_growth("stream", small)
  seen_large, grow_large = _peak_growth("stream", large)
  assert (seen_small, seen_large) == (small, large)
  whole = large * 96 * 96 * 3  # 57 MB: the large split at S x S
  # Streaming 8x more examples costs (almost) no more memory...
  assert grow_large - grow_small < whole / 4, (grow_small, grow_large)
  # ...while holding the split does (the check can fail).
  _, grow_held = _peak_growth("memory", large)
  assert grow_held - grow_small > whole / 2, (grow_small, grow_held)


# ---------------------------------------------------------------------------
# The CLI, end to end.
# ---------------------------------------------------------------------------


def _mock_cli(config, tmp_path, *overrides, num_examples=24):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  data_dir = tmp_path / "tfds"
  return subprocess.run(
      [sys.executable, str(REPO / "tests" / "mock_tfds_main.py"),
       str(num_examples), str(data_dir), f"--config={config}",
       f"--workdir={tmp_path / 'run'}", f"--config.input.data_dir={data_dir}",
       *overrides], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)


_TINY_RESNET50_RUN = (
    "--config.model.name=resnet18_w4", "--config.input.image_size=32",
    "--config.input.shuffle_buffer=16", "--config.train.num_epochs=0",
    "--config.train.num_steps=2", "--config.train.batch_size=8",
    "--config.train.eval_batch_size=8", "--config.train.warmup_epochs=0",
    "--config.train.bf16=False", "--config.train.learning_rate=0.05",
    "--config.train.checkpoint_every_steps=1")


def test_cli_imagenet_resnet50_on_mock_imagenet(tmp_path, imagenet_policy):
  out = _mock_cli("configs/imagenet_resnet50.py", tmp_path,
                  *_TINY_RESNET50_RUN,
                  f"--config.policy.path={imagenet_policy}")
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["complete"] and results["step"] == 2
  assert results["policy"]["num_layers"] == 5
  assert results["dataset"]["name"] == "imagenet2012"
  assert results["dataset"]["pipeline"] == "stream"
  assert 0 <= results["test_accuracy"] <= results["test_accuracy_top5"] <= 1
  assert "test accuracy" in out.stderr  # the job's own log lines show
  # (Kill and resume: test_imagenet_trains_streamed_and_resumes_exactly.)


def test_cli_imagenet_not_prepared_is_one_line(tmp_path, imagenet_policy):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "deepaa_jax.main",
       "--config=configs/imagenet_resnet50.py", f"--workdir={tmp_path / 'r'}",
       f"--config.input.data_dir={tmp_path / 'empty'}",
       f"--config.policy.path={imagenet_policy}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  (line,) = [l for l in out.stderr.splitlines() if l.startswith("ERROR")]
  assert "imagenet2012" in line and str(tmp_path / "empty") in line
  assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------------
# configs/cifar10_stream_cpu.py (validated only; the run is in its docstring).
# ---------------------------------------------------------------------------


def test_cifar10_stream_cpu_config_validates(tmp_path):
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(REPO / "configs" /
                                       "cifar10_stream_cpu.py")
  # The official cifar_1 file is in ../shared; validation needs a file only.
  config.policy.path = str(policy_lib.save_official_npz(
      tmp_path / "policy.npz",
      policy_lib.baseline("standard", space_lib.cifar_space())))
  config_lib.validate(config)  # the CIFAR space on streamed data is accepted
  i = config.input
  assert (config.job, i.source, i.name, i.pipeline) == (
      "train", "tfds", "cifar10_jpeg64", "stream")
  assert streaming.wants_streaming(i)  # decided without opening anything
  # 64 x 64 JPEGs: the 256/224 rule for S = 56 is an identity resize.
  assert (i.image_size, i.resize_size) == (56, 64)
  assert streaming.default_resize(i.image_size) == i.resize_size
  assert config.policy.space == "cifar" and config.policy.kind == "official"
  # 50,000 images / 32 (drop_last): 1,562 steps per epoch, 2 epochs.
  assert config_lib.total_steps(config.train, 50000 // 32) == 3124
  config.input.source = "npz"  # streaming reads TFDS only
  with pytest.raises(errors.ConfigError, match="source=tfds"):
    config_lib.validate(config)
