"""The reliability battery (issue 11): bad inputs and faults a demanding user
meets, each reproduced here and answered by a clear error or a correct result.

`docs/reliability.md` lists every probe: what is done, what is expected, and
where it is tested. Sections are per area; each test names its finding.
"""

import numpy as np
import pytest

from deepaa_jax import errors

# ---------------------------------------------------------------------------
# Images at the API edge (apply_policy / apply_all).
# ---------------------------------------------------------------------------

# (section: images)

# ---------------------------------------------------------------------------
# Policy files.
# ---------------------------------------------------------------------------

# (section: policy files)

# ---------------------------------------------------------------------------
# Data files and splits.
# ---------------------------------------------------------------------------

# (section: data)


def _data_npz(path, *, n_train=20, n_test=10, train_labels=None):
  """Writes a small valid npz dataset: uint8[N, 4, 4, 3] images, 10 classes.

  Returns:
    path, after `np.savez_compressed` wrote it.
  """
  rng = np.random.default_rng(0)
  if train_labels is None:
    train_labels = np.arange(n_train) % 10
  np.savez_compressed(
      path,
      train_images=rng.integers(0, 256, (n_train, 4, 4, 3), dtype=np.uint8),
      train_labels=np.asarray(train_labels, np.int64),
      test_images=rng.integers(0, 256, (n_test, 4, 4, 3), dtype=np.uint8),
      test_labels=np.arange(n_test, dtype=np.int64) % 10)
  return path


def _data_load(path, **fields):
  """`input_pipeline.load_dataset(config.input)` on `path`, as a run does."""
  from deepaa_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = input_pipeline.default_input_config()
  config.name = "toy"
  config.npz_path = str(path)
  for key, value in fields.items():
    config[key] = value
  return input_pipeline.load_dataset(config)


def _data_message(info, *needles):
  """The error's message, asserted to be one line that contains `needles`."""
  message = str(info.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, (needle, message)
  return message


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_data_damaged_npz_is_data_error(tmp_path, damage):
  """Finding 8: a truncated npz raised zipfile.BadZipFile (and a corrupt one
  a CRC or zlib error) that did not name the file."""
  raw = _data_npz(tmp_path / "good.npz", n_train=200).read_bytes()
  path = tmp_path / f"{damage}.npz"
  if damage == "truncated":
    path.write_bytes(raw[:len(raw) // 2])
  else:  # Flip bytes inside the first member's compressed data.
    middle = len(raw) // 4
    path.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:
                                                               middle + 64])
                     + raw[middle + 64:])
  with pytest.raises(errors.DataError) as info:
    _data_load(path)
  _data_message(info, str(path), "truncated or corrupt")


def test_data_text_file_as_npz_is_data_error(tmp_path):
  """Finding 8: a text file given as npz_path failed with numpy's "Cannot load
  file containing pickled data", which names neither the file nor the fix."""
  path = tmp_path / "labels.csv"
  path.write_text("image,label\n0.png,3\n")
  with pytest.raises(errors.DataError) as info:
    _data_load(path)
  message = _data_message(info, str(path), "not an npz archive")
  assert "pickled" not in message


def test_data_npy_file_as_npz_is_data_error(tmp_path):
  """Finding 8: a .npy file given as npz_path raised a TypeError (an ndarray
  is not a context manager)."""
  path = tmp_path / "train_images.npy"
  np.save(path, np.zeros((4, 4, 4, 3), np.uint8))
  with pytest.raises(errors.DataError) as info:
    _data_load(path)
  _data_message(info, str(path), ".npy file", "np.savez")


@pytest.mark.parametrize("split", ["train", "test"])
def test_data_empty_split_is_data_error(tmp_path, split):
  """Finding 8: an npz with 0 test images loaded, and a training run then
  "evaluated" 0 images and reported accuracy 0.0 as complete. An empty split
  is an error at load time (train and test alike)."""
  sizes = {"n_train": 20, "n_test": 10, f"n_{split}": 0}
  path = _data_npz(tmp_path / f"empty_{split}.npz", **sizes)
  with pytest.raises(errors.DataError) as info:
    _data_load(path)
  _data_message(info, str(path), f"{split} split is empty")


def test_data_subset_larger_than_split_names_config_field(tmp_path):
  """Finding 8: `train_subset` larger than the train split raised "subset size
  must be in [1, 20], got 21", naming no config field."""
  path = _data_npz(tmp_path / "small.npz", n_train=20)
  with pytest.raises(errors.DataError) as info:
    _data_load(path, train_subset=21)
  _data_message(info, "config.input.train_subset=21", "20 ", str(path))


def test_data_subset_impossible_per_class_names_config_fields(tmp_path):
  """Finding 8: a class-balanced subset that needs more images of a class
  than exist told the user to pass the API argument `class_balanced=False`
  instead of naming `config.input.subset_class_balanced`."""
  labels = np.r_[np.zeros(2), np.ones(38)].astype(np.int64)  # Class 0: 2.
  path = _data_npz(tmp_path / "skewed.npz", n_train=40, train_labels=labels)
  with pytest.raises(errors.DataError) as info:
    _data_load(path, train_subset=20)
  message = _data_message(info, "config.input.train_subset=20",
                          "config.input.subset_class_balanced=False")
  api_words = message.replace("config.input.subset_class_balanced", "")
  assert "class_balanced" not in api_words, message
  # The uniform draw the message suggests works.
  dataset = _data_load(path, train_subset=20, subset_class_balanced=False)
  np.testing.assert_equal(dataset.splits["train"].size, 20)

# ---------------------------------------------------------------------------
# Config files and values.
# ---------------------------------------------------------------------------

# (section: config)

# ---------------------------------------------------------------------------
# Runs: resume identity, checkpoint recovery, reruns, interrupts, errors.
# ---------------------------------------------------------------------------

# (section: runs)
