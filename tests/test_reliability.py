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
from tests.conftest import run_cli  # pylint: disable=g-import-not-at-top
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

# Imported here, not at the top, so that this section's edits stay in it.
import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import pathlib  # pylint: disable=g-import-not-at-top,g-bad-import-order
import shutil  # pylint: disable=g-import-not-at-top,g-bad-import-order
from deepaa_jax import config as run_config_lib  # pylint: disable=g-import-not-at-top
from deepaa_jax import train as run_train  # pylint: disable=g-import-not-at-top

_REPO = pathlib.Path(__file__).resolve().parents[1]
_RUN_SIZE = 16


def _run_config(npz, **train):
  config = run_config_lib.load_config_file(_REPO / "configs" / "test.py")
  config.input.name = "tiny"
  config.input.npz_path = str(npz)
  config.input.train_subset = 0
  config.train.update(dict(batch_size=8, eval_batch_size=16, num_steps=4,
                           checkpoint_every_steps=2, log_every_steps=2))
  config.train.update(train)
  return config


def test_config_typo_inside_get_config_fails(tmp_path):
  """Finding 2: `c.model.nmae = ...` in a config file used to be silent."""
  path = tmp_path / "typo.py"
  path.write_text(
      "from deepaa_jax import config as config_lib\n"
      "def get_config():\n"
      "  c = config_lib.base_config()\n"
      "  c.model.nmae = 'wrn_10_1'\n"
      "  return c\n")
  with pytest.raises((AttributeError, KeyError), match="nmae"):
    run_config_lib.load_config_file(path)


def test_config_top_level_typo_fails():
  """Finding 2, top level: an unknown section is named, with a suggestion."""
  config = run_config_lib.base_config()
  config.trian = run_config_lib.train_config()
  with pytest.raises(errors.ConfigError, match=r"config\.trian .*config\.train"):
    run_config_lib.validate(config)


@pytest.mark.parametrize("field,value", [
    ("train.learning_rate", float("inf")), ("train.momentum", float("nan")),
    ("train.weight_decay", float("inf"))])
def test_config_non_finite_train_values_rejected(field, value):
  """Finding 6: `inf` passed the `> 0` checks and failed after 40 s."""
  config = run_config_lib.base_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(errors.ConfigError, match=f"config.{field} must be a "
                     "finite number"):
    run_config_lib.validate(config)


def test_config_non_finite_search_value_rejected():
  """Finding 6: `search.policy_lr=inf` failed after 195 s of pretraining."""
  config = run_config_lib.load_config_file(_REPO / "configs" / "cifar10.py")
  config.search.policy_lr = float("inf")
  with pytest.raises(errors.ConfigError,
                     match=r"config\.search\.policy_lr must be a finite"):
    run_config_lib.validate(config)


# ---------------------------------------------------------------------------
# Runs: resume identity, checkpoint recovery, reruns, interrupts, errors.
# ---------------------------------------------------------------------------

# (section: runs)


@pytest.fixture(scope="module")
def run_npz(tmp_path_factory):
  """A tiny 4-class npz (16x16): 64 train, 20 test images."""
  path = tmp_path_factory.mktemp("run_data") / "tiny.npz"
  _write_npz(path, seed=0)
  return path


def _write_npz(path, seed, num_test=20):
  rng = np.random.default_rng(seed)
  labels = np.arange(64) % 4
  images = rng.integers(0, 64, (64, _RUN_SIZE, _RUN_SIZE, 3)) + 48 * labels[
      :, None, None, None]
  test_labels = np.arange(num_test) % 4
  test = rng.integers(0, 64, (num_test, _RUN_SIZE, _RUN_SIZE, 3)) + (
      48 * test_labels[:, None, None, None])
  np.savez(path, train_images=images.astype(np.uint8), train_labels=labels,
           test_images=test.astype(np.uint8), test_labels=test_labels)


def _files(workdir):
  """{relative path: bytes} of every file in a workdir."""
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted(pathlib.Path(workdir).rglob("*")) if p.is_file()}


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.usefixtures("fast_compiles")
def test_runs_finished_run_with_other_data_is_refused(run_npz, tmp_path):
  """Finding 1: a finished run rerun with different data under the same file
  name resumed silently and overwrote results.json (10000 -> 100 images)."""
  npz = tmp_path / "data.npz"
  shutil.copy(run_npz, npz)
  workdir = tmp_path / "run"
  run_train.train(_run_config(npz), workdir)
  before = _files(workdir)
  _write_npz(npz, seed=1, num_test=8)  # regenerated data, same name
  with pytest.raises(errors.ResumeRefusedError, match="data content"):
    run_train.train(_run_config(npz), workdir)
  assert _files(workdir) == before


@pytest.mark.usefixtures("fast_compiles")
def test_runs_killed_run_resumed_on_other_data_is_refused(run_npz, tmp_path):
  """Finding 1: a killed run resumed on regenerated data mixed the two."""
  npz = tmp_path / "data.npz"
  shutil.copy(run_npz, npz)
  workdir = tmp_path / "run"
  run_train.train(_run_config(npz), workdir, stop_after_step=2)
  _write_npz(npz, seed=2)
  with pytest.raises(errors.ResumeRefusedError, match="new --workdir"):
    run_train.train(_run_config(npz), workdir)


@pytest.mark.usefixtures("fast_compiles")
def test_runs_moved_data_file_with_same_content_resumes(run_npz, tmp_path):
  """The content, not the path, identifies the data: a moved checkout
  resumes."""
  first, second = tmp_path / "a.npz", tmp_path / "b.npz"
  shutil.copy(run_npz, first)
  shutil.copy(run_npz, second)
  workdir = tmp_path / "run"
  run_train.train(_run_config(first), workdir, stop_after_step=2)
  _, metrics = run_train.train(_run_config(second), workdir)
  assert metrics["resumed_from_step"] == 2 and metrics["complete"]


@pytest.mark.usefixtures("fast_compiles")
def test_runs_rerunning_a_finished_run_changes_no_file(run_npz, tmp_path):
  """Finding 5: the rerun nulled results.json's train metrics and appended a
  duplicate record to metrics.jsonl."""
  workdir = tmp_path / "run"
  state, metrics = run_train.train(_run_config(run_npz), workdir)
  before = _files(workdir)
  again_state, again = run_train.train(_run_config(run_npz), workdir)
  assert _files(workdir) == before
  assert again["train_loss"] == metrics["train_loss"] is not None
  assert again["test_accuracy"] == metrics["test_accuracy"]
  _leaves_equal(again_state.params, state.params)


