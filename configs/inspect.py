"""Inspect a policy: summary, expected-ops table, op-mass, magnitude and
preview plots, before training with it.

python -m deepaa_jax.main --config=configs/inspect.py --workdir=runs/inspect \
    --config.policy.path=PATH

PATH: our JSON policy (a search's policy.json), an official npz, an official
name (cifar_1, cifar_2, imagenet_1, imagenet_2) or a baseline name (none,
standard, standard_cutout, trivialaugment, deepta). See
`deepaa_jax/inspect_job.py` for the outputs.
"""

import ml_collections

from deepaa_jax import input_pipeline
from deepaa_jax import inspect_job


def get_config():
  config = ml_collections.ConfigDict()
  config.job = "inspect"
  config.seed = 0  # PRNG seed of the preview's draws.
  # kind "auto": the path decides (a file, an official or a baseline name);
  # space "auto": the policy's own ("cifar" for baselines), else it must match.
  config.policy = inspect_job.inspect_policy_config("cifar_1")
  config.input = input_pipeline.default_input_config()  # preview images (npz: real test images).
  config.inspect = inspect_job.default_inspect_config()
  return config
