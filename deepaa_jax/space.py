"""DeepAA search spaces: the 139 transforms, and applying them on the device.

A `SearchSpace` is an immutable, hashable value describing |T| = 139
transforms in the canonical order of the official policy files
(`official_deepaa_spec.md` §1.2): 18 operations, 11 of them with 12 magnitude
levels out of a 13-level grid whose identity level is dropped (level 6 for the
signed and enhance ops, level 12 for Solarize and Posterize).

Three ways to apply transforms to `image: uint8 or float32[H, W, 3]` in
[0, 255] (the contract `check_images` enforces at these public entry points,
raising `errors.ImageContractError`):
  * `apply_all(key, image, space) -> float32[T, H, W, 3]`: every transform of
    one image, computed op by op (each op once per level, histograms and
    degenerate images once per image). This is the dense layer the search
    differentiates through.
  * `apply_transform(key, image, index, space)`: one transform chosen by a
    traced index. Written as a few shared stages (one fixed-point gather for
    every geometric op, flip and crop; per-channel lookup tables for the pixel
    ops; one blend for the four enhance ops; one cutout mask), not as
    `lax.switch` over 18 ops, which under `vmap` evaluates every branch for
    every example (jax-ml/jax#8409).
  * `apply_chain(key, image, indices, space)`: one transform per layer, layer
    1 first: the building block for sampling policies.
All three vmap over a batch of images (and keys).

Random ops (flip, cutout, crop / resized crop) draw from `key` through
`sample_draws`, identically in all three functions: for the same key,
`apply_all(key, x)[i] == apply_transform(key, x, i)` for every i.
"""

import dataclasses
import functools
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from deepaa_jax import errors
from deepaa_jax import ops

Array = jax.Array

NUM_LEVELS = 13  # `l_mags` of the official code; the middle level is dropped.
DUMMY_LEVEL = 6  # level recorded for ops without a magnitude.
# Which official code a space's level values follow (`level_fractions`).
PHASES = ("search", "evaluation")

# Operation indices, shared by both spaces (spec §1.1).
IDENTITY, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, ROTATE = range(6)
AUTO_CONTRAST, INVERT, EQUALIZE, SOLARIZE, POSTERIZE = range(6, 11)
CONTRAST, COLOR, BRIGHTNESS, SHARPNESS = range(11, 15)
FLIP, CUTOUT, CROP = range(15, 18)
NUM_OPS = 18
AFFINE_OPS = (SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, ROTATE)
ENHANCE_OPS = (CONTRAST, COLOR, BRIGHTNESS, SHARPNESS)
RANDOM_OPS = (FLIP, CUTOUT, CROP)

# (name, lo, hi, dropped level): None = no magnitude, "random" = random op.
_COMMON_OPS = (
    ("Identity", 0.0, 1.0, None),
    ("ShearX", -0.3, 0.3, 6),
    ("ShearY", -0.3, 0.3, 6),
    ("TranslateX", -0.45, 0.45, 6),
    ("TranslateY", -0.45, 0.45, 6),
    ("Rotate", -30.0, 30.0, 6),
    ("AutoContrast", 0.0, 1.0, None),
    ("Invert", 0.0, 1.0, None),
    ("Equalize", 0.0, 1.0, None),
    ("Solarize", 0.0, 256.0, 12),
    ("Posterize", 4.0, 8.0, 12),
    ("Contrast", 0.1, 1.9, 6),
    ("Color", 0.1, 1.9, 6),
    ("Brightness", 0.1, 1.9, 6),
    ("Sharpness", 0.1, 1.9, 6),
    ("RandFlip", 0.0, 1.0, "random"),
)
_CIFAR_OPS = _COMMON_OPS + (
    ("RandCutout", 0.0, 1.0, "random"),
    ("RandCrop", 0.0, 1.0, "random"),
)
_IMAGENET_OPS = _COMMON_OPS + (
    ("RandCutout60", 0.0, 1.0, "random"),
    ("RandResizeCrop_imagenet", 0.0, 1.0, "random"),
)

