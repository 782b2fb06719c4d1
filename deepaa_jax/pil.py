"""A DeepAA policy as a Pillow transform, for PyTorch/torchvision data loaders.

`DeepAAPolicy(policy)` is a callable on a PIL image that returns a PIL image,
in the torchvision transform convention, so it composes with
`torchvision.transforms.Compose` (and timm) without this module importing
torch:

  from deepaa_jax.pil import DeepAAPolicy
  augment = DeepAAPolicy("runs/cifar10/policy.json")
  train = CIFAR10(root, transform=Compose([augment, ToTensor(), normalize]))

Per image and per layer k = 1..K it draws one transform index from layer k's
probabilities and applies it (official evaluation, `official_deepaa_spec.md`
§4.1), with the random ops' parameters drawn as the official code draws them
(§1.4) and, by default, the evaluation's 50% sign flip of ShearX/Y,
TranslateX/Y and Rotate (§4.2; `random_sign`, as `config.train.random_sign`).

Semantics are those of the JAX ops (`deepaa_jax.ops`, `deepaa_jax.space`),
bit for bit on CIFAR (tests/test_pil.py forces the same transform and random
parameters on both and compares every one of the 139 transforms on byte-exact
CIFAR-10 images, with either table of level values). The level values are
the official evaluation's (m / 12 in float64, spec §4.1; `transform_table`'s
`phase`), as training applies a policy (`Policy.space`); the search's float32
table differs by one grey level on a few pixels of 8 transforms. The one op
that can differ is the ImageNet RandResizeCrop: here Pillow computes its
bicubic weights (float64), the JAX op computes them in float32 (|diff| <= 2
on a few pixels, docs/parity.md). Every pixel here is
computed by the very Pillow calls of the official code; this module only
reproduces the transform table, the sampling and the draws.

Dependencies: this file imports only NumPy, Pillow and two JAX-free modules
of the project: `deepaa_jax.policy_format`, the one validator of policy files
(shared with `policy.load_policy`, so a file is refused alike everywhere, with
`errors.PolicyFileError`), and `deepaa_jax.errors`. It keeps its own copy of
the transform table (`_COMMON_OPS`, the level grid, the random ops) instead of
importing `deepaa_jax.space`: `space` imports JAX, and a PyTorch DataLoader
worker should need only NumPy and Pillow (no JAX import time, no accelerator
runtime in forked workers). The package `__init__` is lazy, so
`import deepaa_jax.pil` imports no JAX either (tests/test_api.py checks it in
a fresh interpreter). The copy cannot drift unnoticed: tests/test_pil.py
compares it with the JAX spaces' table entry by entry and pixel by pixel.

Randomness: each `DeepAAPolicy` owns a `numpy.random.Generator`, seeded from
`seed` (None: fresh OS entropy). A copy of it in another process or DataLoader
worker would repeat its parent's draws, so the generator is re-derived the
first time it is used in a new process or PyTorch worker: from
`torch.utils.data.get_worker_info().seed` (torch's per-worker `base_seed +
worker_id`; `base_seed` is drawn from the main process's torch RNG each epoch
unless workers are persistent, so results follow `torch.manual_seed`), mixed
with `seed` when one is given; outside torch workers, from OS entropy (seed
None) or `seed` mixed with the process id. No `worker_init_fn` is needed.
(Torch's own worker seeding covers Python's `random`, torch and NumPy's legacy
global `np.random` state only, not a `Generator` held by a transform.)
"""

import dataclasses
import math
import os
import pathlib
import sys
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps

from deepaa_jax import policy_format
from deepaa_jax.errors import PolicyFileError

# Fill of the official RandCrop canvas and of Cutout (uint8 RGB).
GREY_FILL = (125, 123, 114)
NUM_LEVELS = 13  # `l_mags`: levels 0..12, one identity level dropped.
DUMMY_LEVEL = 6  # level recorded for ops without a magnitude.
SPACES = ("cifar", "imagenet")
# Which official code the level values follow (`transform_table`).
PHASES = ("search", "evaluation")