@pytest.mark.usefixtures("fast_compiles")
def test_runs_kill_during_final_evaluation_keeps_train_metrics(
    run_npz, tmp_path, monkeypatch):
  """Finding 5: a kill during the final evaluation left train_loss null."""
  reference, _ = run_train.train(_run_config(run_npz), tmp_path / "ref")
  ref = json.loads((tmp_path / "ref" / "results.json").read_text())
  workdir = tmp_path / "run"
  evaluate = run_train.evaluate
  with monkeypatch.context() as patch:
    def killed(*args, **kwargs):
      raise KeyboardInterrupt("simulated Ctrl-C in the final evaluation")
    patch.setattr(run_train, "evaluate", killed)
    with pytest.raises(errors.Interrupted, match="Rerun the same command"):
      run_train.train(_run_config(run_npz), workdir)
  assert run_train.evaluate is evaluate
  state, metrics = run_train.train(_run_config(run_npz), workdir)
  results = json.loads((workdir / "results.json").read_text())
  assert results["train_loss"] == ref["train_loss"] is not None
  assert results["test_accuracy"] == ref["test_accuracy"]
  _leaves_equal(state.params, reference.params)
  records = [json.loads(l) for l in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [
      r["step"] for r in map(json.loads, (tmp_path / "ref" / "metrics.jsonl")
                             .read_text().splitlines())]


@pytest.mark.usefixtures("fast_compiles")
def test_runs_corrupted_latest_checkpoint_falls_back(run_npz, tmp_path,
                                                     caplog):
  """Finding 4: truncating one file of the latest step gave a 171-line
  traceback; now the run says so, sets it aside and resumes from the
  previous step, ending where an uninterrupted run ends."""
  reference, _ = run_train.train(_run_config(run_npz), tmp_path / "ref")
  workdir = tmp_path / "run"
  run_train.train(_run_config(run_npz, num_steps=6), workdir,
                  stop_after_step=4)
  step4 = workdir / "checkpoints" / "4"
  victims = [p for p in step4.rglob("*") if p.is_file() and p.stat().st_size]
  for victim in victims:
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  caplog.set_level("WARNING")
  state, metrics = run_train.train(_run_config(run_npz, num_steps=6), workdir,
                                   stop_after_step=4)
  assert metrics["resumed_from_step"] == 2
  assert any("does not restore" in r.getMessage() for r in caplog.records)
  assert list((workdir / "checkpoints_corrupt").iterdir())
  assert int(state.step) == 4


def test_runs_empty_test_split_cannot_report_a_metric(run_npz, tmp_path):
  """Finding 3: an empty test split gave "test accuracy 0.0000" and
  complete: true. `evaluate` refuses zero examples."""
  from deepaa_jax import input_pipeline as run_ip  # pylint: disable=g-import-not-at-top
  empty = run_ip.Split(np.zeros((0, 4, 4, 3), np.uint8),
                       np.zeros((0,), np.int64))
  with pytest.raises(errors.DataError, match="no examples"):
    run_train.evaluate(lambda state, batch: None, None, empty, batch_size=4)


@pytest.mark.usefixtures("fast_compiles")
def test_runs_ctrl_c_saves_the_current_step_and_resumes_exactly(
    run_npz, tmp_path, monkeypatch):
  """Finding 10: Ctrl-C printed a traceback, saved nothing at the interrupt
  and gave no resume hint."""
  reference, _ = run_train.train(_run_config(run_npz), tmp_path / "ref")
  workdir = tmp_path / "run"
  write = run_train.utils.JsonlWriter.write_scalars

  def interrupted(self, step, scalars):
    write(self, step, scalars)
    if step == 3:
      raise KeyboardInterrupt("simulated Ctrl-C")

  with monkeypatch.context() as patch:
    patch.setattr(run_train.utils.JsonlWriter, "write_scalars", interrupted)
    with pytest.raises(errors.Interrupted,
                       match=r"saved at step 3 .*Rerun the same command"):
      run_train.train(_run_config(run_npz, log_every_steps=1), workdir)
  assert (workdir / "checkpoints" / "3").is_dir()
  state, metrics = run_train.train(_run_config(run_npz, log_every_steps=1),
                                   workdir)
  assert metrics["resumed_from_step"] == 3
  _leaves_equal(state.params, reference.params)


# Errors after flag parsing, through the CLI (finding 8): one line, no
# traceback, a non-zero exit.


def _one_error_line(result, pattern):
  import re  # pylint: disable=g-import-not-at-top
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  errors_ = [l for l in result.stderr.splitlines() if l.startswith("ERROR: ")]
  assert len(errors_) == 1, result.stderr[-2000:]
  assert re.search(pattern, errors_[0]), errors_[0]


def test_runs_cli_workdir_is_a_file(run_npz, tmp_path):
  """Finding 8: a bare FileExistsError when the workdir is a file."""
  workdir = tmp_path / "a_file"
  workdir.write_text("not a directory")
  result = run_cli(f"--config.input.npz_path={run_npz}",
                 "--config.input.name=tiny", "--config.input.train_subset=0",
                 workdir=workdir)
  _one_error_line(result, r"--workdir .*a_file is a file, not a directory")


def test_runs_cli_bad_policy_file(run_npz, tmp_path):
  """Finding 8: a malformed policy file printed a 25-46 line traceback."""
  bad = tmp_path / "policy.json"
  bad.write_text("{not json")
  result = run_cli(f"--config.input.npz_path={run_npz}",
                 "--config.input.name=tiny", "--config.input.train_subset=0",
                 "--config.policy.kind=file", f"--config.policy.path={bad}",
                 workdir=tmp_path / "run")
  _one_error_line(result, r"policy\.json")


@pytest.mark.usefixtures("fast_compiles")
def test_runs_cli_refused_resume(run_npz, tmp_path):
  """Finding 8: a refused resume printed a traceback; now one line that
  names the differing field and how to start fresh."""
  workdir = tmp_path / "run"
  config = _run_config(run_npz)
  config.input.name = "tiny"
  run_train.train(config, workdir, stop_after_step=2)
  result = run_cli(f"--config.input.npz_path={run_npz}",
                 "--config.input.name=tiny", "--config.input.train_subset=0",
                 "--config.train.batch_size=8", "--config.train.eval_batch_size=16",
                 "--config.train.num_steps=4", "--config.train.learning_rate=0.5",
                 workdir=workdir)
  _one_error_line(result, r"config\.train\.learning_rate: .*new --workdir")


def test_runs_disk_full_is_recognised_through_wrapping():
  """Finding 9: "No space left on device" deep in a chain of wrapped
  exceptions (orbax's async save re-raises it) is found and reported as a
  disk-full line by `main`."""
  import errno as errno_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import main as cli  # pylint: disable=g-import-not-at-top
  try:
    try:
      raise OSError(errno_lib.ENOSPC, "No space left on device")
    except OSError as inner:
      raise RuntimeError("async save failed") from inner
  except RuntimeError as outer:
    assert cli._disk_full(outer)  # pylint: disable=protected-access
  assert not cli._disk_full(RuntimeError("something else"))  # pylint: disable=protected-access


@pytest.mark.usefixtures("fast_compiles")
def test_runs_official_split_rule_on_other_data_names_the_fields(run_npz,
                                                                 tmp_path):
  """The official pools are CIFAR's index ranges: on another dataset the
  error names the config fields to change, not an API argument."""
  config = _run_config(run_npz, train_split="pretrain")
  with pytest.raises(errors.DataError,
                     match=r"config\.pretrain\.train\.train_split"):
    run_train.train(config, tmp_path)


def test_runs_official_search_pools_on_other_data_name_the_fields(run_npz):
  """The same for the search's pools (`config.search.data_split`)."""
  from deepaa_jax import search_job as run_search_job  # pylint: disable=g-import-not-at-top
  config = run_config_lib.load_config_file(_REPO / "configs" / "cifar10_cpu.py")
  config.input.npz_path = str(run_npz)
  config.input.name = "tiny"
  with pytest.raises(errors.DataError,
                     match=r"--config\.search\.data_split=small"):
    run_search_job.load_search_pools(config)


# ---------------------------------------------------------------------------
# Run flow (issue 20): the workdir lock, SIGTERM, a real full disk, gs://
# metrics, a cut metrics log, a finished run without checkpoints.
# ---------------------------------------------------------------------------

# (section: run flow)

# Imported here, not at the top, so that this section's edits stay in it.
import os  # pylint: disable=g-import-not-at-top,g-bad-import-order
import re  # pylint: disable=g-import-not-at-top,g-bad-import-order
import signal  # pylint: disable=g-import-not-at-top,g-bad-import-order
import socket  # pylint: disable=g-import-not-at-top,g-bad-import-order
import subprocess  # pylint: disable=g-import-not-at-top,g-bad-import-order
import sys  # pylint: disable=g-import-not-at-top,g-bad-import-order
import time  # pylint: disable=g-import-not-at-top,g-bad-import-order
from deepaa_jax import utils as flow_utils  # pylint: disable=g-import-not-at-top
from tests import test_utils as flow_gcs  # pylint: disable=g-import-not-at-top

# Fixtures of test_utils: the GCS emulator, a bucket, the logging-only
# TensorBoard writer.
emulator = flow_gcs.emulator
gcs = flow_gcs.gcs
logging_tensorboard = flow_gcs.logging_tensorboard

# The CLI overrides that make configs/test.py the runs section's _run_config.
_FLOW_ARGS = ("--config.input.name=tiny", "--config.input.train_subset=0",
              "--config.train.batch_size=8",
              "--config.train.eval_batch_size=16")


def _flow_env():
  return dict(os.environ, PYTHONPATH=str(_REPO), JAX_PLATFORMS="cpu",
              JAX_DISABLE_MOST_OPTIMIZATIONS="true")


def _flow_steps(path):
  return [json.loads(l)["step"] for l in
          flow_utils.as_path(path).read_text().splitlines()]


_HOLDER = r"""
import sys, time
from deepaa_jax import utils
with utils.workdir_lock(sys.argv[1], "holder job"):
  print("held", flush=True)
  time.sleep(300)
"""


@pytest.mark.usefixtures("fast_compiles")
def test_flow_second_run_is_refused_and_a_stale_lock_taken_over(
    run_npz, tmp_path, caplog):
  """Finding 2: two runs on one workdir collided (hung 5 min, 405 lines, 9
  tracebacks; duplicated records). Now a live holder refuses the second run
  in one line naming it; once the holder is killed, its lock is stale and
  taken over with one warning, and the lock is gone after the run."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)],
                            env=_flow_env(), stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(errors.WorkdirError) as info:
      run_train.train(_run_config(run_npz), workdir)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("in use by another run", "holder job",
                   f"pid {holder.pid}", f"host {socket.gethostname()}",
                   f"delete {workdir / 'deepaa.lock'}"):
      assert needle in message, (needle, message)
    assert sorted(os.listdir(workdir)) == ["deepaa.lock"]  # nothing written
  finally:
    holder.kill()
    holder.wait()
  caplog.set_level("WARNING")
  _, metrics = run_train.train(_run_config(run_npz), workdir,
                               stop_after_step=2)
  assert metrics["step"] == 2
  stale = [r.getMessage() for r in caplog.records
           if "stale lock" in r.getMessage()]
  assert len(stale) == 1 and f"pid {holder.pid}" in stale[0], stale
  assert not (workdir / "deepaa.lock").exists()  # released


def test_flow_gs_lock_is_created_with_a_generation_precondition(gcs):
  """Finding 2 on gs://: the lock is an object created only if absent
  (ifGenerationMatch=0): a lock of another host refuses the run, a stale
  one of this host is taken over, and release deletes it."""
  workdir = gcs + "/run"
  lock_path = flow_utils.as_path(workdir) / "deepaa.lock"
  with flow_utils.workdir_lock(workdir, "training"):
    held = json.loads(lock_path.read_text())
    assert held["pid"] == os.getpid() and held["job"] == "training"
    # A second writer of the lock object fails: the object exists.
    other = flow_utils.WorkdirLock(workdir, "second")
    assert not other._create(b"{}")  # pylint: disable=protected-access
  assert not lock_path.exists()
  lock_path.write_text(json.dumps({"host": "tpu-vm-7", "pid": 12,
                                   "start": "2026-01-01T00:00:00+00:00",
                                   "job": "search"}))
  with pytest.raises(errors.WorkdirError, match=r"search started .* pid 12 "
                     r"on host tpu-vm-7.*delete gs://"):
    with flow_utils.workdir_lock(workdir, "training"):
      pass
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock_path.write_text(json.dumps({"host": socket.gethostname(),
                                   "pid": dead.pid, "job": "search"}))
  with flow_utils.workdir_lock(workdir, "training"):
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  assert not lock_path.exists()


_SLOW_CLI = r"""
import time
from deepaa_jax import utils
write = utils.JsonlWriter.write_scalars

def slow(self, step, scalars):  # a step every 0.3 s: time to be signalled
  write(self, step, scalars)
  time.sleep(0.3)

utils.JsonlWriter.write_scalars = slow
from absl import app
from deepaa_jax import main
app.run(main.main, flags_parser=main.parse_flags)
"""


@pytest.mark.usefixtures("fast_compiles")
def test_flow_sigterm_saves_the_current_step_and_resumes_exactly(
    run_npz, tmp_path):
  """Finding 3: SIGTERM (a TPU VM's preemption, a scheduler's stop) exited
  143 silently and saved nothing at the interrupt. Now, as Ctrl-C: the
  current step is saved, one line, a non-zero exit; the rerun resumes and
  ends bit-identical to an uninterrupted run."""
  settings = dict(num_steps=8, checkpoint_every_steps=4, log_every_steps=1)
  reference, _ = run_train.train(_run_config(run_npz, **settings),
                                 tmp_path / "ref")
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      [sys.executable, "-c", _SLOW_CLI, "--config=configs/test.py",
       f"--workdir={workdir}", f"--config.input.npz_path={run_npz}",
       *_FLOW_ARGS, *(f"--config.train.{k}={v}" for k, v in settings.items())],
      cwd=_REPO, env=_flow_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  log = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while not (log.exists() and len(log.read_text().splitlines()) >= 2):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr[-2000:]
  assert "Traceback" not in stderr, stderr[-2000:]
  lines = [l for l in stderr.splitlines() if "SIGTERM" in l]
  assert len(lines) == 1, stderr[-2000:]
  match = re.match(r"SIGTERM: Interrupted at step (\d+) of 8; saved at step "
                   r"(\d+) .*Rerun the same command", lines[0])
  assert match and match[1] == match[2], lines[0]
  saved = int(match[1])
  assert 2 <= saved < 8 and (workdir / "checkpoints" / str(saved)).is_dir()
  assert not (workdir / "deepaa.lock").exists()
  state, metrics = run_train.train(_run_config(run_npz, **settings), workdir)
  assert metrics["resumed_from_step"] == saved and metrics["complete"]
  _leaves_equal(state.params, reference.params)


def test_flow_real_full_disk_is_one_line_and_no_partial_checkpoint(
    run_npz, tmp_path):
  """Finding 4: on a real 1.5 MB filesystem the run printed 760 lines with
  73 tracebacks (orbax's threads) before its one line, and left a partial
  `*.orbax-checkpoint-tmp` behind. Needs root to mount a tmpfs; skipped
  otherwise."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1500k", "none", str(disk)],
      capture_output=True).returncode != 0:
    pytest.skip("cannot mount a small tmpfs (needs root)")
  try:
    result = subprocess.run(
        [sys.executable, "-m", "deepaa_jax.main", "--config=configs/test.py",
         f"--workdir={disk / 'run'}", f"--config.input.npz_path={run_npz}",
         *_FLOW_ARGS, "--config.train.num_steps=12",
         "--config.train.checkpoint_every_steps=2"],
        cwd=_REPO, env=_flow_env(), capture_output=True, text=True,
        timeout=300)
    stderr = result.stderr
    assert result.returncode == 1, stderr[-3000:]
    # KNOWN OPEN (docs/reliability.md): under some timings orbax's
    # background asyncio threads still print "Event loop is closed"
    # tracebacks when the disk fills (seen on the loaded 2-core VM, not on
    # the idle one). Any other traceback fails the test.
    other = [b for b in stderr.split("Traceback (most recent call last)")[1:]
             if "Event loop is closed" not in b]
    assert not other, stderr[-3000:]
    errors_ = [l for l in stderr.splitlines() if l.startswith("ERROR: ")]
    assert len(errors_) == 1, stderr[-3000:]
    assert re.match(r"ERROR: no space left on the device holding .*; its "
                    r"partial checkpoint was removed\. Free space", errors_[0])
    for needle in ("No space left on device", "RESOURCE_EXHAUSTED",
                   "Errno 28"):
      assert needle not in stderr, stderr[-3000:]
    partial = [p for p in disk.rglob("*") if ".orbax-checkpoint-tmp" in p.name]
    assert not partial, partial
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.usefixtures("fast_compiles")
def test_flow_gs_log_holds_every_record_up_to_the_checkpoint(
    gcs, run_npz, logging_tensorboard, monkeypatch):
  """Finding 5: a gs:// metrics.jsonl was uploaded every 30 s, so a run
  killed after checkpoint 4 and resumed from it held steps [2, 6, 8, ...].
  Now the log is uploaded before each checkpoint: the kill (no exit hook
  runs) loses nothing the resumed run does not write again."""
  del logging_tensorboard
  settings = dict(num_steps=6, checkpoint_every_steps=2, log_every_steps=1)
  workdir = gcs + "/run"

  class Killed(BaseException):
    pass

  save = flow_utils.Checkpointer.save
  write = flow_utils.JsonlWriter.write_scalars

  def saved_at_once(self, step, state, meta):  # no save in flight at the kill
    save(self, step, state, meta)
    self.wait()

  def killed_at_5(self, step, scalars):
    write(self, step, scalars)
    if step == 5:
      raise Killed()

  with monkeypatch.context() as patch:
    patch.setattr(flow_utils.Checkpointer, "save", saved_at_once)
    patch.setattr(flow_utils.JsonlWriter, "write_scalars", killed_at_5)
    with pytest.raises(Killed):
      run_train.train(_run_config(run_npz, **settings), workdir)
  flow_utils._UNFLUSHED.clear()  # pylint: disable=protected-access  # killed
  _, metrics = run_train.train(_run_config(run_npz, **settings), workdir)
  assert metrics["resumed_from_step"] == 4
  assert _flow_steps(workdir + "/metrics.jsonl") == [1, 2, 3, 4, 5, 6, 6]


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("fails_at", ["create", "write"])
def test_flow_tensorboard_failure_is_one_warning(run_npz, tmp_path, caplog,
                                                 monkeypatch, fails_at):
  """Finding 5: TensorBoard events that cannot reach storage ended the run
  (after TensorFlow's retries) in a raw AbortedError traceback. Now one
  warning line; the run goes on and its JSONL log is complete."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  class Unreachable(metric_writers.LoggingWriter):
    def write_scalars(self, step, scalars):
      raise RuntimeError("AbortedError: All 10 retry attempts failed.")

  def create(logdir, **unused):
    if fails_at == "create":
      raise RuntimeError(f"AbortedError: cannot create {logdir}")
    return Unreachable()

  monkeypatch.setattr(metric_writers, "create_default_writer", create)
  caplog.set_level("WARNING")
  workdir = tmp_path / "run"
  _, metrics = run_train.train(_run_config(run_npz, log_every_steps=1),
                               workdir)
  assert metrics["complete"]
  lines = [r.getMessage() for r in caplog.records
           if "TensorBoard" in r.getMessage()]
  assert len(lines) == 1 and "AbortedError" in lines[0], lines
  assert _flow_steps(workdir / "metrics.jsonl") == [1, 2, 3, 4, 4]


@pytest.mark.usefixtures("fast_compiles")
def test_flow_cut_metrics_log_names_the_lost_steps(run_npz, tmp_path,
                                                   caplog):
  """Finding 9: a metrics.jsonl cut mid-line was truncated on resume without
  a word (its steps jumped from 20 to 38). Now one warning naming them."""
  settings = dict(num_steps=6, log_every_steps=1)
  workdir = tmp_path / "run"
  run_train.train(_run_config(run_npz, **settings), workdir,
                  stop_after_step=4)
  log = workdir / "metrics.jsonl"
  lines = log.read_text().splitlines()
  log.write_text(lines[0] + "\n" + lines[1][:len(lines[1]) // 2])
  caplog.set_level("WARNING")
  _, metrics = run_train.train(_run_config(run_npz, **settings), workdir)
  assert metrics["resumed_from_step"] == 4
  cut = [r.getMessage() for r in caplog.records
         if "cut short" in r.getMessage()]
  assert len(cut) == 1 and "steps 2 to 4 are lost" in cut[0], cut
  assert _flow_steps(log) == [1, 5, 6, 6]


@pytest.mark.usefixtures("fast_compiles")
def test_flow_finished_run_without_checkpoints_is_not_retrained(run_npz,
                                                               tmp_path):
  """Finding 9: a finished run whose checkpoints were deleted was trained
  again from step 0 over its results.json, without a word. Now refused in
  one line; no file changes."""
  workdir = tmp_path / "run"
  run_train.train(_run_config(run_npz), workdir)
  shutil.rmtree(workdir / "checkpoints")
  before = _files(workdir)
  with pytest.raises(errors.ResumeRefusedError) as info:
    run_train.train(_run_config(run_npz), workdir)
  message = str(info.value)
  assert "\n" not in message
  assert "finished training run" in message and "results.json" in message
  assert "new --workdir" in message
  assert _files(workdir) == before
  # The same for a search: refused before the network or data are used.
  from deepaa_jax import search_job as flow_search_job  # pylint: disable=g-import-not-at-top
  search_dir = tmp_path / "search"
  search_dir.mkdir()
  (search_dir / "results.json").write_text(json.dumps({"complete": True}))
  before = _files(search_dir)
  search_config = run_config_lib.load_config_file(
      _REPO / "configs" / "cifar10_cpu.py").search
  with pytest.raises(errors.ResumeRefusedError,
                     match=r"finished search .*no checkpoint"):
    flow_search_job.search_layers(jax.random.key(0), None, None,
                                  search_config, search_dir)
  assert _files(search_dir) == before


# ---------------------------------------------------------------------------
# Policy files, inputs and messages (issue 20, findings 6, 7, 8 and 11).
# ---------------------------------------------------------------------------

# (section: validation and messages)

# Imported here, not at the top, so that this section's edits stay in it.
from deepaa_jax import inspect_job as v_inspect  # pylint: disable=g-import-not-at-top
from deepaa_jax import input_pipeline as v_input  # pylint: disable=g-import-not-at-top
from deepaa_jax import pil as v_pil  # pylint: disable=g-import-not-at-top
from deepaa_jax import search as v_search  # pylint: disable=g-import-not-at-top
import subprocess as v_subprocess  # pylint: disable=g-import-not-at-top,g-bad-import-order
import sys as v_sys  # pylint: disable=g-import-not-at-top,g-bad-import-order


def _v_doc():
  """The 3-layer standard_cutout policy (crop, flip, cutout: distinct rows)
  as a JSON document."""
  return json.loads(policy_lib.to_json(policy_lib.baseline(
      "standard_cutout", space_lib.cifar_space())))


def _v_write(tmp_path, doc, name="v.json"):
  path = tmp_path / name
  path.write_text(json.dumps(doc))
  return path


# Every reader of policy files: the probabilities it reads from `path`.
_V_READERS = {
    "load_policy": lambda path: policy_lib.load_policy(path).probs,
    "make_policy": lambda path: policy_lib.make_policy(
        _policy_config("file", path), space_lib.cifar_space()).probs,
    "DeepAAPolicy": lambda path: v_pil.DeepAAPolicy(path).probs,
    "inspect": lambda path: v_inspect.load_any_policy(
        ml_collections.ConfigDict({"kind": "auto", "path": str(path),
                                   "space": "auto", "num_layers": 6})).probs,
}
_V_NAMES = sorted(_V_READERS)


@pytest.mark.parametrize("reader", _V_NAMES)
def test_v_policy_layers_are_read_in_the_order_of_their_layer_field(
    reader, tmp_path):
  """Finding 6: layers listed out of order were read in list order, each
  entry's "layer" field ignored (load_policy, DeepAAPolicy, inspect)."""
  doc = _v_doc()
  expected = np.asarray([layer["probs"] for layer in doc["layers"]])
  doc["layers"] = doc["layers"][::-1]  # layers 3, 2, 1
  np.testing.assert_array_equal(
      _V_READERS[reader](_v_write(tmp_path, doc)), expected)


