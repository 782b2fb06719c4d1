"""Tests for deepaa_jax/space.py: the 139-entry tables and applying them."""

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from benchmarks import pil_reference as ref
from deepaa_jax import ops
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as S
from tests.conftest import OFFICIAL_POLICIES, synthetic_images

CIFAR = S.cifar_space()
IMAGENET = S.imagenet_space()


def _pil_draws(key, height, width, space):
  """The draws `apply_all(key, ...)` makes, as pil_reference.Draws."""
  d = S.sample_draws(jax.random.split(key)[0], height, width, space)
  return ref.Draws(
      flip=bool(d.flip),
      cutout_center=tuple(float(v) for v in d.cutout_center),
      crop_offsets=tuple(int(v) for v in d.crop_offsets),
      rrc_box=tuple(int(v) for v in d.resized_crop_box))


# --------------------------------------------------------------------------
# The tables.
# --------------------------------------------------------------------------


def test_cifar_table_matches_the_spec_by_hand():
  """Spec §1.2: index blocks, levels (identity level dropped) and values."""
  assert CIFAR.size == 139 and IMAGENET.size == 139
  blocks = {0: [0], 1: range(1, 13), 2: range(13, 25), 3: range(25, 37),
            4: range(37, 49), 5: range(49, 61), 6: [61], 7: [62], 8: [63],
            9: range(64, 76), 10: range(76, 88), 11: range(88, 100),
            12: range(100, 112), 13: range(112, 124), 14: range(124, 136),
            15: [136], 16: [137], 17: [138]}
  for op, idx in blocks.items():
    assert [CIFAR.ops[i] for i in idx] == [op] * len(idx), op
  signed = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]
  for op in (1, 2, 3, 4, 5, 11, 12, 13, 14):
    assert [CIFAR.levels[i] for i in blocks[op]] == signed
  for op in (9, 10):
    assert [CIFAR.levels[i] for i in blocks[op]] == list(range(12))
  for i in (0, 61, 62, 63, 136, 137, 138):
    assert CIFAR.levels[i] == 6
  values = np.asarray(CIFAR.values)
  np.testing.assert_allclose(
      values[1:13], [-.30, -.25, -.20, -.15, -.10, -.05, .05, .10, .15, .20,
                     .25, .30], atol=1e-7)
  np.testing.assert_allclose(
      values[25:37], [-.45, -.375, -.30, -.225, -.15, -.075, .075, .15, .225,
                      .30, .375, .45], atol=1e-7)
  np.testing.assert_allclose(values[49:61], [-30, -25, -20, -15, -10, -5, 5,
                                             10, 15, 20, 25, 30], atol=1e-5)
  np.testing.assert_allclose(values[64:76], np.arange(12) * 256 / 12,
                             atol=1e-4)  # threshold 128 kept, 256 dropped
  assert [int(v) for v in values[76:88]] == [4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7]
  np.testing.assert_allclose(
      values[88:100], [.10, .25, .40, .55, .70, .85, 1.15, 1.30, 1.45, 1.60,
                       1.75, 1.90], atol=1e-6)
  assert CIFAR.op_names[16:] == ("RandCutout", "RandCrop")
  assert IMAGENET.op_names[16:] == ("RandCutout60", "RandResizeCrop_imagenet")
  assert IMAGENET.ops == CIFAR.ops and IMAGENET.levels == CIFAR.levels
  assert CIFAR.has_magnitude.sum() == 132
  assert list(np.flatnonzero(CIFAR.is_random)) == [136, 137, 138]


def test_table_matches_the_reference_reading_of_the_spec():
  table = ref.transform_table(ref.CIFAR_OPS)
  assert [CIFAR.op_names[o] for o in CIFAR.ops] == [t[0] for t in table]
  assert list(CIFAR.levels) == [t[1] for t in table]
  np.testing.assert_array_equal(CIFAR.values, [t[2] for t in table])


@pytest.mark.parametrize("name", ["cifar_1", "cifar_2", "imagenet_1",
                                  "imagenet_2"])
def test_table_matches_the_official_policy_files(name):
  path = OFFICIAL_POLICIES / f"policy_DeepAA_{name}.npz"
  if not path.is_file():
    pytest.skip(f"official policy not found at {path}")
  with np.load(path) as data:
    np.testing.assert_array_equal(data["ops"][:, 0], CIFAR.ops)
    np.testing.assert_array_equal(data["mags"][:, 0], CIFAR.levels)
    assert int(data["l_ops"]) == 18 and int(data["l_mags"]) == 13
    names = [n.split(":")[0] for n in data["op_names"]]
  space = IMAGENET if name.startswith("imagenet") else CIFAR
  # The shipped ImageNet files name op 16 "RandCutout" (spec §3.1 anomaly).
  expected = list(space.op_names)
  if name.startswith("imagenet"):
    expected[16] = "RandCutout"
  assert names == expected