# (name, lo, hi, dropped level) in official op order (spec §1.1); dropped
# None = no magnitude, "random" = random op (one entry each).
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
_OPS = {
    "cifar": _COMMON_OPS + (("RandCutout", 0.0, 1.0, "random"),
                            ("RandCrop", 0.0, 1.0, "random")),
    "imagenet": _COMMON_OPS + (("RandCutout60", 0.0, 1.0, "random"),
                               ("RandResizeCrop_imagenet", 0.0, 1.0,
                                "random")),
}
# Ops whose value is negated with probability 1/2 under `random_sign`.
SIGNED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
RANDOM_OPS = ("RandFlip", "RandCutout", "RandCutout60", "RandCrop",
              "RandResizeCrop_imagenet")
_CUTOUT_SIZE = {"RandCutout": 16, "RandCutout60": 60}


class Transform(NamedTuple):
  """One entry of the 139-transform table."""
  op: str  # official op name, e.g. "ShearX"
  level: int  # raw level 0..12 (6 for ops without a magnitude)
  value: float  # the op's argument, lo + (level / 12) (hi - lo)


def transform_table(space: str, *,
                    phase: str = "evaluation") -> Tuple[Transform, ...]:
  """The 139 transforms of a search space in the official index order.

  Indices run op-major, then level ascending, skipping the identity level
  (spec §1.2). value = lo + (m / 12) (hi - lo), with m / 12 computed as the
  official code of `phase` does: "evaluation" (the default: this module
  applies policies as the official evaluation does) in float64, `mags / 12`
  on the int array (spec §4.1); "search" in float32. Equal to
  `deepaa_jax.space.get_space(space, phase=phase).values` (tested).

  Args:
    space: "cifar" or "imagenet".
    phase: "evaluation" or "search".
  """
  if space not in _OPS:
    raise ValueError(f"unknown search space {space!r}; valid: {SPACES}")
  if phase not in PHASES:
    raise ValueError(f"unknown phase {phase!r}; valid: {PHASES}")
  table = []
  for name, lo, hi, dropped in _OPS[space]:
    if dropped is None or dropped == "random":
      table.append(Transform(name, DUMMY_LEVEL, 0.0))
      continue
    for m in range(NUM_LEVELS):
      if m != dropped:
        if phase == "search":
          norm = float(np.float32(m) / np.float32(NUM_LEVELS - 1))
        else:
          norm = m / (NUM_LEVELS - 1)
        table.append(Transform(name, m, norm * (hi - lo) + lo))
  return tuple(table)


def _table_of(space, phase: str = "evaluation") -> Tuple[Transform, ...]:
  """A transform table from a space name (with `phase`'s values) or a
  `SearchSpace`-like object (anything with `op_names`, `ops`, `levels` and
  `values`: its own values)."""
  if isinstance(space, str):
    return transform_table(space, phase=phase)
  return tuple(Transform(space.op_names[o], int(m), float(v))
               for o, m, v in zip(space.ops, space.levels, space.values))


# --------------------------------------------------------------------------
# Random parameters.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Draws:
  """The random parameters of one transform (fields as `space.Draws`).

  Attributes:
    flip: RandFlip's coin (mirror when True).
    cutout_center: (cx, cy), continuous, of RandCutout / RandCutout60.
    crop_offsets: (top, left) of RandCrop, integers in 0..8.
    resized_crop_box: (left, top, w, h) of RandResizeCrop_imagenet; None is
      the whole image.
  """
  flip: bool = False
  cutout_center: Tuple[float, float] = (0.0, 0.0)
  crop_offsets: Tuple[int, int] = (0, 0)
  resized_crop_box: Optional[Tuple[int, int, int, int]] = None


