"""Input pipeline: in-memory image datasets, deterministic batching, TFDS I/O.

Contract, stated once for the whole module:

* Images are ``uint8[N, H, W, 3]`` RGB (NHWC) and labels ``int32[N]`` everywhere
  on the host. Nothing here converts pixels to float: augmentation and
  normalisation run on the device (see :func:`normalize`, which is a pure
  function meant to be called inside ``jax.jit``).
* Every random choice is a pure function of explicit integer seeds (numpy
  ``Generator`` seeded through ``SeedSequence``), so a run can be resumed at any
  step and reproduces the same data order.
* ``tensorflow`` and ``tensorflow_datasets`` are imported lazily, only by the
  functions that need them, and TF is told not to touch any GPU. Importing this
  module never imports them (`tests/test_input_pipeline.py::
  test_import_is_lazy`).

Data sources (``config.input.source``):

* ``"npz"``: a numpy archive with keys ``train_images``, ``train_labels``,
  ``test_images``, ``test_labels`` (optionally ``label_names``), e.g. the
  offline ``shared/data/cifar10.npz`` (full CIFAR-10 in the original order;
  pixels carry JPEG error, labels are exact; see ``shared/data/README.md``).
  That default, when absent (a clone without ``../shared``), is replaced by
  TFDS ``cifar10`` (prepared, else downloaded when online), read in the
  original order (:func:`load_cifar10_tfds`); offline, one line names
  ``tfds build cifar10`` and ``--config.input.npz_path``.
* ``"tfds"``: a prepared TFDS directory read with ``download=False``. Such a
  directory is written from an npz by
  ``python experiments/prepare_tfds.py --npz=... --data_dir=...``. Images
  of varying size (no fixed shape in the TFDS feature) are brought to
  ``image_size`` x ``image_size`` by the streaming path's resize/centre-crop
  rule, never zero-padded.

Every problem with the data (a missing, truncated or foreign file, missing
keys, bad shapes or labels, an empty split, an impossible subset) raises
:class:`errors.DataError` (a ``ValueError``) or its subclass
:class:`DatasetNotFoundError` with a one-line message that names the file or
the config field. :meth:`Dataset.fingerprint` identifies the loaded content.

Reference: the official DeepAA code (clean-room spec in
``shared/reference/official_deepaa_spec.md``): search splits §2.2,
normalisation constants §1.3, evaluation pipelines §4.3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple
import zipfile
import zlib

from absl import logging
import numpy as np

from deepaa_jax import errors
from deepaa_jax import utils

# The project's exception, re-exported: `input_pipeline.DatasetNotFoundError`
# is `errors.DatasetNotFoundError` (a DataError and a FileNotFoundError).
DatasetNotFoundError = errors.DatasetNotFoundError

# ---------------------------------------------------------------------------
# Constants.
# ---------------------------------------------------------------------------

# Search-time CIFAR statistics (spec §1.3, `data_generator.py:14-15`); used for
# CIFAR-10 and CIFAR-100 alike.
CIFAR_SEARCH_MEAN = (0.49139968, 0.48215841, 0.44653091)
# Evaluation-time CIFAR statistics (spec §4.3, `DeepAA_evaluate/data.py:34`);
# the CIFAR-10 values are used for CIFAR-100 too.
CIFAR_EVAL_MEAN = (0.4914, 0.4822, 0.4465)
# The same std is used by search and evaluation (it is the per-pixel std that
# the AutoAugment code popularised, not the per-channel dataset std).
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_KNOWN_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}

# Where an in-memory dataset comes from (`config.input.source`); the one list
# that `load_dataset` and `config.validate` check against.
INPUT_SOURCES = ("npz", "tfds")

# Official CIFAR search splits (spec §2.2): half-open index ranges into the
# 50,000-image training set in its original order.
CIFAR_TRAIN_SIZE = 50_000
OFFICIAL_SEARCH_RANGES = {
    "pretrain": (0, 5_000),
    "search": (5_000, 40_000),
    "val": (40_000, 50_000),
}

# Domain-separation tags so that the same user seed gives independent streams
# for different purposes.
_TAG_BATCHES = 0x6261746368   # "batch"
_TAG_SUBSET = 0x737562736574  # "subset"

_DEFAULT_NPZ_RELATIVE = os.path.join("..", "shared", "data", "cifar10.npz")
# Where TFDS's `cifar10` builder downloads CIFAR-10 from (the Toronto
# binary release); probed once before a download, so that an offline first
# run fails in a second instead of after TFDS's ten retries (~3.5 min).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# The arrays every npz dataset file holds.
_NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_NPZ_FORMAT = (
    "an npz dataset is np.savez(path, train_images=uint8[N,H,W,3], "
    "train_labels=int[N], test_images=uint8[M,H,W,3], test_labels=int[M])")

_PREPARE_HINT = (
    "`python experiments/prepare_tfds.py --npz=/path/to/data.npz "
    "--data_dir=/path/to/tfds_dir`")


# ---------------------------------------------------------------------------
# Containers.
# ---------------------------------------------------------------------------


def _check_split(what: str, images, labels) -> Tuple[np.ndarray, np.ndarray]:
  """The one check of a split's arrays (for `Split`, `from_arrays`, files).

  Args:
    what: how the message names the split, e.g. "train" or "Split".
    images: uint8[N, H, W, 3], a numpy array (or anything `np.asarray` takes).
    labels: int[N], any integer dtype.

  Returns:
    (images, labels) as numpy arrays, not copied and labels not converted.

  Raises:
    errors.DataError: images not uint8, not [N, H, W, 3]; labels not a 1-D
      integer array, or not one per image.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise errors.DataError(
        f"{what} images must be uint8 in [0, 255], got dtype {images.dtype}. "
        + _uint8_advice(images.dtype))
  if images.ndim != 4 or images.shape[-1] != 3:
    raise errors.DataError(
        f"{what} images must be 4-D NHWC with 3 channels, uint8[N, H, W, 3]; "
        f"got shape {images.shape}.")
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise errors.DataError(
        f"{what} labels must be a 1-D integer array int[N]; got shape "
        f"{labels.shape} and dtype {labels.dtype}.")
  if labels.shape[0] != images.shape[0]:
    raise errors.DataError(
        f"{what} labels have {labels.shape[0]} entries but there are "
        f"{images.shape[0]} images.")
  return images, labels


def _uint8_advice(dtype: np.dtype) -> str:
  """How to bring images of `dtype` to uint8 without losing their range."""
  if dtype.kind in "ui" and dtype.itemsize > 1:
    bits = 8 * dtype.itemsize
    return (f"Scale {bits}-bit data down, e.g. (x >> {bits - 8})"
            ".astype(np.uint8) for the full range [0, "
            f"{2 ** bits - 1}] (clipping to 255 would saturate it).")
  return ("Convert with np.clip(np.round(x), 0, 255).astype(np.uint8) (x in "
          "[0, 255]; scale first if not); float images are not accepted "
          "because their range is ambiguous.")


