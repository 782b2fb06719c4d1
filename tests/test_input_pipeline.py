"""Tests for deepaa_jax.input_pipeline."""

import importlib.util
import pathlib
import re
import time

import numpy as np
import pytest

from deepaa_jax import errors
from deepaa_jax import input_pipeline as ip
from deepaa_jax import utils
from experiments import prepare_tfds

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_NPZ = SHARED_DATA / "cifar10.npz"
EXACT_SUBSET_NPZ = SHARED_DATA / "cifar10_exact_subset.npz"

requires_data = pytest.mark.skipif(
    not CIFAR10_NPZ.is_file(),
    reason=f"offline CIFAR-10 data not present at {CIFAR10_NPZ}")
requires_tf = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None
    or importlib.util.find_spec("tensorflow_datasets") is None,
    reason="tensorflow / tensorflow_datasets not importable")


def _synthetic(n, num_classes=10, hw=(2, 2), seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8)
  labels = (np.arange(n) % num_classes).astype(np.int64)
  rng.shuffle(labels)
  return images, labels


def _split(n, num_classes=10, hw=(2, 2)):
  return ip.Split(*_synthetic(n, num_classes, hw))


def _config(**overrides):
  config = ip.default_input_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def _write_npz(path, n_train, n_test, num_classes=10, hw=(8, 8),
               label_names=True):
  tr_x, tr_y = _synthetic(n_train, num_classes, hw, seed=1)
  te_x, te_y = _synthetic(n_test, num_classes, hw, seed=2)
  arrays = dict(train_images=tr_x, train_labels=tr_y, test_images=te_x,
                test_labels=te_y)
  if label_names:
    arrays["label_names"] = np.array([f"c{i}" for i in range(num_classes)])
  np.savez(path, **arrays)
  return arrays


# ---------------------------------------------------------------------------
# Import hygiene.
# ---------------------------------------------------------------------------


def test_import_is_lazy():
  """Importing the package never imports TensorFlow/TFDS (which would grab
  GPU memory); they load only when a TFDS dataset is read."""
  import subprocess
  import sys
  code = ("import sys; import deepaa_jax, deepaa_jax.input_pipeline; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') "
          "if m in sys.modules]; assert not bad, bad")
  root = pathlib.Path(__file__).resolve().parents[1]
  subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


# ---------------------------------------------------------------------------
# from_arrays.
# ---------------------------------------------------------------------------


def test_from_arrays_ok():
  x, y = _synthetic(20, hw=(4, 4))
  ds = ip.from_arrays("cifar10", x, y, x[:5], y[:5])
  assert ds.num_classes == 10
  assert ds.image_shape == (4, 4, 3)
  assert ds.splits["train"].size == 20 and ds.splits["test"].size == 5
  assert ds.splits["train"].labels.dtype == np.int32
  assert ds.splits["train"].images.dtype == np.uint8
  assert ds.mean == ip.CIFAR_EVAL_MEAN and ds.std == ip.CIFAR_STD


def test_from_arrays_unknown_name_computes_stats():
  x = np.full((4, 2, 2, 3), 51, np.uint8)
  ds = ip.from_arrays("toy", x, [0, 1, 2, 1], x, [0, 0, 0, 0])
  assert ds.num_classes == 3
  np.testing.assert_allclose(ds.mean, [0.2] * 3, rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ("dtype", "uint8"),
    ("rank", "4-D NHWC"),
    ("channels", "4-D NHWC"),
    ("label_range", r"must lie in \[0, 10\)"),
    ("negative_label", r"must lie in \[0, 10\)"),
    ("length", "entries but there are"),
])
def test_from_arrays_validation(bad, match):
  x, y = _synthetic(8)
  tx, ty = x.copy(), y.copy()
  if bad == "dtype":
    x = x.astype(np.float32)
  elif bad == "rank":
    x = x[:, :, :, 0]
  elif bad == "channels":
    x = np.concatenate([x, x[..., :1]], axis=-1)
  elif bad == "label_range":
    y[0] = 10
  elif bad == "negative_label":
    ty[0] = -1
  elif bad == "length":
    y = y[:-1]
  with pytest.raises(ValueError, match=match):
    ip.from_arrays("cifar10", x, y, tx, ty)