def resized_crop_box(generator: np.random.Generator, width: int, height: int,
                     *,
                     scale: Tuple[float, float] = (0.08, 1.0),
                     ratio: Tuple[float, float] = (3 / 4, 4 / 3)
                     ) -> Tuple[int, int, int, int]:
  """The official one-attempt RandomResizedCrop box (left, top, w, h).

  torchvision's algorithm with the official code's bug: the fallback sits
  inside the loop, so there is exactly one attempt (spec §1.4). w, h use
  Python's round (half to even); offsets are uniform integers.
  """
  area = float(width * height)
  target = area * generator.uniform(scale[0], scale[1])
  aspect = math.exp(generator.uniform(math.log(ratio[0]), math.log(ratio[1])))
  w = round(math.sqrt(target * aspect))
  h = round(math.sqrt(target / aspect))
  if 0 < w <= width and 0 < h <= height:
    top = int(generator.integers(0, height - h + 1))
    left = int(generator.integers(0, width - w + 1))
    return left, top, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, round(width / min(ratio))
  elif in_ratio > max(ratio):
    w, h = round(height * max(ratio)), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def sample_draws(generator: np.random.Generator, op: str, width: int,
                 height: int) -> Draws:
  """The random parameters of op `op` on a width x height image.

  Only the chosen op's parameters are drawn (as the official code, which
  draws inside the op): the flip coin random() > 0.5; the cutout centre
  uniform on [0, W) x [0, H) (RandCutout60: the central 256 x 256 box); the
  crop offsets uniform on {0..8}; the resized-crop box above.
  """
  if op == "RandFlip":
    return Draws(flip=bool(generator.random() > 0.5))
  if op in _CUTOUT_SIZE:
    if op == "RandCutout60":
      x_lo, x_hi = max(0, width // 2 - 128), min(width, width // 2 + 128)
      y_lo, y_hi = max(0, height // 2 - 128), min(height, height // 2 + 128)
    else:
      x_lo, x_hi, y_lo, y_hi = 0, width, 0, height
    return Draws(cutout_center=(float(generator.uniform(x_lo, x_hi)),
                                float(generator.uniform(y_lo, y_hi))))
  if op == "RandCrop":
    top, left = (int(v) for v in generator.integers(0, 9, size=2))
    return Draws(crop_offsets=(top, left))
  if op == "RandResizeCrop_imagenet":
    return Draws(resized_crop_box=resized_crop_box(generator, width, height))
  return Draws()


# --------------------------------------------------------------------------
# The ops (spec §1.4): the official Pillow calls.
# --------------------------------------------------------------------------


def _affine(img, coeffs):
  return img.transform(img.size, PIL.Image.AFFINE, coeffs)


def _cutout(img, center, size):
  """Grey inclusive rectangle [x0, x1] x [y0, y1], x0 = int(clip(cx - size/2,
  0, W)), x1 = int(clip(cx + size/2, 0, W)) (same for y)."""
  w, h = img.size
  half = size // 2
  cx, cy = center
  x0, x1 = (int(min(w, max(0.0, cx + d))) for d in (-half, half))
  y0, y1 = (int(min(h, max(0.0, cy + d))) for d in (-half, half))
  img = img.copy()
  PIL.ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill=GREY_FILL)
  return img


def _pad_crop(img, offsets, pad=4):
  """Paste onto a grey (W + 2 pad) x (H + 2 pad) canvas at (pad, pad), crop
  W x H at (left, top)."""
  w, h = img.size
  canvas = PIL.Image.new("RGB", (w + 2 * pad, h + 2 * pad), GREY_FILL)
  canvas.paste(img, (pad, pad))
  top, left = offsets
  return canvas.crop((left, top, left + w, top + h))


def apply_op(img: PIL.Image.Image, op: str, value: float,
             draws: Draws, *, sign: int = 1,
             resized_crop_size: Optional[Tuple[int, int]] = None
             ) -> PIL.Image.Image:
  """One DeepAA op on an RGB PIL image, with explicit random parameters.

  Args:
    img: RGB PIL image.
    op: official op name (`transform_table(...)[i].op`).
    value: the op's argument (ignored by ops without a magnitude).
    draws: the random parameters of RandFlip, RandCutout(60), RandCrop and
      RandResizeCrop_imagenet (`Draws()` for ops that draw nothing).
    sign: -1 negates the value of ShearX/Y, TranslateX/Y and Rotate (the
      evaluation's random sign); other ops ignore it.
    resized_crop_size: (width, height) of RandResizeCrop's output; None keeps
      the input size, as the JAX space does (official: (224, 224)).

  Returns:
    The transformed RGB PIL image (a new image, or `img` for Identity).
  """
  if op in SIGNED_OPS and sign < 0:
    value = -value
  w, h = img.size
  if op == "Identity":
    return img
  if op == "ShearX":
    return _affine(img, (1, value, 0, 0, 1, 0))
  if op == "ShearY":
    return _affine(img, (1, 0, 0, value, 1, 0))
  if op == "TranslateX":
    return _affine(img, (1, 0, value * w, 0, 1, 0))
  if op == "TranslateY":
    return _affine(img, (1, 0, 0, 0, 1, value * h))
  if op == "Rotate":
    return img.rotate(value)
  if op == "AutoContrast":
    return PIL.ImageOps.autocontrast(img)
  if op == "Invert":
    return PIL.ImageOps.invert(img)
  if op == "Equalize":
    return PIL.ImageOps.equalize(img)
  if op == "Solarize":
    return PIL.ImageOps.solarize(img, value)
  if op == "Posterize":
    return PIL.ImageOps.posterize(img, int(value))
  if op == "Contrast":
    return PIL.ImageEnhance.Contrast(img).enhance(value)
  if op == "Color":
    return PIL.ImageEnhance.Color(img).enhance(value)
  if op == "Brightness":
    return PIL.ImageEnhance.Brightness(img).enhance(value)
  if op == "Sharpness":
    return PIL.ImageEnhance.Sharpness(img).enhance(value)
  if op == "RandFlip":
    return PIL.ImageOps.mirror(img) if draws.flip else img
  if op in _CUTOUT_SIZE:
    return _cutout(img, draws.cutout_center, _CUTOUT_SIZE[op])
  if op == "RandCrop":
    return _pad_crop(img, draws.crop_offsets)
  if op == "RandResizeCrop_imagenet":
    left, top, bw, bh = draws.resized_crop_box or (0, 0, w, h)
    return img.resize(tuple(resized_crop_size or (w, h)), PIL.Image.BICUBIC,
                      box=(left, top, left + bw, top + bh))
  raise ValueError(f"unknown op {op!r}")


def _as_pil(image) -> Tuple[PIL.Image.Image, bool]:
  """(RGB PIL image, whether the input was an array)."""
  if isinstance(image, PIL.Image.Image):
    return (image if image.mode == "RGB" else image.convert("RGB")), False
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
    raise TypeError("expected a PIL image or a uint8[H, W, 3] array, got "
                    f"{type(image).__name__} {array.dtype}{list(array.shape)}")
  return PIL.Image.fromarray(array), True


def apply_transform(image, index: int, draws: Draws, *,
                    space="cifar", phase: str = "evaluation", sign: int = 1,
                    resized_crop_size: Optional[Tuple[int, int]] = None):
  """Transform `index` of a space with explicit random parameters.

  The deterministic counterpart of `deepaa_jax.space.apply_transform`: given
  the same draws (`space.layer_randomness(...).draws`), sign (-1 where its
  `flip_sign` is True) and level values (`phase`, or the space's own), the
  two return the same pixels.

  Args:
    image: RGB PIL image or uint8[H, W, 3] array (other PIL modes are
      converted to RGB).
    index: 0..138.
    draws: the random parameters (see `Draws`).
    space: "cifar", "imagenet" or a `SearchSpace` (whose own level values
      are used).
    phase: the level values of a space given by name: "evaluation" (float64
      m / 12, as the official evaluation) or "search" (float32 m / 12).
    sign: -1 negates the magnitude of the signed ops (see `apply_op`).
    resized_crop_size: see `apply_op`.

  Returns:
    The same type as `image`: a PIL image, or a uint8[H', W', 3] array.
  """
  transform = _table_of(space, phase)[index]
  img, was_array = _as_pil(image)
  out = apply_op(img, transform.op, transform.value, draws, sign=sign,
                 resized_crop_size=resized_crop_size)
  return np.asarray(out) if was_array else out


# --------------------------------------------------------------------------
# Reading policies without the project (and without JAX).
# --------------------------------------------------------------------------


class _FormatTable(NamedTuple):
  """A space as `policy_format` checks files against it."""
  name: str
  op_names: Tuple[str, ...]
  ops: Tuple[int, ...]
  levels: Tuple[int, ...]


def _format_spaces():
  """Space name -> `_FormatTable`, from this module's own table."""
  spaces = {}
  for name in SPACES:
    op_names = tuple(op[0] for op in _OPS[name])
    table = transform_table(name)
    spaces[name] = _FormatTable(name, op_names,
                                tuple(op_names.index(t.op) for t in table),
                                tuple(t.level for t in table))
  return spaces


def _rows(probs, where: str) -> np.ndarray:
  """float64[K, T] probabilities given as an array, checked by the rule of
  the file validator (`policy_format.row_problem`) and renormalised."""
  try:
    probs = np.asarray(probs, np.float64)
  except (TypeError, ValueError) as e:
    raise PolicyFileError(f"{where}: probabilities must be a float[K, T] "
                          f"array ({e})") from e
  if probs.ndim != 2:
    raise PolicyFileError(f"{where}: probabilities must be [K, T], got shape "
                          f"{probs.shape}")
  problem = policy_format.row_problem(probs)
  if problem:
    raise PolicyFileError(f"{where}: {problem}")
  return probs / probs.sum(axis=1, keepdims=True) if probs.size else probs


# --------------------------------------------------------------------------
# The transform.
# --------------------------------------------------------------------------


class Choice(NamedTuple):
  """What one layer did to one image."""
  index: int  # transform index 0..138
  draws: Draws  # the random op's parameters (defaults for other ops)
  sign: int  # -1 where the signed op's value was negated, else +1


def _worker_seed() -> Optional[int]:
  """torch's per-worker seed inside a DataLoader worker, else None (never
  imports torch)."""
  torch = sys.modules.get("torch")
  if torch is None:
    return None
  try:
    info = torch.utils.data.get_worker_info()
  except AttributeError:
    return None
  return None if info is None else int(info.seed)


class DeepAAPolicy:
  """A DeepAA policy as a torchvision-style transform on PIL images.

  Args:
    policy: a `deepaa_jax.policy.Policy`; a path to a policy file (our JSON,
      `save_policy`, or the authors' npz); or probabilities float[K, T]
      (then `space` names the space).
    space: "cifar" or "imagenet", for a probability array (default "cifar").
    seed: seed of the random generator; None draws fresh OS entropy. See the
      module docstring for DataLoader workers.
    random_sign: the official evaluation's 50% sign flip of shear, translate
      and rotate (spec §4.2); default True, as `config.train.random_sign`.
    resized_crop_size: (width, height) of the ImageNet RandResizeCrop output;
      None keeps the input size (the JAX space); the official code uses
      (224, 224) and centre-crops every image to 224 x 224 afterwards.

  Calling it on an image (RGB PIL, other modes are converted; or a uint8[H,
  W, 3] array) returns the augmented image of the same type.
  """

  def __init__(self, policy, *, space: Optional[str] = None,
               seed: Optional[int] = None, random_sign: bool = True,
               resized_crop_size: Optional[Tuple[int, int]] = None):
    if hasattr(policy, "probs") and hasattr(policy, "space"):
      probs, table = policy.probs, _table_of(policy.space)
      self.space_name = str(policy.space.name)
      self.name = str(getattr(policy, "name", "policy"))
      where = f"policy {self.name!r}"
    elif isinstance(policy, (str, os.PathLike)):
      # The one validator of policy files (as `policy.load_policy` and
      # `load_official_npz`): a bad file is a PolicyFileError naming it.
      path = pathlib.Path(policy)
      contents = policy_format.read(path, _format_spaces(), min_layers=1)
      probs, self.space_name, self.name = (contents.probs, contents.space,
                                           contents.name)
      table, where = transform_table(self.space_name), str(path)
    else:
      self.space_name, self.name = space or "cifar", "policy"
      if self.space_name not in SPACES:
        raise PolicyFileError(f"unknown search space {self.space_name!r}; "
                              f"valid: {SPACES}")
      probs, table = policy, transform_table(self.space_name)
      where = f"policy {self.name!r}"
    if space is not None and space != self.space_name:
      raise PolicyFileError(f"{where}: policy is over the "
                            f"{self.space_name!r} space, not {space!r}")
    self.probs = _rows(probs, where)
    if self.probs.shape[1] != len(table):
      raise PolicyFileError(
          f"{where}: policy has {self.probs.shape[1]} transforms per layer; "
          f"the {self.space_name} space has {len(table)}")
    if not self.probs.shape[0]:
      raise PolicyFileError(
          f"{where}: the policy has 0 layers; a policy to train with needs "
          "at least one (for no augmentation, leave the transform out)")
    self.table = table
    self.seed = seed
    self.random_sign = bool(random_sign)
    self.resized_crop_size = (tuple(resized_crop_size) if resized_crop_size
                              else None)
    self._cdf = np.cumsum(self.probs, axis=1)
    # The last index of positive probability, per layer: the sampler never
    # returns a zero-probability index, even under float rounding.
    self._last = [int(np.flatnonzero(row > 0)[-1]) for row in self.probs]
    self._home_pid = os.getpid()  # the process that created this object
    self._rng = None
    self._owner = None

  @property
  def num_layers(self) -> int:
    return self.probs.shape[0]

  def __repr__(self):
    return (f"{type(self).__name__}(name={self.name!r}, "
            f"space={self.space_name!r}, layers={self.num_layers}, "
            f"random_sign={self.random_sign}, seed={self.seed})")

  def __getstate__(self):
    # A pickled copy (a spawned worker) derives its own generator.
    state = dict(self.__dict__)
    state["_rng"] = state["_owner"] = None
    return state

  @property
  def generator(self) -> np.random.Generator:
    """The generator of this process / DataLoader worker (see module doc)."""
    owner = (os.getpid(), _worker_seed())
    if self._rng is None or owner != self._owner:
      pid, worker_seed = owner
      if pid == self._home_pid and worker_seed is None:
        entropy = self.seed  # the creating process: the seed as given
      elif worker_seed is not None:
        entropy = [worker_seed] + ([self.seed] if self.seed is not None else [])
      else:  # another process, no torch worker: distinct per process
        entropy = None if self.seed is None else [self.seed, pid]
      self._rng = np.random.default_rng(entropy)
      self._owner = owner
    return self._rng

  def choose(self, layer: int, width: int, height: int) -> Choice:
    """Draws layer `layer`'s transform for a width x height image, with its
    random parameters and sign (what `__call__` does per layer)."""
    generator = self.generator
    cdf = self._cdf[layer]
    index = int(np.searchsorted(cdf, generator.random() * cdf[-1],
                                side="right"))
    index = min(index, self._last[layer])
    op = self.table[index].op
    draws = sample_draws(generator, op, width, height)
    sign = -1 if (self.random_sign and op in SIGNED_OPS and
                  generator.random() > 0.5) else 1
    return Choice(index, draws, sign)

  def sample(self, width: int, height: int) -> Tuple[Choice, ...]:
    """The K choices of one call on a width x height image (sizes that do
    not change along the chain, i.e. all but a resized crop to another
    size)."""
    return tuple(self.choose(k, width, height)
                 for k in range(self.num_layers))

  def apply(self, image, choices: Sequence[Choice]):
    """Applies given choices (layer 1 first); same types as `__call__`."""
    img, was_array = _as_pil(image)
    for choice in choices:
      t = self.table[choice.index]
      img = apply_op(img, t.op, t.value, choice.draws, sign=choice.sign,
                     resized_crop_size=self.resized_crop_size)
    return np.asarray(img) if was_array else img

  def __call__(self, image):
    """Augments one image: per layer, draw a transform and apply it."""
    img, was_array = _as_pil(image)
    for k in range(self.num_layers):
      choice = self.choose(k, *img.size)
      t = self.table[choice.index]
      img = apply_op(img, t.op, t.value, choice.draws, sign=choice.sign,
                     resized_crop_size=self.resized_crop_size)
    return np.asarray(img) if was_array else img
