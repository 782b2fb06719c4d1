"""The demo job: the 139-transform table and one real image under all of them.

`python -m deepaa_jax.main --config=configs/demo.py --workdir=runs/demo`
prints the transform table and writes `workdir/transforms_grid.png`.
"""

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from deepaa_jax import input_pipeline
from deepaa_jax import plots
from deepaa_jax import space as space_lib
from deepaa_jax import utils


def run(config, workdir: str) -> utils.AnyPath:
  """Prints the space's table and writes the transform grid; returns its path.

  Args:
    config: ConfigDict with `seed`, `input` (see `input_pipeline`), and
      `demo.space` ("cifar"), `demo.image_index` (index into the test split).
    workdir: output folder.
  """
  space = space_lib.get_space(config.demo.space)
  print(space.table())
  dataset = input_pipeline.load_dataset(config.input)
  test = dataset.splits["test"]
  if not 0 <= config.demo.image_index < test.size:
    raise ValueError(f"config.demo.image_index must be in [0, {test.size}), "
                     f"got {config.demo.image_index}")
  image = jnp.asarray(test.images[config.demo.image_index], jnp.float32)
  key = jax.random.key(config.seed)
  out = np.asarray(jax.jit(lambda k, x: space_lib.apply_all(k, x, space))(
      key, image))
  titles = [f"{i} {space.transform_name(i)}" for i in range(space.size)]
  path = plots.transform_grid(utils.as_path(workdir) / "transforms_grid.png",
                              out, titles)
  logging.info("Wrote %s", path)
  print(f"Wrote {path}")
  return path