def _v_edit(field, value):
  def edit(doc):
    if field == "probs_str":
      doc["layers"][0]["probs"] = [str(p) for p in doc["layers"][0]["probs"]]
    elif field == "probs_nested":
      doc["layers"][0]["probs"] = [doc["layers"][0]["probs"]]
    elif field == "layer_numbers":
      for layer, number in zip(doc["layers"], value):
        layer["layer"] = number
    else:
      doc[field] = value
  return edit


@pytest.mark.parametrize("reader", _V_NAMES)
@pytest.mark.parametrize("edit,needle,wrong", [
    (_v_edit("num_layers", 2), "'num_layers' is 2 but 'layers' lists 3",
     None),
    (_v_edit("layer_numbers", [1, 1, 3]), "'layer' fields are [1, 1, 3]",
     None),
    (_v_edit("layer_numbers", [1, "2", 3]), "integer 'layer'", None),
    (_v_edit("probs_str", None), "probability 0 is '0.0' (str), expected a "
     "number", None),
    (_v_edit("probs_nested", None), "probability 0 is [", "139 probabilities"),
    (_v_edit("num_transforms", 139.0), "'num_transforms' must be an integer",
     None),
    (_v_edit("format", "other"), "not a deepaa-jax-policy/1 policy file",
     None),
], ids=["num_layers", "duplicate_layer", "string_layer", "string_probs",
        "nested_probs", "float_num_transforms", "other_format"])
