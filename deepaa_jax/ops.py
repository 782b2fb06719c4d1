"""The DeepAA image operations as pure JAX functions, pixel-exact to Pillow.

Image contract (every function in this module):
  `image: float32[H, W, 3]` holding integer values in [0, 255] -- uint8
  semantics carried in float32, so that every result is exactly the uint8
  image Pillow would produce (`official_deepaa_spec.md` §1.4). Results are
  float32[H, W, 3] with integer values in [0, 255]. uint8 input is accepted
  and converted.

Every op is a pure function, jit- and vmap-compatible; magnitudes may be traced
values (no retracing per level). Random ops take a PRNG `key` first (dm-pix
style) and are factored into a sampler (`sample_*`, the random draws) and a
deterministic apply, so that tests can feed Pillow the very same draws.

Why most ops are written here rather than taken from dm-pix: dm-pix has no
posterize, equalize, autocontrast, sharpness or cutout; its colour ops follow
`tf.image` (additive brightness, mean-based contrast on float images), not
`PIL.ImageEnhance`; its solarize assumes images in [0, 1]; and its affine
warps use `map_coordinates` rounding, not PIL's 16.16 fixed-point NEAREST
sampler. Even its `flip_left_right` is written here (`jnp.flip` on the width
axis, as dm-pix does it), so that the ops need only JAX: a bare accelerator
machine without dm-pix runs them (experiments/gpu_evidence.py).

Exactness notes (each verified against Pillow in tests/test_ops.py):
* Geometric ops reproduce PIL's `ImagingTransformAffine` fast path bit for bit:
  coefficients are converted to 16.16 fixed point exactly as PIL's `FIX()`
  does and source pixels are found with integer arithmetic. Coefficients are
  computed in float64 (NumPy) when the magnitude is a Python/NumPy number and
  in float32 when it is traced; the space tables (`space.py`) always use the
  float64 path.
* Enhance ops reproduce PIL's single-precision `ImagingBlend`. XLA contracts
  `a + f * b` into a fused multiply-add, which skips a rounding step and flips
  a few truncations; we split the factor into two 12-bit halves so that both
  partial products are exact and the one remaining rounding is PIL's.
* AutoContrast reproduces Python's float64 `int(p * scale - lo * scale)`,
  which is one less than the exact quotient at 12,094 (lo, hi, p) triples; the
  exceptions are tabulated once with NumPy float64 and looked up.
* Histograms use `jnp.bincount` (a one-hot comparison is ~200x slower on CPU).
"""

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Scalar = Union[float, int, np.ndarray, Array]

# Grey used by the official RandCrop padding and Cutout (uint8 RGB).
GREY_FILL = (125, 123, 114)
# PIL's `transform(..., fillcolor=None)` fills with black.
BLACK_FILL = (0, 0, 0)

_FIX_ONE = 65536  # 1.0 in PIL's 16.16 fixed point.


def _as_float_image(image: Array) -> Array:
  return jnp.asarray(image).astype(jnp.float32)


def _as_int_image(image: Array) -> Array:
  return jnp.asarray(image).astype(jnp.int32)


def materialize(x: Array) -> Array:
  """Returns x, computed once into its own buffer.

  XLA fuses cheap elementwise producers into their consumers and recomputes
  them per consumer element. That is a disaster when a 256-entry lookup table
  (built from a histogram, with comparisons and divisions) feeds a per-pixel
  gather, or when a smoothed image feeds 12 blends: the producer runs once
  per output pixel. A scatter is never fused into its consumers, so routing
  the value through an identity scatter pins it in memory (measured 3x on
  CPU for equalize; `lax.optimization_barrier` does not prevent the fusion).
  """
  flat = jnp.reshape(x, (-1,))
  idx = jnp.arange(flat.shape[0], dtype=jnp.int32)
  out = jnp.zeros_like(flat).at[idx].set(flat, unique_indices=True,
                                         indices_are_sorted=True)
  return out.reshape(jnp.shape(x))


def _is_static(value) -> bool:
  """True for values known at trace time (Python or NumPy numbers)."""
  return isinstance(value, (int, float, np.number, np.ndarray))


# --------------------------------------------------------------------------
# Geometric ops: PIL AFFINE, NEAREST, fill 0.
# --------------------------------------------------------------------------


def _fix(v, xp):
  """PIL's `FIX(v) = FLOOR(v * 65536 + 0.5)` (Geometry.c)."""
  return xp.floor(v * 65536.0 + 0.5)


