"""Figures: transform grids now; policy plots (paper Fig. 3 / Fig. 5) later.

Matplotlib runs with the non-interactive Agg backend, so plots work on
headless machines (TPU VMs, CI) and return the path of the written PNG.
"""

import pathlib
from typing import Sequence

import numpy as np


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def transform_grid(path, images: np.ndarray, titles: Sequence[str], *,
                   columns: int = 12, scale: float = 1.1) -> pathlib.Path:
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
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=150)
  plt.close(fig)
  return path