def test_validation_is_one_check():
  """Split and from_arrays share one check: same rule, same DataError."""
  x, y = _synthetic(8)
  with pytest.raises(errors.DataError, match="Split images must be uint8"):
    ip.Split(x.astype(np.float32), y)
  with pytest.raises(errors.DataError, match="train images must be uint8"):
    ip.from_arrays("cifar10", x.astype(np.float32), y, x, y)
  with pytest.raises(errors.DataError, match="Split labels have 7 entries"):
    ip.Split(x, y[:-1])
  with pytest.raises(errors.DataError, match="test labels have 7 entries"):
    ip.from_arrays("cifar10", x, y, x, y[:-1])
  with pytest.raises(errors.DataError, match="test split is empty"):
    ip.from_arrays("cifar10", x, y, x[:0], y[:0])
  assert issubclass(errors.DataError, ValueError)
  # An empty Split is allowed (a subset may be empty); a Dataset split not.
  np.testing.assert_equal(ip.Split(x[:0], y[:0]).size, 0)


def test_dataset_not_found_error_is_the_project_one():
  assert ip.DatasetNotFoundError is errors.DatasetNotFoundError
  assert issubclass(ip.DatasetNotFoundError, errors.DataError)
  assert issubclass(ip.DatasetNotFoundError, FileNotFoundError)


# ---------------------------------------------------------------------------
# Fingerprint.
# ---------------------------------------------------------------------------


def _fingerprint_arrays():
  x, y = _synthetic(30, hw=(4, 4))
  tx, ty = _synthetic(10, hw=(4, 4), seed=5)
  return x, y, tx, ty


def test_fingerprint_same_data_same_value():
  x, y, tx, ty = _fingerprint_arrays()
  a = ip.from_arrays("toy", x, y, tx, ty, num_classes=10)
  fp = a.fingerprint()
  assert re.fullmatch("[0-9a-f]{16}", fp), fp
  # Copies, int32 instead of int64 labels, a recomputation: the same value.
  b = ip.from_arrays("toy", x.copy(), y.astype(np.int32), tx.copy(), ty,
                     num_classes=10)
  np.testing.assert_equal(b.fingerprint(), fp)
  np.testing.assert_equal(a.fingerprint(), fp)
  np.testing.assert_equal(a.train.fingerprint(), b.train.fingerprint())
  # A non-contiguous view hashes as its contents.
  wide = np.zeros((30, 4, 8, 3), np.uint8)
  wide[:, :, ::2] = x
  np.testing.assert_equal(ip.Split(wide[:, :, ::2], y).fingerprint(),
                          a.train.fingerprint())


@pytest.mark.parametrize("change", [
    "train_pixel", "test_pixel", "train_label", "test_label", "reorder",
    "shape", "name", "num_classes"])
def test_fingerprint_changes_with_content(change):
  x, y, tx, ty = _fingerprint_arrays()
  name, num_classes = "toy", 10
  base = ip.from_arrays(name, x, y, tx, ty, num_classes=num_classes)
  x, y, tx, ty = x.copy(), y.copy(), tx.copy(), ty.copy()
  if change == "train_pixel":
    x[17, 3, 1, 2] ^= 1
  elif change == "test_pixel":
    tx[0, 0, 0, 0] ^= 128
  elif change == "train_label":
    y[5] = (y[5] + 1) % 10
  elif change == "test_label":
    ty[9] = (ty[9] + 3) % 10
  elif change == "reorder":  # Two examples swapped, each with its label.
    x[[2, 3]], y[[2, 3]] = x[[3, 2]], y[[3, 2]]
  elif change == "shape":  # The same bytes as 2x8 images.
    x, tx = x.reshape(30, 2, 8, 3), tx.reshape(10, 2, 8, 3)
  elif change == "name":
    name = "toy2"
  elif change == "num_classes":
    num_classes = 11
  other = ip.from_arrays(name, x, y, tx, ty, num_classes=num_classes)
  assert other.fingerprint() != base.fingerprint()
  if change in ("train_pixel", "train_label", "reorder"):
    assert other.train.fingerprint() != base.train.fingerprint()
    np.testing.assert_equal(other.test.fingerprint(), base.test.fingerprint())