def check_num_classes(dataset, num_classes: int, *,
                      field: str = "config.model.num_classes") -> int:
  """The logits size of a model trained on `dataset`: `num_classes`, or the
  dataset's class count when it is 0.

  Args:
    dataset: a `Dataset` (labels of every split held in memory) or a
      streamed dataset (labels in [0, its `num_classes`), from the TFDS
      label feature).
    num_classes: the configured logits size (0: from the dataset).
    field: the config field that set it, for the message.

  Raises:
    errors.DataError: a label is >= `num_classes`: the loss would index past
      the logits (and end as "diverged"); the message names both.
  """
  num_classes = int(num_classes)
  if not num_classes:
    return int(dataset.num_classes)
  splits = getattr(dataset, "splits", None)
  if splits:
    largest = max(int(np.max(s.labels)) for s in splits.values() if s.size)
  else:
    largest = int(dataset.num_classes) - 1
  if largest >= num_classes:
    raise errors.DataError(
        f"{field}={num_classes} but dataset {dataset.name!r} has labels up to "
        f"{largest} ({dataset.num_classes} classes): set {field}="
        f"{dataset.num_classes}, or 0 to take it from the dataset")
  return num_classes


def _hexdigest(feed) -> str:
  h = hashlib.blake2b(digest_size=8)
  feed(h)
  return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One in-memory split.

  Attributes:
    images: uint8[N, H, W, 3], RGB, values in [0, 255].
    labels: int32[N], class ids in [0, num_classes). Any integer dtype is
      accepted at construction and converted to int32.
  """
  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    images, labels = _check_split("Split", self.images, self.labels)
    object.__setattr__(self, "images", images)
    object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))

  @property
  def size(self) -> int:
    """Number of examples N."""
    return int(self.images.shape[0])

  def take(self, indices: np.ndarray) -> "Split":
    """Returns the examples at `indices` (int[M]) as a new Split (a copy)."""
    indices = np.asarray(indices)
    return Split(self.images[indices], self.labels[indices])

  def _feed(self, h) -> None:
    utils.hash_array(h, "images", self.images)
    utils.hash_array(h, "labels", self.labels)

  def fingerprint(self) -> str:
    """A short content hash: 16 hex digits, blake2b of the dtypes, shapes and
    raw bytes of images and labels. Any changed pixel or label, or another
    example order, changes it (see `Dataset.fingerprint`)."""
    return _hexdigest(self._feed)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An in-memory image-classification dataset.

  Attributes:
    name: dataset name, e.g. "cifar10".
    num_classes: number of classes C; labels lie in [0, C).
    image_shape: (H, W, 3).
    splits: split name -> Split; always has "train" and "test". When
      `train_subset` was requested, "train" is the subset and "train_full" the
      full training split.
    mean: per-channel mean in [0, 1] units (evaluation constants, spec §4.3).
    std: per-channel std in [0, 1] units.
  """
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  splits: Dict[str, Split]
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]

  @property
  def train(self) -> Split:
    return self.splits["train"]

  @property
  def test(self) -> Split:
    return self.splits["test"]

  def fingerprint(self) -> str:
    """A short content hash for run identity: 16 hex digits.

    blake2b over the name, num_classes, image_shape and, for every split in
    sorted name order, the split's name, dtypes, shapes and raw bytes. It is
    the same whether the arrays came from an npz or a TFDS directory, and
    changes with any pixel, label or example order (and with a train subset,
    which changes splits["train"]). mean/std are not included: they follow
    from the name or the data. Hashing runs at ~600 MB/s on one CPU core:
    about 0.3 s for the 60,000 CIFAR-10 images (184 MB).

    Returns:
      str, 16 lowercase hex digits.
    """
    def feed(h):
      h.update(f"dataset {self.name!r} classes {self.num_classes} shape "
               f"{tuple(self.image_shape)}\n".encode())
      for key in sorted(self.splits):
        h.update(f"split {key!r}\n".encode())
        self.splits[key]._feed(h)  # pylint: disable=protected-access
    return _hexdigest(feed)


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


def default_npz_path() -> str:
  """Absolute path of the offline CIFAR-10 npz, `../shared/data/cifar10.npz`.

  Looked up by `utils.resolve_path`: relative to the current directory (the
  project convention: commands run from the repository root), then to the
  repository root; if neither exists, the current-directory path is returned
  so that the error names it.

  Returns:
    An absolute path string (the file may not exist).
  """
  return str(utils.resolve_path(_DEFAULT_NPZ_RELATIVE))


def is_default_npz_path(path) -> bool:
  """Whether `path` is the default `config.input.npz_path` (the offline
  `../shared/data/cifar10.npz`, relative or resolved against the current
  directory or the repository root). Only this default falls back to TFDS
  `cifar10` when absent (`load_dataset`); a path the user gave is never
  replaced by other data."""
  text = os.fspath(path or "")
  if not text:
    return True
  candidates = {_DEFAULT_NPZ_RELATIVE, default_npz_path()}
  for base in (pathlib.Path.cwd(), utils.REPO_ROOT):
    candidates.add(str(base / _DEFAULT_NPZ_RELATIVE))
  norm = lambda p: os.path.normpath(os.path.abspath(os.path.expanduser(p)))
  return norm(text) in {norm(c) for c in candidates}


