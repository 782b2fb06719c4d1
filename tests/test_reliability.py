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

# Imported here, not at the top, so that this section's edits stay in it.
import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from deepaa_jax import policy as image_policy_lib  # pylint: disable=g-import-not-at-top
from deepaa_jax import space as image_space_lib  # pylint: disable=g-import-not-at-top
from tests.conftest import synthetic_images  # pylint: disable=g-import-not-at-top

_IMAGE_KEY = jax.random.key(0)
_IMAGE_SPACE = image_space_lib.cifar_space()
_INVERT = _IMAGE_SPACE.index_of("Invert")


def _image_invert_policy():
  """One layer, always Invert: a policy with a known result, 255 - x."""
  probs = np.zeros((1, _IMAGE_SPACE.size))
  probs[0, _INVERT] = 1.0
  return image_policy_lib.Policy(probs, "cifar", "invert")


# Every public function that takes images: (documented rank, call).
_IMAGE_ENTRY_POINTS = {
    "apply_policy": (4, lambda x: image_policy_lib.apply_policy(
        _IMAGE_KEY, x, _image_invert_policy())),
    "apply_chain_batch": (4, lambda x: image_space_lib.apply_chain_batch(
        _IMAGE_KEY, x, np.full((np.shape(x)[0], 1), _INVERT, np.int32),
        _IMAGE_SPACE)),
    "apply_all": (3, lambda x: image_space_lib.apply_all(
        _IMAGE_KEY, x, _IMAGE_SPACE)),
    "apply_transform": (3, lambda x: image_space_lib.apply_transform(
        _IMAGE_KEY, x, _INVERT, _IMAGE_SPACE)),
    "apply_chain": (3, lambda x: image_space_lib.apply_chain(
        _IMAGE_KEY, x, [_INVERT], _IMAGE_SPACE)),
}
_IMAGE_NAMES = sorted(_IMAGE_ENTRY_POINTS)


def _image_input(name, dtype=np.float32, size=8):
  """Valid images of `name`'s documented rank: [2, size, size, 3] or
  [size, size, 3], values in [0, 255]."""
  rank, _ = _IMAGE_ENTRY_POINTS[name]
  images = synthetic_images(size)[:2].astype(dtype)
  return images if rank == 4 else images[0]


def _image_error(name, images, *needles):
  """Calls `name` on `images`; asserts a one-line ImageContractError naming
  the function and containing `needles`."""
  with pytest.raises(errors.ImageContractError) as info:
    _IMAGE_ENTRY_POINTS[name][1](images)
  message = str(info.value)
  assert "\n" not in message, message
  for needle in (name,) + needles:
    assert needle in message, (needle, message)
  return message


@pytest.mark.parametrize("name", _IMAGE_NAMES)
def test_images_scaled_to_0_1_are_rejected(name):
  """Finding: float images in [0, 1] were accepted and came back mixed-scale
  (Invert gave 255 - x, so values near 255 beside values below 1)."""
  images = _image_input(name) / 255.0
  _image_error(name, images, "[0, 1]", "[0, 255]")
  _image_error(name, jnp.asarray(images), "[0, 1]")  # A concrete jax array.


@pytest.mark.parametrize("name", _IMAGE_NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, 256.0])
def test_images_not_finite_or_out_of_range_are_rejected(name, bad):
  """Finding: NaN (and inf, negative, > 255) images were accepted and NaN
  spread silently through the augmentations into the loss."""
  images = _image_input(name)
  images.reshape(-1)[5] = bad
  _image_error(name, images, "float32", "[0, 255]")


@pytest.mark.parametrize("name", _IMAGE_NAMES)
def test_images_of_the_wrong_rank_are_rejected(name):
  """Finding: a per-image array given to a batch function (or a batch to a
  per-image one) failed with "not enough values to unpack" or a broadcasting
  error deep inside, or silently transformed every image alike."""
  rank, _ = _IMAGE_ENTRY_POINTS[name]
  images = _image_input(name)
  wrong = images[0] if rank == 4 else images[None]
  expected = "[B, H, W, 3]" if rank == 4 else "[H, W, 3]"
  shape = f"[{', '.join(map(str, wrong.shape))}]"
  _image_error(name, wrong, f"rank {wrong.ndim}", shape, expected)
  # The rank is static: the check holds under jit too.
  with pytest.raises(errors.ImageContractError):
    jax.jit(_IMAGE_ENTRY_POINTS[name][1])(wrong)