def test_fingerprint_of_loaded_npz_and_subsets(tmp_path):
  _write_npz(tmp_path / "toy.npz", 60, 20)
  config = _config(name="toy", npz_path=str(tmp_path / "toy.npz"))
  fp = ip.load_dataset(config).fingerprint()
  np.testing.assert_equal(ip.load_dataset(config).fingerprint(), fp)
  config.train_subset = 20
  sub = ip.load_dataset(config).fingerprint()
  config.subset_seed = 1
  other_seed = ip.load_dataset(config).fingerprint()
  assert len({fp, sub, other_seed}) == 3


# ---------------------------------------------------------------------------
# batches.
# ---------------------------------------------------------------------------


def _index_split(n):
  """A split whose pixel (0, 0, 0..2) encodes the example index (base 256)."""
  idx = np.arange(n)
  images = np.zeros((n, 1, 1, 3), np.uint8)
  images[:, 0, 0, 0] = idx % 256
  images[:, 0, 0, 1] = (idx // 256) % 256
  images[:, 0, 0, 2] = idx // 65536
  return ip.Split(images, idx % 10)


def _decode(images):
  px = images[:, 0, 0].astype(np.int64)
  return px[:, 0] + 256 * px[:, 1] + 65536 * px[:, 2]


def _order(split, **kwargs):
  return np.concatenate([_decode(b["image"])
                         for b in ip.batches(split, **kwargs)])


def test_batches_shapes_and_dtypes():
  split = _split(10)
  out = list(ip.batches(split, 4, seed=0, epoch=0))
  assert len(out) == 2 == ip.steps_per_epoch(10, 4, True)
  for b in out:
    assert b["image"].shape == (4, 2, 2, 3) and b["image"].dtype == np.uint8
    assert b["label"].shape == (4,) and b["label"].dtype == np.int32
  out = list(ip.batches(split, 4, seed=0, epoch=0, drop_last=False))
  assert [len(b["label"]) for b in out] == [4, 4, 2]
  assert ip.steps_per_epoch(10, 4, False) == 3


def test_batches_labels_follow_images():
  split = _index_split(37)
  for b in ip.batches(split, 5, seed=3, epoch=1, drop_last=False):
    np.testing.assert_array_equal(b["label"], _decode(b["image"]) % 10)


def test_batches_deterministic_and_epochs_differ():
  split = _index_split(100)
  a = _order(split, batch_size=10, seed=7, epoch=0)
  b = _order(split, batch_size=10, seed=7, epoch=0)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, _order(split, batch_size=10, seed=7, epoch=1))
  assert not np.array_equal(a, _order(split, batch_size=10, seed=8, epoch=0))


def test_batches_epoch_is_permutation():
  split = _index_split(103)
  for epoch in range(3):
    order = _order(split, batch_size=8, seed=1, epoch=epoch, drop_last=False)
    np.testing.assert_array_equal(np.sort(order), np.arange(103))
  order = _order(split, batch_size=8, seed=1, epoch=0, shuffle=False,
                 drop_last=False)
  np.testing.assert_array_equal(order, np.arange(103))


