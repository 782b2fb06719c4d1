r"""Writes an npz dataset as a prepared TFDS directory (offline, no download).

TFDS's own `cifar10` builder only accepts the original binary tarball, which is
not available offline. This writes the offline npz (e.g.
shared/data/cifar10.npz) as a prepared dataset that `tfds.load(name,
data_dir=..., download=False)` and `--config.input.source=tfds` then read.

Usage (from the repository root):

  python experiments/prepare_tfds.py \
    --npz=../shared/data/cifar10.npz --data_dir=/tmp/tfds --disable_shuffling

then train/search with
  --config.input.source=tfds --config.input.data_dir=/tmp/tfds

Takes about 10 s for CIFAR-10 and writes ~136 MB under DATA_DIR/cifar10/3.0.2/.
Without --disable_shuffling the examples are stored in TFDS's own shuffled order
(for cifar10 the order of an official TFDS build); with it, in the npz order
(the original CIFAR order, which `official_search_splits` requires). Either
way `input_pipeline.load_dataset` reads back the same arrays as from the npz
(in TFDS's order when shuffled), so with --disable_shuffling the
`Dataset.fingerprint()` of both sources is the same.

A JPEG dataset at a larger size (a real, decoded-on-the-fly image set for
the streaming path, `configs/cifar10_stream_cpu.py`): under an unregistered
name, `--upscale=2 --encoding=jpeg` stores every image resized 2x with
Pillow's bicubic filter and encoded as a quality-95 JPEG (`--jpeg_quality`),
e.g. CIFAR-10 at 64 x 64 (about 35 s on 2 cores, 125 MB):

  python experiments/prepare_tfds.py --npz=../shared/data/cifar10.npz \
    --data_dir=/tmp/tfds --name=cifar10_jpeg64 --upscale=2 --encoding=jpeg

`write_tfds_from_npz` is importable (`from experiments import prepare_tfds`);
flags are defined only when this file runs as a script.
"""

import io
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

# Allow `python experiments/prepare_tfds.py` without installing the package.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top
from deepaa_jax import errors
from deepaa_jax import input_pipeline
# pylint: enable=g-import-not-at-top

ENCODINGS = ("png", "jpeg")