@pytest.mark.parametrize("name", _IMAGE_NAMES)
@pytest.mark.parametrize("channels", [1, 4])
def test_images_without_3_channels_are_rejected(name, channels):
  """Finding: 1- and 4-channel images failed with broadcasting errors or came
  back transformed as if they had 3 channels."""
  images = _image_input(name)[..., :1]
  images = np.repeat(images, channels, axis=-1)
  _image_error(name, images, f"{channels} channels", "3")


@pytest.mark.parametrize("name", _IMAGE_NAMES)
def test_images_of_other_dtypes_are_rejected(name):
  """Finding: int64 and bool images were cast to float silently; only uint8
  (which cannot be out of range) and floating point are images."""
  _image_error(name, _image_input(name, np.int64), "int64", "uint8")
  _image_error(name, _image_input(name, np.bool_), "bool", "uint8")


@pytest.mark.parametrize("name", _IMAGE_NAMES)
def test_valid_images_are_accepted_and_give_the_known_result(name):
  """uint8 and float [0, 255] images give Invert's known result, 255 - x.

  The images are concrete (numpy, closed over by `jit` so the check sees
  their values but the 139-transform program compiles once, instead of
  running op by op for ~20 s).
  """
  _, call = _IMAGE_ENTRY_POINTS[name]
  reference = _image_input(name)
  for dtype in (np.uint8, np.float32):
    images = _image_input(name, dtype)
    out = np.asarray(jax.jit(lambda: call(images))())  # pylint: disable=cell-var-from-loop
    if name == "apply_all":
      out = out[_INVERT]
    np.testing.assert_array_equal(out, 255.0 - reference)


def test_images_accepted_at_the_edges_of_the_rule():
  """An all-black float image, a uint8 image of 0s and 1s (uint8 has no [0, 1]
  scale to confuse) and a concrete jax array are accepted, eagerly, with the
  known result; a concrete jax [0, 1] array closed over by jit is refused
  when traced."""
  invert = lambda x: image_space_lib.apply_transform(_IMAGE_KEY, x, _INVERT,
                                                     _IMAGE_SPACE)
  reference = _image_input("apply_transform")
  black = np.zeros_like(reference)
  dark = (reference > 127).astype(np.uint8)
  for images, x in [(black, black), (dark, dark.astype(np.float32)),
                    (jnp.asarray(reference), reference)]:
    np.testing.assert_array_equal(invert(images), 255.0 - x)
  one_batch = synthetic_images(8)[:2] > 127
  np.testing.assert_array_equal(
      image_policy_lib.apply_policy(_IMAGE_KEY, one_batch.astype(np.uint8),
                                    image_policy_lib.baseline(
                                        "none", _IMAGE_SPACE)), one_batch)
  scaled = jnp.asarray(reference / 255.0)
  with pytest.raises(errors.ImageContractError, match=r"\[0, 1\]-scaled"):
    jax.jit(lambda: invert(scaled))()


def test_validation_costs_nothing_under_jit(monkeypatch):
  """Under jit (and vmap) only the static checks run: the compiled programs
  equal those with the validation removed, values are not checked (a NaN
  image passes through a jitted call), and jit equals eager."""
  images = synthetic_images(8)[:2].astype(np.float32)
  calls = {
      "apply_policy": (lambda k, x: image_policy_lib.apply_policy(
          k, x, image_policy_lib.baseline("standard", _IMAGE_SPACE)), images),
      "vmap(apply_all)": (jax.vmap(lambda k, x: image_space_lib.apply_all(
          k, x, _IMAGE_SPACE), in_axes=(None, 0)), images),
      "apply_chain": (lambda k, x: image_space_lib.apply_chain(
          k, x, [_INVERT, 3], _IMAGE_SPACE), images[0]),
  }
  checked = {name: str(jax.make_jaxpr(fn)(_IMAGE_KEY, x))
             for name, (fn, x) in calls.items()}
  monkeypatch.setattr(image_space_lib, "check_images",
                      lambda *args, **kwargs: None, raising=False)
  for name, (fn, x) in calls.items():
    assert str(jax.make_jaxpr(fn)(_IMAGE_KEY, x)) == checked[name], name
  monkeypatch.undo()
  one = lambda x, i: image_space_lib.apply_transform(_IMAGE_KEY, x, i,
                                                     _IMAGE_SPACE)
  nan = np.full_like(images[0], np.nan)
  # No value check on tracers: Identity (index 0) passes the NaNs through.
  assert np.all(np.isnan(jax.jit(one)(nan, 0)))
  np.testing.assert_array_equal(jax.jit(one)(images[0], _INVERT),
                                one(images[0], _INVERT))

