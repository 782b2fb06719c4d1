"""A reduced ImageNet search that runs end to end on a 2-core CPU in minutes.

python -m deepaa_jax.main --config=configs/imagenet_cpu.py \
  --workdir=runs/imagenet_cpu --config.input.data_dir=~/tensorflow_datasets

The pipeline of configs/imagenet.py -- ImageNet streamed from a prepared
TFDS `imagenet2012`, the search network pretrained on a streamed subset, the
pools read into memory from disjoint slices, the ImageNet space
(RandResizeCrop to S, Cutout60), layer-by-layer search, the policy files --
with these reductions (configs/imagenet.py's value in brackets):
  image size S     64 (resize 73, centre crop 64)       [224 (256)]
  search network   ResNet-18 at width 8, 0.2M params    [ResNet-18, 11.7M]
  pretraining      300 steps of 64 on train[:10000]     [30 epochs of 1024 on train[:200000]]
  evaluation set   validation[:1000]                    [validation, 50,000]
  layers           2                                    [5]
  steps per layer  30, policy lr 0.2                    [1024, 0.025]
  search pool      train[10000:11000]                   [train[200000:210000]]
  validation pool  train[11000:13000], any class        [64 per class of train[210000:330000], same class]
  search images    4 per step, 8 val images each        [16, 64]
  g samples (k>=2) M = 32, E = 1 prefix                 [556, 16]
  chunk            64 images per backward/JVP pass      [128]
The validation batch is drawn from the whole pool (`class_conditional=False`,
the paper's reading), because 1000 classes x 8 same-class images would need
~8,000+ validation images, more than a CPU should decode here.

Measured on the shared 2-core VM (load ~2.5 from other jobs) with TFDS's
mock `imagenet2012` (2,000 random JPEGs of 5-50 px): 8 min 8 s end to end --
pretraining ~1.5 min, layer 1 (stage 1) 257 s at 7.5 s per step, layer 2
(stage k) 111 s at 2.6 s per step (first steps ~38 s with compilation).
Real ImageNet JPEGs (~110 kB) cost more to decode: the pretraining streams
19,200 of them and the pools and evaluation read 4,000, an estimated 2-4 min
more on 2 cores (not measured: no ImageNet here).

Without ImageNet on disk, the same job runs on any prepared TFDS
image-classification dataset by name, e.g. `--config.input.name=imagenette`
(with its own split slices), or in Python on TFDS's mock data:

  with tensorflow_datasets.testing.mock_data(num_examples=2000):
    deepaa_jax.search_job.run(config, workdir)

(TFDS's mock data ignores split slices: every split is the same
`num_examples` images.)
"""

import pathlib

from deepaa_jax import config as config_lib


def get_config():
  config = config_lib.load_config_file(
      pathlib.Path(__file__).with_name("imagenet.py"))
  config.input.image_size = 64  # S (official 224).
  config.input.resize_size = 0  # round(64 * 256 / 224) = 73.
  config.input.tfds_train_split = "train[:10000]"  # pretraining subset (200,000).
  config.input.tfds_eval_split = "validation[:1000]"  # (all 50,000).
  config.input.shuffle_buffer = 2_000  # encoded JPEGs.
  config.pretrain.model.name = "resnet18_w8"  # ResNet-18 at base width 8 (64).
  config.pretrain.train.num_epochs = 0.0  # a step count instead:
  config.pretrain.train.num_steps = 300  # (30 epochs of 195 steps).
  config.pretrain.train.batch_size = 64  # (1024).
  config.pretrain.train.learning_rate = 0.1  # (0.4).
  config.pretrain.train.warmup_epochs = 0.0  # (2).
  config.pretrain.train.eval_batch_size = 250  # 4 batches.
  config.pretrain.train.checkpoint_every_steps = 100
  config.pretrain.train.log_every_steps = 50
  config.pretrain.train.bf16 = False  # CPU: float32.
  config.search.num_layers = 2  # (5).
  config.search.steps_per_layer = 30  # (1024).
  config.search.policy_lr = 0.2  # lr x steps = 6 logit units (0.025 x 1024).
  config.search.search_pool = "train[10000:11000]"  # (train[200000:210000]).
  config.search.val_pool = "train[11000:13000]"  # (train[210000:330000]).
  config.search.val_per_class = 0  # all (64 per class).
  config.search.class_conditional = False  # any-class validation batch (see above).
  config.search.num_images = 4  # (16).
  config.search.val_batch = 8  # (64).
  config.search.gt_samples = 32  # (556).
  config.search.g_prefixes = 1  # (16).
  config.search.chunk_size = 64  # (128).
  config.search.checkpoint_every_steps = 10
  return config
