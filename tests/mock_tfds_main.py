"""`python tests/mock_tfds_main.py N DATA_DIR --config=... --workdir=...`: the
real CLI (`deepaa_jax.main`) with every TFDS read of imagenet2012 in DATA_DIR
served by TFDS's mock data (`tests.conftest.mock_tfds`: N random JPEGs of 5..50
px through the real TFDS code path); the tests run the ImageNet configs end to
end with it."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top
from absl import app

from deepaa_jax import main
from tests.conftest import mock_tfds

if __name__ == "__main__":
  num_examples, data_dir = int(sys.argv.pop(1)), sys.argv.pop(1)
  with mock_tfds(num_examples, data_dir):
    app.run(main.main, flags_parser=main.parse_flags)
