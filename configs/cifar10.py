"""DeepAA policy search on CIFAR-10 with the official settings (spec §2).

python -m deepaa_jax.main --config=configs/cifar10.py --workdir=runs/cifar10

Pretrains WRN-40-2 on train[0:5000] (45 epochs), then searches 6 layers of
1024 Adam steps each: 16 search images per step, each with 64 clean
validation images of its class; stage k >= 2 uses M = 4 * 139 = 556
full-chain samples for g and E = 16 prefixes x 139 transforms for G. Sized
for an accelerator: on a 2-core CPU a stage-k step takes minutes (use
configs/cifar10_cpu.py there). `--config.evaluate.enabled=True` then trains
WRN-28-10 for 200 epochs with the found policy (the paper's evaluation).

Paper-vs-code choices (spec §2.13) are config fields; the defaults follow the
official code, which produced the shipped policies:
  --config.search.steps_per_layer=512        the paper's 512 (code: 1024)
  --config.search.normalization=paper        Eq. 5 without 1/|v| (code: exact d cos/dp)
  --config.search.class_conditional=False    any-class validation batch (code: same class)
  --config.search.stop_identity_threshold=0.9  stop once a layer is ~Identity
"""

import ml_collections

from deepaa_jax import config as config_lib
from deepaa_jax import input_pipeline
from deepaa_jax import search


def get_config():
  config = ml_collections.ConfigDict()
  config.job = "search"  # main.py dispatch: pretrain -> search -> policy -> (evaluate).
  config.input = input_pipeline.default_input_config()  # CIFAR-10 (npz or TFDS); governs all stages.
  config.pretrain = config_lib.default_pretrain_config()  # the search network's training (spec §2.3).
  config.pretrain_checkpoint = ""  # reuse an existing pretraining workdir instead of training.
  config.search = search.default_search_config()  # the policy search (spec §2.4-§2.10).
  config.evaluate = config_lib.default_evaluate_config()  # WRN-28-10 with the found policy (off).
  return config