@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_start_step_resumes_exactly(drop_last):
  split = _index_split(53)
  full = list(ip.batches(split, 6, seed=5, epoch=2, drop_last=drop_last))
  for k in range(len(full) + 1):
    head = []
    for i, b in enumerate(ip.batches(split, 6, seed=5, epoch=2,
                                     drop_last=drop_last)):
      if i == k:
        break
      head.append(b)
    tail = list(ip.batches(split, 6, seed=5, epoch=2, drop_last=drop_last,
                           start_step=k))
    assert len(head) + len(tail) == len(full)
    for got, want in zip(head + tail, full):
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])


def test_batches_errors():
  split = _split(10)
  with pytest.raises(ValueError, match="start_step"):
    ip.batches(split, 4, seed=0, epoch=0, start_step=3)
  with pytest.raises(ValueError, match="fewer than batch_size"):
    ip.batches(split, 11, seed=0, epoch=0)
  with pytest.raises(ValueError, match="positive"):
    ip.batches(split, 0, seed=0, epoch=0)


# ---------------------------------------------------------------------------
# random_subset.
# ---------------------------------------------------------------------------


def test_random_subset_balanced():
  split = _index_split(1000)
  sub = ip.random_subset(split, 95, seed=3)
  assert sub.size == 95
  counts = np.bincount(sub.labels, minlength=10)
  assert counts.min() == 9 and counts.max() == 10 and counts.sum() == 95
  idx = _decode(sub.images)
  assert np.all(np.diff(idx) > 0)  # Unique, in original order.
  np.testing.assert_array_equal(sub.labels, idx % 10)
  again = ip.random_subset(split, 95, seed=3)
  np.testing.assert_array_equal(again.images, sub.images)
  other = ip.random_subset(split, 95, seed=4)
  assert not np.array_equal(other.images, sub.images)


def test_random_subset_uniform():
  split = _index_split(1000)
  sub = ip.random_subset(split, 100, seed=0, class_balanced=False)
  assert sub.size == 100
  idx = _decode(sub.images)
  assert len(np.unique(idx)) == 100
  np.testing.assert_array_equal(
      ip.random_subset(split, 100, seed=0, class_balanced=False).images,
      sub.images)


def test_random_subset_errors():
  split = _index_split(100)
  with pytest.raises(ValueError, match="subset size"):
    ip.random_subset(split, 101, seed=0)
  with pytest.raises(errors.DataError, match="has only 10; set class_balanced"):
    ip.random_subset(split, 99, seed=0, num_classes=9)


# ---------------------------------------------------------------------------
# official_search_splits.
# ---------------------------------------------------------------------------


def test_official_search_splits_exact_ranges():
  split = _index_split(50_000)
  out = ip.official_search_splits(split)
  assert set(out) == {"pretrain", "search", "val"}
  np.testing.assert_array_equal(_decode(out["pretrain"].images),
                                np.arange(0, 5_000))
  np.testing.assert_array_equal(_decode(out["search"].images),
                                np.arange(5_000, 40_000))
  np.testing.assert_array_equal(_decode(out["val"].images),
                                np.arange(40_000, 50_000))
  np.testing.assert_array_equal(out["val"].labels,
                                np.arange(40_000, 50_000) % 10)


def test_official_search_splits_size_check():
  with pytest.raises(ValueError, match="50,000"):
    ip.official_search_splits(_index_split(4_000))
  out = ip.official_search_splits(_index_split(100), allow_small=True)
  assert [out[k].size for k in ("pretrain", "search", "val")] == [10, 70, 20]
  np.testing.assert_array_equal(_decode(out["search"].images),
                                np.arange(10, 80))


# ---------------------------------------------------------------------------
# normalize.
# ---------------------------------------------------------------------------


