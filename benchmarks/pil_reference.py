"""Pillow reference for the DeepAA transforms: the official semantics, one image
at a time.

This is the yardstick for the JAX ops (pixel parity, `tests/test_ops.py`,
`tests/test_space.py`, `docs/parity.md`), for the package's own Pillow applier
`deepaa_jax.pil` (`tests/test_pil.py`) and for speed
(`benchmarks/augment_bench.py`). It deliberately does NOT import `deepaa_jax`:
the op list, ranges and level grid are re-derived here from
`official_deepaa_spec.md` §1.1-§1.4 so that the tests compare independent
readings of the spec. It stays outside the package although `deepaa_jax.pil`
now ships a Pillow implementation too: that one is the user-facing transform
(policy sampling, worker streams, torchvision convention), this one is the
test oracle (one op at a time, draws passed in), and keeping them apart keeps
the comparison between them meaningful.

Random draws are explicit arguments (`Draws`), so a test can give Pillow
exactly the draws the JAX sampler made; `random_draws` makes them with
Python's `random`, as the official code does.
"""

import dataclasses
import math
import random
from typing import List, Optional, Tuple

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps

GREY = (125, 123, 114)
L_MAGS = 13  # magnitude levels before the identity level is dropped.

# (name, lo, hi, dropped level) in official op order; dropped None = no
# magnitude, "random" = random op (one entry).
CIFAR_OPS = [
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
    ("RandCutout", 0.0, 1.0, "random"),
    ("RandCrop", 0.0, 1.0, "random"),
]
IMAGENET_OPS = CIFAR_OPS[:16] + [
    ("RandCutout60", 0.0, 1.0, "random"),
    ("RandResizeCrop_imagenet", 0.0, 1.0, "random"),
]


def transform_table(ops=CIFAR_OPS) -> List[Tuple[str, int, float]]:
  """The 139 (op name, raw level, value) entries in the official order.

  Value = lo + (m / 12) * (hi - lo) with m / 12 rounded to float32 first, as
  the official search does (`mags.astype(np.float32) / float(l_mags - 1)`).
  """
  table = []
  for name, lo, hi, dropped in ops:
    if dropped is None or dropped == "random":
      table.append((name, 6, 0.0))
      continue
    for m in range(L_MAGS):
      if m == dropped:
        continue
      norm = float(np.float32(m) / np.float32(L_MAGS - 1))
      table.append((name, m, norm * (hi - lo) + lo))
  return table


@dataclasses.dataclass
class Draws:
  """The random numbers one transform may consume."""
  flip: bool = False
  cutout_center: Tuple[float, float] = (0.0, 0.0)  # (cx, cy), continuous
  crop_offsets: Tuple[int, int] = (0, 0)  # (top, left) in 0..8
  rrc_box: Optional[Tuple[int, int, int, int]] = None  # (left, top, w, h)