def test_space_is_hashable_and_lookups_work():
  assert hash(S.cifar_space()) == hash(CIFAR) and S.get_space("cifar") == CIFAR
  assert CIFAR.index_of("Identity") == 0
  assert CIFAR.index_of("ShearX", 0) == 1 and CIFAR.index_of("ShearX", 7) == 7
  assert CIFAR.index_of("Solarize", 11) == 75
  with pytest.raises(ValueError, match="no level 6"):
    CIFAR.index_of("ShearX", 6)
  with pytest.raises(ValueError, match="unknown search space"):
    S.get_space("svhn")
  assert "Rotate" in CIFAR.table() and len(CIFAR.table().splitlines()) == 140
  assert CIFAR.transform_name(1) == "ShearX(m=0, -0.3)"


# --------------------------------------------------------------------------
# apply_all / apply_transform / apply_chain.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_cifar(test_images):
  images = jnp.asarray(test_images, jnp.float32)
  keys = jax.random.split(jax.random.key(11), len(images))
  out = jax.jit(jax.vmap(lambda k, x: S.apply_all(k, x, CIFAR)))(keys, images)
  return keys, images, np.asarray(out)


def test_apply_all_matches_pillow_at_all_139_transforms(all_cifar):
  keys, images, out = all_cifar
  table = ref.transform_table(ref.CIFAR_OPS)
  assert out.shape == (len(images), 139, 32, 32, 3)
  for n in range(len(images)):
    draws = _pil_draws(keys[n], 32, 32, CIFAR)
    image = np.asarray(images[n]).astype(np.uint8)
    for i in range(139):
      np.testing.assert_array_equal(
          out[n, i], ref.apply_transform(image, i, draws, table),
          err_msg=f"image {n} transform {i} {CIFAR.transform_name(i)}")


@pytest.mark.parametrize("method", ["stages", "switch"])
def test_apply_transform_equals_apply_all_for_every_index(method, all_cifar):
  keys, images, out = all_cifar
  fn = jax.jit(jax.vmap(jax.vmap(
      lambda k, x, i: S.apply_transform(k, x, i, CIFAR, method=method),
      in_axes=(None, None, 0)), in_axes=(0, 0, None)))
  single = np.asarray(fn(keys, images, jnp.arange(139)))
  np.testing.assert_array_equal(single, out)


def test_imagenet_space_apply_all_equals_apply_transform_and_pillow():
  """At S = 64 (small, for speed): RandCutout60 and RandResizeCrop included."""
  size = 64
  images = jnp.asarray(np.stack([
      np.asarray(PIL.Image.fromarray(synthetic_images(16)[6]).resize(
          (size, size), PIL.Image.BICUBIC)),
      synthetic_images(size)[0]]), jnp.float32)
  keys = jax.random.split(jax.random.key(3), 2)
  out = np.asarray(jax.jit(jax.vmap(
      lambda k, x: S.apply_all(k, x, IMAGENET)))(keys, images))
  for method in ("stages", "switch"):
    single = np.asarray(jax.jit(jax.vmap(jax.vmap(
        lambda k, x, i: S.apply_transform(k, x, i, IMAGENET, method=method),
        in_axes=(None, None, 0)), in_axes=(0, 0, None)))(
            keys, images, jnp.arange(139)))
    np.testing.assert_array_equal(single, out)
  table = ref.transform_table(ref.IMAGENET_OPS)
  for n in range(2):
    draws = _pil_draws(keys[n], size, size, IMAGENET)
    image = np.asarray(images[n]).astype(np.uint8)
    for i in range(138):
      np.testing.assert_array_equal(out[n, i],
                                    ref.apply_transform(image, i, draws, table))
    # RandResizeCrop resizes back to S x S here (static shapes); compare with
    # PIL resizing the same box to S x S, within the float32-weight tolerance.
    left, top, w, h = draws.rrc_box
    expected = np.asarray(PIL.Image.fromarray(image).resize(
        (size, size), PIL.Image.BICUBIC, box=(left, top, left + w,
                                                  top + h)))
    assert np.abs(out[n, 138] - expected).max() <= 2


def test_random_columns_depend_on_the_key_and_only_on_the_key(all_cifar):
  keys, images, out = all_cifar
  again = np.asarray(jax.jit(lambda k, x: S.apply_all(k, x, CIFAR))(
      keys[0], images[0]))
  np.testing.assert_array_equal(again, out[0])
  other = np.asarray(jax.jit(lambda k, x: S.apply_all(k, x, CIFAR))(
      jax.random.key(999), images[0]))
  np.testing.assert_array_equal(other[:136], out[0, :136])  # deterministic
  assert not np.array_equal(other[137:], out[0, 137:])  # cutout / crop moved


