r"""Pixel parity of the JAX search spaces against Pillow -> docs/parity.md.

Usage (from the repository root, ~1-2 minutes on 2 CPU cores):

  python experiments/parity_table.py
  python experiments/parity_table.py --num_images=64 --output=/tmp/parity.md

Three sections:
  1. CIFAR space: the first --num_images byte-exact CIFAR-10 training images
     (`shared/data/cifar10_exact_subset.npz`). For every one of the 139
     transforms, `space.apply_all` (jit + vmap, one key per image) is compared
     with `benchmarks/pil_reference.apply_transform` fed the SAME random draws
     (re-sampled with `space.sample_draws` from the key `apply_all` uses).
  2. ImageNet space at a fixed 224 x 224: --imagenet_images CIFAR images
     upsampled to 224 x 224 with PIL BICUBIC (smooth, natural-looking, and they
     exercise RandResizeCrop's bicubic path); same comparison.
  3. `ops.resized_crop` on non-square native sizes (ImageNet images are not
     square): random boxes from `ops.sample_resized_crop_box`, output 224 x 224,
     against `PIL.Image.resize(..., BICUBIC, box=...)`.

Columns: max|Δ| and mean|Δ| over all uint8 values, the percentage of pixels
(RGB triples) that are exactly equal, and the number of images (or boxes) whose
output is bit-identical.
"""

import datetime
import pathlib
import platform
import sys
import time
from typing import Dict, List, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import PIL
import PIL.Image

# Allow `python experiments/parity_table.py` without installing the package.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top
from benchmarks import pil_reference as ref
from deepaa_jax import ops
from deepaa_jax import space as S
# pylint: enable=g-import-not-at-top

_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 256, "CIFAR training images (first N of the exact subset).")
_IMAGENET_IMAGES = flags.DEFINE_integer(
    "imagenet_images", 32, "Images for the ImageNet-space section.")
_IMAGENET_SIZE = flags.DEFINE_integer(
    "imagenet_size", 224, "S: ImageNet-space images are S x S.")
_BOXES = flags.DEFINE_integer(
    "boxes", 64, "Random boxes per native size in the resized-crop section.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    "Directory holding cifar10_exact_subset.npz (default: <repo>/../shared/"
    "data).")
_OUTPUT = flags.DEFINE_string("output", "docs/parity.md",
                              "Markdown file to write (relative to the repo).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the per-image keys.")

EXACT_SUBSET = "cifar10_exact_subset.npz"
# Native (height, width) sizes for section 3: square, portrait, landscape and
# the common 4:3 ImageNet size.
NATIVE_SIZES = ((224, 224), (300, 200), (180, 260), (375, 500), (500, 375))
CHUNK_CIFAR = 64  # images per apply_all call (139 x 64 x 12 KiB = 110 MiB).
CHUNK_IMAGENET = 4  # 139 x 4 x 588 KiB = 330 MiB.


def load_exact_cifar(data_dir: pathlib.Path, num: int) -> np.ndarray:
  """uint8[num, 32, 32, 3]: the first `num` byte-exact CIFAR-10 train images.

  Raises:
    FileNotFoundError: with the path looked at and how to override it.
    ValueError: if fewer than `num` images are available.
  """
  path = data_dir / EXACT_SUBSET
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found. The parity table needs the byte-exact CIFAR-10 "
        f"subset ({EXACT_SUBSET}, see shared/data/README.md); pass "
        "--data_dir=/path/to/shared/data.")
  with np.load(path) as data:
    images = data["train_images"]
  if images.shape[0] < num:
    raise ValueError(f"--num_images={num} but {path} holds only "
                     f"{images.shape[0]} training images")
  return np.ascontiguousarray(images[:num])


def pil_draws(draws: S.Draws, n: int) -> ref.Draws:
  """Image n's `space.Draws` (batched NumPy) as `pil_reference.Draws`."""
  return ref.Draws(
      flip=bool(draws.flip[n]),
      cutout_center=tuple(float(v) for v in draws.cutout_center[n]),
      crop_offsets=tuple(int(v) for v in draws.crop_offsets[n]),
      rrc_box=tuple(int(v) for v in draws.resized_crop_box[n]))