def affine_fixed_coefficients(matrix, *, xp=np):
  """PIL's 16.16 fixed-point coefficients of an output->input affine map.

  Args:
    matrix: the six PIL AFFINE coefficients (a, b, c, d, e, f), such that
      x_in = a (x + 1/2) + b (y + 1/2) + c and y_in = d (x + 1/2) + e (y + 1/2)
      + f for the output pixel (x, y).
    xp: `np` (float64, exact) or `jnp` (float32, traceable).

  Returns:
    int32[6] (a0, a1, a2, a3, a4, a5) with the half-pixel offset folded into
    a2 and a5, exactly as PIL's `affine_fixed` computes them.
  """
  a, b, c, d, e, f = matrix
  coeffs = [
      _fix(a, xp), _fix(b, xp), _fix(c + a * 0.5 + b * 0.5, xp),
      _fix(d, xp), _fix(e, xp), _fix(f + d * 0.5 + e * 0.5, xp)
  ]
  if xp is np:
    return np.asarray(coeffs, np.float64).astype(np.int32)
  return jnp.stack([jnp.asarray(v, jnp.float32) for v in coeffs]).astype(
      jnp.int32)


def _translate_fixed_coefficients(shift_x, shift_y, *, xp=np):
  """Fixed-point form of PIL's `ImagingScaleAffine` translate path.

  PIL routes pure translations (b = d = 0) through a float64 path whose source
  column is COORD(x + 1/2 + s) = x + floor(s + 1/2): an integer shift. We express
  that shift exactly in the 16.16 form so one sampler serves every op.
  """
  sx = xp.floor(shift_x + 0.5)
  sy = xp.floor(shift_y + 0.5)
  one = _FIX_ONE
  if xp is np:
    return np.asarray([one, 0, sx * one, 0, one, sy * one],
                      np.float64).astype(np.int32)
  zero = jnp.zeros((), jnp.float32)
  return jnp.stack([
      zero + one, zero, sx * one, zero, zero + one, sy * one
  ]).astype(jnp.int32)


def shear_x_coefficients(shear, height: int, width: int, *,
                         xp=np):
  """PIL `transform(AFFINE, (1, v, 0, 0, 1, 0))`: shear about the top-left."""
  del height, width
  return affine_fixed_coefficients((1.0, shear, 0.0, 0.0, 1.0, 0.0), xp=xp)


def shear_y_coefficients(shear, height: int, width: int, *,
                         xp=np):
  """PIL `transform(AFFINE, (1, 0, 0, v, 1, 0))`: shear about the top-left."""
  del height, width
  return affine_fixed_coefficients((1.0, 0.0, 0.0, shear, 1.0, 0.0), xp=xp)


def translate_x_coefficients(fraction, height: int, width: int, *,
                             xp=np):
  """PIL `transform(AFFINE, (1, 0, v * W, 0, 1, 0))`; v > 0 moves content left."""
  del height
  return _translate_fixed_coefficients(fraction * width, 0.0 * fraction, xp=xp)


def translate_y_coefficients(fraction, height: int, width: int, *,
                             xp=np):
  """PIL `transform(AFFINE, (1, 0, 0, 0, 1, v * H))`; v > 0 moves content up."""
  del width
  return _translate_fixed_coefficients(0.0 * fraction, fraction * height, xp=xp)