def test_v_policy_files_are_checked_alike_by_every_reader(
    reader, edit, needle, wrong, tmp_path):
  """Finding 6: a num_layers disagreeing with the list, probabilities as
  strings, duplicate layer numbers were accepted; nested probabilities got
  "layer 1 has 139 probabilities, expected 139"; DeepAAPolicy accepted
  format "other" and num_transforms 139.0 and raised plain ValueErrors (two
  validators). Now one validator: a one-line PolicyFileError naming the file
  and the entry, from every reader."""
  doc = _v_doc()
  edit(doc)
  path = _v_write(tmp_path, doc)
  message = _policy_error(_V_READERS[reader], path, needle)
  if wrong:
    assert wrong not in message, message


@pytest.mark.parametrize("reader", ["make_policy", "DeepAAPolicy"])
@pytest.mark.parametrize("kind", ["json", "npz"])
def test_v_policy_to_train_with_needs_a_layer(reader, kind, tmp_path):
  """Finding 6: `"layers": []` trained with no augmentation and no warning.
  A policy to train with needs at least one layer (no augmentation is the
  baseline 'none'); the K = 0 file itself still round-trips through
  load_policy (an earlier finding)."""
  none = policy_lib.baseline("none", space_lib.cifar_space())
  if kind == "json":
    path = policy_lib.save_policy(tmp_path / "none.json", none)
    assert policy_lib.load_policy(path) == none
  else:
    path = policy_lib.save_official_npz(tmp_path / "none.npz", none)
  read = (_V_READERS["DeepAAPolicy"] if reader == "DeepAAPolicy" else
          lambda p: policy_lib.make_policy(
              _policy_config("file" if kind == "json" else "official", p),
              space_lib.cifar_space()))
  _policy_error(read, path, "0 layers", "at least one")
  if reader == "make_policy":
    _policy_error(read, path, "'none'")


