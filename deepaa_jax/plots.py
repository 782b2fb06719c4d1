"""Figures: transform grids, policy plots (paper Fig. 3, Fig. 5/6) and
policy previews.

`sample_preview` computes what a policy does to a few images (S draws of the
whole K-layer chain per image, every intermediate image kept, every applied
transform named); `policy_preview` draws it.

Matplotlib runs with the non-interactive Agg backend, so plots work on
headless machines (TPU VMs, CI) and return the path of the written PNG
(`utils.as_path`: an `epath.Path` for a `gs://` path, which is written as
one object).
"""

import functools
import io
import math
from typing import Any, Dict, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from deepaa_jax import input_pipeline
from deepaa_jax import policy as policy_lib
from deepaa_jax import search as search_lib
from deepaa_jax import space as space_lib
from deepaa_jax import streaming
from deepaa_jax import utils

Array = jax.Array


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path, dpi: int) -> utils.AnyPath:
  """Renders `fig` as PNG into memory and writes it with `utils.write_bytes`
  (local, parents created, or a URI), then closes it."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  _pyplot().close(fig)
  return utils.write_bytes(path, buffer.getvalue(), make_parents=True)


def transform_grid(path, images: np.ndarray, titles: Sequence[str], *,
                   columns: int = 12, scale: float = 1.1) -> utils.AnyPath:
  """Writes a grid of images with a small title each.

  Args:
    path: output PNG path (parent folders are created).
    images: uint8 or float[N, H, W, 3] with values in [0, 255].
    titles: N strings.
    columns: images per row.
    scale: inches per cell.

  Returns:
    The path written.
  """
  plt = _pyplot()
  images = np.clip(np.asarray(images), 0, 255).astype(np.uint8)
  n = len(images)
  rows = -(-n // columns)
  fig, axes = plt.subplots(rows, columns,
                           figsize=(columns * scale, rows * scale * 1.15))
  for ax in np.ravel(axes):
    ax.axis("off")
  for ax, image, title in zip(np.ravel(axes), images, titles):
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=5)
  fig.tight_layout(pad=0.2)
  return _save(fig, path, dpi=150)


def policy_op_mass(path, policy, *, title=None) -> utils.AnyPath:
  """Paper Fig. 3: per layer, the probability of each operation (summed over
  its magnitude levels), as stacked bars.

  Args:
    path: output PNG path.
    policy: a `deepaa_jax.policy.Policy`.
    title: figure title (default: the policy name).
  """
  plt = _pyplot()
  mass = policy.op_mass()  # [K, 18]
  names = policy.space.op_names
  cmap = plt.get_cmap("tab20")
  # Wide enough for the legend and a two-line title however few layers.
  fig, ax = plt.subplots(figsize=(2.8 + 0.9 * max(policy.num_layers, 1), 5))
  bottom = np.zeros(policy.num_layers)
  layers = np.arange(1, policy.num_layers + 1)
  for op, name in enumerate(names):
    ax.bar(layers, mass[:, op], bottom=bottom, color=cmap(op % 20),
           label=name, width=0.7)
    bottom += mass[:, op]
  ax.set_xlabel("augmentation layer")
  ax.set_ylabel("probability")
  ax.set_xticks(layers)
  ax.set_ylim(0, 1)
  ax.set_title(title or f"{policy.name}:\noperation probability per layer",
               fontsize=10)
  ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
  fig.tight_layout()
  return _save(fig, path, dpi=130)


def policy_magnitudes(path, policy, *, title=None) -> utils.AnyPath:
  """Paper Fig. 5/6: for every operation with a magnitude, the distribution of
  its levels in each layer, p(level | op, layer) (rows = layers, columns = the
  13-level grid; the dropped identity level is blank). The row label gives
  the op's total probability in that layer.
  """
  plt = _pyplot()
  space = policy.space
  ops_with_levels = [o for o in range(len(space.op_names))
                     if space.has_magnitude[space.op_array == o].any()]
  mass = policy.op_mass()
  cols = 4
  rows = -(-len(ops_with_levels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.4, rows * 2.6),
                           squeeze=False)
  image = None
  for ax in axes.ravel():
    ax.axis("off")
  for ax, op in zip(axes.ravel(), ops_with_levels):
    grid = np.full((max(policy.num_layers, 1), 13), np.nan)
    for i in np.flatnonzero(space.op_array == op):
      with np.errstate(invalid="ignore", divide="ignore"):
        grid[:policy.num_layers, space.levels[i]] = (
            policy.probs[:, i] / mass[:, op])
    ax.axis("on")
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_title(space.op_names[op], fontsize=9)
    lo, hi = space.op_ranges[op]
    ax.set_xticks([0, 6, 12])
    ax.set_xticklabels([f"{lo:g}", f"{(lo + hi) / 2:g}", f"{hi:g}"],
                       fontsize=7)
    ax.set_yticks(range(policy.num_layers))
    ax.set_yticklabels([f"L{k + 1} ({mass[k, op]:.2f})"
                        for k in range(policy.num_layers)], fontsize=6)
  fig.suptitle(title or f"{policy.name}: p(magnitude level | op, layer); "
               "row label = p(op)")
  fig.tight_layout(rect=(0, 0, 0.92, 0.96))
  if image is not None:
    fig.colorbar(image, cax=fig.add_axes([0.93, 0.15, 0.015, 0.7]),
                 label="p(level | op)")
  return _save(fig, path, dpi=130)


_WATCHED_COLORS = {"identity": "#777777", "crop": "#ee7733",
                   "flip": "#0077bb", "cutout": "#009988"}


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
  """Trailing moving average (the per-step rewards are noisy)."""
  values = np.asarray(values, np.float64)
  if window <= 1 or len(values) < 2:
    return values
  csum = np.cumsum(np.insert(values, 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(0, idx - window)
  return (csum[idx] - csum[lo]) / (idx - lo)


def search_history(path, records, *, title="DeepAA search",
                   smooth: int = 10) -> utils.AnyPath:
  """Per-step search diagnostics.

  Top row, one colour per layer: cosine similarity of v and g, p(Identity),
  policy entropy, the std of the rewards over the search images and (when
  the records carry it) the reward's signal-to-noise excess
  (`search.reward_snr`, log scale) with the noise-alone level 1 and the
  warning level `search.SNR_WARN_EXCESS` as horizontal lines. Bottom row
  (when the records carry them, `search.WATCHED`), one colour per watched
  transform (Identity, RandCrop, RandFlip, RandCutout) and one line style
  per layer: the regularised reward R = mean - c * std (Eq. 10), its mean
  part, its std part c * std, and the logit above the layer's mean logit;
  rewards are smoothed over `smooth` steps.

  Args:
    path: output PNG path.
    records: dicts with "layer", "step" and the diagnostic names (the lines
      of `search_metrics.jsonl`).
    title: figure title.
    smooth: moving-average window of the reward panels (steps).
  """
  plt = _pyplot()
  names = [("cos_sim", "cos(v, g)"), ("p_identity", "p(Identity)"),
           ("entropy", "entropy (nats)"), ("reward_std",
                                           "std of rewards over images")]
  if any("snr_excess" in r for r in records):
    names.append(("snr_excess", "reward SNR excess (1 = noise)"))
  watched = [n for n in _WATCHED_COLORS if any(f"R_{n}" in r for r in records)]
  rows = 2 if watched else 1
  fig, axes = plt.subplots(rows, len(names), figsize=(4 * len(names),
                                                      3.2 * rows),
                           squeeze=False)
  layers = sorted({r["layer"] for r in records})
  cmap = plt.get_cmap("viridis")
  for ax, (key, label) in zip(axes[0], names):
    for i, layer in enumerate(layers):
      rows_k = [r for r in records if r["layer"] == layer and key in r]
      ax.plot([r["step"] for r in rows_k], [r[key] for r in rows_k],
              color=cmap(i / max(1, len(layers) - 1)), label=f"layer {layer}",
              lw=1)
    ax.set_xlabel("step")
    ax.set_title(label, fontsize=10)
    if key == "snr_excess":
      ax.set_yscale("log")
      ax.axhline(1.0, color="k", lw=0.8, ls=":", label="noise alone")
      ax.axhline(search_lib.SNR_WARN_EXCESS, color="#cc3311", lw=0.8,
                 ls="--", label="warning")
      ax.legend(fontsize=6)
  axes[0][0].legend(fontsize=7)
  if watched:
    styles = ["-", "--", ":", "-."]
    panels = [("R_{}", f"reward R = mean - c*std ({smooth}-step avg)", True),
              ("R_mean_{}", "mean part of R", True),
              ("R_std_{}", "std part c*std of R", True),
              ("logit_{}", "logit - mean logit", False)]
    for ax, (pattern, label, smoothed) in zip(axes[1], panels):
      for li, layer in enumerate(layers):
        for name in watched:
          key = pattern.format(name)
          rows_k = [r for r in records if r["layer"] == layer and key in r]
          if not rows_k:
            continue
          values = [r[key] for r in rows_k]
          ax.plot([r["step"] for r in rows_k],
                  _smooth(values, smooth) if smoothed else values,
                  color=_WATCHED_COLORS[name], ls=styles[li % len(styles)],
                  lw=1, label=f"{name} L{layer}")
      ax.axhline(0, color="k", lw=0.5)
      ax.set_xlabel("step")
      ax.set_title(label, fontsize=10)
    axes[1][0].legend(fontsize=6, ncol=2)
    for ax in axes[1][len(panels):]:
      ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path, dpi=120)


# --------------------------------------------------------------------------
# Policy previews.
# --------------------------------------------------------------------------


class PolicyPreview(NamedTuple):
  """S draws of a policy's whole chain on each of N images.

  Attributes:
    stages: float32[N, S, K + 1, H, W, 3], integer values in [0, 255]:
      stage 0 is the input image, stage k the image after layer k, stage K
      the augmented image (`outputs`).
    indices: int32[N, S, K]: the transform drawn in each layer.
    labels: N x S x K strings naming what each layer did
      (`transform_label`: "ShearX(-0.24)", "Identity", "RandFlip(no)").
  """
  stages: np.ndarray
  indices: np.ndarray
  labels: Tuple[Tuple[Tuple[str, ...], ...], ...]

  @property
  def outputs(self) -> np.ndarray:
    """float32[N, S, H, W, 3]: the augmented images."""
    return self.stages[:, :, -1]


_SHORT_NAMES = {"RandResizeCrop_imagenet": "RandResizeCrop"}


def transform_label(space: space_lib.SearchSpace, index: int, *,
                    negated: bool = False, flipped: bool = True) -> str:
  """A short caption for one applied transform: op name and the value it
  received, e.g. "ShearX(-0.24)", "Rotate(15)", "Posterize(5)", "Equalize".

  Args:
    space: the search space.
    index: transform index in [0, T).
    negated: the random sign mirrored the value (affine ops only; the
      evaluation code's `random_mirror`, spec §4.2).
    flipped: for RandFlip, whether its coin flipped the image; "RandFlip(no)"
      names a RandFlip that left the image as it was.

  Returns:
    The caption.
  """
  op = space.ops[index]
  name = space.op_names[op]
  name = _SHORT_NAMES.get(name, name)
  if op == space_lib.FLIP:
    return name if flipped else f"{name}(no)"
  if not space.has_magnitude[index]:
    return name
  value = space.values[index]
  if negated and op in space_lib.AFFINE_OPS:
    value = -value
  if op == space_lib.POSTERIZE:  # the op keeps int(value) bits (ops.posterize)
    return f"{name}({int(value)})"
  return f"{name}({value:.2g})" if abs(value) < 1 else f"{name}({value:.3g})"


def sample_preview(key: Array, policy, images, *, samples: int = 8,
                   random_sign: bool = False) -> PolicyPreview:
  """Applies `policy` `samples` times to each image, keeping every layer.

  The draws are those of `policy.apply_policy(key, repeat(images, samples),
  policy, random_sign=...)`: example i = n * samples + s (image n, draw s)
  takes its transforms and random draws from the global example index i, so
  `outputs[n, s]` is bit for bit what `apply_policy` gives that example.

  Args:
    key: PRNG key.
    policy: a `deepaa_jax.policy.Policy`.
    images: uint8 or float32[N, H, W, 3] in [0, 255], integer-valued (see
      `space.check_images`).
    samples: S, draws of the whole chain per image.
    random_sign: the evaluation code's 50% sign flip of shear, translate and
      rotate (as training applies a policy, `config.train.random_sign`); the
      labels give the value each op received.

  Returns:
    A `PolicyPreview`.

  Raises:
    ImageContractError: `images` breaks the contract.
    ValueError: samples < 1.
  """
  if samples < 1:
    raise ValueError(f"samples must be >= 1, got {samples}")
  space_lib.check_images(images, rank=4, where="sample_preview")
  images = np.asarray(images).astype(np.float32)
  n, h, w, _ = images.shape
  space, num_layers = policy.space, policy.num_layers
  if num_layers == 0:
    stages = np.broadcast_to(images[:, None, None],
                             (n, samples, 1, h, w, 3)).copy()
    return PolicyPreview(stages, np.zeros((n, samples, 0), np.int32),
                         tuple(tuple(() for _ in range(samples))
                               for _ in range(n)))
  stages, indices, negated, flipped = _preview_arrays(
      key, jnp.asarray(policy.probs, jnp.float32), jnp.asarray(images),
      samples=samples, space=space, random_sign=random_sign,
      sequential=jax.default_backend() == "cpu")
  stages, indices, negated, flipped = jax.device_get(
      (stages, indices, negated, flipped))
  shape = (n, samples)
  labels = tuple(
      tuple(tuple(transform_label(space, int(indices[i, k]),
                                  negated=bool(negated[i, k]),
                                  flipped=bool(flipped[i, k]))
                  for k in range(num_layers))
            for i in range(row * samples, (row + 1) * samples))
      for row in range(n))
  return PolicyPreview(
      np.asarray(stages).reshape(shape + stages.shape[1:]),
      np.asarray(indices).reshape(shape + (num_layers,)), labels)


@functools.partial(jax.jit, static_argnames=("samples", "space", "random_sign",
                                             "sequential"))
def _preview_arrays(key, probs, images, *, samples, space, random_sign,
                    sequential):
  """(stages [N*S, K+1, H, W, 3], indices [N*S, K], negated [N*S, K],
  flipped [N*S, K]) with `apply_policy`'s key derivation."""
  # pylint: disable=protected-access
  n, h, w, _ = images.shape
  num = n * samples
  k_index, k_apply = jax.random.split(key)  # as `apply_policy`
  indices = policy_lib.sample_indices(k_index, probs, num)
  example_keys = space_lib.example_keys(k_apply, num)
  layers = jnp.arange(probs.shape[0])
  layer_keys = jax.vmap(lambda k: jax.vmap(
      lambda layer: jax.random.fold_in(k, layer))(layers))(example_keys)
  rnd = jax.vmap(jax.vmap(lambda k: space_lib.layer_randomness(
      k, h, w, space, random_sign=random_sign)))(layer_keys)
  inputs = jnp.repeat(images, samples, axis=0)
  method = "switch" if sequential else "stages"

  def chain(args):
    x, idx, r = args

    def layer(x, per_layer):
      i, r_k = per_layer
      x = space_lib.replay_transform_unchecked(x, i, r_k, space,
                                               method)
      return x, x

    _, after = jax.lax.scan(layer, x, (idx, r))
    return jnp.concatenate([x[None], after])

  args = (inputs, indices, rnd)
  stages = jax.lax.map(chain, args) if sequential else jax.vmap(chain)(args)
  affine = jnp.isin(jnp.asarray(space.op_array)[indices],
                    jnp.asarray(space_lib.AFFINE_OPS))
  return stages, indices, rnd.flip_sign & affine, rnd.draws.flip


def _preview_caption(labels: Sequence[str]) -> str:
  """The layers that did something, one per line ("L2 Rotate(15)")."""
  lines = [f"L{k + 1} {label}" for k, label in enumerate(labels)
           if label != "Identity"]
  return "\n".join(lines) if lines else "untouched"


def policy_preview(path, key: Array, policy, images, *, samples: int = 8,
                   layers: bool = False, random_sign: bool = False,
                   title=None, cell: float = 1.05) -> utils.AnyPath:
  """Draws what a policy does: N images x S draws of the whole K-layer chain.

  Row n starts with input image n, then its S augmented versions, each
  captioned with the layers that changed it ("L1 ShearX(-0.24)" ...; an
  "RandFlip(no)" drew a RandFlip whose coin kept the image; "untouched": every
  layer drew Identity). With `layers=True` each image gets K rows instead,
  row k showing the S images after layer k, captioned with that layer's
  transform (the last row is the augmented image).

  Args:
    path: output PNG path (parent folders are created; `gs://` works).
    key: PRNG key of the draws (see `sample_preview`).
    policy: a `deepaa_jax.policy.Policy`.
    images: uint8 or float32[N, H, W, 3] in [0, 255], integer-valued.
    samples: S, draws per image.
    layers: one row per layer with the intermediate images.
    random_sign: see `sample_preview`.
    title: figure title (default: the policy name and the grid's meaning).
    cell: inches per image.

  Returns:
    The path written.
  """
  preview = sample_preview(key, policy, images, samples=samples,
                           random_sign=random_sign)
  return draw_preview(path, preview, name=policy.name, layers=layers,
                      title=title, cell=cell)


def draw_preview(path, preview: PolicyPreview, *, name: str = "policy",
                 layers: bool = False, title=None,
                 cell: float = 1.05) -> utils.AnyPath:
  """Draws a computed `PolicyPreview` (see `policy_preview`)."""
  plt = _pyplot()
  n, s, stages = preview.stages.shape[:3]
  num_layers = stages - 1
  pictures = np.clip(np.rint(preview.stages), 0, 255).astype(np.uint8)
  per_image = num_layers if layers and num_layers else 1
  if layers and num_layers:
    captions = [[f"L{k + 1} {preview.labels[i][j][k]}" for j in range(s)]
                for i in range(n) for k in range(num_layers)]
    lines = 1
  else:
    captions = [[_preview_caption(preview.labels[i][j]) for j in range(s)]
                for i in range(n)]
    lines = max(c.count("\n") + 1 for row in captions for c in row)
  rows, cols = n * per_image, s + 1
  caption_h = 0.085 * lines + 0.05
  fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(
      cols * cell, rows * (cell + caption_h) + 0.45))
  for ax in axes.ravel():
    ax.axis("off")
  for i in range(n):
    for k in range(per_image):
      r = i * per_image + k
      stage = k + 1 if per_image > 1 else stages - 1
      if k == 0:
        axes[r, 0].imshow(pictures[i, 0, 0], interpolation="nearest")
        axes[r, 0].set_title("input", fontsize=6)
      else:
        axes[r, 0].text(0.5, 0.5, f"after\nlayer {k + 1}", fontsize=6,
                        ha="center", va="center",
                        transform=axes[r, 0].transAxes)
      for j in range(s):
        ax = axes[r, j + 1]
        ax.imshow(pictures[i, j, stage], interpolation="nearest")
        ax.set_title(captions[r][j], fontsize=5, linespacing=1.0)
  if title is None:
    what = (f"{n} image(s) x {s} draws, one row per layer"
            if per_image > 1 else f"{n} image(s) x {s} draws of the chain")
    title = f"{name}: {num_layers} layer(s); {what}"
  fig.suptitle(title, fontsize=8)
  fig.tight_layout(pad=0.15, h_pad=0.1, w_pad=0.1,
                   rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
  return _save(fig, path, dpi=130)


# ---------------------------------------------------------------------------
# Preview images (the inspect job and the search job write them).
# ---------------------------------------------------------------------------

# S of the ImageNet space's ops (cutout 60 px).
IMAGENET_PREVIEW_SIZE = 224


def synthetic_images(num: int, size: int = 32) -> np.ndarray:
  """uint8[num, size, size, 3]: deterministic stand-ins for real images.

  A colour gradient background, a filled disc off centre, a bar along the
  top-left edges and a dark square, with a hue that changes per image: every
  geometric op (shear, translate, rotate, flip, crop) moves something
  asymmetric, and every colour op has colours and edges to change.
  """
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
  out = []
  for i in range(num):
    phase = 2 * math.pi * i / max(num, 1)
    base = np.stack([0.5 + 0.4 * np.cos(phase + 3 * xx),
                     0.5 + 0.4 * np.cos(phase + 2 + 3 * yy),
                     0.5 + 0.4 * np.cos(phase + 4 + 2 * (xx + yy))], -1)
    disc = (xx - 0.62) ** 2 + (yy - 0.58) ** 2 < 0.05
    base[disc] = [0.95, 0.85 - 0.3 * (i % 2), 0.2 + 0.1 * (i % 3)]
    bar = (yy < 0.14) & (xx < 0.75) | (xx < 0.14) & (yy < 0.5)
    base[bar] = [0.1, 0.2, 0.7]
    square = (np.abs(xx - 0.3) < 0.1) & (np.abs(yy - 0.75) < 0.1)
    base[square] = 0.08
    out.append(base)
  return np.clip(np.rint(np.stack(out) * 255), 0, 255).astype(np.uint8)


def _npz_test_images(path, num: int) -> np.ndarray:
  """The first test image of classes 0, 1, ... (cycling) of an npz dataset;
  only the test members are read."""
  with np.load(path, allow_pickle=False) as data:
    images = np.asarray(data["test_images"])
    labels = (np.asarray(data["test_labels"]).reshape(-1)
              if "test_labels" in data.files else np.arange(len(images)))
  firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
  rest = np.setdiff1d(np.arange(len(images)), firsts)
  order = firsts + rest.tolist()
  picked = images[np.asarray(order[:num], np.int64)]
  if picked.dtype != np.uint8 or picked.ndim != 4 or picked.shape[-1] != 3:
    raise ValueError(f"test_images are {picked.dtype}{list(picked.shape)}, "
                     "not uint8[N, H, W, 3]")
  return picked


def _as_dict(config) -> Dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def preview_images(input_config, space: space_lib.SearchSpace, *,
                   num: int = 8, image_size: int = 0
                   ) -> Tuple[np.ndarray, str]:
  """Images to preview a policy on, and where they come from.

  Args:
    input_config: a `config.input` section (`input_pipeline`): an npz
      source that can be read, or a TFDS one (in memory or streamed;
      `input_pipeline.tfds_test_images`, at S x S when the run reads them
      so), gives its first test image of each class; the default CIFAR-10
      npz, when absent, its TFDS cifar10 if prepared; anything else (a
      missing or unreadable file or dataset) gives `synthetic_images`.
    space: the policy's space; the ImageNet space's images are brought to
      `IMAGENET_PREVIEW_SIZE` (224) unless `image_size` says otherwise.
    num: number of images.
    image_size: S > 0 resizes to S x S (bilinear); 0 = the data's own size
      (CIFAR space, 32 for the synthetic images) or 224 (ImageNet space).

  Returns:
    (uint8[num, S, S, 3], a one-line description of their source).
  """
  source = None
  images = None
  tfds_config = None  # read the dataset's own images from TFDS
  if str(input_config.get("source", "npz")) == "npz":
    path = utils.resolve_path(input_config.get("npz_path") or "")
    if path.is_file():
      try:
        images = _npz_test_images(path, num)
        source = f"the first test image of each class of {path}"
      except Exception as e:  # pylint: disable=broad-except
        source = (f"synthetic images ({path} could not be read: "
                  f"{type(e).__name__}: {str(e)[:120]})")
    else:
      source = f"synthetic images (no npz file at {path})"
      if (str(input_config.get("name")) == "cifar10"
          and input_pipeline.is_default_npz_path(path)):
        # A clone without ../shared trains on TFDS cifar10 (if prepared).
        import ml_collections  # pylint: disable=g-import-not-at-top
        tfds_config = ml_collections.ConfigDict(dict(
            _as_dict(input_config), source="tfds", pipeline="memory"))
  else:
    tfds_config = input_config
  if tfds_config is not None:
    try:
      images, source = input_pipeline.tfds_test_images(
          tfds_config, num, streams=streaming.wants_streaming(tfds_config))
    except Exception as e:  # pylint: disable=broad-except
      why = (f"TFDS {str(input_config.get('name'))!r} could not be read: "
             f"{type(e).__name__}: {' '.join(str(e).split())[:120]}")
      source = (f"{source[:-1]}; {why})" if source else
                f"synthetic images ({why})")
  size = image_size or (IMAGENET_PREVIEW_SIZE if space.name == "imagenet"
                        else 0)
  if images is None:
    images = synthetic_images(num, size or 32)
    source += f" at {images.shape[1]}x{images.shape[2]}"
  if size and images.shape[1:3] != (size, size):
    resized = jax.image.resize(images.astype(np.float32),
                               (len(images), size, size, 3), "bilinear")
    images = np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)
    source += f", resized to {size}x{size}"
  return images, source