def upscale_image(image: np.ndarray, factor: int) -> np.ndarray:
  """uint8[H, W, 3] -> uint8[factor * H, factor * W, 3], Pillow's bicubic
  filter (`PIL.Image.resize(..., Image.BICUBIC)`); factor 1 is the identity."""
  if factor == 1:
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  return np.asarray(Image.fromarray(image).resize(
      (w * factor, h * factor), Image.BICUBIC))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  """uint8[H, W, 3] -> JPEG bytes (Pillow, `quality`, its default 4:2:0
  chroma subsampling as in most photo JPEGs)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
  return buffer.getvalue()


def write_tfds_from_npz(
    npz_path: str,
    data_dir: str,
    *,
    name: str = "cifar10",
    version: str = "3.0.2",
    disable_shuffling: bool = False,
    upscale: int = 1,
    encoding: str = "png",
    jpeg_quality: int = 95,
) -> str:
  """Writes an npz dataset as a prepared TFDS dataset (offline; no download).

  Follows the recipe tested in `shared/data/README.md`: for a registered TFDS
  name ("cifar10", "cifar100") the registered feature spec is reused, so the
  registered builder reads the result with `tfds.load(name, data_dir=...,
  download=False)`. Any other name gets a generic spec {id, image, label} and
  is read back through TFDS's read-only builder.

  Args:
    npz_path: archive with train_images uint8[N,H,W,3], train_labels int[N],
      test_images, test_labels, optionally label_names str[C]. For "cifar100"
      it also needs train_coarse_labels and test_coarse_labels.
    data_dir: the TFDS data_dir to write into.
    name: TFDS dataset name.
    version: dataset version; must be the registered version for a registered
      name (3.0.2 for cifar10/cifar100).
    disable_shuffling: False writes examples in TFDS's own shuffled order (for
      cifar10 the same order as an official TFDS build); True keeps the npz
      order on disk.
    upscale: integer factor: every image is stored resized from H x W to
      upscale*H x upscale*W (Pillow bicubic, `upscale_image`). 1 (default)
      stores the npz pixels. Unregistered names only.
    encoding: "png" (default; lossless) or "jpeg" (Pillow, `jpeg_quality`),
      how the images are stored. "jpeg": unregistered names only.
    jpeg_quality: 1..95, the JPEG quality for encoding="jpeg".

  Returns:
    The builder directory, `data_dir/name/version`.

  Raises:
    input_pipeline.DatasetNotFoundError: `npz_path` does not exist.
    errors.DataError: the npz is unreadable or malformed (the checks of
      `input_pipeline.load_npz`, made before anything is written), or lacks
      what the registered feature spec needs.
    FileExistsError: the dataset is already prepared in `data_dir`.
    ValueError: an unsupported registered name/version, encoding, upscale
      or jpeg_quality, or upscale/JPEG for a registered name.
  """
  if encoding not in ENCODINGS:
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}.")
  if not (isinstance(upscale, int) and upscale >= 1):
    raise ValueError(f"upscale must be an integer >= 1, got {upscale!r}.")
  if not 1 <= jpeg_quality <= 95:
    raise ValueError(f"jpeg_quality must be in 1..95, got {jpeg_quality!r}.")
  dataset, data = input_pipeline.load_npz(npz_path, name=name, field="--npz")
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  tfds = input_pipeline.import_tfds()

  extra = {}
  try:
    tfds.builder_cls(name)  # Raises for a name that no builder class has.
    registered = tfds.builder(name)
  except tfds.core.registered.DatasetNotFoundError:
    registered = None
  if registered is not None and (upscale != 1 or encoding != "png"):
    raise ValueError(
        f"{name!r} is a registered TFDS dataset stored as its registered "
        f"spec (PNG, original size); write upscale={upscale} / "
        f"encoding={encoding!r} under another name, e.g. "
        f"'{name}_{encoding}{upscale * dataset.image_shape[0]}'.")
  h, w, c = dataset.image_shape
  image_shape = (h * upscale, w * upscale, c)
  if registered is not None:
    features = registered.info.features
    if str(registered.info.version) != str(version):
      raise ValueError(
          f"{name!r} is a registered TFDS dataset with version "
          f"{registered.info.version}; write it with version="
          f"'{registered.info.version}' so tfds.load can read it.")
    unknown = set(features.keys()) - {"id", "image", "label", "coarse_label"}
    if unknown:
      raise ValueError(
          f"Registered TFDS dataset {name!r} has features {sorted(unknown)} "
          "that an npz cannot provide; use an unregistered name instead.")
    if tuple(features["image"].shape) != dataset.image_shape:
      raise errors.DataError(
          f"{name!r} images must be {tuple(features['image'].shape)}, the npz "
          f"has {dataset.image_shape}.")
    if "coarse_label" in features:
      for split in ("train", "test"):
        key = f"{split}_coarse_labels"
        if key not in data:
          raise errors.DataError(
              f"TFDS {name!r} has a coarse_label feature; the npz needs "
              f"{key}.")
        extra[split] = {"coarse_label": np.asarray(data[key])}
  else:
    features = tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "image": tfds.features.Image(
            shape=image_shape,
            encoding_format="jpeg" if encoding == "jpeg" else None),
        "label": tfds.features.ClassLabel(num_classes=dataset.num_classes),
    })
  if "label_names" in data:
    features["label"].names = [str(n) for n in data["label_names"]]

  def generate(split):
    images = dataset.splits[split].images
    labels = dataset.splits[split].labels
    split_extra = extra.get(split, {})
    for i in range(images.shape[0]):
      # Key = original index, as TFDS's own CIFAR builder does.
      image = upscale_image(images[i], upscale)
      if encoding == "jpeg":  # bytes: stored as given, at our quality
        image = encode_jpeg(image, jpeg_quality)
      example = {"id": f"{split}_{i:05d}", "image": image,
                 "label": int(labels[i])}
      for key, values in split_extra.items():
        example[key] = int(values[i])
      yield i, example

  builder_dir = os.path.join(data_dir, name, str(version))
  try:
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=str(version), features=features,
        split_datasets={"train": generate("train"), "test": generate("test")},
        data_dir=data_dir, disable_shuffling=disable_shuffling)
  except RuntimeError as e:
    if "already prepared" in str(e):
      raise FileExistsError(
          f"TFDS dataset {name!r} is already prepared in {builder_dir}; "
          "delete that directory to rewrite it.") from e
    raise
  return builder_dir


FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that
  importing this module for `write_tfds_from_npz` registers no flags)."""
  flags.DEFINE_string(
      "npz", None,
      "npz with train_images uint8[N,H,W,3], train_labels, test_images, "
      "test_labels (optionally label_names). "
      "Default: ../shared/data/cifar10.npz.")
  flags.DEFINE_string(
      "data_dir", None, "TFDS data_dir to write into (required).")
  flags.DEFINE_string(
      "name", "cifar10",
      "TFDS dataset name; 'cifar10'/'cifar100' reuse the registered feature "
      "spec (cifar100 also needs train/test_coarse_labels in the npz).")
  flags.DEFINE_string(
      "version", "3.0.2",
      "Dataset version; must be the registered one for a registered name.")
  flags.DEFINE_bool(
      "disable_shuffling", False,
      "Keep the npz order on disk instead of TFDS's shuffled order.")
  flags.DEFINE_integer(
      "upscale", 1,
      "Store every image resized by this integer factor (Pillow bicubic); "
      "unregistered names only.")
  flags.DEFINE_enum(
      "encoding", "png", list(ENCODINGS),
      "How images are stored: png (lossless) or jpeg (unregistered names "
      "only).")
  flags.DEFINE_integer(
      "jpeg_quality", 95, "JPEG quality (1..95) for --encoding=jpeg.")
  flags.mark_flag_as_required("data_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  npz = FLAGS.npz or input_pipeline.default_npz_path()
  try:
    builder_dir = write_tfds_from_npz(
        npz, FLAGS.data_dir, name=FLAGS.name, version=FLAGS.version,
        disable_shuffling=FLAGS.disable_shuffling, upscale=FLAGS.upscale,
        encoding=FLAGS.encoding, jpeg_quality=FLAGS.jpeg_quality)
  except (errors.DeepAAError, FileExistsError, ValueError) as e:
    logging.error("%s", e)
    sys.exit(1)
  logging.info("Wrote %s", builder_dir)
  print(builder_dir)
  print(f"Use it with: --config.input.source=tfds "
        f"--config.input.name={FLAGS.name} "
        f"--config.input.data_dir={os.path.abspath(FLAGS.data_dir)}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