def test_v_policy_validator_and_errors_import_no_jax():
  """Finding 6: the one validator lives in a JAX-free module, so pil.py (a
  PyTorch DataLoader's import) can use it; errors.py imports no JAX."""
  code = ("import sys; sys.modules['jax'] = None; sys.modules['flax'] = None\n"
          "from deepaa_jax import errors, policy_format\n"
          "assert policy_format.from_json and errors.PolicyFileError\n"
          "print('ok')")
  result = v_subprocess.run([v_sys.executable, "-c", code], cwd=_REPO,
                            capture_output=True, text=True, timeout=60)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_v_labels_above_num_classes_are_a_data_error(run_npz, tmp_path):
  """Finding 7: --config.model.num_classes=5 on 10-class labels ended with
  "Training diverged ... lower config.train.learning_rate". Now a DataError
  at load time naming both numbers (here 3 logits, labels up to 3)."""
  config = _run_config(run_npz)
  config.model.num_classes = 3
  with pytest.raises(errors.DataError) as info:
    run_train.train(config, tmp_path / "run")
  message = str(info.value)
  assert "\n" not in message
  for needle in ("config.model.num_classes=3", "labels up to 3",
                 "4 classes"):
    assert needle in message, (needle, message)
  assert not (tmp_path / "run" / "checkpoints").exists()
  # The same check names the section of a search's pretraining.
  dataset = v_input.load_npz(run_npz, name="tiny")[0]
  with pytest.raises(errors.DataError, match=r"config\.pretrain\.model"):
    v_input.check_num_classes(dataset, 2,
                              field="config.pretrain.model.num_classes")
  assert v_input.check_num_classes(dataset, 0) == 4
  assert v_input.check_num_classes(dataset, 7) == 7  # spare logits are fine


_V_AUDIT_POLICY = policy_lib.baseline("standard", space_lib.cifar_space())


@pytest.mark.parametrize("step,example,needle", [
    (-1, 0, "step=-1 is outside"),
    (1.5, 0, "step must be a non-negative integer, got 1.5"),
    (2.0, 0, "step must be a non-negative integer, got 2.0"),
    (True, 0, "step must be a non-negative integer"),
    (0, -1, "example=-1 is outside"),
    (0, 8, "example=8 is outside [0, 8)"),
])
def test_v_audit_refuses_impossible_questions(step, example, needle):
  """Finding 8: audit_example with step -1 or example -1 returned
  transforms, and step 1.5 was read as step 1."""
  with pytest.raises(errors.ArgumentError) as info:
    run_train.audit_example(_V_AUDIT_POLICY, seed=0, step=step,
                            example=example, image_shape=(32, 32, 3),
                            batch_rows=8)
  assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("step,row,needle", [
    (0, -1, "row=-1 is outside [0, 4)"),
    (0, 4, "row=4 is outside [0, 4)"),
    (-1, 0, "step=-1 is outside"),
    (1.5, 0, "step must be a non-negative integer, got 1.5"),
])
def test_v_training_example_refuses_rows_outside_the_batch(step, row, needle):
  """Finding 8: training_example with row -1 wrapped around, and a row >=
  the batch size returned the next step's row."""
  with pytest.raises(errors.ArgumentError) as info:
    run_train.training_example(20, 4, seed=0, step=step, row=row)
  assert needle in str(info.value), str(info.value)


def test_v_audit_answers_possible_questions_as_before():
  """The checks change no answer: numpy integers are integers, and the rows
  of step s are the images of that step's batch."""
  a = run_train.audit_example(_V_AUDIT_POLICY, seed=0, step=np.int64(3),
                              example=np.int32(5), image_shape=(32, 32, 3))
  b = run_train.audit_example(_V_AUDIT_POLICY, seed=0, step=3, example=5,
                              image_shape=(32, 32, 3), batch_rows=6)
  assert [(r["index"], r["draws"]) for r in a] == [
      (r["index"], r["draws"]) for r in b]
  rows = [run_train.training_example(20, 4, seed=1, step=s, row=r)
          for s in range(5) for r in range(4)]
  assert sorted(rows) == list(range(20))  # one epoch: every image once