class Stats:
  """Per-transform accumulators of |JAX - Pillow| over images."""

  def __init__(self, num_transforms: int):
    self.max = np.zeros(num_transforms, np.int64)
    self.sum = np.zeros(num_transforms, np.float64)
    self.values = np.zeros(num_transforms, np.int64)
    self.equal_pixels = np.zeros(num_transforms, np.int64)
    self.pixels = np.zeros(num_transforms, np.int64)
    self.exact_images = np.zeros(num_transforms, np.int64)
    self.images = np.zeros(num_transforms, np.int64)
    self.worst_fraction = np.zeros(num_transforms, np.float64)

  def add(self, t: int, ours: np.ndarray, theirs: np.ndarray):
    """Accumulates one image's output of transform t (uint8-valued arrays)."""
    if ours.shape != theirs.shape:
      raise ValueError(f"transform {t}: shape {ours.shape} vs Pillow "
                       f"{theirs.shape}")
    diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
    equal = ~diff.any(axis=-1)
    self.max[t] = max(self.max[t], int(diff.max()))
    self.sum[t] += float(diff.sum())
    self.values[t] += diff.size
    self.equal_pixels[t] += int(equal.sum())
    self.pixels[t] += equal.size
    self.exact_images[t] += int(equal.all())
    self.images[t] += 1
    self.worst_fraction[t] = max(self.worst_fraction[t], 1.0 - equal.mean())

  def row(self, t: int) -> Dict[str, float]:
    return {
        "max": int(self.max[t]),
        "mean": self.sum[t] / self.values[t],
        "equal_pct": 100.0 * self.equal_pixels[t] / self.pixels[t],
        "exact": int(self.exact_images[t]),
        "count": int(self.images[t]),
        "worst_pct": 100.0 * self.worst_fraction[t],
    }


def compare_space(space: S.SearchSpace, images: np.ndarray, keys: jax.Array,
                  chunk: int) -> List[Dict[str, float]]:
  """Per-transform parity of `apply_all` against Pillow over `images`."""
  _, h, w, _ = images.shape
  table = ref.transform_table(
      ref.IMAGENET_OPS if space.name == "imagenet" else ref.CIFAR_OPS)
  if len(table) != space.size:
    raise AssertionError(f"{len(table)} reference transforms vs {space.size}")
  all_fn = jax.jit(jax.vmap(lambda k, x: S.apply_all(k, x, space)))
  # The draws apply_all makes: sample_draws(split(key)[0], ...).
  draws_fn = jax.jit(jax.vmap(lambda k: S.sample_draws(
      jax.random.split(k)[0], h, w, space)))
  stats = Stats(space.size)
  for start in range(0, images.shape[0], chunk):
    batch = images[start:start + chunk]
    k = keys[start:start + chunk]
    ours = np.asarray(all_fn(k, jnp.asarray(batch, jnp.float32)))
    draws = jax.tree.map(np.asarray, draws_fn(k))
    if not np.array_equal(ours, np.round(ours)) or ours.min() < 0 or (
        ours.max() > 255):
      raise AssertionError("apply_all returned non-uint8 values")
    for n in range(batch.shape[0]):
      d = pil_draws(draws, n)
      for t in range(space.size):
        stats.add(t, ours[n, t], ref.apply_transform(batch[n], t, d, table))
  return [stats.row(t) for t in range(space.size)]