def rotate_coefficients(degrees, height: int, width: int, *,
                        xp=np):
  """PIL `Image.rotate(degrees)`: counter-clockwise about (W/2, H/2).

  Follows `Image.rotate` step by step (angle % 360, cos/sin rounded to 15
  decimals, centre W/2, H/2) so that the float64 coefficients are PIL's own.
  """
  cx, cy = width / 2.0, height / 2.0
  if xp is np:
    angle = -math.radians(float(degrees) % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
  else:
    angle = -jnp.deg2rad(jnp.mod(jnp.asarray(degrees, jnp.float32), 360.0))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
  c = cos * (-cx) + sin * (-cy) + cx
  f = (-sin) * (-cx) + cos * (-cy) + cy
  return affine_fixed_coefficients((cos, sin, c, -sin, cos, f), xp=xp)


def source_indices(coeffs: Array, height: int, width: int):
  """Source pixel of every output pixel under fixed-point coefficients.

  Args:
    coeffs: int32[6] from one of the `*_coefficients` functions.
    height, width: static image size.

  Returns:
    (flat_index int32[H, W], valid bool[H, W]): `flat_index` indexes the
    image reshaped to [H * W, 3] (clamped where invalid); `valid` is False
    where PIL fills.
  """
  coeffs = jnp.asarray(coeffs, jnp.int32)
  xs = jnp.arange(width, dtype=jnp.int32)[None, :]
  ys = jnp.arange(height, dtype=jnp.int32)[:, None]
  # Same integer arithmetic as PIL's affine_fixed: row start a2 + y*a1, then
  # + x*a0; `>> 16` is an arithmetic shift, i.e. floor division by 65536.
  x_in = (coeffs[2] + ys * coeffs[1] + xs * coeffs[0]) >> 16
  y_in = (coeffs[5] + ys * coeffs[4] + xs * coeffs[3]) >> 16
  valid = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
  flat = jnp.clip(y_in, 0, height - 1) * width + jnp.clip(x_in, 0, width - 1)
  return flat, valid


def warp(image: Array, coeffs: Array, *, fill: Sequence[float] = BLACK_FILL
        ) -> Array:
  """NEAREST affine warp with PIL's fixed-point sampler.

  Args:
    image: float32[H, W, 3] in [0, 255].
    coeffs: int32[6] fixed-point coefficients (`affine_fixed_coefficients`).
    fill: RGB value of output pixels whose source lies outside the image.

  Returns:
    float32[H, W, 3].
  """
  image = _as_float_image(image)
  h, w, c = image.shape
  flat, valid = source_indices(coeffs, h, w)
  out = jnp.take(image.reshape(h * w, c), flat.reshape(-1), axis=0)
  out = out.reshape(h, w, c)
  return jnp.where(valid[..., None], out, jnp.asarray(fill, jnp.float32))


def _geometric(coefficient_fn, image, value):
  image = _as_float_image(image)
  h, w, _ = image.shape
  xp = np if _is_static(value) else jnp
  return warp(image, coefficient_fn(value, h, w, xp=xp))


def shear_x(image: Array, shear: Scalar) -> Array:
  """Horizontal shear, `img.transform(size, AFFINE, (1, shear, 0, 0, 1, 0))`.

  out(x, y) = in(floor(x + 1/2 + shear (y + 1/2)), y); pivot is the top-left
  corner (not the centre); NEAREST; fill 0.

  Args:
    image: float32[H, W, 3] in [0, 255].
    shear: scalar in [-0.3, 0.3] (search space), may be traced.
  """
  return _geometric(shear_x_coefficients, image, shear)


def shear_y(image: Array, shear: Scalar) -> Array:
  """Vertical shear, `img.transform(size, AFFINE, (1, 0, 0, shear, 1, 0))`."""
  return _geometric(shear_y_coefficients, image, shear)


def translate_x(image: Array, fraction: Scalar) -> Array:
  """Horizontal shift by `fraction * W` pixels (rounded as PIL does).

  `img.transform(size, AFFINE, (1, 0, fraction * W, 0, 1, 0))`: a positive
  fraction moves the content LEFT; vacated columns are 0.
  """
  return _geometric(translate_x_coefficients, image, fraction)


def translate_y(image: Array, fraction: Scalar) -> Array:
  """Vertical shift by `fraction * H` pixels; a positive fraction moves up."""
  return _geometric(translate_y_coefficients, image, fraction)


def rotate(image: Array, degrees: Scalar) -> Array:
  """`img.rotate(degrees)`: counter-clockwise, about the centre, NEAREST, fill 0."""
  return _geometric(rotate_coefficients, image, degrees)


# --------------------------------------------------------------------------
# Pixel (histogram and LUT) ops.
# --------------------------------------------------------------------------


def invert(image: Array) -> Array:
  """`ImageOps.invert`: 255 - p."""
  return 255.0 - _as_float_image(image)


def solarize(image: Array, threshold: Scalar) -> Array:
  """`ImageOps.solarize(img, threshold)`: p if p < threshold else 255 - p.

  The threshold may be fractional (21.33 keeps p <= 21); threshold 0 equals
  `invert`.
  """
  image = _as_float_image(image)
  return jnp.where(image < jnp.asarray(threshold, jnp.float32), image,
                   255.0 - image)


def posterize(image: Array, bits: Scalar) -> Array:
  """`ImageOps.posterize(img, int(bits))`: keep the top `int(bits)` bits.

  Args:
    image: float32[H, W, 3] in [0, 255].
    bits: scalar; truncated to an integer in [0, 8] as the official code's
      `int(v)` does (v = 4.67 keeps 4 bits).
  """
  b = jnp.clip(jnp.trunc(jnp.asarray(bits, jnp.float32)), 0.0, 8.0)
  # Keeping the top b bits of p is floor(p / 2^(8-b)) * 2^(8-b), exact in float.
  q = jnp.exp2(8.0 - b)
  return jnp.floor(_as_float_image(image) / q) * q


@functools.lru_cache(maxsize=1)
def _autocontrast_exceptions() -> Tuple[np.ndarray, np.ndarray]:
  """Where Python's float64 autocontrast LUT is one below the exact quotient.

  Python computes int(p * s + (-lo * s)) with s = 255 / (hi - lo) in float64;
  this is (p - lo) * 255 // (hi - lo) except at 12,094 (lo, hi, p) triples
  where the exact quotient is an integer and float64 rounding lands just
  below it. We tabulate them once: exceptions of the pair (lo, hi) are
  `levels[offsets[lo * 256 + hi]:offsets[lo * 256 + hi + 1]]` (at most 17).

  Returns:
    (offsets int32[65537], levels int32[n_exceptions]).
  """
  lo = np.arange(256, dtype=np.float64)[:, None, None]
  hi = np.arange(256, dtype=np.float64)[None, :, None]
  p = np.arange(256, dtype=np.float64)[None, None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    lut = np.trunc(p * scale + offset)  # Python's int(ix * scale + offset).
  lo_i, hi_i, p_i = np.meshgrid(np.arange(256), np.arange(256), np.arange(256),
                                indexing="ij")
  inside = (hi_i > lo_i) & (p_i >= lo_i) & (p_i <= hi_i)
  exact = np.where(inside, (p_i - lo_i) * 255 // np.maximum(hi_i - lo_i, 1), 0)
  differs = inside & (lut != exact)
  counts = differs.sum(axis=2).reshape(-1)
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
  levels = p_i[differs].astype(np.int32)  # row-major: grouped by (lo, hi)
  return offsets, levels


_AUTOCONTRAST_MAX_EXCEPTIONS = 17


def _autocontrast_lookup(p: Array, lo: Array, hi: Array) -> Array:
  """AutoContrast of int32 levels p given per-channel lo < hi (broadcast)."""
  exact = (p - lo) * 255 // jnp.maximum(hi - lo, 1)
  offsets, levels = (jnp.asarray(t) for t in _autocontrast_exceptions())
  pair = lo * 256 + hi
  start, end = offsets[pair], offsets[pair + 1]
  j = jnp.arange(_AUTOCONTRAST_MAX_EXCEPTIONS, dtype=jnp.int32)
  pos = start[..., None] + j
  exc = jnp.where(pos < end[..., None],
                  levels[jnp.minimum(pos, levels.shape[0] - 1)], -1)
  hit = jnp.any(p[..., None] == exc, axis=-1)
  return exact - hit.astype(jnp.int32)


def apply_lut(image: Array, lut: Array) -> Array:
  """Per-channel lookup: out[..., c] = lut[c, image[..., c]].

  Args:
    image: float32[H, W, 3] with integer values in [0, 255].
    lut: int32[3, 256].

  Returns:
    float32[H, W, 3].
  """
  p = _as_int_image(image)
  return jnp.stack([lut[c][p[..., c]] for c in range(p.shape[-1])],
                   axis=-1).astype(jnp.float32)


def autocontrast_lut(image: Array) -> Array:
  """int32[3, 256]: the `ImageOps.autocontrast` table of each channel.

  lo, hi = channel min, max. If hi <= lo the channel maps to itself, otherwise
  level v maps to int(v * s - lo * s) with s = 255 / (hi - lo), evaluated as
  Python's float64 arithmetic does (see module docstring). Only levels in
  [lo, hi] occur in the image; the others are clamped.
  """
  p = _as_int_image(image).reshape(-1, 3)
  lo = jnp.min(p, axis=0)[:, None]
  hi = jnp.max(p, axis=0)[:, None]
  levels = jnp.clip(jnp.arange(256, dtype=jnp.int32)[None, :], lo, hi)
  return jnp.where(hi > lo, _autocontrast_lookup(levels, lo, hi), levels)


def auto_contrast(image: Array) -> Array:
  """`ImageOps.autocontrast(img)` with cutoff 0, per channel (see
  `autocontrast_lut`)."""
  return apply_lut(image, materialize(autocontrast_lut(image)))


def channel_histograms(image: Array) -> Array:
  """int32[3, 256]: per-channel histograms of an image with values 0..255."""
  p = _as_int_image(image).reshape(-1, 3)
  return jnp.stack([jnp.bincount(p[:, c], length=256) for c in range(3)]
                   ).astype(jnp.int32)


def equalize_lut(image: Array) -> Array:
  """int32[3, 256]: the `ImageOps.equalize` table of each channel.

  With h the channel histogram: if fewer than two bins are non-zero, or
  step = (sum(h) - h[last non-zero bin]) // 255 is 0, the channel maps to
  itself; otherwise LUT[i] = (step // 2 + sum_{j<i} h[j]) // step, capped at
  255 (PIL's `point` clips).
  """
  hist = channel_histograms(image)
  n = jnp.sum(hist, axis=1)
  cum = jnp.cumsum(hist, axis=1) - hist  # pixels strictly below level i
  nonzero = hist > 0
  num_bins = jnp.sum(nonzero, axis=1)
  last = 255 - jnp.argmax(nonzero[:, ::-1], axis=1)
  h_last = jnp.take_along_axis(hist, last[:, None], axis=1)[:, 0]
  step = (n - h_last) // 255
  lut = jnp.minimum((step[:, None] // 2 + cum) // jnp.maximum(step, 1)[:, None],
                    255)
  keep = (num_bins <= 1) | (step == 0)
  return jnp.where(keep[:, None], jnp.arange(256, dtype=jnp.int32)[None], lut)


def equalize(image: Array) -> Array:
  """`ImageOps.equalize(img)`, per channel (see `equalize_lut`)."""
  return apply_lut(image, materialize(equalize_lut(image)))


# --------------------------------------------------------------------------
# ImageEnhance ops: blend with a degenerate image in single precision.
# --------------------------------------------------------------------------


def _split_factor(factor: Array) -> Tuple[Array, Array]:
  """Splits float32 f into hi + lo with at most 12 significant bits each."""
  f = jnp.asarray(factor, jnp.float32)
  bits = jax.lax.bitcast_convert_type(f, jnp.int32)
  hi = jax.lax.bitcast_convert_type(bits & jnp.int32(~0xFFF), jnp.float32)
  return hi, f - hi


def blend(degenerate: Array, image: Array, factor: Scalar) -> Array:
  """PIL `Image.blend(degenerate, image, factor)` on uint8 data.

  out = clip(trunc(d + f * (p - d)), 0, 255), computed as PIL's ImagingBlend
  does in single precision: f * (p - d) rounded to float32, then the sum
  rounded to float32, then truncated. Both halves of the split factor times an
  integer |p - d| <= 255 are exact in float32, so a fused multiply-add cannot
  change the result.

  Args:
    degenerate: float32 broadcastable to image, integer values in [0, 255].
    image: float32[..., 3] in [0, 255].
    factor: scalar (may be traced) or array broadcastable to image.
  """
  d = jnp.asarray(degenerate, jnp.float32)
  diff = _as_float_image(image) - d
  f_hi, f_lo = _split_factor(factor)
  out = d + (f_hi * diff + f_lo * diff)
  return jnp.trunc(jnp.clip(out, 0.0, 255.0))


def grayscale(image: Array) -> Array:
  """PIL `convert("L")`: (19595 R + 38470 G + 7471 B + 2^15) >> 16, float32[H, W].

  Evaluated in float32, where it is exact: every product and partial sum is an
  integer below 2^24, and the shift is a division by a power of two.
  """
  x = _as_float_image(image)
  total = x[..., 0] * 19595.0 + x[..., 1] * 38470.0 + x[..., 2] * 7471.0
  return jnp.floor((total + 32768.0) * (1.0 / 65536.0))


def contrast_degenerate(image: Array) -> Array:
  """Grey level int(mean(L) + 0.5) of `ImageEnhance.Contrast`, float32 scalar."""
  lum = grayscale(image).astype(jnp.int32)
  n = lum.size
  total = jnp.sum(lum)
  return ((2 * total + n) // (2 * n)).astype(jnp.float32)


def smooth(image: Array) -> Array:
  """PIL `filter(ImageFilter.SMOOTH)`: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13.

  Interior pixels are round(S / 13) (S never lands on a half, so PIL's float
  rounding equals the exact integer rounding); the 1-pixel border is copied.
  """
  x = _as_float_image(image)
  h, w, _ = x.shape
  if h < 3 or w < 3:
    return x
  s = 4.0 * x[1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      s = s + x[dy:dy + h - 2, dx:dx + w - 2]
  # S <= 13 * 255 is exact in float32, and S / 13 is never within float32
  # error of a half (its distance is >= 1/26), so this is round(S / 13).
  inner = jnp.floor((s + 6.5) * (1.0 / 13.0))
  interior = jnp.zeros((h, w, 1), bool).at[1:-1, 1:-1].set(True)
  return jnp.where(interior, jnp.pad(inner, ((1, 1), (1, 1), (0, 0))), x)


def contrast(image: Array, factor: Scalar) -> Array:
  """`ImageEnhance.Contrast(img).enhance(factor)`; factor in [0.1, 1.9]."""
  return blend(contrast_degenerate(image), image, factor)


def color(image: Array, factor: Scalar) -> Array:
  """`ImageEnhance.Color(img).enhance(factor)`: blend with the grey image."""
  return blend(grayscale(image)[..., None], image, factor)


def brightness(image: Array, factor: Scalar) -> Array:
  """`ImageEnhance.Brightness(img).enhance(factor)`: trunc(factor * p), clipped."""
  return blend(jnp.zeros((), jnp.float32), image, factor)


def sharpness(image: Array, factor: Scalar) -> Array:
  """`ImageEnhance.Sharpness(img).enhance(factor)`: blend with `smooth(img)`."""
  return blend(smooth(image), image, factor)


def identity(image: Array) -> Array:
  """Returns the image unchanged (as float32)."""
  return _as_float_image(image)


# --------------------------------------------------------------------------
# Random ops: sampler (the random draws) + deterministic apply.
# --------------------------------------------------------------------------


def sample_flip(key: Array) -> Array:
  """The official RandFlip coin, `random.random() > 0.5`: bool[] with P = 0.5."""
  return jax.random.uniform(key) > 0.5


def flip(image: Array, do_flip: Union[bool, Array]) -> Array:
  """`ImageOps.mirror` (left-right) where `do_flip`, else the image."""
  image = _as_float_image(image)
  return jnp.where(do_flip, jnp.flip(image, axis=-2), image)


def random_flip(key: Array, image: Array) -> Array:
  """RandFlip: a horizontal flip with probability 0.5."""
  return flip(image, sample_flip(key))


def sample_cutout_center(key: Array, height: int, width: int, *,
                         box: int = 0) -> Array:
  """Cutout centre (cx, cy), float32[2], continuous uniform.

  Args:
    key: PRNG key.
    height, width: image size.
    box: 0 for CIFAR RandCutout (centre anywhere in [0, W) x [0, H)); 256 for
      the ImageNet RandCutout60 (centre in the central 256 x 256 box,
      [max(0, W//2 - 128), min(W, W//2 + 128)] per axis).
  """
  if box:
    x_lo, x_hi = max(0, width // 2 - box // 2), min(width, width // 2 + box // 2)
    y_lo, y_hi = max(0, height // 2 - box // 2), min(height,
                                                     height // 2 + box // 2)
  else:
    x_lo, x_hi, y_lo, y_hi = 0, width, 0, height
  kx, ky = jax.random.split(key)
  cx = jax.random.uniform(kx, (), jnp.float32, x_lo, x_hi)
  cy = jax.random.uniform(ky, (), jnp.float32, y_lo, y_hi)
  return jnp.stack([cx, cy])


def cutout_mask(center: Array, height: int, width: int, *,
                size: int = 16) -> Array:
  """bool[H, W]: the official cutout rectangle for a centre (cx, cy).

  x0 = int(clip(cx - size//2, 0, W)), x1 = int(clip(cx + size//2, 0, W)) (same
  for y), then PIL's `ImageDraw.rectangle` fills the INCLUSIVE box [x0, x1] x
  [y0, y1] clipped to the image: up to (size + 1)^2 pixels. Computed as
  floor(cx) +- size//2, which equals int() of the float sum exactly.
  """
  half = size // 2
  fc = jnp.floor(jnp.asarray(center, jnp.float32)).astype(jnp.int32)
  x0 = jnp.clip(fc[0] - half, 0, width)
  x1 = jnp.clip(fc[0] + half, 0, width)
  y0 = jnp.clip(fc[1] - half, 0, height)
  y1 = jnp.clip(fc[1] + half, 0, height)
  xs = jnp.arange(width)[None, :]
  ys = jnp.arange(height)[:, None]
  return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def cutout(image: Array, center: Array, *, size: int = 16,
           fill: Sequence[float] = GREY_FILL) -> Array:
  """RandCutout given its centre: fills the rectangle with grey (125, 123, 114).

  Args:
    image: float32[H, W, 3] in [0, 255].
    center: float32[2] (cx, cy) from `sample_cutout_center`.
    size: 16 (CIFAR RandCutout) or 60 (ImageNet RandCutout60).
    fill: RGB fill value.
  """
  image = _as_float_image(image)
  h, w, _ = image.shape
  mask = cutout_mask(center, h, w, size=size)
  return jnp.where(mask[..., None], jnp.asarray(fill, jnp.float32), image)


def random_cutout(key: Array, image: Array, *, size: int = 16) -> Array:
  """RandCutout (size 16, CIFAR) or RandCutout60 (size 60, ImageNet)."""
  h, w, _ = jnp.shape(image)
  center = sample_cutout_center(key, h, w, box=256 if size == 60 else 0)
  return cutout(image, center, size=size)


def sample_crop_offsets(key: Array, *, pad: int = 4) -> Array:
  """(top, left), int32[2], independent uniform integers in {0, ..., 2*pad}."""
  return jax.random.randint(key, (2,), 0, 2 * pad + 1, dtype=jnp.int32)


def pad_crop_coefficients(offsets: Array, *, pad: int = 4) -> Array:
  """Fixed-point coefficients of pad-and-crop: in(x + left - pad, y + top - pad)."""
  offsets = jnp.asarray(offsets, jnp.int32)
  one = jnp.int32(_FIX_ONE)
  zero = jnp.int32(0)
  return jnp.stack([one, zero, (offsets[1] - pad) * one, zero, one,
                    (offsets[0] - pad) * one])


def pad_crop(image: Array, offsets: Array, *, pad: int = 4,
             fill: Sequence[float] = GREY_FILL) -> Array:
  """RandCrop given its offsets: paste onto a grey (H+2p) x (W+2p) canvas at
  (p, p) and crop H x W at (top, left). Not zero padding, not reflection.

  Args:
    image: float32[H, W, 3] in [0, 255].
    offsets: int32[2] (top, left) in {0..2*pad}.
  """
  return warp(image, pad_crop_coefficients(offsets, pad=pad), fill=fill)


def random_pad_crop(key: Array, image: Array, *, pad: int = 4) -> Array:
  """RandCrop: mean-colour pad by `pad` pixels and a random crop."""
  return pad_crop(image, sample_crop_offsets(key, pad=pad), pad=pad)


# --------------------------------------------------------------------------
# ImageNet ops: RandomResizedCrop with PIL's bicubic resize, centre crop.
# --------------------------------------------------------------------------


def sample_resized_crop_box(key: Array, height: int, width: int, *,
                            scale: Tuple[float, float] = (0.08, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> Array:
  """Box (left, top, w, h), int32[4], of the official RandResizeCrop_imagenet.

  torchvision-style, but with the official code's bug reproduced: the fallback
  sits inside the loop, so there is exactly ONE attempt. Attempt: target area
  A * U(scale), aspect exp(U(log ratio)), w = round(sqrt(area * r)),
  h = round(sqrt(area / r)) (round half to even, as Python's round); if
  0 < w <= W and 0 < h <= H the offsets are uniform integers, otherwise the
  central crop (whole image, or aspect-clamped) is used.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = float(height * width)
  target = area * jax.random.uniform(k_area, (), jnp.float32, scale[0],
                                     scale[1])
  aspect = jnp.exp(
      jax.random.uniform(k_ratio, (), jnp.float32, math.log(ratio[0]),
                         math.log(ratio[1])))
  w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  top = jax.random.randint(k_top, (), 0, jnp.maximum(height - h, 0) + 1)
  left = jax.random.randint(k_left, (), 0, jnp.maximum(width - w, 0) + 1)
  # Fallback: central crop (static, from the image size).
  in_ratio = width / height
  if in_ratio < min(ratio):
    fw, fh = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fw, fh = int(round(height * max(ratio))), height
  else:
    fw, fh = width, height
  fallback = jnp.asarray([(width - fw) // 2, (height - fh) // 2, fw, fh],
                         jnp.int32)
  box = jnp.stack([left, top, w, h]).astype(jnp.int32)
  return jnp.where(ok, box, fallback)


_RESAMPLE_PRECISION_BITS = 32 - 8 - 2  # PIL Resample.c PRECISION_BITS


def _bicubic(x: Array) -> Array:
  """PIL's bicubic filter (a = -0.5)."""
  a = -0.5
  x = jnp.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def _resample_coefficients(in_size: int, start: Array, length: Array,
                           out_size: int, max_taps: int):
  """PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for a dynamic box.

  Returns (first int32[out], weights int32[out, max_taps]): output pixel i is
  (2^21 + sum_t in[first_i + t] * weights[i, t]) >> 22, clipped to [0, 255].
  For an integer box every filter argument is a ratio of integers,
  (2 out (x - start) + out - (2i + 1) len) / (2 max(len, out)); we form the
  numerator exactly in int32 so the only float32 error is in the cubic itself.
  """
  start = jnp.asarray(start, jnp.int32)
  length = jnp.asarray(length, jnp.int32)
  i = jnp.arange(out_size, dtype=jnp.int32)
  denom = 2 * jnp.maximum(length, out_size)  # 2 * out * filterscale
  # xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5)
  # with center = start + (i + 1/2) len / out and support = 2 filterscale; all
  # over the common denominator 2 out. Negative xmin is clamped to 0 anyway.
  base = 2 * out_size * start + (2 * i + 1) * length + out_size
  xmin = jnp.maximum((base - 2 * denom) // (2 * out_size), 0)
  xmax = jnp.minimum((base + 2 * denom) // (2 * out_size), in_size)
  count = xmax - xmin
  taps = jnp.arange(max_taps, dtype=jnp.int32)
  x = taps[None, :] + xmin[:, None]
  numer = (2 * out_size * (x - start) + out_size -
           (2 * i[:, None] + 1) * length)
  w = _bicubic(numer.astype(jnp.float32) / denom.astype(jnp.float32))
  w = jnp.where(taps[None, :] < count[:, None], w, 0.0)
  total = jnp.sum(w, axis=1, keepdims=True)
  w = jnp.where(total != 0.0, w / jnp.where(total != 0.0, total, 1.0), w)
  scaled = w * (1 << _RESAMPLE_PRECISION_BITS)
  fixed = jnp.where(scaled < 0, jnp.trunc(scaled - 0.5), jnp.trunc(scaled + 0.5))
  return xmin, fixed.astype(jnp.int32)


def _resample_axis(p: Array, first: Array, weights: Array, axis: int) -> Array:
  """One PIL 8-bit resampling pass along `axis` (0 = rows, 1 = columns)."""
  n = p.shape[axis]
  taps = weights.shape[1]
  idx = jnp.clip(first[:, None] + jnp.arange(taps)[None, :], 0, n - 1)
  gathered = jnp.take(p, idx, axis=axis)  # axis -> (out, taps)
  if axis == 0:
    acc = jnp.einsum("otwc,ot->owc", gathered, weights)
  else:
    acc = jnp.einsum("hotc,ot->hoc", gathered, weights)
  acc = acc + (1 << (_RESAMPLE_PRECISION_BITS - 1))
  return jnp.clip(acc >> _RESAMPLE_PRECISION_BITS, 0, 255)


def resized_crop(image: Array, box: Array, *,
                 size: Tuple[int, int] = (224, 224),
                 horizontal_first: Optional[bool] = None) -> Array:
  """`img.resize(size, BICUBIC, box=(left, top, left + w, top + h))`.

  PIL's two-pass separable resampling with its antialiasing support (the kernel
  widens by the downscale factor) and its 22-bit fixed-point weights, with the
  intermediate image rounded and clipped to uint8 as PIL does. The filter
  weights are computed in float32 here (PIL: float64) before the rounding to
  22-bit fixed point, so many weights differ by a few units of 2^-22 and some
  output values by 1 or 2 levels: 0.1% of the values on average, up to ~5-8%
  for some enlarging boxes (measured in docs/parity.md). Every other op is
  bit-exact.

  Args:
    image: float32[H, W, 3] in [0, 255].
    box: int32[4] (left, top, w, h), e.g. from `sample_resized_crop_box`.
    size: static output (height, width).
    horizontal_first: pass order. None follows Pillow >= 13, which runs the
      vertical pass first when the height shrinks by more than twice the
      width (`(H - h) > 0 and (H - h) > 2 (W - w)`, from the full image size);
      True is the order of Pillow < 13 (the authors' environment). The two
      orders round the intermediate image differently. For the square
      S x S -> S x S crops of the ImageNet space they coincide.

  Returns:
    float32[size[0], size[1], 3].
  """
  p = _as_int_image(image)
  h_in, w_in, _ = p.shape
  out_h, out_w = size
  box = jnp.asarray(box, jnp.int32)
  # Widest possible kernel: the whole image squeezed into the output.
  taps_x = int(math.ceil(2.0 * max(w_in / out_w, 1.0))) * 2 + 1
  taps_y = int(math.ceil(2.0 * max(h_in / out_h, 1.0))) * 2 + 1
  first_x, wx = _resample_coefficients(w_in, box[0], box[2], out_w, taps_x)
  first_y, wy = _resample_coefficients(h_in, box[1], box[3], out_h, taps_y)
  if horizontal_first is None:
    horizontal_first = not ((h_in - out_h) > 0 and
                            (h_in - out_h) > 2 * (w_in - out_w))
  if horizontal_first:
    out = _resample_axis(_resample_axis(p, first_x, wx, axis=1), first_y, wy,
                         axis=0)
  else:
    out = _resample_axis(_resample_axis(p, first_y, wy, axis=0), first_x, wx,
                         axis=1)
  return out.astype(jnp.float32)


def random_resized_crop(key: Array, image: Array, *,
                        size: Tuple[int, int] = (224, 224)) -> Array:
  """RandResizeCrop_imagenet: one-attempt RandomResizedCrop + bicubic resize."""
  h, w, _ = jnp.shape(image)
  return resized_crop(image, sample_resized_crop_box(key, h, w), size=size)


def center_crop(image: Array, *, size: Tuple[int, int] = (224, 224)) -> Array:
  """The official `centerCrop_imagenet`: zero-pad to `size` if smaller, then
  crop at top = round((H - h) / 2), left = round((W - w) / 2) (half to even).
  No resize. Static shapes, so this is a plain slice.
  """
  image = _as_float_image(image)
  out_h, out_w = size
  h, w, _ = image.shape
  if out_h > h or out_w > w:
    pad_t = (out_h - h) // 2 if out_h > h else 0
    pad_l = (out_w - w) // 2 if out_w > w else 0
    pad_b = (out_h - h + 1) // 2 if out_h > h else 0
    pad_r = (out_w - w + 1) // 2 if out_w > w else 0
    image = jnp.pad(image, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
    h, w, _ = image.shape
  top = int(round((h - out_h) / 2.0))
  left = int(round((w - out_w) / 2.0))
  return image[top:top + out_h, left:left + out_w]
