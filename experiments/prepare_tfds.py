r"""Writes an npz dataset as a prepared TFDS directory (offline, no download).

TFDS's own `cifar10` builder only accepts the original binary tarball, which is
not available offline. This writes the offline npz (e.g.
shared/data/cifar10.npz) as a prepared dataset that `tfds.load(name, data_dir=..., download=False)` and
`--config.input.source=tfds` then read.

Usage (from the repository root):

  python experiments/prepare_tfds.py \
    --npz=../shared/data/cifar10.npz --data_dir=/tmp/tfds --disable_shuffling

then train/search with
  --config.input.source=tfds --config.input.data_dir=/tmp/tfds

Takes about 10 s for CIFAR-10 and writes ~136 MB under DATA_DIR/cifar10/3.0.2/.
Without --disable_shuffling the examples are stored in TFDS's own shuffled order
(for cifar10 the order of an official TFDS build); with it, in the npz order
(the original CIFAR order, which `official_search_splits` requires).
"""

import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

# Allow `python experiments/prepare_tfds.py` without installing the package.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from deepaa_jax import input_pipeline  # pylint: disable=g-import-not-at-top

_NPZ = flags.DEFINE_string(
    "npz", None,
    "npz with train_images uint8[N,H,W,3], train_labels, test_images, "
    "test_labels (optionally label_names). "
    "Default: ../shared/data/cifar10.npz.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data_dir to write into (required).")
_NAME = flags.DEFINE_string(
    "name", "cifar10",
    "TFDS dataset name; 'cifar10'/'cifar100' reuse the registered feature spec "
    "(cifar100 also needs train/test_coarse_labels in the npz).")
_VERSION = flags.DEFINE_string(
    "version", "3.0.2",
    "Dataset version; must be the registered one for a registered name.")
_DISABLE_SHUFFLING = flags.DEFINE_bool(
    "disable_shuffling", False,
    "Keep the npz order on disk instead of TFDS's shuffled order.")

flags.mark_flag_as_required("data_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  npz = _NPZ.value or input_pipeline.default_npz_path()
  try:
    builder_dir = input_pipeline.write_tfds_from_npz(
        npz, _DATA_DIR.value, name=_NAME.value, version=_VERSION.value,
        disable_shuffling=_DISABLE_SHUFFLING.value)
  except (input_pipeline.DatasetNotFoundError, FileExistsError,
          ValueError) as e:
    logging.error("%s", e)
    sys.exit(1)
  logging.info("Wrote %s", builder_dir)
  print(builder_dir)
  print(f"Use it with: --config.input.source=tfds "
        f"--config.input.name={_NAME.value} "
        f"--config.input.data_dir={os.path.abspath(_DATA_DIR.value)}")


if __name__ == "__main__":
  app.run(main)