def test_apply_chain_is_the_sequence_of_apply_transform_and_matches_pillow(
    test_images):
  image = jnp.asarray(test_images[-1], jnp.float32)
  key = jax.random.key(5)
  indices = jnp.asarray([138, 55, 100, 137, 63, 136], jnp.int32)
  chain = np.asarray(jax.jit(lambda k, x, i: S.apply_chain(k, x, i, CIFAR))(
      key, image, indices))
  x = image
  draws_list = []
  one = jax.jit(lambda k, x, i: S.apply_transform(k, x, i, CIFAR))
  for k, index in enumerate(indices):
    layer_key = jax.random.fold_in(key, k)
    x = one(layer_key, x, index)
    draws_list.append(_pil_draws(layer_key, 32, 32, CIFAR))
  np.testing.assert_array_equal(chain, x)
  expected = ref.apply_chain(np.asarray(image).astype(np.uint8),
                             [int(i) for i in indices], draws_list)
  np.testing.assert_array_equal(chain, expected)


def test_apply_chain_batch_methods_agree_and_do_not_depend_on_batch_size():
  images = jnp.asarray(np.concatenate([synthetic_images()] * 2), jnp.float32)
  indices = jax.random.randint(jax.random.key(1), (14, 4), 0, 139)
  key = jax.random.key(2)
  fn = jax.jit(lambda x, i, m, o: S.apply_chain_batch(
      key, x, i, CIFAR, method=m, offset=o, random_sign=True),
               static_argnums=2)
  seq = np.asarray(fn(images, indices, "sequential", 0))
  vec = np.asarray(fn(images, indices, "vectorized", 0))
  np.testing.assert_array_equal(seq, vec)
  # Example i always uses fold_in(key, offset + i): splitting the batch in two
  # gives the same images.
  first = np.asarray(fn(images[:5], indices[:5], "sequential", 0))
  rest = np.asarray(fn(images[5:], indices[5:], "sequential", 5))
  np.testing.assert_array_equal(np.concatenate([first, rest]), seq)
  # And it equals apply_chain with the per-example key.
  one = jax.jit(lambda k, x, i: S.apply_chain(k, x, i, CIFAR, random_sign=True))(
      jax.random.fold_in(key, 3), images[3], indices[3])
  np.testing.assert_array_equal(seq[3], one)


def test_random_sign_mirrors_affine_magnitudes_half_of_the_time():
  """Eval semantics (spec §4.2): the value is negated with probability 1/2."""
  image = jnp.asarray(synthetic_images()[0], jnp.float32)
  index = CIFAR.index_of("Rotate", 12)  # +30 degrees
  plus = np.asarray(ops.rotate(image, 30.0))
  minus = np.asarray(ops.rotate(image, -30.0))
  keys = jax.random.split(jax.random.key(4), 400)
  outs = np.asarray(jax.jit(jax.vmap(lambda k: S.apply_transform(
      k, image, index, CIFAR, random_sign=True)))(keys))
  is_plus = np.all(outs == plus, axis=(1, 2, 3))
  is_minus = np.all(outs == minus, axis=(1, 2, 3))
  assert np.all(is_plus | is_minus)
  assert 160 < is_minus.sum() < 240
  # Non-affine ops ignore the sign.
  index = CIFAR.index_of("Solarize", 3)
  outs = np.asarray(jax.vmap(lambda k: S.apply_transform(
      k, image, index, CIFAR, random_sign=True))(keys[:16]))
  np.testing.assert_array_equal(outs, np.broadcast_to(outs[0], outs.shape))


def test_apply_transform_vmap_equals_loop(test_images):
  images = jnp.asarray(test_images[:3], jnp.float32)
  keys = jax.random.split(jax.random.key(6), 3)
  idx = jnp.asarray([7, 63, 137])
  vm = np.asarray(jax.vmap(lambda k, x, i: S.apply_transform(k, x, i, CIFAR))(
      keys, images, idx))
  one = jax.jit(lambda k, x, i: S.apply_transform(k, x, i, CIFAR))
  for n in range(3):
    np.testing.assert_array_equal(vm[n], one(keys[n], images[n], idx[n]))


def test_bad_method_is_a_clear_error():
  with pytest.raises(ValueError, match="method must be"):
    S.apply_transform(jax.random.key(0), jnp.zeros((8, 8, 3)), 0, CIFAR,
                      method="fast")


# --------------------------------------------------------------------------
# Level values by phase (issue 20, finding 13): the official search computes
# m / 12 in float32, the official evaluation in float64 (spec §4.1).
# --------------------------------------------------------------------------

