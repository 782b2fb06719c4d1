"""CPU-friendly test configuration: a few steps of WRN-10-1 (tests and CI).

python -m deepaa_jax.main --config=configs/test.py --workdir=/tmp/deepaa_test

Tests point `input.npz_path` at a tiny synthetic npz; from the command line it
trains on 256 real CIFAR-10 images (`../shared/data/cifar10.npz`) for 8 steps.
"""

from deepaa_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.name = "wrn_10_1"  # 78k parameters.
  config.policy.kind = "deepta"  # one layer uniform over all 139 transforms:
  config.policy.num_layers = 1  # every op runs, and 1 layer compiles fast.
  config.train.num_epochs = 0  # duration given in steps below.
  config.train.num_steps = 8  # a few steps.
  config.train.batch_size = 32  # per step.
  config.train.warmup_epochs = 0.0  # no warm-up in a few steps.
  config.train.eval_every_epochs = 0  # evaluate only at the end.
  config.train.eval_batch_size = 100  # last test batch padded.
  config.train.checkpoint_every_steps = 4  # exercise checkpointing.
  config.train.log_every_steps = 2  # a few metric records.
  config.input.train_subset = 256  # class-balanced CIFAR-10 subset.
  return config