# ---------------------------------------------------------------------------
# Policy files.
# ---------------------------------------------------------------------------

# (section: policy files)

# Imported here, not at the top, so that this section's edits stay in it.
import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import ml_collections  # pylint: disable=g-import-not-at-top
from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top


def _policy_json(tmp_path, edit=None, name="p.json"):
  """A 2-layer DeepTA policy saved as JSON, `edit(doc)` applied first."""
  doc = json.loads(policy_lib.to_json(policy_lib.baseline(
      "deepta", space_lib.cifar_space(), num_layers=2)))
  if edit is not None:
    edit(doc)
  path = tmp_path / name
  path.write_text(json.dumps(doc))
  return path


def _policy_npz(tmp_path, name="p.npz", **overrides):
  """The standard policy in the authors' npz layout, fields overridden."""
  good = tmp_path / "good_official.npz"
  policy_lib.save_official_npz(good, policy_lib.baseline(
      "standard", space_lib.cifar_space()))
  with np.load(good) as data:
    contents = dict(data)
  contents.update(overrides)
  path = tmp_path / name
  np.savez(path, **contents)
  return path


def _policy_error(load, path, *needles):
  """Runs `load(path)`; asserts a one-line PolicyFileError naming the file
  and containing `needles`; returns the message."""
  with pytest.raises(errors.PolicyFileError) as info:
    load(path)
  message = str(info.value)
  assert "\n" not in message, message
  for needle in (str(path),) + needles:
    assert needle in message, (needle, message)
  return message


def _policy_config(kind, path):
  return ml_collections.ConfigDict({"kind": kind, "path": str(path)})


def _policy_make(kind):
  """`make_policy` of a config with `kind`, as a run builds its policy."""
  return lambda path: policy_lib.make_policy(_policy_config(kind, path),
                                             space_lib.cifar_space())


def test_policy_error_is_the_project_hierarchy():
  """Finding: policy.py defined its own PolicyFileError(ValueError), so
  `main` (which catches errors.DeepAAError) printed a traceback for a bad
  policy file."""
  assert policy_lib.PolicyFileError is errors.PolicyFileError
  assert issubclass(policy_lib.PolicyFileError, errors.DeepAAError)


def test_policy_binary_file_as_json_is_policy_file_error(tmp_path):
  """Finding: a binary (non-UTF-8) file given as a JSON policy raised
  UnicodeDecodeError, naming no file."""
  path = tmp_path / "policy.json"
  path.write_bytes(bytes(range(256)))
  _policy_error(policy_lib.load_policy, path, "not UTF-8 text")
  _policy_error(_policy_make("file"), path, "not UTF-8 text")
  # An npz given where JSON is expected says so, and what to use instead.
  npz = _policy_npz(tmp_path)
  _policy_error(_policy_make("file"), npz, "npz", "kind='official'")


def test_policy_json_transform_entry_not_an_object(tmp_path):
  """Finding: a `transforms` entry that is not an object raised
  AttributeError ('str' object has no attribute 'get')."""

  def edit(doc):
    doc["transforms"][5] = "ShearX"

  _policy_error(policy_lib.load_policy, _policy_json(tmp_path, edit),
                "transform 5", "'ShearX'")


def test_policy_json_layer_entry_not_an_object(tmp_path):
  """Finding: a `layers` entry that is not an object gave "malformed layers:
  list indices must be integers or slices, not str", naming no layer."""

  def edit(doc):
    doc["layers"][1] = [0.5, 0.5]

  _policy_error(policy_lib.load_policy, _policy_json(tmp_path, edit),
                "layer 2", "'probs'")


