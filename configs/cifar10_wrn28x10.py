"""CIFAR-10, WRN-28-10, DeepAA policy (paper Table 2; spec §4.3-§4.4).

python -m deepaa_jax.main --config=configs/cifar10_wrn28x10.py --workdir=runs/c10_wrn28x10
python -m deepaa_jax.main --config=configs/cifar10_wrn28x10.py:cifar_2 --workdir=runs/c10_wrn28x10_p2

The official `wresnet28x10_cifar10_DeepAA_{1,2}.yaml`: 200 epochs of batch
128 on the full 50k training set, lr 0.1 with a 5-epoch linear warm-up from 0
then cosine to 0 (per iteration), SGD Nesterov 0.9, weight decay 5e-4 on every
non-BN parameter, gradient norm clipped at 5, the policy only (no default
crop/flip/cutout) with the eval code's random sign flip, CIFAR-10 eval
normalisation. Test accuracy every 20 epochs; the reported number is the last.
"""

from deepaa_jax import config as config_lib


def get_config(policy: str = "cifar_1"):
  """`policy`: "cifar_1" (default) or "cifar_2", the shipped DeepAA files."""
  config = config_lib.base_config()
  config.model.name = "wrn_28_10"  # PyTorch eval WRN-28-10 (36.5M params).
  config.policy.kind = "official"  # the authors' searched policy.
  config.policy.path = config_lib.official_policy_path(policy)  # policy_DeepAA_<policy>.npz.
  config.policy.space = "cifar"  # 139 CIFAR transforms.
  config.train.num_epochs = 200  # official: 200.
  config.train.batch_size = 128  # official: 128, one GPU.
  config.train.learning_rate = 0.1  # official: 0.1.
  config.train.schedule = "cosine"  # warm-up + cosine to 0.
  config.train.warmup_epochs = 5.0  # official: 5, from lr 0.
  config.train.warmup_init_lr = 0.0  # GradualWarmupScheduler multiplier 1.
  config.train.weight_decay = 5e-4  # official: 5e-4 (a *_wd1e-3.yaml variant uses 1e-3).
  config.train.decay_mask = "non_bn"  # BN gets no weight decay.
  config.train.grad_clip_norm = 5.0  # train.py default clip 5.
  config.train.random_sign = True  # eval code's random_mirror = True.
  config.train.eval_every_epochs = 20  # official: every 20 epochs.
  config.input.name = "cifar10"  # ../shared/data/cifar10.npz by default.
  return config
