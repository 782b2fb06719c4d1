"""Tests for deepaa_jax/ops.py: pixel parity with Pillow, and JAX contracts.

The reference is `benchmarks/pil_reference.py`, an independent reading of the
spec written against Pillow; it does not import deepaa_jax.
"""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest
from scipy import stats

from benchmarks import pil_reference as ref
from deepaa_jax import ops
from deepaa_jax import space as space_lib
from tests.conftest import synthetic_images

TABLE = ref.transform_table(ref.CIFAR_OPS)

# op name -> JAX op taking (image, value). Identity and the magnitude-free ops
# ignore the value.
DETERMINISTIC = {
    "Identity": lambda x, v: ops.identity(x),
    "ShearX": ops.shear_x,
    "ShearY": ops.shear_y,
    "TranslateX": ops.translate_x,
    "TranslateY": ops.translate_y,
    "Rotate": ops.rotate,
    "AutoContrast": lambda x, v: ops.auto_contrast(x),
    "Invert": lambda x, v: ops.invert(x),
    "Equalize": lambda x, v: ops.equalize(x),
    "Solarize": ops.solarize,
    "Posterize": ops.posterize,
    "Contrast": ops.contrast,
    "Color": ops.color,
    "Brightness": ops.brightness,
    "Sharpness": ops.sharpness,
}


def _levels(name):
  """(table indices, values) of one op in the 139-transform table."""
  rows = [(i, v) for i, (n, _, v) in enumerate(TABLE) if n == name]
  return [r[0] for r in rows], [r[1] for r in rows]


def _pil(image, index, draws=None):
  return ref.apply_transform(image, index, draws or ref.Draws(), TABLE)


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_ops_match_pillow_at_every_level(name, test_images):
  """Every deterministic transform of the table is bit-exact vs Pillow, with
  the magnitude as a traced value (one compilation for all levels)."""
  indices, values = _levels(name)
  fn = jax.jit(jax.vmap(jax.vmap(DETERMINISTIC[name], in_axes=(None, 0)),
                        in_axes=(0, None)))
  out = np.asarray(fn(jnp.asarray(test_images, jnp.float32),
                      jnp.asarray(values, jnp.float32)))
  for n, image in enumerate(test_images):
    for j, index in enumerate(indices):
      np.testing.assert_array_equal(
          out[n, j], _pil(image, index),
          err_msg=f"{TABLE[index]} on image {n}")


@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateX",
                                  "TranslateY", "Rotate"])
@pytest.mark.parametrize("height,width", [(32, 32), (45, 70), (224, 224)])
def test_geometric_ops_with_static_values_match_pillow(name, height, width):
  """With Python-float magnitudes the fixed-point coefficients are computed in
  float64, exactly as PIL does: bit-exact at every level and image size."""
  image = synthetic_images(max(height, width))[0][:height, :width]
  indices, values = _levels(name)
  for index, value in zip(indices, values):
    out = np.asarray(DETERMINISTIC[name](image, value))
    np.testing.assert_array_equal(out, _pil(image, index),
                                  err_msg=f"{TABLE[index]} {height}x{width}")


def test_geometric_conventions_by_hand():
  """Hand-checked PIL conventions (spec §1.4, §5.2-5.4)."""
  image = np.zeros((8, 8, 3), np.uint8)
  image[2, 5] = 255
  # TranslateX by +0.25 * 8 = 2 px moves content LEFT; vacated columns are 0.
  out = np.asarray(ops.translate_x(image, 0.25))
  assert out[2, 3, 0] == 255 and out[2, 5, 0] == 0
  np.testing.assert_array_equal(out[:, 6:], 0)
  # TranslateY positive moves content UP.
  out = np.asarray(ops.translate_y(image, 0.25))
  assert out[0, 5, 0] == 255
  # ShearX pivots on the top-left corner: row 0 shifts by floor(0.5 + v/2).
  ramp = np.tile(np.arange(8, dtype=np.uint8)[None, :, None] * 10, (8, 1, 3))
  out = np.asarray(ops.shear_x(ramp, 0.3))
  np.testing.assert_array_equal(out[0], ramp[0])  # 0.5 + 0.15 < 1: no shift
  assert out[7, 0, 0] == ramp[7, 2, 0]  # row 7: x_in = floor(0.5 + 0.3*7.5)
  # Rotate +90 degrees is counter-clockwise: the top-right corner goes to
  # the top-left.
  corner = np.zeros((8, 8, 3), np.uint8)
  corner[0, 7] = 200
  assert np.asarray(ops.rotate(corner, 90.0))[0, 0, 0] == 200


