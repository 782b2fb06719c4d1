"""Streaming input for datasets larger than host memory (ImageNet, big TFDS sets).

`input_pipeline` holds a whole dataset in host memory, which is exact and fast
for CIFAR (150 MB) and impossible for ImageNet (150 GB). This module reads a
prepared TFDS dataset with `tf.data` instead, a batch at a time:

* **Why tf.data, not grain.** A TFDS dataset prepared the usual way (and every
  ImageNet copy on a TPU VM) is TFRecord; grain's random access needs the
  ArrayRecord format, i.e. re-preparing 150 GB. tf.data reads both, is already
  a dependency (TFDS needs it), and its pipelines are deterministic when seeded.
  Exact resume does not need a checkpointable iterator here: the order of an
  epoch is a pure function of (seed, epoch, process), so a resumed run rebuilds
  the epoch's stream and skips the consumed records *before decoding them*.
* **Per process.** Process p of P reads only `tfds.even_splits(split, P)[p]`
  (its own files/records); its rows of each global batch of B are a local
  batch of B / P from that shard, `parallel.from_process_local` assembles them.
* **Host side** (tf.data, parallel): decode the JPEG/PNG, resize the shorter
  side to `resize_size` (bicubic, antialiased, aspect kept) and centre-crop
  S x S; uint8. Training and evaluation use this one rule (for S = 224:
  resize 256 / centre crop 224, the official *test* pipeline, spec §4.3).
  **Deviation:** the official *training* pipeline applies the policy to the
  full-resolution image and centre pads/crops to 224 without resizing
  (spec §2.12, §4.3); JAX's static shapes need one S x S per batch, so the
  policy runs on the S x S image (its RandResizeCrop resizes to S).
* **Device side:** the policy is applied per example with keys from the
  example's row of the global batch, exactly as for the in-memory path
  (`train.augment_batch`); normalisation too.
* **Bad input** ends with one `errors.DataError` line naming the dataset, the
  split and where in the stream it happened: a dataset not prepared in
  `data_dir`, a missing split, a corrupt record, an image that cannot be
  decoded. The training loop saves its state before re-raising it.

Public: `StreamingDataset`, `open_streaming`, `open_dataset` (chooses the
in-memory or the streaming path from `config.input.pipeline`), `prefetch`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

from absl import logging
import numpy as np

from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import utils

PIPELINES = ("auto", "memory", "stream")
# `pipeline="auto"` streams ImageNet and any TFDS dataset whose prepared size
# exceeds this many bytes; the rest is loaded whole (exact, fast).
AUTO_STREAM_BYTES = 4 << 30
_TAG_ORDER = 0x6f72646572  # "order": the seed stream of the epoch orders


# The S x S rule of the host (`input_pipeline`, which also applies it to
# in-memory datasets of varying image size), re-exported here.
default_resize = input_pipeline.default_resize
resize_center_crop = input_pipeline.resize_center_crop


# ---------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """A TFDS split spec ("train", "train[:200000]", "validation") and its size."""
  spec: str
  size: int


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingDataset:
  """A prepared TFDS dataset read a batch at a time (never whole).

  Attributes:
    name: TFDS name, e.g. "imagenet2012".
    data_dir: TFDS data_dir (None: TFDS's default); any path TFDS reads,
      gs:// included.
    version: the prepared version ("5.1.0").
    num_classes: C, from the label feature.
    train: the training split and its size N.
    test: the evaluation split and its size.
    image_size: S; every batch is uint8[B, S, S, 3].
    resize_size: the shorter side before the centre crop (>= S).
    mean, std: per-channel normalisation constants in [0, 1] units.
    shuffle_buffer: examples in tf.data's shuffle buffer (encoded bytes).
  """
  name: str
  data_dir: Optional[str]
  version: str
  num_classes: int
  train: StreamSplit
  test: StreamSplit
  image_size: int
  resize_size: int
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  shuffle_buffer: int = 10_000

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  @property
  def where(self) -> str:
    return input_pipeline.tfds_where(self.name, self.data_dir)

  def fingerprint(self) -> str:
    """16 hex digits identifying what a run reads: name, version, split specs
    and sizes, classes and the S x S rule. Unlike the in-memory
    `Dataset.fingerprint` it does not hash the pixels (150 GB); a dataset
    re-prepared under the same name and version with the same split sizes is
    taken to be the same."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(
        ["stream", self.name, self.version, self.num_classes,
         self.train.spec, self.train.size, self.test.spec, self.test.size,
         self.image_size, self.resize_size]).encode())
    return h.hexdigest()

  # -- Reading. -------------------------------------------------------------

  def steps_per_epoch(self, batch_size: int, process_count: int = 1) -> int:
    """Full global batches per epoch: every process has N // P examples
    (`even_splits` with drop_remainder) and takes B / P of them per step."""
    return (self.train.size // process_count) // (batch_size // process_count)

  def train_batches(self, batch_size: int, *, seed: int, epoch: int,
                    start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
    """This process's rows of the global batches of one epoch, from a step.

    The epoch's order is a pure function of (seed, epoch, process): file
    order and shuffle buffer are seeded from it, so starting at `start_step`
    yields exactly the batches an uninterrupted epoch yields from there (the
    skipped records are read but not decoded).

    Args:
      batch_size: the global batch B (divisible by `process_count`).
      seed, epoch: the order's seeds.
      start_step: first step of the epoch to yield.
      process_index, process_count: this process and the number of them.

    Yields:
      {"image": uint8[B/P, S, S, 3], "label": int32[B/P]}, drop_last.

    Raises:
      errors.DataError: a corrupt record or an undecodable image (one line).
    """
    local = batch_size // process_count
    order_seed = int(np.random.SeedSequence(
        [_TAG_ORDER, seed, epoch, process_index]).generate_state(1)[0]
                     & 0x7FFFFFFF)
    spe = self.steps_per_epoch(batch_size, process_count)
    if start_step >= spe:
      return
    ds = self._read(self._process_spec(self.train.spec, process_index,
                                       process_count, drop_remainder=True),
                    shuffle_seed=order_seed)
    tf = input_pipeline.import_tf()
    ds = ds.shuffle(self.shuffle_buffer, seed=order_seed,
                    reshuffle_each_iteration=False)
    ds = ds.take(spe * local).skip(start_step * local)
    ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    where = (f"{self.where}, split {self.train.spec!r}, epoch {epoch}, "
             f"process {process_index}")
    yield from self._numpy(ds, where, first_example=start_step * local,
                           batch=local)

  def eval_batches(self, batch_size: int, *, process_index: int = 0,
                   process_count: int = 1
                   ) -> Iterator[Dict[str, np.ndarray]]:
    """The whole evaluation split in file order, padded, this process's rows.

    Every process yields the same number of batches (padding rows have
    mask 0), so the global evaluation step runs in lockstep.

    Yields:
      {"image": uint8[B/P, S, S, 3], "label": int32[B/P], "mask":
      float32[B/P]} (mask 1 for real examples).
    """
    local = batch_size // process_count
    ds = self._read(self._process_spec(self.test.spec, process_index,
                                       process_count, drop_remainder=False),
                    shuffle_seed=None)
    tf = input_pipeline.import_tf()
    ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local).prefetch(tf.data.AUTOTUNE)
    per_process = -(-self.test.size // process_count)
    num_batches = -(-per_process // local)
    where = f"{self.where}, split {self.test.spec!r}, process {process_index}"
    batches = self._numpy(ds, where, first_example=0, batch=local)
    empty = {"image": np.zeros((0,) + self.image_shape, np.uint8),
             "label": np.zeros((0,), np.int32)}
    for _, batch in zip(range(num_batches),
                        itertools.chain(batches, itertools.repeat(empty))):
      n = batch["label"].shape[0]
      pad = local - n
      yield {"image": np.pad(batch["image"], ((0, pad),) + ((0, 0),) * 3),
             "label": np.pad(batch["label"], (0, pad)),
             "mask": np.concatenate([np.ones(n, np.float32),
                                     np.zeros(pad, np.float32)])}

  def split_size(self, spec: str) -> int:
    """Examples in the TFDS split spec `spec` ("train[200000:210000]")."""
    tfds = input_pipeline.import_tfds()
    builder = input_pipeline.tfds_builder(tfds, self.name, self.data_dir)
    return _split_size(builder, tfds, self.name, self.data_dir, spec)

  def take(self, count: int, *, spec: Optional[str] = None) -> input_pipeline.Split:
    """The first `count` examples of a split (default: the training split),
    at S x S, in memory: e.g. the search pools (a few thousand images)."""
    spec = spec or self.train.spec
    ds = self._read(spec, shuffle_seed=None).take(count)
    tf = input_pipeline.import_tf()
    ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    images, labels = [], []
    for batch in self._numpy(ds, f"{self.where}, split {spec!r}",
                             first_example=0, batch=256):
      images.append(batch["image"])
      labels.append(batch["label"])
    if not images or sum(len(l) for l in labels) < count:
      got = sum(len(l) for l in labels)
      raise errors.DataError(
          f"{self.where}: split {spec!r} has {got} examples; {count} needed.")
    return input_pipeline.Split(np.concatenate(images), np.concatenate(labels))

  # -- Internals. -----------------------------------------------------------

  @staticmethod
  def _process_spec(spec: str, index: int, count: int, *,
                    drop_remainder: bool) -> str:
    if count == 1:
      return spec
    tfds = input_pipeline.import_tfds()
    return tfds.even_splits(spec, n=count,
                            drop_remainder=drop_remainder)[index]

  def _read(self, spec, *, shuffle_seed: Optional[int]):
    """Encoded examples of `spec` ({"image": bytes, "label": int64})."""
    tfds = input_pipeline.import_tfds()
    tf = input_pipeline.import_tf()
    builder = input_pipeline.tfds_builder(tfds, self.name, self.data_dir)
    # File-level shuffling (seeded) unless the dataset was stored ordered
    # (`disable_shuffling`, which TFDS then refuses); the shuffle buffer
    # shuffles either way.
    shuffle_files = (shuffle_seed is not None
                     and not getattr(builder.info, "disable_shuffling", False))
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, try_autocache=False,
        interleave_cycle_length=16 if shuffle_files else 1)
    ds = _encoded(builder, tfds, self.name, self.data_dir, spec,
                  shuffle_files=shuffle_files, read_config=read_config)
    options = tf.data.Options()
    options.deterministic = True  # parallel map/interleave keep the order
    ds = ds.with_options(options)
    return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})

  def _decode(self, example):
    """Encoded example -> uint8[S, S, 3]: decode, resize the shorter side to
    `resize_size` (bicubic, antialiased), centre crop S (torchvision's
    round-half-even offsets)."""
    tf = input_pipeline.import_tf()
    image = tf.io.decode_image(example["image"], channels=3,
                               expand_animations=False)
    return {"image": resize_center_crop(tf, image, self.resize_size,
                                        self.image_size),
            "label": tf.cast(example["label"], tf.int32)}

  @staticmethod
  def _numpy(ds, where: str, *, first_example: int, batch: int):
    """tf.data batches as numpy, TF's data errors as one DataError line."""
    tf = input_pipeline.import_tf()
    done = 0
    iterator = iter(ds)
    while True:
      try:
        item = next(iterator)
      except StopIteration:
        return
      except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
              tf.errors.OutOfRangeError, tf.errors.NotFoundError) as e:
        first = first_example + done * batch
        kind = ("a corrupt record" if isinstance(e, tf.errors.DataLossError)
                else "an image that cannot be decoded"
                if "decode" in str(e).lower() or "image" in str(e).lower()
                else "unreadable data")
        raise errors.DataError(
            f"{where}: {kind} among examples {first}..{first + batch - 1} of "
            f"this stream: {_one_line(e)}") from None
      done += 1
      yield {k: v.numpy() for k, v in item.items()}


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return text[:400] + ("..." if len(text) > 400 else "")