_AFFINE_COEFFICIENT_FNS = {
    SHEAR_X: ops.shear_x_coefficients,
    SHEAR_Y: ops.shear_y_coefficients,
    TRANSLATE_X: ops.translate_x_coefficients,
    TRANSLATE_Y: ops.translate_y_coefficients,
    ROTATE: ops.rotate_coefficients,
}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The transform set T of one DeepAA search space (hashable, immutable).

  Attributes:
    name: "cifar" or "imagenet".
    op_names: the 18 official op names, in op-index order.
    op_ranges: (lo, hi) of each op's magnitude.
    ops: op index of each transform, length |T|.
    levels: raw level 0..12 of each transform (6 for ops without magnitude).
    values: the value the op receives, lo + (level / 12) * (hi - lo), with
      level / 12 computed as `phase`'s official code does
      (`level_fractions`): in float32 for the search, in float64 for the
      evaluation. The two tables differ by ~1e-8; after the float32 cast of
      the device ops that changes 8 transforms by one grey level on a few
      pixels (Contrast, Color m=8, 10; Brightness m=5, 8, 10; Sharpness m=8).
    cutout_size: 16 (CIFAR RandCutout) or 60 (ImageNet RandCutout60).
    resized_crop: False for CIFAR pad-4 RandCrop, True for the ImageNet
      one-attempt RandomResizedCrop (resized back to the input size).
    phase: "search" (the search, `search.py`, and every `get_space` by
      default) or "evaluation" (a policy applied to train a network:
      `Policy.space`, hence `apply_policy`, training and `pil.DeepAAPolicy`).
  """
  name: str
  op_names: Tuple[str, ...]
  op_ranges: Tuple[Tuple[float, float], ...]
  ops: Tuple[int, ...]
  levels: Tuple[int, ...]
  values: Tuple[float, ...]
  cutout_size: int
  resized_crop: bool
  phase: str = "search"

  @property
  def size(self) -> int:
    """|T|, the number of transforms (139 for both official spaces)."""
    return len(self.ops)

  def __len__(self) -> int:
    return self.size

  @property
  def op_array(self) -> np.ndarray:
    """int32[T]: op index of each transform."""
    return np.asarray(self.ops, np.int32)

  @property
  def level_array(self) -> np.ndarray:
    """int32[T]: raw level 0..12 of each transform."""
    return np.asarray(self.levels, np.int32)

  @property
  def value_array(self) -> np.ndarray:
    """float64[T]: the op argument of each transform."""
    return np.asarray(self.values, np.float64)

  @property
  def has_magnitude(self) -> np.ndarray:
    """bool[T]: whether the transform's op takes a magnitude."""
    return np.asarray([_dropped_level(self, o) not in (None, "random")
                       for o in self.ops])

  @property
  def is_random(self) -> np.ndarray:
    """bool[T]: flip, cutout and crop, whose result depends on the key."""
    return np.isin(self.op_array, RANDOM_OPS)

  def transform_name(self, index: int) -> str:
    """Human-readable name, e.g. 'ShearX(m=0, -0.3)' or 'Equalize'."""
    op = self.ops[index]
    name = self.op_names[op]
    if _dropped_level(self, op) in (None, "random"):
      return name
    return f"{name}(m={self.levels[index]}, {self.values[index]:.4g})"

  @property
  def transform_names(self) -> Tuple[str, ...]:
    return tuple(self.transform_name(i) for i in range(self.size))

  def index_of(self, op_name: str, level: Optional[int] = None) -> int:
    """Index of an (op name, level) pair; level may be omitted for ops
    without magnitude. Raises ValueError naming the valid choices."""
    if op_name not in self.op_names:
      raise ValueError(f"unknown op {op_name!r}; valid: {self.op_names}")
    op = self.op_names.index(op_name)
    candidates = [i for i, o in enumerate(self.ops) if o == op]
    if level is None:
      if len(candidates) != 1:
        raise ValueError(f"{op_name} has levels "
                         f"{[self.levels[i] for i in candidates]}; pass one")
      return candidates[0]
    for i in candidates:
      if self.levels[i] == level:
        return i
    raise ValueError(f"{op_name} has no level {level}; valid: "
                     f"{[self.levels[i] for i in candidates]}")

  def table(self) -> str:
    """The transform table as text: index, op, level, value."""
    lines = [f"{'idx':>3}  {'op':<24} {'level':>5}  value"]
    for i in range(self.size):
      op = self.ops[i]
      has_mag = _dropped_level(self, op) not in (None, "random")
      value = f"{self.values[i]:.6g}" if has_mag else "-"
      level = str(self.levels[i]) if has_mag else "-"
      lines.append(f"{i:>3}  {self.op_names[op]:<24} {level:>5}  {value}")
    return "\n".join(lines)

  @functools.cached_property
  def _tables(self):
    return _device_tables(self)

  def affine_coefficients(self, height: int, width: int, *,
                          negate: bool = False) -> np.ndarray:
    """int32[T, 6] PIL fixed-point coefficients of every transform's warp.

    Non-affine transforms get the identity. Computed with float64 (NumPy) from
    the exact official values, so they are PIL's own coefficients.
    `negate=True` gives the mirrored value -v (the evaluation code's random
    sign flip).
    """
    return _affine_table(self, height, width, negate)


def _dropped_level(space: SearchSpace, op: int):
  ops_table = _IMAGENET_OPS if space.name == "imagenet" else _CIFAR_OPS
  return ops_table[op][3]