def test_translate_shift_rounding():
  """CIFAR shifts are +-{2, 5, 7, 10, 12, 14} px (spec §1.1 table)."""
  shifts = []
  _, values = _levels("TranslateX")
  for v in values:
    coeffs = ops.translate_x_coefficients(v, 32, 32)
    shifts.append(int(coeffs[2]) // 65536)
  assert shifts == [-14, -12, -10, -7, -5, -2, 2, 5, 7, 10, 12, 14]


def test_blend_is_pils_single_precision_arithmetic():
  """Exhaustive over all (degenerate, pixel) pairs and the 12 enhance factors:
  `blend` equals C float arithmetic without fused multiply-add (NumPy float32
  rounds every step), which is what ImagingBlend computes. A plain
  `d + f * (p - d)` under XLA differs in ~260 of these cases (FMA)."""
  _, factors = _levels("Contrast")
  d = np.arange(256, dtype=np.float32)[:, None]
  p = np.arange(256, dtype=np.float32)[None, :]
  f32 = np.asarray(factors, np.float32)
  out = np.asarray(jax.jit(jax.vmap(ops.blend, in_axes=(None, None, 0)))(
      d, p, f32))
  for k, f in enumerate(f32):
    expected = np.trunc(np.clip(d + f * (p - d), 0, 255))
    np.testing.assert_array_equal(out[k], expected, err_msg=f"factor {f}")


def test_autocontrast_matches_python_float64_exhaustively():
  """The exception table reproduces Python's int(p * s - lo * s) for every
  (lo, hi, p) with lo < hi <= 255 in a strided sample of pairs."""
  pairs = [(lo, hi) for lo in range(0, 256, 7) for hi in range(lo + 1, 256, 3)]
  lo = np.asarray([a for a, _ in pairs], np.int32)[:, None]
  hi = np.asarray([b for _, b in pairs], np.int32)[:, None]
  levels = np.clip(np.arange(256)[None, :], lo, hi).astype(np.int32)
  out = np.asarray(jax.jit(ops._autocontrast_lookup)(levels, lo, hi))
  for k, (a, b) in enumerate(pairs):
    scale = 255.0 / (b - a)
    offset = -a * scale
    expected = [min(255, max(0, int(v * scale + offset))) for v in levels[k]]
    np.testing.assert_array_equal(out[k], expected, err_msg=f"lo={a} hi={b}")


def test_grayscale_and_smooth_match_pillow(test_images):
  for image in test_images:
    pil = PIL.Image.fromarray(image)
    np.testing.assert_array_equal(ops.grayscale(image), np.asarray(
        pil.convert("L")))
    np.testing.assert_array_equal(ops.smooth(image), np.asarray(
        pil.filter(PIL.ImageFilter.SMOOTH)))


def test_posterize_truncates_bits():
  image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  for bits_value, bits in [(4.67, 4), (5.0, 5), (7.99, 7), (8.0, 8)]:
    out = np.asarray(ops.posterize(image, bits_value))
    np.testing.assert_array_equal(out, image & (0xFF << (8 - bits) & 0xFF))


def test_solarize_zero_equals_invert(test_images):
  np.testing.assert_array_equal(ops.solarize(test_images[0], 0.0),
                                ops.invert(test_images[0]))


# --------------------------------------------------------------------------
# Random ops: bit-exact given the same draws; draws have the right law.
# --------------------------------------------------------------------------


def test_flip_matches_pillow(test_images):
  for image in test_images[:3]:
    np.testing.assert_array_equal(
        ops.flip(image, True), _pil(image, 136, ref.Draws(flip=True)))
    np.testing.assert_array_equal(
        ops.flip(image, False), _pil(image, 136, ref.Draws(flip=False)))


@pytest.mark.parametrize("center", [(0.0, 0.0), (0.3, 31.9), (7.99, 8.0),
                                    (16.5, 16.5), (31.999, 0.7), (24.2, 9.6)])
def test_cutout_matches_pillow_at_borders(center, test_images):
  image = test_images[0]
  out = ops.cutout(image, jnp.asarray(center, jnp.float32))
  np.testing.assert_array_equal(
      out, _pil(image, 137, ref.Draws(cutout_center=center)))


def test_cutout_draws_match_pillow_and_patch_size():
  """Sampled centres, fed to Pillow, give the same image; the inclusive patch
  is at most 17 x 17."""
  image = synthetic_images()[6]
  keys = jax.random.split(jax.random.key(0), 64)
  centers = np.asarray(jax.vmap(lambda k: ops.sample_cutout_center(
      k, 32, 32))(keys))
  outs = np.asarray(jax.vmap(lambda c: ops.cutout(image, c))(centers))
  areas = []
  for c, out in zip(centers, outs):
    draws = ref.Draws(cutout_center=(float(c[0]), float(c[1])))
    np.testing.assert_array_equal(out, _pil(image, 137, draws))
    areas.append(int(ops.cutout_mask(c, 32, 32).sum()))
  assert max(areas) <= 17 * 17 and 17 * 17 in areas


@pytest.mark.parametrize("top", range(9))
def test_pad_crop_matches_pillow_for_every_offset(top, test_images):
  image = test_images[2]
  for left in range(9):
    out = ops.pad_crop(image, jnp.asarray([top, left]))
    np.testing.assert_array_equal(
        out, _pil(image, 138, ref.Draws(crop_offsets=(top, left))))


def test_flip_rate_is_one_half():
  keys = jax.random.split(jax.random.key(1), 20000)
  flips = np.asarray(jax.vmap(ops.sample_flip)(keys))
  # Two-sided binomial test: p-value far from significance thresholds.
  assert stats.binomtest(int(flips.sum()), flips.size, 0.5).pvalue > 1e-3


def test_crop_offsets_are_uniform_on_0_to_8():
  keys = jax.random.split(jax.random.key(2), 18000)
  offsets = np.asarray(jax.vmap(ops.sample_crop_offsets)(keys))
  assert offsets.min() == 0 and offsets.max() == 8
  for axis in range(2):
    counts = np.bincount(offsets[:, axis], minlength=9)
    assert stats.chisquare(counts).pvalue > 1e-3, counts
  # top and left independent: chi-square on the 9 x 9 contingency table.
  table = np.zeros((9, 9))
  np.add.at(table, (offsets[:, 0], offsets[:, 1]), 1)
  assert stats.chi2_contingency(table).pvalue > 1e-3


def test_cutout_centers_are_uniform():
  keys = jax.random.split(jax.random.key(3), 20000)
  centers = np.asarray(jax.vmap(lambda k: ops.sample_cutout_center(
      k, 32, 32))(keys))
  for axis in range(2):
    assert stats.kstest(centers[:, axis] / 32.0, "uniform").pvalue > 1e-3
  # ImageNet RandCutout60: centre in the central 256 px box of a 400 x 300 image.
  c60 = np.asarray(jax.vmap(lambda k: ops.sample_cutout_center(
      k, 300, 400, box=256))(keys[:4000]))
  assert c60[:, 0].min() >= 72 and c60[:, 0].max() <= 328
  assert c60[:, 1].min() >= 22 and c60[:, 1].max() <= 278


# --------------------------------------------------------------------------
# ImageNet ops.
# --------------------------------------------------------------------------


def _natural(height, width, seed=0):
  small = synthetic_images(16, seed)[6]
  return np.asarray(PIL.Image.fromarray(small).resize(
      (width, height), PIL.Image.BICUBIC))


@pytest.mark.parametrize("height,width", [(224, 224), (300, 200), (180, 260),
                                          (100, 90)])
def test_resized_crop_matches_pillow_within_documented_tolerance(
    height, width):
  """RandResizeCrop's bicubic resize: PIL's fixed-point weights come from
  float64, ours from float32, so some values differ. Documented bound
  (docs/parity.md): |diff| <= 2 everywhere, 0.1% of the values on average,
  at most ~8% for one unlucky enlarging box."""
  image = _natural(height, width)
  fn = jax.jit(lambda x, b: ops.resized_crop(x, b))
  fractions = []
  for seed in range(6):
    box = np.asarray(ops.sample_resized_crop_box(jax.random.key(seed), height,
                                                 width))
    draws = ref.Draws(rrc_box=tuple(int(v) for v in box))
    expected = ref.apply_transform(image, 138, draws,
                                   ref.transform_table(ref.IMAGENET_OPS))
    out = np.asarray(fn(jnp.asarray(image, jnp.float32), box))
    diff = np.abs(out - expected)
    assert diff.max() <= 2, (box, diff.max())
    assert (diff > 0).mean() < 0.1, (box, (diff > 0).mean())
    fractions.append((diff > 0).mean())
  assert np.mean(fractions) < 0.01, fractions


def test_resized_crop_of_the_whole_image_is_identity():
  image = _natural(64, 64)
  out = ops.resized_crop(image, jnp.asarray([0, 0, 64, 64]), size=(64, 64))
  np.testing.assert_array_equal(out, image)


def test_resized_crop_box_law():
  """Boxes lie inside the image; non-fallback boxes have area fraction in
  [0.08, 1] and aspect in [3/4, 4/3] up to rounding; the one-attempt fallback
  (the official code's bug) is the central crop and occurs at the rate a
  single attempt fails."""
  height, width = 300, 400
  keys = jax.random.split(jax.random.key(4), 4000)
  boxes = np.asarray(jax.vmap(lambda k: ops.sample_resized_crop_box(
      k, height, width))(keys))
  left, top, w, h = boxes.T
  assert (left >= 0).all() and (top >= 0).all()
  assert (left + w <= width).all() and (top + h <= height).all()
  fallback = (w == width) & (h == height) & (left == 0) & (top == 0)
  area = w * h / (height * width)
  assert (area[~fallback] >= 0.08 - 0.01).all()
  aspect = w[~fallback] / h[~fallback]
  assert (aspect > 0.7).all() and (aspect < 1.4).all()
  # Monte-Carlo rate of a failed single attempt with Python's own sampler.
  rng = random.Random(0)
  failures = 0
  for _ in range(20000):
    target = height * width * rng.uniform(0.08, 1.0)
    ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    bw, bh = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
    failures += not (0 < bw <= width and 0 < bh <= height)
  assert abs(fallback.mean() - failures / 20000) < 0.03


@pytest.mark.parametrize("height,width", [(224, 224), (256, 300), (200, 180),
                                          (100, 250)])
def test_center_crop_matches_official_algorithm(height, width):
  """Zero-pad if smaller, then crop at round((H - 224) / 2) (no resize)."""
  image = _natural(height, width)
  pil = PIL.Image.fromarray(image)
  pad_l = (224 - width) // 2 if width < 224 else 0
  pad_t = (224 - height) // 2 if height < 224 else 0
  canvas = PIL.Image.new("RGB", (max(width, 224), max(height, 224)))
  canvas.paste(pil, (pad_l, pad_t))
  cw, ch = canvas.size
  top, left = int(round((ch - 224) / 2.0)), int(round((cw - 224) / 2.0))
  expected = np.asarray(canvas.crop((left, top, left + 224, top + 224)))
  np.testing.assert_array_equal(ops.center_crop(image), expected)


def test_cutout60_matches_pillow():
  image = _natural(224, 224)
  table = ref.transform_table(ref.IMAGENET_OPS)
  for seed in range(8):
    c = np.asarray(ops.sample_cutout_center(jax.random.key(seed), 224, 224,
                                            box=256))
    draws = ref.Draws(cutout_center=(float(c[0]), float(c[1])))
    np.testing.assert_array_equal(
        ops.cutout(image, c, size=60),
        ref.apply_transform(image, 137, draws, table))


# --------------------------------------------------------------------------
# JAX contracts: jit == eager, vmap == loop, no retracing per level.
# --------------------------------------------------------------------------


# Every op of the two search spaces, as (image, value, key) -> image; the
# deterministic ops ignore the key, the random ops the value. Resized crops
# are resized back to the input size. The test images are 16 x 16, but 64 x
# 64 for RandCutout60 (smaller images are covered by the 60 px patch whatever
# the key) and 32 x 32 for the resized crop.
SEARCH_SPACE_OPS = {
    **{name: (lambda f: lambda x, v, k: f(x, v))(fn)
       for name, fn in DETERMINISTIC.items()},
    "RandFlip": lambda x, v, k: ops.random_flip(k, x),
    "RandCutout": lambda x, v, k: ops.random_cutout(k, x),
    "RandCrop": lambda x, v, k: ops.random_pad_crop(k, x),
    "RandCutout60": lambda x, v, k: ops.random_cutout(k, x, size=60),
    "RandResizeCrop_imagenet": lambda x, v, k: ops.random_resized_crop(
        k, x, size=x.shape[:2]),
}
IMAGENET_ONLY = ("RandCutout60", "RandResizeCrop_imagenet")


def test_contract_tests_cover_every_op_of_both_search_spaces():
  used = set(space_lib.cifar_space().op_names) | set(
      space_lib.imagenet_space().op_names)
  assert set(SEARCH_SPACE_OPS) == used


@pytest.mark.parametrize("name", sorted(SEARCH_SPACE_OPS))
def test_jit_equals_eager_and_vmap_equals_loop(name):
  """Two images, each with its own magnitude (two different levels) and key,
  vmapped over all three. Exact equality: every op returns integer pixel
  values (asserted), computed by PIL's integer or fixed-point arithmetic, so
  the compiled and batched programs must agree to the bit."""
  size = {"RandCutout60": 64, "RandResizeCrop_imagenet": 32}.get(name, 16)
  images = jnp.asarray(synthetic_images(size)[np.array([0, 6])], jnp.float32)
  space = space_lib.imagenet_space() if name in IMAGENET_ONLY else (
      space_lib.cifar_space())
  values = space.value_array[space.op_array == space.op_names.index(name)]
  values = jnp.asarray([values[min(1, len(values) - 1)], values[-1]],
                       jnp.float32)
  # Keys 2 and 3 draw different flips, crops, cutouts and boxes, so mixing
  # up the keys under vmap changes the output.
  keys = jnp.stack([jax.random.key(2), jax.random.key(3)])
  fn = SEARCH_SPACE_OPS[name]
  eager = np.stack([np.asarray(fn(x, v, k))
                    for x, v, k in zip(images, values, keys)])
  jitted = np.stack([np.asarray(jax.jit(fn)(x, v, k))
                     for x, v, k in zip(images, values, keys)])
  vmapped = np.asarray(jax.jit(jax.vmap(fn))(images, values, keys))
  assert eager.shape == images.shape and eager.dtype == np.float32
  np.testing.assert_array_equal(eager, np.clip(np.round(eager), 0, 255))
  np.testing.assert_array_equal(jitted, eager)
  np.testing.assert_array_equal(vmapped, eager)
  if name.startswith("Rand"):
    swapped = np.asarray(fn(images[0], values[0], keys[1]))
    assert not np.array_equal(swapped, eager[0]), "keys 2, 3 draw alike"


def test_magnitude_is_traced_without_retracing():
  traces = []

  def counted(x, v):
    traces.append(1)
    return ops.rotate(x, v)

  fn = jax.jit(counted)
  image = jnp.asarray(synthetic_images()[2], jnp.float32)
  for _, _, value in TABLE[49:61]:
    fn(image, jnp.float32(value)).block_until_ready()
  assert len(traces) == 1


def test_random_ops_outputs_over_many_keys_follow_the_documented_law():
  """The random ops as the search applies them (`random_flip`,
  `random_pad_crop`, `random_cutout`; the sampler tests above check only the
  draws), on one non-square noise image over 2000 keys: every output is one
  of the documented candidates (the image or its mirror; one of the 81 pad-4
  crops), and the empirical law of the outputs is the documented one: flips
  in half of the keys (binomial test), the 81 crop offsets equally often
  (chi-square), and each column / row covered by the 16 px cutout as often as
  a centre uniform on [0, W) x [0, H) implies (binomial tests; a swapped or
  shrunk centre range fails them)."""
  height, width = 12, 20
  image = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (height, width, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(9), 2000)
  n = len(keys)

  flipped = np.asarray(jax.vmap(ops.random_flip, in_axes=(0, None))(
      keys, image))
  mirror = np.asarray(image)[:, ::-1]
  is_flip = (flipped == mirror).all(axis=(1, 2, 3))
  is_same = (flipped == np.asarray(image)).all(axis=(1, 2, 3))
  assert (is_flip ^ is_same).all()
  assert stats.binomtest(int(is_flip.sum()), n, 0.5).pvalue > 1e-4

  cropped = np.asarray(jax.vmap(ops.random_pad_crop, in_axes=(0, None))(
      keys, image))
  offsets = [(t, l) for t in range(9) for l in range(9)]
  candidates = np.stack([np.asarray(ops.pad_crop(image, jnp.asarray(o)))
                         for o in offsets])
  match = (cropped[:, None] == candidates[None]).all(axis=(2, 3, 4))
  assert (match.sum(axis=1) == 1).all()  # the 81 crops are all distinct
  counts = match.sum(axis=0)
  assert stats.chisquare(counts).pvalue > 1e-4, counts

  cut = np.asarray(jax.vmap(ops.random_cutout, in_axes=(0, None))(
      keys, image))
  # Noise pixels that happen to equal the fill would hide the patch.
  assert not (np.asarray(image) == np.asarray(ops.GREY_FILL)).all(-1).any()
  patch = (cut != np.asarray(image)).any(-1)  # [n, H, W]
  for axis, length in ((1, width), (2, height)):
    covered = patch.any(axis=axis).sum(axis=0)  # per column (row)
    for i, count in enumerate(covered):
      # Covered iff |floor(c) - i| <= 8, floor(c) uniform on {0..length-1}.
      p = sum(abs(c - i) <= 8 for c in range(length)) / length
      assert stats.binomtest(int(count), n, p).pvalue > 1e-4, (axis, i,
                                                                count, p)