def _encoded(builder, tfds, name: str, data_dir, spec: str, **kwargs):
  """`builder.as_dataset(split=spec)` with the images left encoded; TFDS's
  errors as one line: DatasetNotFoundError (not prepared in `data_dir`) or
  DataError (an unknown split or a bad slice)."""
  try:
    return builder.as_dataset(
        split=spec, decoders={"image": tfds.decode.SkipDecoding()}, **kwargs)
  except (tfds.core.registered.DatasetNotFoundError, AssertionError,
          FileNotFoundError) as e:
    raise errors.DatasetNotFoundError(
        input_pipeline.tfds_missing_message(name, data_dir)) from e
  except (ValueError, KeyError) as e:
    raise errors.DataError(
        f"{input_pipeline.tfds_where(name, data_dir)}: no split {spec!r} "
        f"({_one_line(e)}); set config.input.tfds_train_split / "
        "tfds_eval_split.") from e


def _split_size(builder, tfds, name: str, data_dir, spec: str) -> int:
  """Examples in `spec`: from the prepared dataset's info, else (TFDS mock
  data, info without split sizes) from the stream's cardinality or a count
  of the encoded records."""
  try:
    return int(builder.info.splits[spec].num_examples)
  except (KeyError, ValueError, AssertionError):
    pass
  ds = _encoded(builder, tfds, name, data_dir, spec, shuffle_files=False)
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _eval_spec(builder, tfds, name: str, data_dir, requested: str) -> str:
  if requested:
    return requested
  known = set(builder.info.splits.keys())
  for spec in ("validation", "test"):
    if not known or spec in known:
      try:
        _split_size(builder, tfds, name, data_dir, spec)
        return spec
      except errors.DatasetNotFoundError:
        raise
      except errors.DataError:
        continue
  raise errors.DataError(
      f"{input_pipeline.tfds_where(name, data_dir)} has no 'validation' or "
      f"'test' split (has {sorted(known)}); set config.input.tfds_eval_split.")