def random_draws(width: int, height: int, imagenet: bool = False) -> Draws:
  """Draws made the way the official code makes them (Python `random`)."""
  if imagenet:
    x_lo, x_hi = max(0, width // 2 - 128), min(width, width // 2 + 128)
    y_lo, y_hi = max(0, height // 2 - 128), min(height, height // 2 + 128)
  else:
    x_lo, x_hi, y_lo, y_hi = 0, width, 0, height
  return Draws(
      flip=random.random() > 0.5,
      cutout_center=(random.uniform(x_lo, x_hi), random.uniform(y_lo, y_hi)),
      crop_offsets=(random.randint(0, 8), random.randint(0, 8)),
      rrc_box=rrc_params(width, height) if imagenet else None)


def rrc_params(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """The official one-attempt RandomResizedCrop box (left, top, w, h)."""
  area = float(width * height)
  target_area = area * random.uniform(*scale)
  aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
  w = round(math.sqrt(target_area * aspect))
  h = round(math.sqrt(target_area / aspect))
  if 0 < w <= width and 0 < h <= height:
    return random.randint(0, width - w), random.randint(0, height - h), w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, round(width / min(ratio))
  elif in_ratio > max(ratio):
    h, w = height, round(height * max(ratio))
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _cutout(img, center, size):
  w, h = img.size
  x, y = center
  half = size // 2
  x0 = int(min(w, max(0, x - half)))
  x1 = int(min(w, max(0, x + half)))
  y0 = int(min(h, max(0, y - half)))
  y1 = int(min(h, max(0, y + half)))
  img = img.copy()
  PIL.ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), GREY)
  return img


def _pad_crop(img, offsets, pad=4):
  w, h = img.size
  canvas = PIL.Image.new("RGB", (w + 2 * pad, h + 2 * pad), color=GREY)
  canvas.paste(img, (pad, pad))
  top, left = offsets
  return canvas.crop((left, top, left + w, top + h))


def apply_op(img: PIL.Image.Image, name: str, value: float,
             draws: Draws) -> PIL.Image.Image:
  """One official transform on a PIL RGB image (spec §1.4)."""
  w, h = img.size
  if name == "Identity":
    return img
  if name == "ShearX":
    return img.transform(img.size, PIL.Image.AFFINE, (1, value, 0, 0, 1, 0))
  if name == "ShearY":
    return img.transform(img.size, PIL.Image.AFFINE, (1, 0, 0, value, 1, 0))
  if name == "TranslateX":
    return img.transform(img.size, PIL.Image.AFFINE,
                         (1, 0, value * w, 0, 1, 0))
  if name == "TranslateY":
    return img.transform(img.size, PIL.Image.AFFINE,
                         (1, 0, 0, 0, 1, value * h))
  if name == "Rotate":
    return img.rotate(value)
  if name == "AutoContrast":
    return PIL.ImageOps.autocontrast(img)
  if name == "Invert":
    return PIL.ImageOps.invert(img)
  if name == "Equalize":
    return PIL.ImageOps.equalize(img)
  if name == "Solarize":
    return PIL.ImageOps.solarize(img, value)
  if name == "Posterize":
    return PIL.ImageOps.posterize(img, int(value))
  if name == "Contrast":
    return PIL.ImageEnhance.Contrast(img).enhance(value)
  if name == "Color":
    return PIL.ImageEnhance.Color(img).enhance(value)
  if name == "Brightness":
    return PIL.ImageEnhance.Brightness(img).enhance(value)
  if name == "Sharpness":
    return PIL.ImageEnhance.Sharpness(img).enhance(value)
  if name == "RandFlip":
    return PIL.ImageOps.mirror(img) if draws.flip else img
  if name == "RandCutout":
    return _cutout(img, draws.cutout_center, 16)
  if name == "RandCutout60":
    return _cutout(img, draws.cutout_center, 60)
  if name == "RandCrop":
    return _pad_crop(img, draws.crop_offsets)
  if name == "RandResizeCrop_imagenet":
    left, top, bw, bh = draws.rrc_box
    return img.resize((224, 224), PIL.Image.BICUBIC,
                      box=(left, top, left + bw, top + bh))
  raise ValueError(f"unknown op {name!r}")


def apply_transform(image: np.ndarray, index: int, draws: Draws,
                    table=None) -> np.ndarray:
  """Transform `index` (0..138) of a uint8[H, W, 3] image; returns uint8."""
  table = table if table is not None else transform_table()
  name, _, value = table[index]
  return np.asarray(apply_op(PIL.Image.fromarray(image), name, value, draws))


def apply_chain(image: np.ndarray, indices, draws_list, table=None):
  """Transforms applied in sequence (layer 1 first), uint8 in, uint8 out."""
  table = table if table is not None else transform_table()
  img = PIL.Image.fromarray(image)
  for index, draws in zip(indices, draws_list):
    name, _, value = table[index]
    img = apply_op(img, name, value, draws)
  return np.asarray(img)