def upsample(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8[N, height, width, 3]: PIL BICUBIC upsampling of each image."""
  return np.stack([
      np.asarray(PIL.Image.fromarray(im).resize((width, height),
                                                PIL.Image.BICUBIC))
      for im in images])


def _fallback_box(height: int, width: int):
  """The central box a failed RandomResizedCrop attempt falls back to."""
  ratio = (3 / 4, 4 / 3)
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return ((width - w) // 2, (height - h) // 2, w, h)


def compare_resized_crop(images: np.ndarray, sizes: Sequence[Sequence[int]],
                         num_boxes: int, seed: int) -> List[Dict[str, float]]:
  """`ops.resized_crop` vs PIL on random boxes at several native sizes."""
  rows = []
  for height, width in sizes:
    fn = jax.jit(lambda x, b: ops.resized_crop(x, b, size=(224, 224)))
    box_fn = jax.jit(jax.vmap(lambda k, h=height, w=width:
                              ops.sample_resized_crop_box(k, h, w)))
    keys = jax.random.split(
        jax.random.fold_in(jax.random.key(seed), height * 10007 + width),
        num_boxes)
    boxes = np.asarray(box_fn(keys))
    natives = upsample(images[:num_boxes], height, width)
    stats = Stats(1)
    fallback_box = _fallback_box(height, width)
    fallback = 0
    worst_box, worst = None, -1.0
    for b in range(num_boxes):
      image = natives[b % len(natives)]
      left, top, bw, bh = (int(v) for v in boxes[b])
      fallback += int((left, top, bw, bh) == fallback_box)
      ours = np.asarray(fn(jnp.asarray(image, jnp.float32), boxes[b]))
      theirs = np.asarray(PIL.Image.fromarray(image).resize(
          (224, 224), PIL.Image.BICUBIC, box=(left, top, left + bw, top + bh)))
      stats.add(0, ours, theirs)
      if stats.worst_fraction[0] > worst:
        worst, worst_box = stats.worst_fraction[0], (bw, bh)
    row = stats.row(0)
    row.update(height=height, width=width, fallback=fallback,
               worst_box=worst_box)
    rows.append(row)
  return rows


def _fmt_row(t: int, name: str, r: Dict[str, float]) -> str:
  exact = "yes" if r["max"] == 0 else ""
  return (f"| {t} | {name} | {r['max']} | {r['mean']:.2e} | "
          f"{r['equal_pct']:.4f} | {r['exact']}/{r['count']} | "
          f"{r['worst_pct']:.2f} | {exact} |")


def _space_table(space: S.SearchSpace, rows: List[Dict[str, float]]) -> str:
  lines = ["| idx | transform | max abs diff | mean abs diff | % pixels equal "
           "| images bit-exact | worst image: % pixels differing | exact |",
           "|---:|---|---:|---:|---:|---:|---:|:---:|"]
  for t, r in enumerate(rows):
    lines.append(_fmt_row(t, space.transform_name(t), r))
  return "\n".join(lines)


def _summary(space: S.SearchSpace, rows: List[Dict[str, float]]) -> str:
  exact = sum(r["max"] == 0 for r in rows)
  inexact = [t for t, r in enumerate(rows) if r["max"] > 0]
  if not inexact:
    return (f"all {len(rows)} of {len(rows)} transforms are bit-exact on "
            f"every image")
  worst = max(inexact, key=lambda t: (rows[t]["max"], rows[t]["mean"]))
  r = rows[worst]
  others = ", ".join(f"{t} {space.transform_name(t)} (max {rows[t]['max']})"
                     for t in inexact if t != worst)
  text = (f"{exact} of {len(rows)} transforms are bit-exact on every image; "
          f"the worst is {worst} {space.transform_name(worst)}: max |Δ| "
          f"{r['max']}, mean |Δ| {r['mean']:.2e}, {r['equal_pct']:.4f}% of "
          f"pixels equal, {r['exact']}/{r['count']} images bit-exact, at "
          f"worst {r['worst_pct']:.2f}% of one image's pixels differing")
  if others:
    text += f"; also inexact: {others}"
  return text


def _resized_crop_table(rows: List[Dict[str, float]]) -> str:
  lines = ["| native H x W | boxes (of which fallback) | max abs diff | "
           "mean abs diff | % pixels equal | boxes bit-exact | "
           "worst box: % pixels differing (its w x h) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['height']} x {r['width']} | {r['count']} "
                 f"({r['fallback']}) | {r['max']} | {r['mean']:.2e} | "
                 f"{r['equal_pct']:.4f} | {r['exact']}/{r['count']} | "
                 f"{r['worst_pct']:.2f} ({r['worst_box'][0]} x "
                 f"{r['worst_box'][1]}) |")
  return "\n".join(lines)


def render(*, command: str, cifar_rows, imagenet_rows, crop_rows, num: int,
           num_in: int, size: int, runtime_s: float) -> str:
  """The Markdown of docs/parity.md."""
  cifar, imagenet = S.cifar_space(), S.imagenet_space()
  rrc = imagenet_rows[-1]
  worst_crop = max(crop_rows, key=lambda r: r["worst_pct"])
  crop_diff_pct = 100 - np.mean([r["equal_pct"] for r in crop_rows])
  others_exact = (all(r["max"] == 0 for r in cifar_rows) and
                  all(r["max"] == 0 for r in imagenet_rows[:-1]))
  now = datetime.datetime.now(datetime.timezone.utc)
  summary = (
      f"**Summary.** CIFAR space: {_summary(cifar, cifar_rows)}. ImageNet "
      f"space at {size} x {size}: {_summary(imagenet, imagenet_rows)}. "
      "RandResizeCrop is the one op that is not exact by construction: PIL "
      "computes its bicubic filter weights in float64 before rounding them "
      "to 22-bit fixed point, `ops.resized_crop` computes them in float32, "
      "so many fixed-point weights differ by one to a few units of 2^-22 and "
      "some output pixels by one or two levels: in the space table max |Δ| "
      f"{rrc['max']} with {100 - rrc['equal_pct']:.4f}% of its pixels "
      f"differing; on {sum(r['count'] for r in crop_rows)} boxes at native "
      f"sizes (section 3) max |Δ| {max(r['max'] for r in crop_rows)}, "
      f"{crop_diff_pct:.4f}% of pixels differing on average and at worst "
      f"{worst_crop['worst_pct']:.2f}% of one box's pixels (a "
      f"{worst_crop['worst_box'][0]} x {worst_crop['worst_box'][1]} box of a "
      f"{worst_crop['height']} x {worst_crop['width']} image).")
  if others_exact:
    summary += (" Every other transform, including the random ones given the "
                "same draws, reproduces Pillow's uint8 output exactly.")
  else:
    summary += " Other transforms are NOT all exact: see the tables."
  header = [
      "# Pixel parity: deepaa_jax vs Pillow",
      "",
      "Generated by `experiments/parity_table.py`; do not edit by hand.",
      "",
      f"* Date: {now:%Y-%m-%d %H:%M UTC}",
      f"* Command: `{command}`",
      f"* Versions: JAX {jax.__version__} ({jax.default_backend()}, "
      "`jax_threefry_partitionable="
      f"{jax.config.jax_threefry_partitionable}`), Pillow {PIL.__version__}, "
      f"NumPy {np.__version__}, Python {platform.python_version()}",
      "* Reference: `benchmarks/pil_reference.py` (an independent Pillow "
      "reading of `official_deepaa_spec.md` §1), fed the same random draws "
      "as JAX",
      f"* Images: the first {num} training images of "
      "`shared/data/cifar10_exact_subset.npz` (byte-exact CIFAR-10); for the "
      f"ImageNet space the first {num_in} of them upsampled to {size} x "
      f"{size} with PIL BICUBIC; seed {_SEED.value}",
      f"* Runtime: {runtime_s:.0f} s",
      "",
      summary,
      "",
      # Which phase uses which table (issue 20); the tables below are the
      # search's (`space.get_space(name)`).
      '**Level values by phase** (issue 20; the tables below use the '
      "search's values). The official search computes the level m / 12 in"
      ' float32 (`mags.astype(np.float32) / 12`), the official evaluation'
      ' in float64 (`mags / 12` on the int array, spec §4.1). Here the '
      'search (`space.get_space(name)`, the default; `search.py`, '
      '`apply_all`) uses the float32 table and the evaluation path '
      '(`Policy.space` = `get_space(name, phase="evaluation")`: '
      "training's `apply_policy`, previews, audits, and "
      '`pil.DeepAAPolicy`) the float64 one. The two differ by one grey '
      'level on a few pixels of 8 transforms (95, 97 Contrast m=8, 10; '
      '107, 109 Color m=8, 10; 117, 119, 121 Brightness m=5, 8, 10; 131 '
      'Sharpness m=8). Both tables are bit-exact against Pillow given '
      'their own values: '
      '`tests/test_space.py::'
      'test_both_tables_match_pillow_at_the_values_that_differ`'
      ' (every transform whose value differs, on byte-exact CIFAR-10), '
      '`test_the_evaluation_path_applies_the_evaluation_table`, and '
      '`tests/test_pil.py::'
      'test_all_139_cifar_transforms_match_jax_bit_for_bit'
      '[search|evaluation]`.'
      ' `experiments/parity_table.py` regenerates the sections below for '
      'the search table.',
      "",
      "How to read the columns: *max abs diff* and *mean abs diff* are over "
      "all uint8 channel values of all images; *% pixels equal* counts RGB "
      "triples that match exactly; *images bit-exact* counts images whose "
      "whole output matches; *exact* marks transforms with no differing "
      "value at all. Random transforms (RandFlip, RandCutout, RandCrop, "
      "RandResizeCrop) get one draw per image, the draw `space.apply_all` "
      "makes from that image's key.",
  ]
  sections = [
      f"## 1. CIFAR space (32 x 32, {num} images)",
      _space_table(cifar, cifar_rows),
      f"## 2. ImageNet space at a fixed {size} x {size} ({num_in} images)",
      "Static shapes: images enter the ImageNet space at S x S and "
      "RandResizeCrop resizes its box back to S x S "
      "(`space.imagenet_space`); the reference resizes to 224 x 224, so "
      "S = 224 compares like with like.",
      _space_table(imagenet, imagenet_rows),
      "## 3. `ops.resized_crop` at non-square native sizes",
      "ImageNet images are not square: the official RandResizeCrop runs on "
      "the native image. Here CIFAR images are upsampled (PIL BICUBIC) to "
      "each native size, a box is drawn with `ops.sample_resized_crop_box` "
      "(the official one-attempt RandomResizedCrop; a failed attempt falls "
      "back to the central crop, counted in brackets) and resized to "
      "224 x 224 by `ops.resized_crop` and by `PIL.Image.resize(..., "
      f"BICUBIC, box=...)` (Pillow {PIL.__version__}, whose pass order "
      "`ops.resized_crop` follows by default).",
      _resized_crop_table(crop_rows),
  ]
  return "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  started = time.time()
  data_dir = pathlib.Path(_DATA_DIR.value) if _DATA_DIR.value else (
      _ROOT.parent / "shared" / "data")
  num = _NUM_IMAGES.value
  num_in = _IMAGENET_IMAGES.value
  size = _IMAGENET_SIZE.value
  if size != 224:
    raise app.UsageError(
        f"--imagenet_size={size}: pil_reference resizes RandResizeCrop to "
        "224 x 224, so only S = 224 compares like with like")
  images = load_exact_cifar(data_dir, max(num, num_in, _BOXES.value))
  base = jax.random.key(_SEED.value)

  cifar = S.cifar_space()
  keys = jax.random.split(jax.random.fold_in(base, 0), num)
  cifar_rows = compare_space(cifar, images[:num], keys, CHUNK_CIFAR)
  print(f"cifar: {_summary(cifar, cifar_rows)} ({time.time() - started:.0f} s)")

  imagenet = S.imagenet_space()
  big = upsample(images[:num_in], size, size)
  keys = jax.random.split(jax.random.fold_in(base, 1), num_in)
  imagenet_rows = compare_space(imagenet, big, keys, CHUNK_IMAGENET)
  print(f"imagenet: {_summary(imagenet, imagenet_rows)} "
        f"({time.time() - started:.0f} s)")

  crop_rows = compare_resized_crop(images, NATIVE_SIZES, _BOXES.value,
                                   _SEED.value)
  print(f"resized_crop: worst max |Δ| {max(r['max'] for r in crop_rows)} "
        f"({time.time() - started:.0f} s)")

  command = " ".join(["python experiments/parity_table.py"] + sys.argv[1:])
  doc = render(command=command, cifar_rows=cifar_rows,
               imagenet_rows=imagenet_rows, crop_rows=crop_rows,
               num=num, num_in=num_in, size=size,
               runtime_s=time.time() - started)
  out = pathlib.Path(_OUTPUT.value)
  if not out.is_absolute():
    out = _ROOT / out
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(doc)
  print(f"wrote {out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
  app.run(main)