def test_v_cli_errors_have_one_prefix_and_integers_are_explained(tmp_path):
  """Finding 11: user errors came with two prefixes ("FATAL Flags parsing
  error:" for config mistakes, "ERROR:" for the rest), and num_steps=1e12
  got "invalid literal for int()"."""
  result = run_cli("--config.train.num_steps=1e12", workdir=tmp_path,
                   timeout=120)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1, result.stderr
  assert lines[0].startswith("ERROR: "), lines[0]
  assert ("config.train.num_steps is an integer; write 1000000000000"
          in lines[0]), lines[0]
  assert "invalid literal" not in lines[0] and "FATAL" not in lines[0]


def test_v_override_values_of_integer_fields_are_checked():
  """The check behind the CLI message: an integer field given 1e12, 2.5 or
  a word; integers, other fields and unknown fields pass (unknown fields
  have their own message)."""
  from deepaa_jax import main as cli  # pylint: disable=g-import-not-at-top
  config = _run_config("unused.npz")
  check = lambda arg: cli.bad_override_value(config, [arg])
  assert "write 1000000000000" in check("--config.train.num_steps=1e12")
  assert "must be an integer, got '2.5'" in check(
      "--config.train.batch_size=2.5")
  assert "got 'ten'" in check("--config.train.batch_size=ten")
  for ok in ("--config.train.num_steps=12", "--config.train.learning_rate=1e-3",
             "--config.train.nope=1.5", "--config.input.name=x"):
    assert check(ok) is None, ok


def _v_search_config(npz):
  config = run_config_lib.load_config_file(_REPO / "configs" /
                                           "cifar10_cpu.py")
  config.input.name = "tiny"
  config.input.npz_path = str(npz)
  return config


def test_v_search_seed_is_checked_like_train_seed(run_npz):
  """Finding 11: --config.search.seed=-1 was accepted while train.seed=-1
  was refused."""
  config = _v_search_config(run_npz)
  config.search.seed = -1
  with pytest.raises(errors.ConfigError,
                     match=r"config\.search\.seed must be a non-negative "
                     r"integer, got -1"):
    run_config_lib.validate(config)


def test_v_pretraining_batch_error_names_the_pretrain_field(run_npz,
                                                            tmp_path):
  """Finding 11: a pretraining batch larger than its split was reported as
  config.train.batch_size, a field the search config does not have."""
  config = _v_search_config(run_npz)
  config.pretrain.train.train_split = "train"
  config.pretrain.train.batch_size = 128  # > the 64 training images
  cfg = run_config_lib.train_job_config(config.pretrain, config.input)
  with pytest.raises(errors.ConfigError) as info:
    run_train.train(cfg, tmp_path / "pretrain")
  message = str(info.value)
  assert "config.pretrain.train.batch_size=128 exceeds" in message, message
  # A plain training config keeps its own name.
  with pytest.raises(errors.ConfigError,
                     match=r"^config\.train\.batch_size=128 exceeds"):
    run_train.train(_run_config(run_npz, batch_size=128), tmp_path / "t")


def test_v_class_conditional_pool_error_suggests_turning_it_off():
  """Finding 11: the class-conditional pool error did not suggest
  config.search.class_conditional=False."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (12, 8, 8, 3)).astype(np.uint8)
  labels = np.arange(12) % 2
  split = v_input.Split(images, labels)
  with pytest.raises(ValueError,
                     match=r"config\.search\.class_conditional=False"):
    v_search.make_search_data(split, split.take(np.arange(8)), 2, val_batch=5)


def test_v_one_hot_policies_have_entropy_zero_not_minus_zero():
  """Finding 11: one-hot policies printed "entropy -0.00 nats"."""
  summary = policy_lib.baseline("standard", space_lib.cifar_space()).summary()
  assert "entropy 0.00 nats" in summary and "-0.00" not in summary, summary
  np.testing.assert_array_equal(np.signbit(policy_lib.baseline(
      "standard", space_lib.cifar_space()).entropy()), False)


def test_v_uint16_advice_scales_instead_of_saturating():
  """Finding 11: the advice for uint16 images, np.clip(np.round(x), 0, 255),
  would saturate 16-bit data; now it scales (x >> 8)."""
  images = np.full((4, 8, 8, 3), 40000, np.uint16)
  labels = np.arange(4) % 2
  with pytest.raises(errors.DataError) as info:
    v_input.from_arrays("u16", images, labels, images, labels)
  message = str(info.value)
  assert "(x >> 8).astype(np.uint8)" in message, message
  assert "np.clip" not in message, message
  advice = (np.full(3, 40000, np.uint16) >> 8).astype(np.uint8)
  np.testing.assert_array_equal(advice, 156)  # 40000 / 65535 of 255, not 255


# ---------------------------------------------------------------------------
# First run and data (issue 20, findings 1, 10 and 12): variable-size TFDS
# images in memory, a clone without ../shared (CIFAR-10 and the official
# policies), previews of a TFDS input.
# ---------------------------------------------------------------------------

# (section: first run and data)

# Imported here, not at the top, so that this section's edits stay in it.
import functools as first_functools  # pylint: disable=g-import-not-at-top,g-bad-import-order
import hashlib as first_hashlib  # pylint: disable=g-import-not-at-top,g-bad-import-order
import http.server as first_http  # pylint: disable=g-import-not-at-top,g-bad-import-order
import threading as first_threading  # pylint: disable=g-import-not-at-top,g-bad-import-order
from deepaa_jax import config as first_config  # pylint: disable=g-import-not-at-top
from deepaa_jax import input_pipeline as first_input  # pylint: disable=g-import-not-at-top
from deepaa_jax import inspect_job as first_inspect  # pylint: disable=g-import-not-at-top
from deepaa_jax import plots as first_plots  # pylint: disable=g-import-not-at-top
from deepaa_jax import official as first_official  # pylint: disable=g-import-not-at-top
from deepaa_jax import streaming as first_streaming  # pylint: disable=g-import-not-at-top
from deepaa_jax import utils as first_utils  # pylint: disable=g-import-not-at-top
from tests.conftest import OFFICIAL_POLICIES as _FIRST_SHARED_POLICIES  # pylint: disable=g-import-not-at-top

_FIRST_CLASSES = 3


def _first_smooth_images(count, seed, low=24, high=80):
  """`count` smooth uint8[h, w, 3] images of random h, w in [low, high),
  non-square, values in [60, 200] (a zero pixel can only be padding). The
  first is high - 1 tall, the second high - 1 wide (as in the probe, every
  split then pads to the same (high - 1)^2 canvas)."""
  rng = np.random.default_rng(seed)
  images = []
  for i in range(count):
    h, w = (int(v) for v in rng.integers(low, high - 1, 2))
    h, w = (high - 1 if i == 0 else h), (high - 1 if i == 1 else w)
    if h == w:
      w = low + (w - low + 7) % (high - 1 - low)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, 3)
    image = np.stack([130 + 70 * np.sin(2 * np.pi * (xx + 0.5 * yy) + p)
                      for p in phase], -1)
    images.append(np.clip(np.rint(image), 60, 200).astype(np.uint8))
  return images


def _first_store(data_dir, name, train, test, shape=(None, None, 3)):
  """A real prepared TFDS dataset `name` (PNG, lossless; file order kept):
  example i has label i % 3."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=shape, encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=_FIRST_CLASSES)})
  split = lambda images: [(i, {"image": im, "label": i % _FIRST_CLASSES})
                          for i, im in enumerate(images)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version="1.0.0", features=features,
      split_datasets={"train": split(train), "test": split(test)},
      data_dir=str(data_dir), disable_shuffling=True)