def test_normalize_numpy_and_jax():
  images = np.array([[[[0, 128, 255]]]], np.uint8)
  mean, std = ip.CIFAR_EVAL_MEAN, ip.CIFAR_STD
  want = np.array([(0 / 255 - 0.4914) / 0.2023,
                   (128 / 255 - 0.4822) / 0.1994,
                   (255 / 255 - 0.4465) / 0.2010], np.float32)
  got = ip.normalize(images, mean, std)
  assert got.dtype == np.float32 and got.shape == (1, 1, 1, 3)
  np.testing.assert_allclose(got[0, 0, 0], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      ip.normalize(images.astype(np.float32), mean, std), got, rtol=1e-6)
  jax = pytest.importorskip("jax")
  jitted = jax.jit(lambda x: ip.normalize(x, mean, std))(images)
  assert jitted.dtype == np.float32
  np.testing.assert_allclose(np.asarray(jitted)[0, 0, 0], want, rtol=1e-6,
                             atol=1e-6)


def test_normalization_constants():
  assert ip.normalization_constants("cifar100", phase="search") == (
      ip.CIFAR_SEARCH_MEAN, ip.CIFAR_STD)
  assert ip.normalization_constants("cifar10")[0] == (0.4914, 0.4822, 0.4465)
  assert ip.normalization_constants("imagenet2012")[1] == (0.229, 0.224, 0.225)
  with pytest.raises(ValueError, match="No published"):
    ip.normalization_constants("mnist")


# ---------------------------------------------------------------------------
# load_dataset from npz.
# ---------------------------------------------------------------------------


@requires_data
def test_default_config_loads_the_shared_cifar10_from_any_cwd(tmp_path,
                                                              monkeypatch):
  """The untouched default `config.input`, built and loaded outside the
  repository root, finds ../shared/data/cifar10.npz beside the checkout and
  loads the whole of it: the pinned fingerprint of that file (see
  `test_fingerprint_real_cifar10_pinned_and_fast`)."""
  monkeypatch.chdir(tmp_path)
  config = ip.default_input_config()
  assert pathlib.Path(config.npz_path).samefile(CIFAR10_NPZ)
  ds = ip.load_dataset(config)
  assert ds.splits.keys() == {"train", "test"}
  np.testing.assert_equal(ds.fingerprint(), "339503e3d24bb584")


def test_load_npz_synthetic_with_subset(tmp_path):
  arrays = _write_npz(tmp_path / "toy.npz", 60, 20)
  ds = ip.load_dataset(_config(name="toy", npz_path=str(tmp_path / "toy.npz")))
  np.testing.assert_array_equal(ds.train.images, arrays["train_images"])
  np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])
  assert ds.num_classes == 10 and ds.train.labels.dtype == np.int32
  ds = ip.load_dataset(_config(name="toy", npz_path=str(tmp_path / "toy.npz"),
                               train_subset=20, subset_seed=1))
  assert ds.splits["train"].size == 20
  assert ds.splits["train_full"].size == 60
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [2] * 10)


def test_missing_npz_raises(tmp_path):
  missing = tmp_path / "nope.npz"
  with pytest.raises(ip.DatasetNotFoundError) as info:
    ip.load_dataset(_config(npz_path=str(missing)))
  msg = str(info.value)
  assert str(missing) in msg and "--config.input.npz_path" in msg
  assert "prepare_tfds.py" in msg
  assert isinstance(info.value, FileNotFoundError)
  with pytest.raises(ip.DatasetNotFoundError, match="No CIFAR-100 images"):
    ip.load_dataset(_config(name="cifar100", npz_path=str(missing)))


def test_cifar100_with_cifar10_npz_raises(tmp_path):
  _write_npz(tmp_path / "c10.npz", 20, 10)
  with pytest.raises(ip.DatasetNotFoundError, match="expects 100 classes"):
    ip.load_dataset(
        _config(name="cifar100", npz_path=str(tmp_path / "c10.npz")))