def level_fractions(phase: str) -> np.ndarray:
  """float64[13]: level m / 12 for m = 0..12, as `phase`'s official code
  computes it.

  "search": in float32, `mags.astype(np.float32) / float(l_mags - 1)`
  (`DeepAA_search.py`), then `mag * (hi - lo) + lo` in float64.
  "evaluation": in float64, `mags[n] / (l_mags - 1)` on the int array
  (`deep_autoaugment.py:478-502`, spec §4.1), then the same float64 formula.

  Raises:
    ValueError: an unknown phase.
  """
  m = np.arange(NUM_LEVELS)
  if phase == "search":
    return (m.astype(np.float32) / np.float32(NUM_LEVELS - 1)).astype(
        np.float64)
  if phase == "evaluation":
    return m / (NUM_LEVELS - 1)
  raise ValueError(f"unknown phase {phase!r}; valid: {PHASES}")


def _build_space(name: str, op_table, cutout_size: int,
                 resized_crop: bool, phase: str) -> SearchSpace:
  fractions = level_fractions(phase)
  ops_list, levels, values = [], [], []
  for op, (_, lo, hi, dropped) in enumerate(op_table):
    if dropped is None or dropped == "random":
      ops_list.append(op)
      levels.append(DUMMY_LEVEL)
      values.append(0.0)
      continue
    for m in range(NUM_LEVELS):
      if m == dropped:
        continue
      norm = float(fractions[m])  # float32 (search) or float64 (evaluation)
      ops_list.append(op)
      levels.append(m)
      values.append(norm * (hi - lo) + lo)
  return SearchSpace(
      name=name,
      op_names=tuple(t[0] for t in op_table),
      op_ranges=tuple((t[1], t[2]) for t in op_table),
      ops=tuple(ops_list),
      levels=tuple(levels),
      values=tuple(values),
      cutout_size=cutout_size,
      resized_crop=resized_crop,
      phase=phase,
  )


@functools.lru_cache(maxsize=None)
def _cached_space(name: str, phase: str) -> SearchSpace:
  """One object per (name, phase), however the phase was passed."""
  if name == "cifar":
    return _build_space("cifar", _CIFAR_OPS, cutout_size=16,
                        resized_crop=False, phase=phase)
  return _build_space("imagenet", _IMAGENET_OPS, cutout_size=60,
                      resized_crop=True, phase=phase)


def cifar_space(*, phase: str = "search") -> SearchSpace:
  """The 139-transform CIFAR space (RandCutout 16 px, pad-4 RandCrop), with
  the level values of `phase` ("search" or "evaluation", `level_fractions`).
  """
  return _cached_space("cifar", phase)


def imagenet_space(*, phase: str = "search") -> SearchSpace:
  """The 139-transform ImageNet space (RandCutout60, RandResizeCrop), with
  the level values of `phase` (as `cifar_space`).

  Shapes are static in JAX, so images enter this space at a fixed S x S (the
  input pipeline's job) and RandResizeCrop resizes its box back to S x S. For
  S = 224 that is the official 224 x 224 output; the official code instead
  applies the ops at each image's native resolution before a final centre
  crop (spec §2.12), which static shapes cannot express.
  """
  return _cached_space("imagenet", phase)


def get_space(name: str, *, phase: str = "search") -> SearchSpace:
  """Space by name ('cifar' or 'imagenet') with the level values of `phase`
  ("search", the default, or "evaluation"; see `level_fractions`).

  Raises:
    ValueError: an unknown name or phase.
  """
  spaces = {"cifar": cifar_space, "imagenet": imagenet_space}
  if name not in spaces:
    raise ValueError(f"unknown search space {name!r}; valid: {sorted(spaces)}")
  if phase not in PHASES:
    raise ValueError(f"unknown phase {phase!r}; valid: {PHASES}")
  return spaces[name](phase=phase)


