"""Demo: the 139-transform table and one real CIFAR-10 image under all of them.

python -m deepaa_jax.main --config=configs/cifar10_cpu.py --workdir=runs/cifar10_cpu

Until the policy search lands this config runs the demo job.
"""

import ml_collections

from deepaa_jax import input_pipeline


def get_config():
  config = ml_collections.ConfigDict()
  config.job = "demo"
  config.seed = 0  # PRNG seed of the random ops' draws.
  config.input = input_pipeline.default_input_config()
  config.demo = ml_collections.ConfigDict()
  config.demo.space = "cifar"  # search space: "cifar" or "imagenet".
  config.demo.image_index = 7  # index of the image in the test split.
  return config