def test_bad_source_raises():
  with pytest.raises(errors.ConfigError, match="'npz' or 'tfds'"):
    ip.load_dataset(_config(source="http"))
  with pytest.raises(errors.ConfigError, match="config.input.train_subset"):
    ip.load_dataset(_config(train_subset=-1))
  with pytest.raises(errors.ConfigError, match="config.input.subset_seed"):
    ip.load_dataset(_config(train_subset=10, subset_seed=-1))


def test_default_npz_path_uses_resolve_path(tmp_path, monkeypatch):
  """From any cwd, the one lookup (cwd, then the repository root) decides."""
  monkeypatch.chdir(tmp_path)
  want = utils.resolve_path(pathlib.Path("..") / "shared" / "data" /
                            "cifar10.npz")
  np.testing.assert_equal(ip.default_npz_path(), str(want))
  assert pathlib.Path(ip.default_npz_path()).is_absolute()


def test_load_npz_returns_every_array_and_names_the_field(tmp_path):
  arrays = _write_npz(tmp_path / "toy.npz", 20, 10, num_classes=4)
  dataset, got = ip.load_npz(tmp_path / "toy.npz", name="toy")
  np.testing.assert_equal(sorted(got), sorted(arrays))
  np.testing.assert_array_equal(got["label_names"], arrays["label_names"])
  np.testing.assert_equal(dataset.num_classes, 4)
  missing = tmp_path / "nope.npz"
  with pytest.raises(ip.DatasetNotFoundError,
                     match="pass --npz=/path/to/file.npz") as info:
    ip.load_npz(missing, field="--npz")
  assert "config.input.npz_path" not in str(info.value)
  np.savez(tmp_path / "keys.npz", train_images=arrays["train_images"])
  with pytest.raises(errors.DataError, match="lacks keys") as info:
    ip.load_npz(tmp_path / "keys.npz")
  assert str(tmp_path / "keys.npz") in str(info.value)


@pytest.fixture(scope="module")
def real_cifar10():
  if not CIFAR10_NPZ.is_file():
    pytest.skip(f"offline CIFAR-10 data not present at {CIFAR10_NPZ}")
  return ip.load_dataset(_config(npz_path=str(CIFAR10_NPZ)))


