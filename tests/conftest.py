"""Shared test fixtures: where the offline data lives, and test images."""

import contextlib
import os
import pathlib
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# `../shared` beside the checkout (as CI lays it out); DEEPAA_SHARED overrides.
SHARED = pathlib.Path(os.environ.get("DEEPAA_SHARED", REPO.parent / "shared"))
EXACT_SUBSET = SHARED / "data" / "cifar10_exact_subset.npz"
CIFAR10_NPZ = SHARED / "data" / "cifar10.npz"
OFFICIAL_POLICIES = SHARED / "official_policies"


def synthetic_images(size=32, seed=0):
  """uint8[N, size, size, 3]: hand-made images that stress the edge cases.

  Random noise, a constant image (degenerate histograms), a gradient, a
  two-valued image, a low-contrast image, saturated black/white blocks and a
  smooth "natural-looking" blob image.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size]
  gradient = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1),
                       (xx + yy) * 255 // (2 * size - 2)], -1)
  two = np.where((xx // 4 + yy // 4) % 2 == 0, 40, 200)
  blocks = np.where(xx < size // 2, 0, 255)
  blob = 128 + 100 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]
  blob = blob + np.array([0, 30, -30])
  images = [
      rng.integers(0, 256, (size, size, 3)),
      np.full((size, size, 3), 77),
      gradient,
      np.stack([two] * 3, -1),
      rng.integers(118, 123, (size, size, 3)),
      np.stack([blocks, 255 - blocks, blocks], -1),
      blob,
  ]
  return np.clip(np.stack(images), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def mock_tfds(num_examples, data_dir, names=("imagenet2012",)):
  """`tfds.testing.mock_data(num_examples=...)` (the real TFDS reading code,
  random examples; JPEGs of 5..50 px for ImageNet) for datasets `names` in
  `data_dir`, without the mock's file-system patch.

  That patch maps every path of every thread to a temporary directory while
  `as_dataset` runs, and so redirects an asynchronous orbax save in flight
  (a mock-only race). It only serves to fake the existence of the dataset
  folder, which is created here for real instead.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.testing import test_utils  # pylint: disable=g-import-not-at-top

  class _NoFs:
    def __enter__(self):
      return self

    def __exit__(self, *unused):
      return False

    def add_file(self, *unused, **unused_kw):
      pass

  with mock.patch.object(test_utils, "MockFs", _NoFs), \
      tfds.testing.mock_data(num_examples=num_examples):
    for name in names:
      pathlib.Path(tfds.builder(name, data_dir=str(data_dir)).data_dir).mkdir(
          parents=True, exist_ok=True)
    yield


@pytest.fixture(scope="session")
def imagenet_policy(tmp_path_factory):
  """The official imagenet_1 policy file when ../shared has it, else a
  stand-in in the same format (a 5-layer DeepTA-style uniform policy over
  the ImageNet space, written by `save_official_npz`), so that the ImageNet
  configs' tests run (not skip) without ../shared."""
  official = OFFICIAL_POLICIES / "policy_DeepAA_imagenet_1.npz"
  if official.is_file():
    return str(official)
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("policy") / "policy_imagenet_standin.npz"
  return str(policy_lib.save_official_npz(path, policy_lib.baseline(
      "deepta", space_lib.imagenet_space(), num_layers=5)))


def run_cli(*args, workdir, timeout=300):
  """`python -m deepaa_jax.main --config=configs/test.py --workdir=...` in a
  subprocess on the CPU (the CLI's own error handling is what is tested)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "deepaa_jax.main", "--config=configs/test.py",
       f"--workdir={workdir}", *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fast_compiles():
  """Turns XLA's optimisations mostly off for one test module (fast compiles
  of tiny networks, as flax examples' train_test.py), restoring the previous
  setting after the module's last test. Not autouse: a module opts in with
  `pytestmark = pytest.mark.usefixtures("fast_compiles")`."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="session")
def exact_cifar():
  """uint8[N, 32, 32, 3] byte-exact CIFAR-10 images; skips when absent."""
  if not EXACT_SUBSET.is_file():
    pytest.skip(f"byte-exact CIFAR subset not found at {EXACT_SUBSET}")
  with np.load(EXACT_SUBSET) as data:
    return np.asarray(data["train_images"][:24])


@pytest.fixture(scope="session")
def test_images():
  """Synthetic edge cases plus (when present) 8 byte-exact CIFAR images."""
  images = [synthetic_images()]
  if EXACT_SUBSET.is_file():
    with np.load(EXACT_SUBSET) as data:
      images.append(np.asarray(data["test_images"][:8]))
  return np.concatenate(images)