@pytest.fixture(scope="module")
def first_mixed(tmp_path_factory):
  """A prepared TFDS dataset 'deepaa_mixed' of 24-79 px non-square images
  (the probe's oxford_flowers102-like case): (data_dir, train, test)."""
  pytest.importorskip("tensorflow_datasets")
  data_dir = tmp_path_factory.mktemp("tfds_mixed")
  train, test = _first_smooth_images(12, 0), _first_smooth_images(6, 1)
  _first_store(data_dir, "deepaa_mixed", train, test)
  return data_dir, train, test


def _first_input(name, data_dir, **overrides):
  config = first_input.default_input_config()
  config.update(dict(name=name, source="tfds", data_dir=str(data_dir),
                     pipeline="memory", image_size=32))
  config.update(overrides)
  return config


def _first_rule(images, size=32):
  """The stream's S x S rule applied to each original image (reference 1:
  the function `streaming` documents and uses)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  resize = first_streaming.default_resize(size)
  return np.stack([first_streaming.resize_center_crop(
      tf, tf.constant(im), resize, size).numpy() for im in images])


def _first_pil_rule(image, size=32):
  """Reference 2, independent of TensorFlow: Pillow's bicubic resize of
  the shorter side to round(S * 256 / 224), then the centre crop."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  short = first_streaming.default_resize(size)
  nh, nw = ((short, int(short * w / h)) if h <= w
            else (int(short * h / w), short))
  out = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
  top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
  return out[top:top + size, left:left + size]


def test_first_variable_size_tfds_in_memory_follows_the_stream_rule(
    first_mixed):
  """Finding 1: a prepared TFDS dataset of 24-79 px non-square images came
  out of the in-memory path as (N, 79, 79, 3), every image in the top-left
  corner of a black canvas (55 % padding), exit 0. Now each image is
  brought to S x S by the streaming rule, exactly as the stream feeds it."""
  data_dir, train, test = first_mixed
  dataset = first_input.load_dataset(_first_input("deepaa_mixed", data_dir))
  assert dataset.image_shape == (32, 32, 3)
  for split, originals in (("train", train), ("test", test)):
    images = dataset.splits[split].images
    assert images.shape == (len(originals), 32, 32, 3)
    assert images.min() > 0  # originals are in [60, 200]: no padding
    np.testing.assert_array_equal(images, _first_rule(originals))
    np.testing.assert_array_equal(dataset.splits[split].labels,
                                  np.arange(len(originals)) % 3)
    # Independent of TF: Pillow's bicubic resize and crop agree closely.
    pil = np.stack([_first_pil_rule(im) for im in originals])
    diff = np.abs(images.astype(int) - pil.astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 12, (diff.mean(), diff.max())
  # The same arrays as the streaming path reads (resize_size 0 alike).
  stream = first_streaming.open_streaming(_first_input(
      "deepaa_mixed", data_dir, pipeline="stream", tfds_eval_split="test"))
  np.testing.assert_array_equal(stream.take(len(test), spec="test").images,
                                dataset.test.images)


def test_first_fixed_size_tfds_in_memory_is_unchanged(tmp_path):
  """Finding 1, the other side: a fixed-size dataset keeps its own pixels
  and size (config.input.image_size does not apply to it)."""
  rng = np.random.default_rng(3)
  train = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(6)]
  test = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
  _first_store(tmp_path, "deepaa_fixed", train, test, shape=(8, 8, 3))
  dataset = first_input.load_dataset(_first_input("deepaa_fixed", tmp_path))
  np.testing.assert_array_equal(dataset.train.images, np.stack(train))
  np.testing.assert_array_equal(dataset.test.images, np.stack(test))


@pytest.fixture
def first_clone(tmp_path, monkeypatch):
  """A checkout without ../shared: the current directory and the
  repository root are tmp_path/clone/repo (tmp_path/clone has no shared/);
  caches and TFDS go to tmp_path."""
  repo = tmp_path / "clone" / "repo"
  repo.mkdir(parents=True)
  monkeypatch.chdir(repo)
  monkeypatch.setattr(first_utils, "REPO_ROOT", repo)
  monkeypatch.setattr(first_official, "_REPO_ROOT", repo)
  monkeypatch.setenv(first_official.CACHE_ENV, str(tmp_path / "cache"))
  for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "no_proxy", "NO_PROXY"):
    monkeypatch.delenv(var, raising=False)
  return tmp_path


def _first_closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _first_offline(monkeypatch):
  """Every download goes through a proxy on a closed local port: refused at
  once, as offline (and never a real download, online or not)."""
  proxy = f"http://127.0.0.1:{_first_closed_port()}"
  for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    monkeypatch.setenv(var, proxy)


def test_first_clone_reads_tfds_cifar10_in_the_original_order(first_clone):
  """Finding 10: a clone without ../shared ended with "no npz file at
  ../shared/data/cifar10.npz", TFDS not mentioned. Now the default npz,
  absent, falls back to TFDS cifar10 (here prepared, and stored in TFDS's
  shuffled order), read back in the original CIFAR order from its ids."""
  from experiments import prepare_tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = {"train_images": rng.integers(0, 256, (30, 32, 32, 3), np.uint8),
            "train_labels": np.arange(30) % 10,
            "test_images": rng.integers(0, 256, (10, 32, 32, 3), np.uint8),
            "test_labels": np.arange(10)}
  np.savez(first_clone / "small.npz", **arrays)
  data_dir = first_clone / "tfds"
  prepare_tfds.write_tfds_from_npz(str(first_clone / "small.npz"),
                                   str(data_dir), name="cifar10")
  config = first_config.load_config_file(_REPO / "configs" / "cifar10_cpu.py")
  assert not pathlib.Path(config.input.npz_path).exists()
  config.input.data_dir = str(data_dir)
  first_config.validate(config)  # the absent default npz is not an error
  dataset = first_input.load_dataset(config.input)
  np.testing.assert_array_equal(dataset.train.images, arrays["train_images"])
  np.testing.assert_array_equal(dataset.train.labels, arrays["train_labels"])
  np.testing.assert_array_equal(dataset.test.images, arrays["test_images"])
  # The preview reads the same data.
  images, source = first_plots.preview_images(
      config.input, space_lib.cifar_space(), num=3)
  np.testing.assert_array_equal(images, arrays["test_images"][:3])
  assert "cifar10" in source and "synthetic" not in source, source


def test_first_clone_offline_without_cifar10_is_one_line(first_clone,
                                                         monkeypatch):
  """Finding 10: offline and without the npz, one line names both ways
  forward (`tfds build cifar10`, --config.input.npz_path), in a second (not
  after TFDS's ten retries, ~3.5 min); a path the user gave is never
  replaced by other data."""
  _first_offline(monkeypatch)
  config = first_config.load_config_file(_REPO / "configs" / "cifar10_cpu.py")
  config.input.data_dir = str(first_clone / "tfds")
  first_config.validate(config)
  start = time.monotonic()
  with pytest.raises(errors.DatasetNotFoundError) as info:
    first_input.load_dataset(config.input)
  assert time.monotonic() - start < 30
  message = str(info.value)
  assert "\n" not in message, message
  for needle in ("tfds build cifar10", "--config.input.npz_path",
                 config.input.npz_path):
    assert needle in message, (needle, message)
  config.input.npz_path = str(first_clone / "typo.npz")
  with pytest.raises(errors.ConfigError, match="typo.npz"):
    first_config.validate(config)
  with pytest.raises(errors.DatasetNotFoundError) as info:
    first_input.load_dataset(config.input)
  assert "typo.npz" in str(info.value)
  assert "tfds build" not in str(info.value)


class _FirstQuietHandler(first_http.SimpleHTTPRequestHandler):

  def log_message(self, *args):  # pylint: disable=arguments-differ
    pass


