"""CIFAR-10, WRN-28-10, DeepAA + Batch Augmentation x8 (spec §4.5).

python -m deepaa_jax.main --config=configs/cifar10_wrn28x10_ba.py --workdir=runs/c10_wrn28x10_ba

The official `wresnet28x10_cifar10_DeepAA_BatchAug8x_{1,2}.yaml`: 8 GPUs iterate
the SAME 128-image batches and augment them independently, so each step sees
128 images x 8 policy draws = 1024 samples, the loss averaged over all of them;
BN statistics per GPU (per copy here); 100 epochs of 390 steps, lr 0.2 (not
scaled further), warm-up 5 + cosine, wd 5e-4, clip 5.
"""

import pathlib

from deepaa_jax import config as config_lib


def get_config(policy: str = "cifar_1"):
  """`policy`: "cifar_1" (default) or "cifar_2"."""
  config = config_lib.load_config_file(
      pathlib.Path(__file__).with_name("cifar10_wrn28x10.py"), policy)
  config.train.ba_copies = 8  # M: 8 GPUs, each its own augmentation of the batch.
  config.train.ba_per_copy_bn = True  # BN batch statistics per GPU (128 images).
  config.train.batch_size = 128  # distinct images per step (all_workers_use_the_same_batches).
  config.train.num_epochs = 100  # official BA: 100.
  config.train.learning_rate = 0.2  # official BA: 0.2.
  config.train.weight_decay = 5e-4  # shipped yaml 5e-4; paper Table 8 says 1e-3 for C10 BA.
  return config
