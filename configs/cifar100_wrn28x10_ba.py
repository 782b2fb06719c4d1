"""CIFAR-100, WRN-28-10, DeepAA + Batch Augmentation x8 (spec §4.5).

python -m deepaa_jax.main --config=configs/cifar100_wrn28x10_ba.py --workdir=runs/c100_wrn28x10_ba --config.input.npz_path=/path/to/cifar100.npz

The official `wresnet28x10_cifar100_DeepAA_BatchAug8x_{1,2}.yaml`: 128 images
x 8 independent augmentations per step, 35 epochs, lr 0.4, warm-up 5 +
cosine, wd 5e-4, clip 5.
"""

import pathlib

from deepaa_jax import config as config_lib


def get_config(policy: str = "cifar_1"):
  """`policy`: "cifar_1" (default) or "cifar_2"."""
  config = config_lib.load_config_file(
      pathlib.Path(__file__).with_name("cifar100_wrn28x10.py"), policy)
  config.train.ba_copies = 8  # M: 8 GPUs, each its own augmentation of the batch.
  config.train.ba_per_copy_bn = True  # BN batch statistics per GPU (128 images).
  config.train.batch_size = 128  # distinct images per step.
  config.train.num_epochs = 35  # official C100 BA: 35.
  config.train.learning_rate = 0.4  # official C100 BA: 0.4.
  config.train.weight_decay = 5e-4  # shipped yaml: 5e-4.
  return config
