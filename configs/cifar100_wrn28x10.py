"""CIFAR-100, WRN-28-10, DeepAA policy (spec §4.4); needs a CIFAR-100 npz.

python -m deepaa_jax.main --config=configs/cifar100_wrn28x10.py --workdir=runs/c100_wrn28x10 --config.input.npz_path=/path/to/cifar100.npz

Same recipe as CIFAR-10 (`cifar10_wrn28x10.py`): the CIFAR-10-searched
policies are used for CIFAR-100 too, and so are the CIFAR-10 normalisation
constants (spec §4.3). CIFAR-100 images are not available offline
(`shared/data/cifar100_partial_exact.npz` has ~1,100 of them), so this config
fails validation until `input.npz_path` names a full CIFAR-100 archive.
"""

import os
import pathlib

from deepaa_jax import config as config_lib


def get_config(policy: str = "cifar_1"):
  """`policy`: "cifar_1" (default) or "cifar_2"."""
  config = config_lib.load_config_file(
      pathlib.Path(__file__).with_name("cifar10_wrn28x10.py"), policy)
  config.input.name = "cifar100"  # 100 classes; CIFAR-10 eval mean/std.
  config.input.npz_path = os.path.join("..", "shared", "data", "cifar100.npz")  # not shipped: pass your own.
  return config
