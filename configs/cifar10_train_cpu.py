"""CIFAR-10 on a CPU: WRN-10-1, 4,000 real training images, DeepAA cifar_1.

python -m deepaa_jax.main --config=configs/cifar10_train_cpu.py --workdir=runs/cifar10_train_cpu

Under two minutes on 2 CPU cores: 4 epochs of a class-balanced 4,000-image subset
of `../shared/data/cifar10.npz` (500 steps of 32 at ~0.1-0.15 s each), then
the full 10,000-image test set. The official recipe (cifar10_wrn28x10.py)
scaled down: batch 32 (small batches are faster per image on XLA:CPU), lr
0.05, a half-epoch warm-up from 0 then cosine to 0, Nesterov, wd 5e-4 off BN,
clip 5, the official policy with the random sign flip. Expect ~30 % test
accuracy: this checks the pipeline end to end, it does not reproduce a paper
number (measured: 31.0 % in 1 min 43 s wall, 238 img/s). `experiments/low_data_cifar10.py` builds on this config.
"""

from deepaa_jax import config as config_lib


def get_config(policy: str = "cifar_1"):
  """`policy`: an official file ("cifar_1", "cifar_2") or a baseline kind."""
  config = config_lib.base_config()
  config.model.name = "wrn_10_1"  # 78k params; WRN-16-2 is ~5x slower per step on CPU.
  if policy.startswith("cifar_"):
    config.policy.kind = "official"  # the authors' searched policy.
    config.policy.path = config_lib.official_policy_path(policy)  # policy_DeepAA_<policy>.npz.
  else:
    config.policy.kind = policy  # none, standard, standard_cutout, trivialaugment, deepta.
  config.train.num_epochs = 4  # of the 4,000-image subset: 500 steps.
  config.train.batch_size = 32  # ~2x the images/s of batch 128 on 2 cores.
  config.train.learning_rate = 0.05  # peak.
  config.train.warmup_epochs = 0.5  # linear from 0.
  config.train.min_lr = 0.0  # cosine to 0.
  config.train.eval_every_epochs = 0  # the 10k test set only at the end.
  config.train.eval_batch_size = 500  # 20 test batches.
  config.train.checkpoint_every_steps = 250  # twice per run.
  config.train.log_every_steps = 50  # 10 records per run.
  config.input.name = "cifar10"  # ../shared/data/cifar10.npz.
  config.input.train_subset = 4000  # class-balanced: 400 per class.
  config.input.subset_seed = 0  # the same subset for every run.
  return config