def write_previews(workdir, policy: policy_lib.Policy, input_config, *,
                   seed: int = 0, num_images: int = 8, samples: int = 8,
                   image_size: int = 0, random_sign: bool = True,
                   layer_images: int = 0) -> Tuple[Dict[str, str], str]:
  """Writes `policy_preview.png` (and, with `layer_images` > 0,
  `policy_preview_layers.png` for that many of the images) into `workdir`.

  Args:
    workdir: output folder (local or `gs://`).
    policy: the policy.
    input_config: the `config.input` section the images come from
      (`preview_images`).
    seed: PRNG seed of the draws.
    num_images, samples: N images x S draws.
    image_size: see `preview_images`.
    random_sign: as training applies a policy (`config.train.random_sign`,
      default True); captions give the value each op received.
    layer_images: images shown with one row per layer.

  Returns:
    ({"preview_png": path[, "preview_layers_png": path]}, a one-line
    description of the images' source).
  """
  workdir = utils.as_path(workdir)
  images, source = preview_images(input_config, policy.space, num=num_images,
                                  image_size=image_size)
  preview = sample_preview(jax.random.key(seed), policy, images,
                                 samples=samples, random_sign=random_sign)
  sign = ", random sign" if random_sign else ""
  out = {"preview_png": str(draw_preview(
      workdir / "policy_preview.png", preview, name=policy.name,
      title=(f"{policy.name}: {policy.num_layers} layer(s); {len(images)} "
             f"image(s) x {samples} draws of the chain{sign}")))}
  if layer_images > 0 and policy.num_layers > 0:
    part = PolicyPreview(preview.stages[:layer_images],
                               preview.indices[:layer_images],
                               preview.labels[:layer_images])
    out["preview_layers_png"] = str(draw_preview(
        workdir / "policy_preview_layers.png", part, name=policy.name,
        layers=True))
  return out, source