@functools.lru_cache(maxsize=None)
def _affine_table(space: SearchSpace, height: int, width: int,
                  negate: bool) -> np.ndarray:
  identity = ops.affine_fixed_coefficients((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
  table = np.tile(identity, (space.size, 1))
  for i, (op, value) in enumerate(zip(space.ops, space.values)):
    if op in _AFFINE_COEFFICIENT_FNS:
      v = -value if negate else value
      table[i] = _AFFINE_COEFFICIENT_FNS[op](v, height, width, xp=np)
  return table


class _Tables(NamedTuple):
  ops: np.ndarray  # int32[T]
  values: np.ndarray  # float32[T]
  is_affine: np.ndarray  # bool[T]


def _device_tables(space: SearchSpace) -> _Tables:
  op_array = space.op_array
  return _Tables(
      ops=op_array,
      values=space.value_array.astype(np.float32),
      is_affine=np.isin(op_array, AFFINE_OPS),
  )


# --------------------------------------------------------------------------
# Random draws.
# --------------------------------------------------------------------------


class Draws(NamedTuple):
  """The random numbers of one image's random ops (one realisation each).

  flip: bool[] -- RandFlip's coin (flip when True).
  cutout_center: float32[2] -- (cx, cy) of RandCutout / RandCutout60.
  crop_offsets: int32[2] -- (top, left) of RandCrop, in 0..8.
  resized_crop_box: int32[4] -- (left, top, w, h) of RandResizeCrop.
  """
  flip: Array
  cutout_center: Array
  crop_offsets: Array
  resized_crop_box: Array


def sample_draws(key: Array, height: int, width: int,
                 space: SearchSpace) -> Draws:
  """Draws for every random op of `space` from one key (independent subkeys)."""
  k_flip, k_cut, k_crop = jax.random.split(key, 3)
  if space.resized_crop:
    box = ops.sample_resized_crop_box(k_crop, height, width)
  else:
    box = jnp.asarray([0, 0, width, height], jnp.int32)
  return Draws(
      flip=ops.sample_flip(k_flip),
      cutout_center=ops.sample_cutout_center(
          k_cut, height, width, box=256 if space.cutout_size == 60 else 0),
      crop_offsets=ops.sample_crop_offsets(k_crop),
      resized_crop_box=box,
  )


def _split_transform_key(key: Array) -> Tuple[Array, Array]:
  """(draws key, sign key): the same derivation in every apply function."""
  k_draws, k_sign = jax.random.split(key)
  return k_draws, k_sign


def _random_op_outputs(image: Array, draws: Draws,
                       space: SearchSpace) -> Tuple[Array, Array, Array]:
  """Outputs of the three random ops given their draws."""
  flipped = ops.flip(image, draws.flip)
  cut = ops.cutout(image, draws.cutout_center, size=space.cutout_size)
  if space.resized_crop:
    h, w, _ = image.shape
    cropped = ops.resized_crop(image, draws.resized_crop_box, size=(h, w))
  else:
    cropped = ops.pad_crop(image, draws.crop_offsets)
  return flipped, cut, cropped


# --------------------------------------------------------------------------
# The image contract of the public functions.
# --------------------------------------------------------------------------


def _image_stats(xp, images):
  """(number of non-finite values, min and max of the finite ones)."""
  finite = xp.isfinite(images)
  return (xp.sum(~finite), xp.min(xp.where(finite, images, xp.inf)),
          xp.max(xp.where(finite, images, -xp.inf)))


_jax_image_stats = jax.jit(functools.partial(_image_stats, jnp))


def check_images(images, *, rank: int, where: str,
                 name: str = "images") -> None:
  """Checks the image contract of the public functions that take images.

  The contract: uint8 or floating point, `[H, W, 3]` (rank 3) or
  `[B, H, W, 3]` (rank 4), pixel values in [0, 255]. For floating point
  images the values must also be finite and not look [0, 1]-scaled: an
  image (or batch) whose largest value is in (0, 1] is refused, since in
  [0, 255] terms it is black but for one grey level; an all-zero (black)
  float image is accepted. Pass such nearly black images as uint8.

  Rank, channels and dtype are static and are checked on tracers too. The
  value checks need concrete values (numpy arrays, concrete jax arrays) and
  are skipped on tracers, so inside `jit` and `vmap` the check adds nothing
  to the compiled program.

  Args:
    images: the argument to check; an array (or anything `np.asarray`
      takes). Not modified.
    rank: the documented rank, 3 (one image) or 4 (a batch).
    where: the public function's name, for the message.
    name: the argument's name, for the message.

  Raises:
    ImageContractError: one line naming `where`, `name`, the shape, dtype or
      value range found and what is expected.
  """
  if not hasattr(images, "shape") or not hasattr(images, "dtype"):
    images = np.asarray(images)
  shape, dtype = tuple(images.shape), np.dtype(images.dtype)
  expected = (f"uint8 or float32[{'B, ' if rank == 4 else ''}H, W, 3] in "
              "[0, 255]")
  found = f"{dtype.name}[{', '.join(str(d) for d in shape)}]"

  def fail(problem):
    raise errors.ImageContractError(f"{where}: {name} is {found}: {problem}; "
                                    f"expected {expected}")

  if len(shape) != rank:
    hint = {(4, 3): " (one image, not a batch)",
            (3, 4): " (a batch: vmap over it, or pass one image)"}
    fail(f"rank {len(shape)}{hint.get((rank, len(shape)), '')}")
  if shape[-1] != 3:
    fail(f"{shape[-1]} channels, not 3 (RGB)")
  is_float = jnp.issubdtype(dtype, jnp.floating)
  if dtype != np.uint8 and not is_float:
    fail(f"dtype {dtype.name} (cast to uint8, or to float32 in [0, 255])")
  if (not is_float or isinstance(images, jax.core.Tracer) or
      not np.prod(shape)):
    return
  if isinstance(images, np.ndarray):
    num_bad, lo, hi = _image_stats(np, images)
  else:  # A concrete jax array: reduce it on its device, even while tracing.
    with jax.ensure_compile_time_eval():
      num_bad, lo, hi = jax.device_get(_jax_image_stats(images))
  if num_bad:
    fail(f"{int(num_bad)} value(s) are NaN or infinite")
  lo, hi = float(lo), float(hi)
  if lo < 0 or hi > 255:
    fail(f"values in [{lo:g}, {hi:g}], outside [0, 255]")
  if 0 < hi <= 1:
    fail(f"values in [{lo:g}, {hi:g}], which looks [0, 1]-scaled (multiply "
         "by 255; an all-black float image is accepted, nearly black ones as "
         "uint8)")


# --------------------------------------------------------------------------
# All transforms of one image.
# --------------------------------------------------------------------------


def _levels_of(space: SearchSpace, op: int) -> np.ndarray:
  """float32 values of one op's transforms, in index order."""
  mask = space.op_array == op
  return space.value_array[mask].astype(np.float32)


def apply_all(key: Array, image: Array, space: SearchSpace) -> Array:
  """Every transform of `space` applied to one image.

  Each op is evaluated once per level; the 60 geometric transforms are one
  gather with PIL's fixed-point source indices; the random ops are realised
  once (one draw per op from `key`), as in the official stage-1 search.

  Args:
    key: PRNG key for the random ops.
    image: uint8 or float32[H, W, 3] in [0, 255], integer-valued (see
      `check_images`).
    space: the search space.

  Returns:
    float32[T, H, W, 3]; entry i equals `apply_transform(key, image, i, space)`.

  Raises:
    ImageContractError: `image` breaks the contract (rank, channels, dtype;
      for concrete values also finiteness and the [0, 255] range).
  """
  check_images(image, rank=3, where="apply_all", name="image")
  x = ops.identity(image)
  h, w, c = x.shape
  draws = sample_draws(_split_transform_key(key)[0], h, w, space)
  op_array = space.op_array

  def per_level(op):
    return jnp.asarray(_levels_of(space, op))[:, None, None, None]

  # Geometric ops: one gather for all affine transforms (contiguous indices).
  affine_idx = np.flatnonzero(np.isin(op_array, AFFINE_OPS))
  coeffs = jnp.asarray(space.affine_coefficients(h, w)[affine_idx])
  flat, valid = jax.vmap(lambda cf: ops.source_indices(cf, h, w))(coeffs)
  geometric = jnp.take(x.reshape(h * w, c), flat.reshape(-1), axis=0)
  geometric = jnp.where(valid[..., None],
                        geometric.reshape(len(affine_idx), h, w, c), 0.0)

  # Enhance ops share per-image degenerate images across their 12 levels.
  enhanced = {
      CONTRAST: ops.blend(ops.contrast_degenerate(x), x[None],
                          per_level(CONTRAST)),
      COLOR: ops.blend(ops.grayscale(x)[..., None], x[None], per_level(COLOR)),
      BRIGHTNESS: ops.blend(jnp.zeros(()), x[None], per_level(BRIGHTNESS)),
      SHARPNESS: ops.blend(ops.smooth(x), x[None], per_level(SHARPNESS)),
  }
  solarized = jnp.where(x[None] < per_level(SOLARIZE), x[None], 255.0 - x[None])
  posterized = jax.vmap(ops.posterize, in_axes=(None, 0))(
      x, jnp.asarray(_levels_of(space, POSTERIZE)))
  flipped, cut, cropped = _random_op_outputs(x, draws, space)

  by_op = {
      IDENTITY: x[None],
      AUTO_CONTRAST: ops.auto_contrast(x)[None],
      INVERT: ops.invert(x)[None],
      EQUALIZE: ops.equalize(x)[None],
      SOLARIZE: solarized,
      POSTERIZE: posterized,
      FLIP: flipped[None],
      CUTOUT: cut[None],
      CROP: cropped[None],
      **enhanced,
  }
  # Assemble in index order. The affine ops occupy one contiguous block, so
  # the concatenation below follows the canonical table exactly.
  pieces = []
  for op in range(NUM_OPS):
    if op == AFFINE_OPS[0]:
      pieces.append(geometric)
    elif op not in AFFINE_OPS:
      pieces.append(by_op[op])
  out = jnp.concatenate(pieces, axis=0)
  assert out.shape[0] == space.size, (out.shape, space.size)
  return out


# --------------------------------------------------------------------------
# One transform chosen by a traced index.
# --------------------------------------------------------------------------


def _pixel_lut(p: Array, op: Array, value: Array) -> Array:
  """int32[3, 256] lookup table of the pixel op `op` (identity for others).

  AutoContrast, Invert, Equalize, Solarize and Posterize are all per-channel
  maps of the 256 grey levels; building one 3 x 256 table and gathering once
  is far cheaper under vmap than evaluating each op on the whole image.
  """
  levels = jnp.arange(256, dtype=jnp.int32)[None, :]  # [1, 256]
  solar = jnp.where(levels.astype(jnp.float32) < value, levels, 255 - levels)
  bits = jnp.clip(value.astype(jnp.int32), 0, 8)
  poster = levels & (jnp.left_shift(jnp.int32(0xFF), 8 - bits) & 0xFF)
  lut = jnp.broadcast_to(levels, (3, 256))
  lut = jnp.where(op == AUTO_CONTRAST, ops.autocontrast_lut(p), lut)
  lut = jnp.where(op == INVERT, 255 - levels, lut)
  lut = jnp.where(op == EQUALIZE, ops.equalize_lut(p), lut)
  lut = jnp.where(op == SOLARIZE, solar, lut)
  lut = jnp.where(op == POSTERIZE, poster, lut)
  return lut


def _transform_stages(x: Array, index: Array, draws: Draws, flip_sign: Array,
                      space: SearchSpace) -> Array:
  """`apply_transform` as shared stages: every stage runs, one is selected.

  Under vmap each example pays for all four stages (a gather, a lookup table,
  a blend, a cutout mask) whatever its op, but no stage is duplicated per op:
  the accelerator-friendly form.
  """
  h, w, c = x.shape
  tables = space._tables
  op = jnp.asarray(tables.ops)[index]
  value = jnp.asarray(tables.values)[index]

  # Stage 1 -- one fixed-point gather serves identity, the affine ops, flip and
  # pad-crop (each is an integer source map), with the fill of the op.
  coeffs = _affine_coefficients_of(index, flip_sign, h, w, space)
  one = ops._FIX_ONE
  # Mirror: x_in = W - 1 - x.
  flip_coeffs = jnp.asarray([-one, 0, (w - 1) * one + one // 2, 0, one, 0],
                            jnp.int32)
  coeffs = jnp.where((op == FLIP) & draws.flip, flip_coeffs, coeffs)
  if not space.resized_crop:
    coeffs = jnp.where(op == CROP, ops.pad_crop_coefficients(draws.crop_offsets),
                       coeffs)
  fill = jnp.where(op == CROP, jnp.asarray(ops.GREY_FILL, jnp.float32),
                   jnp.zeros((3,), jnp.float32))
  flat, valid = ops.source_indices(coeffs, h, w)
  warped = jnp.take(x.reshape(h * w, c), flat.reshape(-1), axis=0)
  warped = jnp.where(valid[..., None], warped.reshape(h, w, c), fill)

  # Stage 2 -- pixel ops through a per-channel lookup table.
  pixel = ops.apply_lut(
      x, ops.materialize(_pixel_lut(x.astype(jnp.int32), op, value)))

  # Stage 3 -- enhance ops: one blend with the op's degenerate image.
  degenerate = jnp.where(
      op == CONTRAST, ops.contrast_degenerate(x),
      jnp.where(op == COLOR, ops.grayscale(x)[..., None],
                jnp.where(op == SHARPNESS, ops.smooth(x), 0.0)))
  enhanced = ops.blend(degenerate, x, value)

  # Stage 4 -- cutout.
  cut = ops.cutout(x, draws.cutout_center, size=space.cutout_size)

  out = jnp.where(jnp.isin(op, jnp.asarray(ENHANCE_OPS)), enhanced, warped)
  out = jnp.where((op >= AUTO_CONTRAST) & (op <= POSTERIZE), pixel, out)
  out = jnp.where(op == CUTOUT, cut, out)
  if space.resized_crop:
    resized = ops.resized_crop(x, draws.resized_crop_box, size=(h, w))
    out = jnp.where(op == CROP, resized, out)
  # Pin the result: the next layer's gathers would otherwise fuse this select
  # chain (and, through it, earlier layers) and recompute it per pixel.
  return ops.materialize(out)


def _affine_coefficients_of(index: Array, flip_sign: Array, height: int,
                            width: int, space: SearchSpace) -> Array:
  """int32[6] warp coefficients of transform `index`, mirrored if flip_sign."""
  coeffs = jnp.asarray(space.affine_coefficients(height, width))[index]
  mirrored = jnp.asarray(
      space.affine_coefficients(height, width, negate=True))[index]
  return jnp.where(flip_sign, mirrored, coeffs)


# Branch of each op in `_transform_switch` (identity, the five affine ops, ...).
_SWITCH_BRANCH = np.asarray(
    [0, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], np.int32)


def _transform_switch(x: Array, index: Array, draws: Draws, flip_sign: Array,
                      space: SearchSpace) -> Array:
  """`apply_transform` as `lax.switch` over ops: only the chosen op runs.

  The right form for one image at a time (inside `lax.map`, or unbatched);
  under vmap a switch evaluates every branch (jax-ml/jax#8409).
  """
  h, w, _ = x.shape
  tables = space._tables
  op = jnp.asarray(tables.ops)[index]
  value = jnp.asarray(tables.values)[index]
  if space.resized_crop:
    crop = lambda im: ops.resized_crop(im, draws.resized_crop_box, size=(h, w))
  else:
    crop = lambda im: ops.pad_crop(im, draws.crop_offsets)
  branches = [
      lambda im: im,
      lambda im: ops.warp(
          im, _affine_coefficients_of(index, flip_sign, h, w, space)),
      ops.auto_contrast,
      ops.invert,
      ops.equalize,
      lambda im: ops.solarize(im, value),
      lambda im: ops.posterize(im, value),
      lambda im: ops.contrast(im, value),
      lambda im: ops.color(im, value),
      lambda im: ops.brightness(im, value),
      lambda im: ops.sharpness(im, value),
      lambda im: ops.flip(im, draws.flip),
      lambda im: ops.cutout(im, draws.cutout_center, size=space.cutout_size),
      crop,
  ]
  return jax.lax.switch(jnp.asarray(_SWITCH_BRANCH)[op], branches, x)


_METHODS = ("stages", "switch")


class LayerRandomness(NamedTuple):
  """Everything random about applying one transform to one image."""
  draws: Draws  # the random ops' draws
  flip_sign: Array  # bool[]: mirror the magnitude of an affine op (eval only)


def layer_randomness(key: Array, height: int, width: int, space: SearchSpace,
                     *, random_sign: bool = False) -> LayerRandomness:
  """The draws `apply_transform(key, ...)` makes, made up front.

  Drawing all randomness in one vectorized call, before a per-example loop,
  is much cheaper on CPU than drawing inside the loop.
  """
  k_draws, k_sign = _split_transform_key(key)
  flip_sign = (jax.random.uniform(k_sign) > 0.5) & random_sign
  return LayerRandomness(sample_draws(k_draws, height, width, space),
                         flip_sign)


def replay_transform_unchecked(x: Array, index: Array, rnd: LayerRandomness,
                               space: SearchSpace, method: str) -> Array:
  """`replay_transform` without the image check, by a chosen method.

  For callers that checked their images already, or trace inside a scan
  (`apply_chain_batch_unchecked`, `plots.policy_preview_layers`).

  Args:
    x: float32[H, W, 3] in [0, 255], integer-valued (not checked).
    index: int32 scalar in [0, T).
    rnd: the layer's draws and sign coin (`layer_randomness`).
    space: the search space.
    method: "switch" (`lax.switch`: only the chosen op runs) or "stages"
      (every stage, selected; vmap-friendly). Both give identical pixels.

  Returns:
    float32[H, W, 3].
  """
  if method not in _METHODS:
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
  impl = _transform_stages if method == "stages" else _transform_switch
  return impl(x, jnp.asarray(index, jnp.int32), rnd.draws, rnd.flip_sign,
              space)


def replay_transform(image: Array, index: Array, randomness: LayerRandomness,
                     space: SearchSpace) -> Array:
  """Transform `index` with its randomness given (e.g. from
  `policy.applied_transforms`): `apply_transform(key, ...)` equals
  `replay_transform(..., layer_randomness(key, H, W, space, ...))`.

  Args:
    image: uint8 or float32[H, W, 3] in [0, 255], integer-valued.
    index: int32 scalar in [0, T).
    randomness: the layer's draws and sign coin.
    space: the search space.

  Returns:
    float32[H, W, 3].
  """
  check_images(image, rank=3, where="replay_transform", name="image")
  return replay_transform_unchecked(ops.identity(image), index, randomness,
                                    space, "switch")


def apply_transform(key: Array, image: Array, index: Array,
                    space: SearchSpace, *, random_sign: bool = False,
                    method: str = "stages") -> Array:
  """Transform number `index` of `space` applied to one image.

  Args:
    key: PRNG key (random ops' draws, and the sign coin if `random_sign`).
    image: uint8 or float32[H, W, 3] in [0, 255], integer-valued (see
      `check_images`).
    index: int32 scalar in [0, T), may be traced.
    space: the search space.
    random_sign: if True, ShearX/Y, TranslateX/Y and Rotate negate their value
      with probability 0.5, as the official EVALUATION code does
      (`random_mirror`, spec §4.2). The search never does (default False).
    method: "stages" (default; vmap-friendly: a few shared stages, one
      selected) or "switch" (`lax.switch`: only the chosen op runs; fastest
      for one image at a time, e.g. inside `lax.map` on CPU). Both give
      identical pixels.

  Returns:
    float32[H, W, 3] with integer values in [0, 255].

  Raises:
    ImageContractError: `image` breaks the contract (see `apply_all`).
  """
  check_images(image, rank=3, where="apply_transform", name="image")
  return _apply_transform(key, image, index, space, random_sign=random_sign,
                          method=method)


def _apply_transform(key: Array, image: Array, index: Array,
                     space: SearchSpace, *, random_sign: bool,
                     method: str) -> Array:
  """`apply_transform` without the image check (for internal callers)."""
  x = ops.identity(image)
  h, w, _ = x.shape
  rnd = layer_randomness(key, h, w, space, random_sign=random_sign)
  return replay_transform_unchecked(x, index, rnd, space, method)


def apply_chain(key: Array, image: Array, indices: Sequence[Array],
                space: SearchSpace, *, random_sign: bool = False,
                method: str = "stages") -> Array:
  """Transforms `indices[0]`, `indices[1]`, ... applied in sequence.

  Layer k uses the key `fold_in(key, k)`, so a chain's randomness does not
  depend on its length, and each random op draws afresh in every layer.

  Args:
    key: PRNG key.
    image: uint8 or float32[H, W, 3] in [0, 255], integer-valued (see
      `check_images`).
    indices: int32[K] transform indices, layer 1 first (may be traced; K static).
    space: the search space.
    random_sign: see `apply_transform`.
    method: see `apply_transform`.

  Returns:
    float32[H, W, 3].

  Raises:
    ImageContractError: `image` breaks the contract (see `apply_all`).
  """
  check_images(image, rank=3, where="apply_chain", name="image")
  return _apply_chain(key, image, indices, space, random_sign=random_sign,
                      method=method)


def _apply_chain(key: Array, image: Array, indices: Sequence[Array],
                 space: SearchSpace, *, random_sign: bool,
                 method: str) -> Array:
  """`apply_chain` without the image check (for internal callers)."""
  indices = jnp.asarray(indices, jnp.int32)
  x = ops.identity(image)
  for k in range(indices.shape[0]):
    x = _apply_transform(jax.random.fold_in(key, k), x, indices[k], space,
                         random_sign=random_sign, method=method)
  return x


def example_keys(key: Array, num: int, *, offset: Array = 0) -> Array:
  """Per-example keys fold_in(key, offset + i), i < num.

  Keys derived from the global example index make results independent of the
  batch size and of how a batch is split across devices or chunks.
  """
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      key, offset + jnp.arange(num, dtype=jnp.int32))


def apply_chain_batch(key: Array, images: Array, indices: Array,
                      space: SearchSpace, *, random_sign: bool = False,
                      method: str = "auto", offset: Array = 0) -> Array:
  """`apply_chain` over a batch; example i uses key fold_in(key, offset + i).

  Args:
    key: PRNG key.
    images: uint8 or float32[B, H, W, 3] in [0, 255], integer-valued (see
      `check_images`).
    indices: int32[B, K] transform indices per example, layer 1 first.
    space: the search space.
    random_sign: see `apply_transform`.
    method: "vectorized" (vmap over examples, shared stages; for GPU/TPU),
      "sequential" (`lax.map` over examples with `lax.switch`, so each image
      runs only its chosen ops; ~10x faster on CPU), or "auto" (sequential on
      the CPU backend, vectorized elsewhere). All give identical pixels.
    offset: global index of the first example (for sharded or chunked
      batches).

  Returns:
    float32[B, H, W, 3].

  Raises:
    ImageContractError: `images` breaks the contract (see `apply_all`).
  """
  check_images(images, rank=4, where="apply_chain_batch")
  return apply_chain_batch_unchecked(key, images, indices, space,
                                     random_sign=random_sign, method=method,
                                     offset=offset)


def apply_chain_batch_unchecked(key: Array, images: Array, indices: Array,
                                space: SearchSpace, *, random_sign: bool,
                                method: str, offset: Array) -> Array:
  """`apply_chain_batch` without the image check (for `apply_policy`, whose
  images are checked before their float32 copy is made).

  Args and returns as `apply_chain_batch`; `images` float32[B, H, W, 3] in
  [0, 255], integer-valued (not checked).
  """
  if method == "auto":
    method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
  keys = example_keys(key, images.shape[0], offset=offset)
  if method == "vectorized":
    return jax.vmap(lambda k, x, i: _apply_chain(
        k, x, i, space, random_sign=random_sign, method="stages"))(
            keys, images, indices)
  if method == "sequential":
    _, h, w, _ = images.shape
    num_layers = indices.shape[1]
    layer_keys = jax.vmap(lambda k: jax.vmap(
        lambda l: jax.random.fold_in(k, l))(jnp.arange(num_layers)))(keys)
    rnd = jax.vmap(jax.vmap(lambda k: layer_randomness(
        k, h, w, space, random_sign=random_sign)))(layer_keys)

    def one_image(args):
      x, idx, r = args
      x = ops.identity(x)
      for k in range(num_layers):
        r_k = jax.tree.map(lambda a: a[k], r)
        x = replay_transform_unchecked(x, idx[k], r_k, space, "switch")
      return x

    return jax.lax.map(one_image, (images, jnp.asarray(indices, jnp.int32),
                                   rnd))
  raise ValueError("method must be 'auto', 'vectorized' or 'sequential', got "
                   f"{method!r}")