@pytest.mark.parametrize("field,value,needle", [
    ("transforms", 139, "'transforms' must be a list"),
    ("layers", {"probs": []}, "'layers' must be a list"),
    ("metadata", ["seed", 0], "'metadata' must be an object"),
    ("space", ["cifar"], "space"),
])
def test_policy_json_field_of_wrong_type(tmp_path, field, value, needle):
  """Finding: a top-level field of the wrong JSON type raised TypeError
  (len() of an int, dict() of a list, an unhashable space name)."""

  def edit(doc):
    doc[field] = value

  _policy_error(policy_lib.load_policy, _policy_json(tmp_path, edit), needle)


def test_policy_json_138_transforms_states_the_count(tmp_path):
  """Finding: a transform list of 138 entries (num_transforms still 139)
  said "139 transforms; the cifar space has 139"."""

  def edit(doc):
    del doc["transforms"][-1]

  message = _policy_error(policy_lib.load_policy, _policy_json(tmp_path, edit),
                          "138 transforms", "has 139")
  assert "139 transforms" not in message, message


def test_policy_json_with_no_layers_round_trips(tmp_path):
  """Finding: the K = 0 policy ("none") saved by `save_policy` could not be
  read back ("malformed layers: cannot reshape array of size 0")."""
  none = policy_lib.baseline("none", space_lib.cifar_space())
  again = policy_lib.load_policy(policy_lib.save_policy(tmp_path / "n.json",
                                                        none))
  assert again == none
  np.testing.assert_equal(again.probs.shape, (0, 139))


def test_policy_npz_with_empty_op_names_is_policy_file_error(tmp_path):
  """Finding: an official npz with empty `op_names` raised IndexError."""
  path = _policy_npz(tmp_path, op_names=np.asarray([], "<U24"))
  _policy_error(policy_lib.load_official_npz, path, "op_names", "18")


def test_policy_npz_with_non_scalar_l_ops_is_policy_file_error(tmp_path):
  """Finding: an official npz whose `l_ops` is an array raised TypeError
  (only 0-dimensional arrays can be converted to Python scalars)."""
  path = _policy_npz(tmp_path, l_ops=np.arange(18))
  _policy_error(policy_lib.load_official_npz, path, "l_ops")


@pytest.mark.parametrize("load", ["load_official_npz", "make_policy"])
def test_policy_text_file_as_npz_is_policy_file_error(tmp_path, load):
  """Finding: a text file given as an official npz said numpy's "This file
  contains pickled (object) data ... allow_pickle=", which is not what is
  wrong; a JSON policy given as npz is named as such."""
  load = (policy_lib.load_official_npz if load == "load_official_npz" else
          _policy_make("official"))
  path = tmp_path / "policy.npz"
  path.write_text("policy_probs,l_ops\n0.5,18\n")
  message = _policy_error(load, path, "not an npz archive")
  assert "pickled" not in message, message
  message = _policy_error(load, _policy_json(tmp_path), "not an npz archive",
                          "JSON", "kind='file'")
  assert "pickled" not in message, message


@pytest.mark.parametrize("load", ["load_official_npz", "make_policy"])
def test_policy_npy_file_as_npz_is_policy_file_error(tmp_path, load):
  """Finding: a .npy file given as an official npz failed with "'numpy.ndarray'
  object does not support the context manager protocol" (a TypeError)."""
  load = (policy_lib.load_official_npz if load == "load_official_npz" else
          _policy_make("official"))
  path = tmp_path / "policy_probs.npy"
  np.save(path, np.full((1, 139), 1 / 139))
  _policy_error(load, path, ".npy file", "np.savez")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("load", ["load_official_npz", "make_policy"])
def test_policy_damaged_npz_is_policy_file_error(tmp_path, load, damage):
  """Finding: a truncated npz said only "File is not a zip file" (BadZipFile)
  and a corrupt one "Bad CRC-32", neither saying the archive is damaged."""
  load = (policy_lib.load_official_npz if load == "load_official_npz" else
          _policy_make("official"))
  raw = _policy_npz(tmp_path).read_bytes()
  path = tmp_path / f"{damage}.npz"
  if damage == "truncated":
    path.write_bytes(raw[:len(raw) // 2])
  else:  # Flip bytes inside the first member (policy_probs, stored).
    middle = 200
    path.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[
        middle:middle + 64]) + raw[middle + 64:])
  _policy_error(load, path, "truncated or corrupt")

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
