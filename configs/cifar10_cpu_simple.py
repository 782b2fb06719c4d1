"""DeepAA-simple on the CPU: one searched layer, evaluated with crop, flip
and Cutout after it.

python -m deepaa_jax.main --config=configs/cifar10_cpu_simple.py --workdir=runs/cifar10_cpu_simple

The paper's DeepAA-simple (§4.4, "Effectiveness of Gradient Matching",
Fig. 2) isolates the regularised gradient-matching objective from the depth
of the policy: the search finds a single layer, and the evaluation applies
the default augmentation in addition to it. This is configs/cifar10_cpu.py
(same pretrained WRN-10-1, data, steps and learning rate) with
  layers           1                                   [cifar10_cpu.py: 3]
  evaluation       the found layer, then standard_cutout (pad-4 crop,
                   horizontal flip, Cutout-16: the official CIFAR
                   "augmentation_default"), `evaluate.policy.then`
The search writes a one-layer policy.json; `--config.evaluate.enabled=True`
trains the evaluation model with it followed by crop, flip and Cutout
(`policy.followed_by`), as does `experiments/low_data_cifar10.py
--policy_files=simple=runs/cifar10_cpu_simple/policy.json
--policies=simple+standard_cutout`. The paper runs DeepAA-simple on
ImageNet (ResNet-50, where the default is the random resized crop and
flip); on CIFAR the default augmentation is standard_cutout. The search
is one layer of configs/cifar10_cpu.py's three, and the cheapest (stage 1
has no earlier layers to sample); its time is not measured here.
"""

import pathlib

from deepaa_jax import config as config_lib


def get_config():
  config = config_lib.load_config_file(
      pathlib.Path(__file__).with_name("cifar10_cpu.py"))
  config.search.num_layers = 1  # one searched layer (paper §4.4 DeepAA-simple).
  config.evaluate.policy.then = "standard_cutout"  # then the default augmentation.
  return config