# The transforms whose pixels the two tables change (issue 20): Contrast,
# Color m=8, 10; Brightness m=5, 8, 10; Sharpness m=8.
_PHASE_SENSITIVE = [95, 97, 107, 109, 117, 119, 121, 131]


def _official_evaluation_table(ops_table):
  """(op, level, value) as the official evaluation computes them, written
  independently: `mags / (l_mags - 1)` on the int array, then
  `level * (hi - lo) + lo`, all in float64 (spec §4.1)."""
  table = []
  for name, lo, hi, dropped in ops_table:
    if dropped is None or dropped == "random":
      table.append((name, 6, 0.0))
      continue
    mags = np.asarray([m for m in range(13) if m != dropped], np.int32)
    for m, level in zip(mags, mags / (13 - 1)):
      table.append((name, int(m), float(level * (hi - lo) + lo)))
  return table


def test_each_phase_has_the_official_codes_values():
  """Search: the float32 table of the reference (`pil_reference`); the
  evaluation: float64 m / 12. The default stays the search's."""
  assert S.get_space("cifar") is CIFAR and CIFAR.phase == "search"
  for name, ops_table in (("cifar", ref.CIFAR_OPS),
                          ("imagenet", ref.IMAGENET_OPS)):
    search = S.get_space(name, phase="search")
    evaluation = S.get_space(name, phase="evaluation")
    assert evaluation.phase == "evaluation"
    assert evaluation.ops == search.ops and evaluation.levels == search.levels
    assert list(search.values) == [t[2] for t in ref.transform_table(
        ops_table)]
    assert list(evaluation.values) == [
        t[2] for t in _official_evaluation_table(ops_table)]
    assert evaluation.values != search.values
  with pytest.raises(ValueError, match="unknown phase"):
    S.get_space("cifar", phase="train")


@pytest.mark.parametrize("phase", ["search", "evaluation"])
def test_both_tables_match_pillow_at_the_values_that_differ(phase,
                                                            test_images):
  """Every transform whose value differs between the phases, on byte-exact
  CIFAR-10 images (when present): the JAX ops with `phase`'s table equal
  Pillow given that phase's official values."""
  space = S.cifar_space(phase=phase)
  other = S.cifar_space(phase=("search" if phase == "evaluation" else
                               "evaluation"))
  table = (ref.transform_table(ref.CIFAR_OPS) if phase == "search" else
           _official_evaluation_table(ref.CIFAR_OPS))
  indices = [i for i in range(139) if space.values[i] != other.values[i]]
  assert set(_PHASE_SENSITIVE) <= set(indices)
  images = jnp.asarray(test_images, jnp.float32)
  out = np.asarray(jax.jit(jax.vmap(jax.vmap(
      lambda x, i: S.apply_transform(jax.random.key(0), x, i, space),
      in_axes=(None, 0)), in_axes=(0, None)))(images, jnp.asarray(indices)))
  for n, image in enumerate(np.asarray(test_images)):
    for j, i in enumerate(indices):
      np.testing.assert_array_equal(
          out[n, j], ref.apply_transform(image, i, ref.Draws(), table),
          err_msg=f"{phase} image {n} transform {i} {space.transform_name(i)}")


def test_the_evaluation_path_applies_the_evaluation_table(exact_cifar):
  """`Policy.space` is the evaluation space, so `apply_policy` (training,
  previews, audits) gives the official evaluation's pixels, which differ from
  the search table's on byte-exact CIFAR-10 images; the search keeps its
  float32 table (`get_space`)."""
  evaluation = _official_evaluation_table(ref.CIFAR_OPS)
  search = ref.transform_table(ref.CIFAR_OPS)
  probs = np.zeros((1, 139))
  probs[0, _PHASE_SENSITIVE] = 1 / len(_PHASE_SENSITIVE)
  policy = policy_lib.Policy(probs, "cifar", "sensitive")
  assert policy.space.phase == "evaluation"
  images = np.tile(exact_cifar[:8], (8, 1, 1, 1))
  key = jax.random.key(0)
  out = np.asarray(policy_lib.apply_policy(key, images, policy))
  k_index, _ = policy_lib._policy_keys(key)  # pylint: disable=protected-access
  chosen = np.asarray(policy_lib.sample_indices(k_index, probs,
                                                len(images)))[:, 0]
  assert set(chosen) == set(_PHASE_SENSITIVE)
  differs = 0
  for x, i, y in zip(images, chosen, out):
    np.testing.assert_array_equal(
        y, ref.apply_transform(x, int(i), ref.Draws(), evaluation),
        err_msg=f"transform {i}")
    differs += (y != ref.apply_transform(x, int(i), ref.Draws(), search)).any()
  assert differs, "the two tables agree on every image here"