@pytest.fixture
def first_policy_server(tmp_path):
  """A local HTTP server: /good/ holds the four official files (copied
  from ../shared by the test, never into the repository), /bad/ a
  cifar_1 with one byte changed. Yields its base URL."""
  if not _FIRST_SHARED_POLICIES.is_dir():
    pytest.skip(f"official policies not found at {_FIRST_SHARED_POLICIES}")
  root = tmp_path / "served"
  for folder in ("good", "bad"):
    (root / folder).mkdir(parents=True)
  for name in first_official.NAMES:
    data = (_FIRST_SHARED_POLICIES / first_official.file_name(name)
            ).read_bytes()
    (root / "good" / first_official.file_name(name)).write_bytes(data)
  tampered = bytearray((root / "good" / "policy_DeepAA_cifar_1.npz"
                        ).read_bytes())
  tampered[-40] ^= 1
  (root / "bad" / "policy_DeepAA_cifar_1.npz").write_bytes(bytes(tampered))
  server = first_http.ThreadingHTTPServer(
      ("127.0.0.1", 0),
      first_functools.partial(_FirstQuietHandler, directory=str(root)))
  thread = first_threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


def test_first_pinned_hashes_are_the_shared_files():
  """Finding 10: the pinned sha256 are those of the authors' files (the
  ../shared copies, which are the bytes of policy_port/ at the commit)."""
  if not _FIRST_SHARED_POLICIES.is_dir():
    pytest.skip(f"official policies not found at {_FIRST_SHARED_POLICIES}")
  for name in first_official.NAMES:
    data = (_FIRST_SHARED_POLICIES / first_official.file_name(name)
            ).read_bytes()
    assert first_hashlib.sha256(data).hexdigest() == first_official.SHA256[
        name], name
  assert first_official.url("cifar_1") == (
      "https://raw.githubusercontent.com/MSU-MLSys-Lab/DeepAA/"
      f"{first_official.COMMIT}/policy_port/policy_DeepAA_cifar_1.npz")
  # Present beside the checkout: the ../shared copy, no download.
  assert first_official.fetch("cifar_1") == (
      _FIRST_SHARED_POLICIES / "policy_DeepAA_cifar_1.npz").resolve()


def test_first_clone_fetches_checks_and_caches_official_policies(
    first_clone, first_policy_server, monkeypatch):
  """Finding 10: `--config.policy.path=cifar_1` (and every config that
  defaults to an official policy) failed in a clone: the files existed only
  in ../shared. Now they are downloaded on first use, sha256-checked and
  cached; later uses need no server."""
  monkeypatch.setenv(first_official.URL_ENV, first_policy_server + "/good")
  path = first_config.official_policy_path("cifar_2")
  cache = first_clone / "cache" / "policies"
  assert path == str(cache / "policy_DeepAA_cifar_2.npz")
  assert not cache.exists()
  config = first_config.load_config_file(
      _REPO / "configs" / "cifar10_train_cpu.py", "cifar_2")
  assert config.policy.path == path
  first_config.validate(config)  # not here yet: fetched on first use
  policy = policy_lib.make_policy(config.policy, space_lib.cifar_space())
  reference = policy_lib.load_official_npz(
      _FIRST_SHARED_POLICIES / "policy_DeepAA_cifar_2.npz")
  np.testing.assert_array_equal(policy.probs, reference.probs)
  assert (cache / "policy_DeepAA_cifar_2.npz").read_bytes() == (
      _FIRST_SHARED_POLICIES / "policy_DeepAA_cifar_2.npz").read_bytes()
  # The inspect job's official names too; then, with no server, the cache.
  by_name = first_inspect.load_any_policy(ml_collections.ConfigDict(
      {"kind": "auto", "path": "imagenet_1", "space": "auto",
       "num_layers": 6}))
  assert by_name.space_name == "imagenet"
  monkeypatch.setenv(first_official.URL_ENV,
                     f"http://127.0.0.1:{_first_closed_port()}")
  again = policy_lib.make_policy(config.policy, space_lib.cifar_space())
  np.testing.assert_array_equal(again.probs, reference.probs)
  assert sorted(p.name for p in cache.iterdir()) == [
      "policy_DeepAA_cifar_2.npz", "policy_DeepAA_imagenet_1.npz"]


def test_first_tampered_official_policy_is_refused(first_clone,
                                                    first_policy_server,
                                                    monkeypatch):
  """Finding 10: a download with another sha256 is refused in one line and
  nothing is cached."""
  monkeypatch.setenv(first_official.URL_ENV, first_policy_server + "/bad")
  with pytest.raises(errors.PolicyFileError) as info:
    first_official.fetch("cifar_1")
  message = str(info.value)
  assert "\n" not in message
  for needle in ("sha256", first_official.SHA256["cifar_1"],
                 first_policy_server + "/bad/policy_DeepAA_cifar_1.npz",
                 "--config.policy.path"):
    assert needle in message, (needle, message)
  cache = first_clone / "cache" / "policies"
  assert not cache.exists() or not list(cache.iterdir())


def test_first_official_policy_offline_is_one_line(first_clone, monkeypatch):
  """Finding 10: offline (an unreachable URL), one line gives the URL and
  the --config.policy.path fix, through every reader of official names."""
  base = f"http://127.0.0.1:{_first_closed_port()}/p"
  monkeypatch.setenv(first_official.URL_ENV, base)
  config = first_config.load_config_file(
      _REPO / "configs" / "cifar10_train_cpu.py", "cifar_1")
  readers = (
      lambda: policy_lib.make_policy(config.policy, space_lib.cifar_space()),
      lambda: first_inspect.load_any_policy(ml_collections.ConfigDict(
          {"kind": "auto", "path": "cifar_1", "space": "auto",
           "num_layers": 6})))
  for read in readers:
    with pytest.raises(errors.PolicyFileError) as info:
      read()
    message = str(info.value)
    assert "\n" not in message
    for needle in (base + "/policy_DeepAA_cifar_1.npz",
                   "--config.policy.path=/path/to/policy_DeepAA_cifar_1.npz"):
      assert needle in message, (needle, message)


def test_first_official_module_imports_no_jax():
  """The download/cache module is usable without JAX or TensorFlow."""
  code = ("import sys; import deepaa_jax.official; "
          "print(sorted(m for m in ('jax', 'tensorflow') if m in "
          "sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=_REPO,
                       capture_output=True, text=True, timeout=60, check=True)
  assert out.stdout.strip() == "[]", out


def test_first_tfds_preview_uses_the_dataset_images(first_mixed):
  """Finding 12: the policy preview showed synthetic images for any TFDS
  input. Now it shows the first test image of each class, as the run reads
  them (S x S by the streaming rule for these varying sizes), in memory and
  streamed alike."""
  data_dir, _, test = first_mixed
  expected = _first_rule(test[:_FIRST_CLASSES])  # labels 0, 1, 2 first
  for pipeline in ("memory", "stream"):
    config = _first_input("deepaa_mixed", data_dir, pipeline=pipeline,
                          tfds_eval_split="test")
    images, source = first_plots.preview_images(
        config, space_lib.cifar_space(), num=_FIRST_CLASSES)
    np.testing.assert_array_equal(images, expected)
    assert "synthetic" not in source and "deepaa_mixed" in source, source
  # A fixed-size dataset: its own pixels; class order, not file order.
  rng = np.random.default_rng(5)
  test = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(7)]
  labels = [2, 2, 1, 0, 1, 0, 2]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=3)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name="deepaa_preview", version="1.0.0", features=features,
      split_datasets={s: [(i, {"image": im, "label": l}) for i, (im, l) in
                          enumerate(zip(test, labels))]
                      for s in ("train", "test")},
      data_dir=str(data_dir), disable_shuffling=True)
  images, _ = first_plots.preview_images(
      _first_input("deepaa_preview", data_dir), space_lib.cifar_space(),
      num=4)
  np.testing.assert_array_equal(images, np.stack(
      [test[3], test[2], test[0], test[1]]))  # classes 0, 1, 2, then rest