def default_input_config():
  """Returns the `config.input` section (an `ml_collections.ConfigDict`).

  Fields:
    name: "cifar10" | "cifar100" | "imagenet2012" | any TFDS name.
    source: "npz" | "tfds".
    npz_path: for source="npz", an archive with train_images, train_labels,
      test_images, test_labels. Defaults to the offline CIFAR-10 file
      `../shared/data/cifar10.npz`; when that default is absent (a clone
      without ../shared), CIFAR-10 is read from TFDS `cifar10` in
      `data_dir`, downloaded and prepared first when online
      (`load_cifar10_tfds`).
    data_dir: TFDS data_dir (None: the TFDS default, ~/tensorflow_datasets).
    train_subset: 0 = the whole train split; N > 0 = N images drawn at random
      (the paper's "4,000 randomly selected samples"), see `random_subset`.
    subset_class_balanced: the subset has (almost) the same number of images
      per class (True) or is drawn uniformly (False).
    subset_seed: seed of the subset draw.
    pipeline: "auto" | "memory" | "stream": hold the dataset in memory, or
      stream it with tf.data (`deepaa_jax.streaming`); "auto" streams TFDS
      ImageNet and prepared datasets over 4 GiB.
    image_size: S, for streaming and for in-memory TFDS datasets of
      varying image size: every image is brought to S x S on the host
      (shorter side to `resize_size`, centre crop). Fixed-size datasets in
      memory keep their own size.
    resize_size: the shorter side before that crop (0 = round(S * 256 /
      224), i.e. 256 for S = 224).
    tfds_train_split / tfds_eval_split: streaming only: TFDS split specs
      (slices allowed, "train[:200000]"); "" = "validation", else "test".
    shuffle_buffer: streaming only: examples in the shuffle buffer.
    stats_images: streaming only: training images whose channel statistics
      normalise a dataset without published constants (cached in the
      workdir).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.name = "cifar10"
  config.source = "npz"
  config.npz_path = default_npz_path()
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.train_subset = 0
  config.subset_class_balanced = True
  config.subset_seed = 0
  config.pipeline = "auto"  # memory | stream | auto (stream when too large)
  config.image_size = 224  # S (streaming, varying sizes): ImageNet's 224
  config.resize_size = 0  # shorter side before the S crop; 0: S * 256 / 224
  config.tfds_train_split = "train"  # streaming: TFDS split spec
  config.tfds_eval_split = ""  # streaming: "" = validation, else test
  config.shuffle_buffer = 10_000  # streaming: encoded examples buffered
  config.stats_images = 2_000  # streaming: images for unknown mean/std
  config.lock()  # a typo inside a config file fails like one on the command line
  return config


def normalization_constants(
    name: str, *, phase: str = "eval",
    default: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """Per-channel (mean, std) in [0, 1] units used by the official code.

  Args:
    name: dataset name; CIFAR-10 and CIFAR-100 share constants.
    phase: "search" (spec §1.3, mean 0.49139968, ...) or "eval" (spec §4.3,
      mean 0.4914, ...). ImageNet uses the same constants in both phases.
    default: returned for an unknown name; if None, unknown names raise.

  Returns:
    (mean, std), two 3-tuples of floats.
  """
  if phase not in ("search", "eval"):
    raise ValueError(f"phase must be 'search' or 'eval', got {phase!r}.")
  if name in ("cifar10", "cifar100"):
    mean = CIFAR_SEARCH_MEAN if phase == "search" else CIFAR_EVAL_MEAN
    return tuple(mean), tuple(CIFAR_STD)
  if name.startswith("imagenet"):
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
  if default is not None:
    return tuple(default[0]), tuple(default[1])
  raise ValueError(
      f"No published normalisation constants for dataset {name!r}; known: "
      "cifar10, cifar100, imagenet*. Pass `default=` or use Dataset.mean/std.")


def channel_stats(images: np.ndarray, chunk: int = 4096):
  """Per-channel mean and population std of uint8[N, H, W, 3] in [0, 1]."""
  total = np.zeros(3, np.float64)
  total_sq = np.zeros(3, np.float64)
  count = 0
  for start in range(0, images.shape[0], chunk):
    block = images[start:start + chunk].reshape(-1, 3).astype(np.float64)
    total += block.sum(0)
    total_sq += np.square(block).sum(0)
    count += block.shape[0]
  mean = total / max(count, 1)
  std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))
  return tuple(float(v) for v in mean / 255.0), tuple(
      float(max(v, 1e-3)) for v in std / 255.0)


# ---------------------------------------------------------------------------
# Building datasets.
# ---------------------------------------------------------------------------


def from_arrays(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Dataset:
  """Builds a validated in-memory Dataset from numpy arrays.

  Args:
    name: dataset name; "cifar10", "cifar100" and "imagenet*" get the official
      evaluation normalisation constants.
    train_images: uint8[N, H, W, 3].
    train_labels: int[N] (any integer dtype; stored as int32).
    test_images: uint8[M, H, W, 3], same H and W as train.
    test_labels: int[M].
    num_classes: C; default: 10/100/1000 for the known names, otherwise
      max(label) + 1.
    mean: per-channel mean in [0, 1]; default: the published constants for a
      known name, else computed from `train_images`.
    std: per-channel std in [0, 1]; default as for `mean`.

  Returns:
    A Dataset with splits "train" and "test".

  Raises:
    errors.DataError: wrong dtype (not uint8), wrong rank / channel count,
      label count != image count, an empty split, train/test image sizes
      differ, or a label outside [0, num_classes).
    ValueError: bad `mean` / `std` arguments.
  """
  checked = {}
  for what, images, labels in (("train", train_images, train_labels),
                               ("test", test_images, test_labels)):
    images, labels = _check_split(what, images, labels)
    if images.shape[0] == 0:
      # A run would train on nothing, or "evaluate" 0 images and report an
      # accuracy of 0.0 as if complete.
      raise errors.DataError(
          f"The {what} split is empty (0 images, shape {images.shape}); "
          f"{_NPZ_FORMAT} with N, M > 0.")
    checked[what] = images, labels
  (train_images, train_labels), (test_images, test_labels) = (
      checked["train"], checked["test"])
  if train_images.shape[1:] != test_images.shape[1:]:
    raise errors.DataError(
        f"train and test images differ in size: {train_images.shape[1:]} vs "
        f"{test_images.shape[1:]}.")
  if num_classes is None:
    num_classes = _KNOWN_NUM_CLASSES.get(name)
  if num_classes is None:
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  num_classes = int(num_classes)
  for what, labels in (("train", train_labels), ("test", test_labels)):
    if labels.min() < 0 or labels.max() >= num_classes:
      raise errors.DataError(
          f"{what} labels must lie in [0, {num_classes}) for dataset {name!r} "
          f"(num_classes={num_classes}); found range [{labels.min()}, "
          f"{labels.max()}].")
  if (mean is None) != (std is None):
    raise ValueError("Pass both mean and std, or neither.")
  if mean is None:
    try:
      mean, std = normalization_constants(name, phase="eval")
    except ValueError:
      mean, std = channel_stats(train_images)
  if len(mean) != 3 or len(std) != 3:
    raise ValueError(f"mean and std need 3 values, got {mean} and {std}.")
  return Dataset(
      name=name,
      num_classes=num_classes,
      image_shape=tuple(int(d) for d in train_images.shape[1:]),
      splits={"train": Split(train_images, train_labels),
              "test": Split(test_images, test_labels)},
      mean=tuple(float(v) for v in mean),
      std=tuple(float(v) for v in std),
  )


def _cfg_get(config, key: str, default: Any) -> Any:
  if isinstance(config, Mapping) or hasattr(config, "get"):
    value = config.get(key, default)
  else:
    value = getattr(config, key, default)
  return default if value is None and default is not None else value


def load_dataset(config) -> Dataset:
  """Loads the dataset described by `config` (the `config.input` section).

  Args:
    config: ConfigDict (or mapping) with the fields of `default_input_config`.
      Missing optional fields take their defaults.

  Returns:
    A Dataset held in host memory (uint8 images, int32 labels). With
    `train_subset = N > 0`, splits["train"] is the random subset (see
    `random_subset`; class-balanced unless `subset_class_balanced=False`) and
    splits["train_full"] the full training split.

  Raises:
    DatasetNotFoundError: the npz file or the prepared TFDS dataset is missing
      (TFDS's own not-found errors are re-raised as this).
    errors.DataError: the file is unreadable, not an npz, or malformed; a
      split is empty; or `train_subset` cannot be drawn from it. The message
      names the file (or TFDS dir) and the `config.input.*` field.
    errors.ConfigError: a bad `source`, `train_subset` or `subset_seed`.
    errors.ConfigError: name="imagenet*" (too large for memory: the streaming
      path, `streaming.open_dataset`, reads it).
  """
  name = str(_cfg_get(config, "name", "cifar10"))
  source = str(_cfg_get(config, "source", "npz"))
  train_subset = int(_cfg_get(config, "train_subset", 0))
  subset_seed = int(_cfg_get(config, "subset_seed", 0))
  if source not in INPUT_SOURCES:
    allowed = " or ".join(repr(s) for s in INPUT_SOURCES)
    raise errors.ConfigError(
        f"config.input.source must be {allowed}, got {source!r}.")
  if train_subset < 0:
    raise errors.ConfigError(
        "config.input.train_subset must be >= 0 (0 = all), got "
        f"{train_subset}.")
  if subset_seed < 0:
    raise errors.ConfigError(
        f"config.input.subset_seed must be >= 0, got {subset_seed}.")

  if source == "npz":
    npz_path = str(_cfg_get(config, "npz_path", None) or default_npz_path())
    if (name == "cifar10" and is_default_npz_path(npz_path)
        and not utils.resolve_path(npz_path).is_file()):
      # A clone without ../shared: TFDS cifar10 (prepared, or downloaded).
      data_dir = _cfg_get(config, "data_dir", None)
      dataset = load_cifar10_tfds(data_dir, missing_npz=npz_path)
      where = tfds_where("cifar10", data_dir)
    else:
      dataset, _ = load_npz(npz_path, name=name)
      where = str(utils.resolve_path(npz_path))
  else:
    data_dir = _cfg_get(config, "data_dir", None)
    dataset = _load_tfds(
        name, data_dir, image_size=int(_cfg_get(config, "image_size", 224)),
        resize_size=int(_cfg_get(config, "resize_size", 0)))
    where = tfds_where(name, data_dir)

  if train_subset:
    full = dataset.splits["train"]
    try:
      indices = _subset_indices(
          full.labels, train_subset, subset_seed,
          class_balanced=bool(_cfg_get(config, "subset_class_balanced", True)),
          num_classes=None, names=_CONFIG_SUBSET_NAMES)
    except errors.DataError as e:
      raise errors.DataError(f"{where}: {e}") from e
    splits = dict(dataset.splits, train=full.take(indices), train_full=full)
    dataset = dataclasses.replace(dataset, splits=splits)
  return dataset


def _npz_missing_message(name: str, path: pathlib.Path, raw: str,
                         field: str) -> str:
  flag = _as_flag(field)
  msg = f"Dataset {name!r} not found: no npz file at {path} ({flag}={raw!r}). "
  if name == "cifar100":
    msg += ("No CIFAR-100 images are available offline (shared/data/"
            "cifar100_partial_exact.npz holds the labels and only ~1,100 "
            "images); provide your own CIFAR-100 npz. ")
  msg += (f"Fix: pass {flag}=/path/to/file.npz (keys train_images "
          "uint8[N,H,W,3], train_labels int[N], test_images, test_labels)")
  if field.startswith("config."):
    msg += (f", or prepare a TFDS dir with {_PREPARE_HINT} and pass "
            "--config.input.source=tfds --config.input.data_dir=/path/to/"
            "tfds_dir")
  return msg + "."


def _as_flag(field: str) -> str:
  """"config.input.npz_path" -> "--config.input.npz_path"; flags unchanged."""
  return f"--{field}" if field.startswith("config.") else field


def _one_line(error: BaseException) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _read_npz(path: pathlib.Path, field: str) -> Dict[str, np.ndarray]:
  """Every array of an existing npz dataset file, each error one DataError
  line that names the file."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as e:
    raise errors.DataError(f"{path} cannot be read ({_as_flag(field)}): "
                           f"{_one_line(e)}.") from e
  if head.startswith(b"\x93NUMPY"):
    raise errors.DataError(
        f"{path} is a .npy file (one array), not an npz archive; "
        f"{_NPZ_FORMAT}.")
  if not head.startswith(b"PK"):
    raise errors.DataError(
        f"{path} is not an npz archive (a zip of .npy arrays; the file starts "
        f"with {head!r}); {_NPZ_FORMAT}.")
  corrupt = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
  try:
    archive = np.load(path)  # allow_pickle=False: never unpickles.
  except corrupt as e:
    raise errors.DataError(
        f"{path} is truncated or corrupt (not a readable npz archive: "
        f"{_one_line(e)}); copy or write it again.") from e
  with archive:
    keys = list(archive.files)
    missing = [key for key in _NPZ_KEYS if key not in keys]
    if missing:
      if "all_train_fine_labels" in keys:
        raise DatasetNotFoundError(
            f"{path} is the CIFAR-100 labels-only file (exact labels, but "
            "images only for the first ~1,100 train / ~900 test examples); it "
            "is not a training set. No full CIFAR-100 image set is available "
            "offline: provide an npz with train_images, train_labels, "
            f"test_images, test_labels via {_as_flag(field)}=...")
      raise errors.DataError(
          f"{path} lacks keys {missing} (has {sorted(keys)}); {_NPZ_FORMAT}.")
    arrays = {}
    for key in keys:
      try:
        arrays[key] = archive[key]
      except ValueError as e:
        if "pickle" not in str(e):
          raise errors.DataError(
              f"{path} is truncated or corrupt (array {key!r}: "
              f"{_one_line(e)}); copy or write it again.") from e
        raise errors.DataError(
            f"{path} stores {key!r} as a pickled object array, which is never "
            "loaded (allow_pickle=False); store images as uint8, labels as "
            "integers and names as fixed-width strings (np.array(names))."
        ) from e
      except corrupt as e:
        raise errors.DataError(
            f"{path} is truncated or corrupt (array {key!r}: "
            f"{_one_line(e)}); copy or write it again.") from e
  return arrays


def load_npz(path, *, name: str = "cifar10",
             field: str = "config.input.npz_path"
             ) -> Tuple[Dataset, Dict[str, np.ndarray]]:
  """Reads and validates an npz dataset file.

  Args:
    path: the file (str or PathLike), looked up by `utils.resolve_path`.
    name: dataset name; a known name ("cifar10", "cifar100") fixes the number
      of classes, which `label_names` (if present) must match.
    field: the config field or flag that gave `path`, named in messages.

  Returns:
    (dataset, arrays): the Dataset (splits "train" and "test") and every
    array in the file by key (e.g. label_names str[C], train_coarse_labels).

  Raises:
    DatasetNotFoundError: no such file, a labels-only file, or a file of
      another dataset (label_names count != the known class count).
    errors.DataError: not readable, not an npz (text, .npy), truncated or
      corrupt, missing keys, pickled arrays, or arrays that `from_arrays`
      rejects (empty split, bad dtype/shape/labels). One line naming `path`.
  """
  raw = str(path)
  path = utils.resolve_path(raw)
  if not path.is_file():
    raise DatasetNotFoundError(_npz_missing_message(name, path, raw, field))
  arrays = _read_npz(path, field)
  expected = _KNOWN_NUM_CLASSES.get(name)
  num_classes = None
  if "label_names" in arrays:
    num_classes = int(np.size(arrays["label_names"]))
    if expected is not None and num_classes != expected:
      hint = ""
      if name == "cifar100":
        hint = (" No CIFAR-100 images are available offline; provide your "
                f"own CIFAR-100 npz via {_as_flag(field)}=...")
      raise DatasetNotFoundError(
          f"config.input.name={name!r} expects {expected} classes, but "
          f"{path} has {num_classes} label_names (it is a different "
          f"dataset).{hint}")
  try:
    dataset = from_arrays(name, *(arrays[key] for key in _NPZ_KEYS),
                          num_classes=expected or num_classes)
  except errors.DataError as e:
    raise errors.DataError(f"{path}: {e}") from e
  return dataset, arrays


# ---------------------------------------------------------------------------
# TFDS.
# ---------------------------------------------------------------------------


def import_tf():
  """Imports TensorFlow with all GPUs hidden from it; returns the module."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "source='tfds' needs tensorflow (pip install tensorflow-cpu); or use "
        "--config.input.source=npz.") from e
  try:
    # TF must never grab accelerator memory: JAX owns the device.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # Devices were already initialised (then this was done earlier).
  return tf


def import_tfds():
  import_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


# The host's S x S rule, shared by the streaming path (`streaming` re-exports
# it) and in-memory datasets of varying image size.


def default_resize(image_size: int) -> int:
  """The shorter side before the centre crop: round(S * 256 / 224), i.e. 256
  for S = 224 (torchvision's Resize(256) + CenterCrop(224))."""
  return int(round(image_size * 256 / 224))


def resize_center_crop(tf, image, resize_size: int, crop_size: int):
  """uint8[H, W, 3] -> uint8[crop, crop, 3]: the shorter side to
  `resize_size` (long side int(size * long / short), as torchvision), bicubic
  antialiased, then the centre crop (offsets round((H' - crop) / 2))."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
  short = tf.minimum(h, w)
  new_h = tf.where(h <= w, resize_size,
                   tf.cast(tf.floor(resize_size * h / short), tf.int32))
  new_w = tf.where(w <= h, resize_size,
                   tf.cast(tf.floor(resize_size * w / short), tf.int32))
  resized = tf.image.resize(image, tf.stack([new_h, new_w]),
                            method="bicubic", antialias=True)
  top = tf.cast(tf.round((new_h - crop_size) / 2), tf.int32)
  left = tf.cast(tf.round((new_w - crop_size) / 2), tf.int32)
  cropped = resized[top:top + crop_size, left:left + crop_size]
  cropped = tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)
  return tf.ensure_shape(cropped, (crop_size, crop_size, 3))


def tfds_where(name: str, data_dir) -> str:
  where = data_dir if data_dir else "the default TFDS data_dir"
  return f"TFDS dataset {name!r} in {where}"


def tfds_missing_message(name: str, data_dir) -> str:
  where = data_dir if data_dir else "the default TFDS data_dir"
  return (
      f"Dataset {name!r} not found as a prepared TFDS dataset in {where} "
      "(read with download=False; nothing is downloaded). Fix: prepare it "
      f"with {_PREPARE_HINT} and pass --config.input.data_dir=/path/to/"
      "tfds_dir, or read the npz directly with --config.input.source=npz "
      "--config.input.npz_path=/path/to/data.npz.")


def tfds_builder(tfds, name: str, data_dir):
  """The dataset's builder (its `info`: features, classes); raises
  DatasetNotFoundError for a name TFDS does not know. Whether the data is
  prepared is found out by reading it (`_tfds_split_to_numpy`), which also
  works under `tfds.testing.mock_data`."""
  try:
    return tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError,
          AssertionError) as e:
    raise DatasetNotFoundError(tfds_missing_message(name, data_dir)) from e


def check_image_classification(builder, name: str, data_dir):
  """The builder's features, after checking they hold "image" and "label"
  (errors.DataError otherwise)."""
  features = builder.info.features
  for key in ("image", "label"):
    if key not in features:
      raise errors.DataError(
          f"{tfds_where(name, data_dir)}: not an image-classification "
          f"dataset (features {sorted(features.keys())}; need 'image' and "
          "'label').")
  return features


def _tfds_split_to_numpy(tfds, builder, name: str, split: str, data_dir,
                         chunk: int = 1024):
  """Materialises a whole split as (uint8[N,H,W,3], int32[N]), reading it in
  batches of `chunk` (no `batch_size=-1`: TFDS's mock data and datasets of
  unknown size can be read this way too)."""
  supervised = builder.info.supervised_keys is not None
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False,
                   as_supervised=supervised, batch_size=chunk,
                   shuffle_files=False)
  except (tfds.core.registered.DatasetNotFoundError, AssertionError,
          FileNotFoundError) as e:
    raise DatasetNotFoundError(tfds_missing_message(name, data_dir)) from e
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    image, label = batch if supervised else (batch["image"], batch["label"])
    images.append(np.asarray(image))
    labels.append(np.asarray(label))
  if not images:
    return (np.zeros((0,) + tuple(builder.info.features["image"].shape),
                     np.uint8), np.zeros((0,), np.int32))
  return (np.concatenate(images).astype(np.uint8, copy=False),
          np.concatenate(labels).astype(np.int32))


def variable_size(features) -> bool:
  """Whether a TFDS image feature has no fixed height or width (its shape
  has None there): such images are not one array until brought to S x S."""
  shape = tuple(features["image"].shape)
  return len(shape) != 3 or shape[0] is None or shape[1] is None


def _tfds_split_resized(tfds, builder, name: str, split: str, data_dir, *,
                        image_size: int, resize_size: int, chunk: int = 256):
  """A split of variable-size images as (uint8[N, S, S, 3], int32[N]), in
  file order, each image decoded and brought to S x S by the streaming
  path's rule (`resize_center_crop`); `tfds.load(batch_size=)`
  would instead zero-pad every chunk to its largest image.

  Raises:
    DatasetNotFoundError: the dataset is not prepared in `data_dir`.
    errors.DataError: an image that cannot be decoded (one line).
  """
  tf = import_tf()
  resize = int(resize_size) or default_resize(int(image_size))
  try:
    ds = builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()})
  except (tfds.core.registered.DatasetNotFoundError, AssertionError,
          FileNotFoundError) as e:
    raise DatasetNotFoundError(tfds_missing_message(name, data_dir)) from e

  def decode(example):
    image = tf.io.decode_image(example["image"], channels=3,
                               expand_animations=False)
    return (resize_center_crop(tf, image, resize, int(image_size)),
            tf.cast(example["label"], tf.int32))

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True).batch(chunk)
  images, labels = [], []
  try:
    for image, label in tfds.as_numpy(ds):
      images.append(image)
      labels.append(label)
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    raise errors.DataError(
        f"{tfds_where(name, data_dir)}, split {split!r}: an image that "
        f"cannot be read near example {chunk * len(images)}: "
        f"{' '.join(str(e).split())[:300]}") from None
  if not images:
    return (np.zeros((0, image_size, image_size, 3), np.uint8),
            np.zeros((0,), np.int32))
  logging.info(
      "%s, split %r: %d images of varying size brought to %d x %d (shorter "
      "side %d, centre crop; config.input.image_size / resize_size), as the "
      "streaming path does.", tfds_where(name, data_dir), split,
      sum(len(l) for l in labels), image_size, image_size, resize)
  return np.concatenate(images), np.concatenate(labels)


def _unreachable(url: str, timeout: float = 10.0) -> Optional[str]:
  """None if a server answers for `url` (any HTTP status), else why not
  (one line): one attempt, no retries."""
  import urllib.error  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top
  try:
    urllib.request.build_opener().open(  # the proxy settings of now
        urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
  except urllib.error.HTTPError:
    return None  # the server answered; the download says what it thinks
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    return f"{type(e).__name__}: {' '.join(str(reason).split())}"
  return None


def cifar10_missing_message(npz_path, data_dir, reason: str,
                            where: str = "") -> str:
  """The one line of an offline first run without the CIFAR-10 npz
  (`where`: the TFDS folder looked in)."""
  where = where or data_dir or "the default TFDS data_dir"
  build = "tfds build cifar10" + (f" --data_dir={data_dir}" if data_dir
                                  else "")
  return (
      f"CIFAR-10 not found: no npz file at {npz_path} "
      f"(--config.input.npz_path), no prepared TFDS cifar10 in {where}, and "
      f"it cannot be downloaded now ({reason}). Fix: online, run `{build}` "
      "once (or rerun this command online: it downloads and prepares it), "
      "or pass --config.input.npz_path=/path/to/cifar10.npz (keys "
      "train_images, train_labels, test_images, test_labels).")


def load_cifar10_tfds(data_dir=None, *, missing_npz: str = "") -> Dataset:
  """CIFAR-10 from TFDS `cifar10`, in the original CIFAR order.

  Used when the offline npz (`../shared/data/cifar10.npz`) is absent: read
  from `data_dir` (None: TFDS's default) when prepared there, else
  downloaded and prepared first (online; `tfds build cifar10` does the
  same). TFDS stores the examples shuffled; each carries its original index
  in its id ("train_01234"), so the splits are put back in the original
  order, which `official_search_splits` needs. The pixels are the exact
  Toronto release (the npz's carry JPEG error), so the fingerprint differs
  from the npz's.

  Args:
    data_dir: the TFDS data_dir.
    missing_npz: the npz path that was not found, for the message.

  Returns:
    A Dataset "cifar10": train uint8[50000, 32, 32, 3], test [10000, ...].

  Raises:
    DatasetNotFoundError: not prepared and it cannot be downloaded (one
      line naming `tfds build cifar10` and --config.input.npz_path).
    errors.DataError: the prepared ids are not the indices 0..N-1.
  """
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  tfds = import_tfds()
  builder = tfds.builder("cifar10", data_dir=data_dir)
  # Prepared = its dataset_info.json is written last (`is_prepared` would
  # log a warning about the folder on the console first).
  info = os.path.join(str(builder.data_dir), "dataset_info.json")
  if not import_tf().io.gfile.exists(info):
    reason = _unreachable(CIFAR10_URL)
    if reason:
      raise DatasetNotFoundError(cifar10_missing_message(
          missing_npz, data_dir, reason, str(builder.data_dir)))
    logging.warning("CIFAR-10: no npz at %s; downloading and preparing TFDS "
                    "cifar10 into %s (once, ~170 MB).", missing_npz,
                    builder.data_dir)
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetNotFoundError(cifar10_missing_message(
          missing_npz, data_dir, f"{type(e).__name__}: "
          f"{' '.join(str(e).split())[:200]}", str(builder.data_dir))) from e
  arrays = []
  for split in ("train", "test"):
    ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=4096)
    ids, images, labels = [], [], []
    for batch in tfds.as_numpy(ds):
      ids.extend(int(bytes(i).decode().rsplit("_", 1)[-1])
                 for i in batch["id"])
      images.append(batch["image"])
      labels.append(batch["label"])
    order = np.argsort(np.asarray(ids, np.int64), kind="stable")
    if not np.array_equal(np.asarray(ids)[order], np.arange(len(ids))):
      raise errors.DataError(
          f"{tfds_where('cifar10', data_dir)}, split {split!r}: the example "
          "ids are not the original indices 0..N-1; prepare it again with "
          "`tfds build cifar10`.")
    arrays += [np.concatenate(images)[order], np.concatenate(labels)[order]]
  logging.info("CIFAR-10 read from %s (no npz at %s), original order "
               "restored from the ids.", tfds_where("cifar10", data_dir),
               missing_npz)
  return from_arrays("cifar10", *arrays)


def tfds_test_images(config, num: int, *, streams: bool = False,
                     scan: int = 10_000) -> Tuple[np.ndarray, str]:
  """The first test image of classes 0, 1, ... of a TFDS `config.input`
  (then the next images in file order, as for an npz), as a run reads them.

  The evaluation split is the one the run evaluates on: for a streamed
  input `config.tfds_eval_split` (default "validation", else "test"), held
  in memory "test" (else "validation"). The images have the data's own size
  (fixed-size datasets in memory), or S x S by the streaming rule (streamed
  inputs and datasets of varying image size; `resize_center_crop`). Only
  the labels of the first `scan` examples are read, and only the `num`
  picked images decoded.

  Args:
    config: a `config.input` section with source="tfds".
    num: the number of images N.
    streams: whether the run streams this input
      (`streaming.wants_streaming(config)`).
    scan: examples looked at for the first image of each class.

  Returns:
    (uint8[n, H, W, 3] with n = min(N, examples scanned), a one-line
    description of where they come from).

  Raises:
    DatasetNotFoundError, errors.DataError: as `load_dataset` / the stream.
  """
  name = str(_cfg_get(config, "name", "cifar10"))
  data_dir = _cfg_get(config, "data_dir", None) or None
  if data_dir and "://" not in str(data_dir):
    data_dir = os.path.expanduser(str(data_dir))
  tfds = import_tfds()
  tf = import_tf()
  builder = tfds_builder(tfds, name, data_dir)
  features = check_image_classification(builder, name, data_dir)
  known = set(builder.info.splits.keys())
  split = str(_cfg_get(config, "tfds_eval_split", "") or "") if streams else ""
  if not split:
    order = ("validation", "test") if streams else ("test", "validation")
    split = (next((s for s in order if s in known), order[0]) if known
             else _tfds_test_split(tfds, name, data_dir, known))
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  labels = np.concatenate([np.zeros((0,), np.int64)] + list(tfds.as_numpy(
      ds.take(scan).map(lambda ex: ex["label"]).batch(1024))))
  firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
  rest = np.setdiff1d(np.arange(len(labels)), firsts).tolist()
  picked = (firsts + rest)[:num]
  resize = streams or variable_size(features)
  size = int(_cfg_get(config, "image_size", 224))
  short = int(_cfg_get(config, "resize_size", 0)) or default_resize(
      size)
  by_index = {}
  wanted = tf.constant(np.asarray(picked, np.int64))
  chosen = ds.take(scan).enumerate().filter(
      lambda i, ex: tf.reduce_any(tf.equal(i, wanted)))
  for i, example in tfds.as_numpy(chosen):
    image = tf.io.decode_image(example["image"], channels=3,
                               expand_animations=False)
    if resize:
      image = resize_center_crop(tf, image, short, size)
    by_index[int(i)] = np.asarray(image, np.uint8)
  images = np.stack([by_index[i] for i in picked])
  rule = f", brought to {size}x{size} as the run reads them" if resize else ""
  return images, (f"the first test image of each class of "
                  f"{tfds_where(name, data_dir)}, split {split!r}{rule}")


def _tfds_test_split(tfds, name: str, data_dir, known) -> str:
  """"test", else "validation": from the builder's split list when it has
  one, else by trying to read the split (TFDS mock data lists none)."""
  if known:
    for split in ("test", "validation"):
      if split in known:
        return split
    raise DatasetNotFoundError(
        f"TFDS dataset {name!r} in {data_dir} has splits {sorted(known)}; "
        "need 'train' and 'test' (or 'validation').")
  for split in ("test", "validation"):
    try:
      tfds.load(name, split=split, data_dir=data_dir, download=False)
      return split
    except Exception:  # pylint: disable=broad-except
      continue
  return "test"  # reading it reports the problem


def _load_tfds(name: str, data_dir, *, image_size: int = 224,
               resize_size: int = 0) -> Dataset:
  """Any TFDS image-classification dataset, whole in memory: `num_classes`
  from the label feature, the image size from the data, and the mean/std
  from the published constants (CIFAR, ImageNet) or else the training
  images' channel statistics.

  A dataset whose image feature has no fixed size (shape (None, None, 3):
  oxford_flowers102, caltech101, food101, ...) is brought to `image_size`
  x `image_size` by the streaming path's rule (`resize_center_crop`: the
  shorter side to `resize_size`, 0 = round(S * 256 / 224), bicubic
  antialiased, centre crop), image by image, so the arrays equal what
  `pipeline="stream"` would feed (never zero-padded)."""
  if name.startswith("imagenet"):
    raise errors.ConfigError(
        f"{name!r} is too large to hold in memory; stream it with "
        "--config.input.pipeline=stream (or auto).")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  tfds = import_tfds()
  builder = tfds_builder(tfds, name, data_dir)
  features = check_image_classification(builder, name, data_dir)
  test_split = _tfds_test_split(tfds, name, data_dir,
                                set(builder.info.splits.keys()))
  if variable_size(features):
    rule = dict(image_size=int(image_size), resize_size=int(resize_size))
    train = _tfds_split_resized(tfds, builder, name, "train", data_dir, **rule)
    test = _tfds_split_resized(tfds, builder, name, test_split, data_dir,
                               **rule)
  else:
    train = _tfds_split_to_numpy(tfds, builder, name, "train", data_dir)
    test = _tfds_split_to_numpy(tfds, builder, name, test_split, data_dir)
  num_classes = getattr(features["label"], "num_classes", None)
  num_classes = int(num_classes) if num_classes else None
  try:
    return from_arrays(name, *train, *test, num_classes=num_classes)
  except errors.DataError as e:
    raise errors.DataError(f"{tfds_where(name, data_dir)}: {e}") from e


# ---------------------------------------------------------------------------
# Splits and subsets.
# ---------------------------------------------------------------------------


def official_search_splits(train: Split, *,
                           allow_small: bool = False) -> Dict[str, Split]:
  """The official DeepAA CIFAR search splits (spec §2.2), deterministic.

  The official code shuffles an index array and then ignores it, so the splits
  follow the original CIFAR order: pretrain = train[0:5000], search =
  train[5000:40000], val = train[40000:50000]. (The paper instead speaks of "a
  subset of 4,000 randomly selected samples"; see `random_subset`.)

  Args:
    train: the full CIFAR training split in its original order, 50,000
      examples (e.g. from `cifar10.npz`; NOT a TFDS build written with
      shuffling, whose order differs).
    allow_small: for tests and toy data only: accept any size N >= 10 and use
      the same proportions, pretrain = [0, N//10), search = [N//10, 4N//5),
      val = [4N//5, N).

  Returns:
    {"pretrain": Split, "search": Split, "val": Split}, views (no copies) of
    `train`.

  Raises:
    errors.DataError: `train` does not have exactly 50,000 examples and
      `allow_small` is False (or has fewer than 10).
  """
  n = train.size
  if n == CIFAR_TRAIN_SIZE:
    ranges = OFFICIAL_SEARCH_RANGES
  elif allow_small:
    if n < 10:
      raise errors.DataError(
          f"official_search_splits needs >= 10 examples, got {n}.")
    a, b = n * 5_000 // CIFAR_TRAIN_SIZE, n * 40_000 // CIFAR_TRAIN_SIZE
    ranges = {"pretrain": (0, a), "search": (a, b), "val": (b, n)}
  else:
    raise errors.DataError(
        f"official_search_splits expects the full 50,000-image CIFAR training "
        f"split in its original order, got {n} examples (a train_subset, or "
        "another dataset?). Load with train_subset=0 and use "
        "dataset.splits['train'] (or 'train_full'); pass allow_small=True only "
        "for toy data (the same proportions are used).")
  return {key: Split(train.images[lo:hi], train.labels[lo:hi])
          for key, (lo, hi) in ranges.items()}


# How subset errors name the size, seed and balance: the API arguments, or,
# through `load_dataset`, the config fields.
_API_SUBSET_NAMES = {"n": "n", "class_balanced": "class_balanced"}
_CONFIG_SUBSET_NAMES = {"n": "config.input.train_subset",
                        "class_balanced": "config.input.subset_class_balanced"}


def random_subset_indices(labels: np.ndarray, n: int, seed: int, *,
                          class_balanced: bool = True,
                          num_classes: Optional[int] = None) -> np.ndarray:
  """Indices of a deterministic random subset, sorted ascending.

  Args:
    labels: int[N].
    n: subset size, 0 < n <= N.
    seed: non-negative integer seed; the result is a pure function of
      (labels, n, seed, class_balanced, num_classes).
    class_balanced: if True, every class gets n // C images and n % C
      randomly chosen classes get one more (C = num_classes, or the number of
      distinct labels); if False, n indices are drawn uniformly without
      replacement.
    num_classes: C for the balanced draw; default: the labels present.

  Returns:
    int64[n], sorted, unique indices into `labels`.

  Raises:
    errors.DataError: n is not in [1, N], or a class has fewer images than
      its balanced quota.
    ValueError: seed < 0.
  """
  return _subset_indices(labels, n, seed, class_balanced=class_balanced,
                         num_classes=num_classes, names=_API_SUBSET_NAMES)


def _subset_indices(labels, n: int, seed: int, *, class_balanced: bool,
                    num_classes: Optional[int],
                    names: Mapping[str, str]) -> np.ndarray:
  """`random_subset_indices`; messages call n and class_balanced `names`."""
  labels = np.asarray(labels)
  total = labels.shape[0]
  if not 0 < n <= total:
    raise errors.DataError(
        f"subset size {names['n']}={n} must be in [1, {total}]: the split "
        f"has {total} examples.")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}.")
  rng = np.random.default_rng([int(seed), _TAG_SUBSET])
  if not class_balanced:
    return np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64)
  classes = (np.arange(num_classes) if num_classes is not None
             else np.unique(labels))
  per_class, remainder = divmod(n, len(classes))
  quota = np.full(len(classes), per_class)
  quota[rng.choice(len(classes), size=remainder, replace=False)] += 1
  chosen = []
  for c, q in zip(classes, quota):
    members = np.flatnonzero(labels == c)
    if members.size < q:
      raise errors.DataError(
          f"{names['n']}={n} with {names['class_balanced']}=True needs {q} "
          f"images of class {c}, but the split has only {members.size}; set "
          f"{names['class_balanced']}=False (a uniform draw) or a smaller "
          f"{names['n']}.")
    chosen.append(rng.choice(members, size=q, replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def random_subset(split: Split, n: int, seed: int, *,
                  class_balanced: bool = True,
                  num_classes: Optional[int] = None) -> Split:
  """The paper's "n randomly selected samples" (e.g. n = 4,000), as a copy.

  Class-balanced by default (n // C per class, the remainder spread over
  randomly chosen classes), which removes the class-frequency noise of a
  uniform draw; `class_balanced=False` gives a uniform draw without
  replacement. The examples keep their original relative order.

  Args:
    split: the split to draw from.
    n: subset size.
    seed: non-negative integer seed (independent of the batching seed stream).
    class_balanced: see `random_subset_indices`.
    num_classes: see `random_subset_indices`.

  Returns:
    A Split with n examples: uint8[n, H, W, 3] images, int32[n] labels.
  """
  return split.take(random_subset_indices(
      split.labels, n, seed, class_balanced=class_balanced,
      num_classes=num_classes))


# ---------------------------------------------------------------------------
# Batching.
# ---------------------------------------------------------------------------


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
  """Number of batches in one epoch of n examples."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  return n // batch_size if drop_last else -(-n // batch_size)


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: int64[n], a pure function of its args."""
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}.")
  rng = np.random.default_rng([int(seed), int(epoch), _TAG_BATCHES])
  return rng.permutation(n)


def batches(
    split: Split,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = True,
    start_step: int = 0,
) -> Iterator[Dict[str, np.ndarray]]:
  """Iterates over one epoch of `split` in batches.

  The order is `epoch_permutation(split.size, seed=seed, epoch=epoch)` (or the
  stored order if `shuffle=False`), so it depends only on (seed, epoch), and a
  run resumed at step k of an epoch continues exactly where it stopped:
  `batches(..., start_step=k)` yields batches k, k+1, ... without building the
  first k.

  Args:
    split: the examples.
    batch_size: B > 0.
    seed: non-negative integer seed.
    epoch: non-negative epoch index.
    shuffle: permute the examples (per epoch) or keep the stored order.
    drop_last: drop the final partial batch (the official evaluation
      training uses drop_last=True, spec §4.3).
    start_step: number of batches of this epoch to skip, in
      [0, steps_per_epoch].

  Returns:
    An iterator of {"image": uint8[B, H, W, 3], "label": int32[B]} (the last
    batch may be smaller when drop_last=False). Batches are copies.

  Raises:
    ValueError: bad batch_size / seed / epoch / start_step, or drop_last=True
      with fewer than batch_size examples (the epoch would be empty).
  """
  n = split.size
  num_steps = steps_per_epoch(n, batch_size, drop_last)
  if drop_last and num_steps == 0:
    raise ValueError(
        f"The split has {n} examples, fewer than batch_size={batch_size}, so "
        "an epoch with drop_last=True would be empty; use a smaller batch or "
        "drop_last=False.")
  if not 0 <= start_step <= num_steps:
    raise ValueError(
        f"start_step must be in [0, {num_steps}], got {start_step}.")
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}.")
  order = (epoch_permutation(n, seed=seed, epoch=epoch) if shuffle
           else np.arange(n))

  def generate():
    for step in range(start_step, num_steps):
      idx = order[step * batch_size:(step + 1) * batch_size]
      yield {"image": split.images[idx], "label": split.labels[idx]}

  return generate()


# ---------------------------------------------------------------------------
# Device-side normalisation.
# ---------------------------------------------------------------------------


def normalize(images, mean: Sequence[float], std: Sequence[float]):
  """Standardises images: (images / 255 - mean) / std, per channel.

  Pure and jit-compatible; use it on the device after augmentation.

  Args:
    images: uint8[..., 3] or float[..., 3] with values in [0, 255] (float
      inputs use the same [0, 255] scale as uint8, not [0, 1]). numpy or jax.
    mean: 3 per-channel means in [0, 1] units.
    std: 3 per-channel stds in [0, 1] units.

  Returns:
    float32[..., 3]; a numpy array for numpy input, else a jax array.
  """
  if isinstance(images, np.ndarray):
    xp = np
  else:
    import jax.numpy as xp  # pylint: disable=g-import-not-at-top
  mean = xp.asarray(mean, dtype=xp.float32)
  std = xp.asarray(std, dtype=xp.float32)
  x = xp.asarray(images).astype(xp.float32) / xp.float32(255.0)
  return (x - mean) / std
