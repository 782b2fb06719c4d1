"""Figures: transform grids and policy plots (paper Fig. 3, Fig. 5/6).

Matplotlib runs with the non-interactive Agg backend, so plots work on
headless machines (TPU VMs, CI) and return the path of the written PNG
(`utils.as_path`: an `epath.Path` for a `gs://` path, which is written as
one object).
"""

import io
from typing import Sequence

import numpy as np

from deepaa_jax import utils


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
  policy entropy, the std of the rewards over the search images. Bottom row
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
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path, dpi=120)