def test_load_real_cifar10(real_cifar10):
  ds = real_cifar10
  assert ds.name == "cifar10" and ds.num_classes == 10
  assert ds.image_shape == (32, 32, 3)
  train, test = ds.splits["train"], ds.splits["test"]
  assert train.size == 50_000 and test.size == 10_000
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  np.testing.assert_array_equal(train.labels[:10],
                                [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
  np.testing.assert_array_equal(np.bincount(train.labels), [5_000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [1_000] * 10)
  with np.load(EXACT_SUBSET_NPZ) as exact:
    np.testing.assert_array_equal(exact["all_train_labels"], train.labels)
    np.testing.assert_array_equal(exact["all_test_labels"], test.labels)
  splits = ip.official_search_splits(train)
  assert splits["val"].size == 10_000 and splits["search"].size == 35_000


def test_fingerprint_real_cifar10_pinned_and_fast(real_cifar10):
  """The value is pinned (run identities depend on it staying the same) for
  shared/data/cifar10.npz (sha256 50a74a82...); 60,000 images hash in ~0.3 s
  on one core (bound loose for busy CI machines)."""
  start = time.perf_counter()
  fp = real_cifar10.fingerprint()
  seconds = time.perf_counter() - start
  np.testing.assert_equal(fp, "339503e3d24bb584")
  assert seconds < 2.0, seconds


@requires_data
def test_cifar100_partial_file_raises():
  path = SHARED_DATA / "cifar100_partial_exact.npz"
  if not path.is_file():
    pytest.skip(f"{path} not present")
  with pytest.raises(ip.DatasetNotFoundError, match="labels-only"):
    ip.load_dataset(_config(name="cifar100", npz_path=str(path)))


# ---------------------------------------------------------------------------
# TFDS.
# ---------------------------------------------------------------------------


@requires_tf
def test_tfds_round_trip(tmp_path):
  npz = tmp_path / "small.npz"
  arrays = _write_npz(npz, 64, 32, hw=(32, 32))
  data_dir = tmp_path / "tfds"
  builder_dir = prepare_tfds.write_tfds_from_npz(
      str(npz), str(data_dir), name="cifar10", disable_shuffling=True)
  assert pathlib.Path(builder_dir) == data_dir / "cifar10" / "3.0.2"
  assert (pathlib.Path(builder_dir) / "dataset_info.json").is_file()
  ds = ip.load_dataset(_config(source="tfds", data_dir=str(data_dir)))
  assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
  for split in ("train", "test"):
    got = ds.splits[split]
    assert got.images.dtype == np.uint8 and got.labels.dtype == np.int32
    np.testing.assert_array_equal(got.images, arrays[f"{split}_images"])
    np.testing.assert_array_equal(got.labels, arrays[f"{split}_labels"])
  # The same arrays, read from TFDS or the npz: the same fingerprint.
  np.testing.assert_equal(
      ds.fingerprint(),
      ip.load_dataset(_config(npz_path=str(npz))).fingerprint())
  with pytest.raises(FileExistsError, match="already prepared"):
    prepare_tfds.write_tfds_from_npz(str(npz), str(data_dir), name="cifar10")


@requires_tf
def test_tfds_round_trip_unregistered_name_shuffled(tmp_path):
  npz = tmp_path / "toy.npz"
  arrays = _write_npz(npz, 40, 12, num_classes=4, hw=(6, 5))
  data_dir = tmp_path / "tfds"
  prepare_tfds.write_tfds_from_npz(str(npz), str(data_dir),
                                   name="deepaa_toy", version="1.0.0")
  ds = ip.load_dataset(_config(name="deepaa_toy", source="tfds",
                               data_dir=str(data_dir)))
  assert ds.num_classes == 4 and ds.image_shape == (6, 5, 3)
  train = ds.splits["train"]
  # Shuffled on disk: the same examples (as a multiset), paired correctly.
  want = {arrays["train_images"][i].tobytes(): arrays["train_labels"][i]
          for i in range(40)}
  got = {train.images[i].tobytes(): train.labels[i] for i in range(40)}
  assert got == want
  # Another order is other data for run identity.
  from_npz = ip.load_dataset(_config(name="deepaa_toy", npz_path=str(npz)))
  assert ds.fingerprint() != from_npz.fingerprint()


def _smooth_images(n, hw, seed):
  """uint8[n, H, W, 3] of random per-channel gradients: images that JPEG
  keeps within a few grey levels (random noise would not be)."""
  rng = np.random.default_rng(seed)
  i, j = np.meshgrid(np.arange(hw[0]), np.arange(hw[1]), indexing="ij")
  slopes = rng.uniform(-12, 12, (n, 1, 1, 3, 2))
  base = rng.uniform(60, 190, (n, 1, 1, 3))
  images = (base + slopes[..., 0] * i[None, :, :, None]
            + slopes[..., 1] * j[None, :, :, None])
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


@requires_tf
def test_tfds_upscaled_jpeg_is_read_and_streamed(tmp_path):
  from deepaa_jax import streaming  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  npz = tmp_path / "smooth.npz"
  arrays = dict(train_images=_smooth_images(12, (8, 8), 1),
                train_labels=np.arange(12) % 3,
                test_images=_smooth_images(6, (8, 8), 2),
                test_labels=np.arange(6) % 3,
                label_names=np.array(["a", "b", "c"]))
  np.savez(npz, **arrays)
  data_dir = tmp_path / "tfds"
  prepare_tfds.write_tfds_from_npz(
      str(npz), str(data_dir), name="deepaa_jpeg16", version="1.0.0",
      disable_shuffling=True, upscale=2, encoding="jpeg", jpeg_quality=95)
  want = {split: np.stack([prepare_tfds.upscale_image(x, 2)
                           for x in arrays[f"{split}_images"]])
          for split in ("train", "test")}
  assert want["train"].shape == (12, 16, 16, 3)
  # Stored as JPEG bytes (not PNG).
  builder = tfds.builder("deepaa_jpeg16", data_dir=str(data_dir))
  raw = builder.as_dataset(split="test", decoders={
      "image": tfds.decode.SkipDecoding()})
  assert all(ex["image"].numpy()[:2] == b"\xff\xd8" for ex in raw)
  # Decoded whole (the in-memory path): the PIL-upscaled pixels within JPEG
  # error, sizes and labels exact, in the npz order.
  ds = ip.load_dataset(_config(name="deepaa_jpeg16", source="tfds",
                               data_dir=str(data_dir), pipeline="memory"))
  assert ds.num_classes == 3 and ds.image_shape == (16, 16, 3)
  for split in ("train", "test"):
    got = ds.splits[split]
    np.testing.assert_array_equal(got.labels, arrays[f"{split}_labels"])
    err = np.abs(got.images.astype(int) - want[split].astype(int))
    assert err.mean() < 2.0 and err.max() <= 24, (err.mean(), err.max())
  # Streamed: decoded on the fly, resize 16 (identity) + centre crop 12.
  stream = streaming.open_streaming(_config(
      name="deepaa_jpeg16", source="tfds", data_dir=str(data_dir),
      pipeline="stream", image_size=12, resize_size=16, stats_images=12))
  assert (stream.num_classes, stream.train.size, stream.test.size) == (3, 12, 6)
  assert stream.test.spec == "test" and stream.image_shape == (12, 12, 3)
  batch, = list(stream.eval_batches(6))
  np.testing.assert_array_equal(batch["label"], arrays["test_labels"])
  err = np.abs(batch["image"].astype(int)
               - ds.splits["test"].images[:, 2:14, 2:14].astype(int))
  assert err.max() <= 1, err.max()  # TF's identity resize vs TFDS decode
  # Registered names keep their registered spec; bad options are refused.
  ten = tmp_path / "ten.npz"
  _write_npz(ten, 4, 2)
  with pytest.raises(ValueError, match="registered TFDS dataset"):
    prepare_tfds.write_tfds_from_npz(str(ten), str(tmp_path / "x"),
                                     name="cifar10", encoding="jpeg")
  with pytest.raises(ValueError, match="registered TFDS dataset"):
    prepare_tfds.write_tfds_from_npz(str(ten), str(tmp_path / "x"),
                                     name="cifar10", upscale=2)
  with pytest.raises(ValueError, match="encoding"):
    prepare_tfds.write_tfds_from_npz(str(npz), str(tmp_path / "x"),
                                     name="deepaa_x", encoding="webp")
  with pytest.raises(ValueError, match="upscale"):
    prepare_tfds.write_tfds_from_npz(str(npz), str(tmp_path / "x"),
                                     name="deepaa_x", upscale=0)


@requires_tf
def test_tfds_missing_raises(tmp_path):
  with pytest.raises(ip.DatasetNotFoundError) as info:
    ip.load_dataset(_config(source="tfds", data_dir=str(tmp_path)))
  msg = str(info.value)
  assert str(tmp_path) in msg and "prepare_tfds.py" in msg
  with pytest.raises(ip.DatasetNotFoundError, match="prepare_tfds.py"):
    ip.load_dataset(_config(name="no_such_dataset_xyz", source="tfds",
                            data_dir=str(tmp_path)))


def test_imagenet_is_never_loaded_whole(tmp_path):
  # ImageNet goes through `streaming` (tests/test_streaming.py).
  with pytest.raises(errors.ConfigError, match="pipeline=stream"):
    ip.load_dataset(_config(name="imagenet2012", source="tfds",
                            data_dir=str(tmp_path)))