# ---------------------------------------------------------------------------
# Opening.
# ---------------------------------------------------------------------------


def _stats_path(stats_dir) -> Optional[Any]:
  return None if stats_dir is None else utils.resolve_path(
      stats_dir) / "input_stats.json"


def _normalization(dataset: StreamingDataset, config, stats_dir
                   ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """Published constants for known names; else the channel statistics of
  the first `config.stats_images` training images at S x S, computed once
  and cached in `stats_dir/input_stats.json` (keyed by the fingerprint)."""
  try:
    return input_pipeline.normalization_constants(dataset.name)
  except ValueError:
    pass  # no published constants: measure them
  path = _stats_path(stats_dir)
  cached = utils.read_json(path) if path is not None else None
  if cached and cached.get("fingerprint") == dataset.fingerprint():
    return tuple(cached["mean"]), tuple(cached["std"])
  count = min(int(config.stats_images), dataset.train.size)
  split = dataset.take(count)
  mean, std = input_pipeline.channel_stats(split.images)
  logging.info("Normalisation of %s from %d training images: mean %s, std "
               "%s%s", dataset.name, count, np.round(mean, 4),
               np.round(std, 4), f" (cached in {path})" if path else "")
  if path is not None:
    utils.write_json(path, {"fingerprint": dataset.fingerprint(),
                            "images": count, "mean": list(mean),
                            "std": list(std)})
  return tuple(mean), tuple(std)


def open_streaming(config, *, stats_dir=None) -> StreamingDataset:
  """Opens `config` (the `config.input` section) for streaming.

  Reads only the dataset's info (and, for mock/unsized data, counts records):
  nothing is decoded except, for a dataset without published normalisation
  constants, `config.stats_images` images once (cached in `stats_dir`).

  Raises:
    errors.DatasetNotFoundError: the dataset is not prepared in data_dir.
    errors.DataError: a missing split, or not an image-classification set.
  """
  name = str(config.name)
  data_dir = config.data_dir or None
  if data_dir and "://" not in str(data_dir):
    data_dir = os.path.expanduser(str(data_dir))
  tfds = input_pipeline.import_tfds()
  builder = input_pipeline.tfds_builder(tfds, name, data_dir)
  features = input_pipeline.check_image_classification(builder, name,
                                                       data_dir)
  num_classes = getattr(features["label"], "num_classes", None)
  if not num_classes:
    raise errors.DataError(
        f"{input_pipeline.tfds_where(name, data_dir)}: the label feature has "
        "no num_classes; set config.model.num_classes.")
  train_spec = str(config.tfds_train_split)
  train = StreamSplit(train_spec, _split_size(builder, tfds, name, data_dir,
                                              train_spec))
  test_spec = _eval_spec(builder, tfds, name, data_dir,
                         str(config.tfds_eval_split))
  test = StreamSplit(test_spec, _split_size(builder, tfds, name, data_dir,
                                            test_spec))
  for split in (train, test):
    if split.size == 0:
      raise errors.DataError(f"{input_pipeline.tfds_where(name, data_dir)}: "
                             f"split {split.spec!r} has no examples.")
  size = int(config.image_size)
  dataset = StreamingDataset(
      name=name, data_dir=data_dir, version=str(builder.version),
      num_classes=int(num_classes), train=train, test=test, image_size=size,
      resize_size=int(config.resize_size) or default_resize(size),
      mean=(0.0,) * 3, std=(1.0,) * 3,
      shuffle_buffer=int(config.shuffle_buffer))
  mean, std = _normalization(dataset, config, stats_dir)
  return dataclasses.replace(dataset, mean=tuple(map(float, mean)),
                             std=tuple(map(float, std)))


def wants_streaming(config) -> bool:
  """Whether `config.input` selects the streaming path: pipeline="stream",
  or "auto" with a TFDS ImageNet or a prepared dataset larger than
  AUTO_STREAM_BYTES (its info's dataset_size)."""
  pipeline = str(config.pipeline)
  if pipeline != "auto" or config.source != "tfds":
    return pipeline == "stream"
  if str(config.name).startswith("imagenet"):
    return True
  tfds = input_pipeline.import_tfds()
  try:
    size = int(input_pipeline.tfds_builder(tfds, str(config.name),
                        config.data_dir or None).info.dataset_size or 0)
  except (errors.DataError, TypeError, ValueError):
    return False  # reading it in memory reports any problem
  return size > AUTO_STREAM_BYTES


def open_dataset(config, *, stats_dir=None):
  """The dataset of `config.input`: an in-memory `input_pipeline.Dataset`,
  or a `StreamingDataset` when `wants_streaming(config)`."""
  if wants_streaming(config):
    return open_streaming(config, stats_dir=stats_dir)
  return input_pipeline.load_dataset(config)


def is_streaming(dataset) -> bool:
  return isinstance(dataset, StreamingDataset)


def prefetch(iterator: Iterable[Any], put, size: int = 2) -> Iterator[Any]:
  """Applies `put` (e.g. a device transfer) `size` items ahead of use, so
  the host prepares batch t+1 while the device runs step t."""
  queue = collections.deque()
  iterator = iter(iterator)
  failure = None

  def fill(count):
    nonlocal failure
    try:
      for item in itertools.islice(iterator, count):
        queue.append(put(item))
    except Exception as e:  # pylint: disable=broad-except
      failure = e  # raised once the items fetched before it are used

  fill(size)
  while queue:
    yield queue.popleft()
    if failure is None:
      fill(1)
  if failure is not None:
    raise failure


__all__ = ["AUTO_STREAM_BYTES", "PIPELINES", "StreamSplit",
           "StreamingDataset", "default_resize", "is_streaming",
           "open_dataset", "open_streaming", "prefetch",
           "resize_center_crop", "wants_streaming"]
