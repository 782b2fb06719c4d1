"""CIFAR-10 as 64 x 64 JPEGs, streamed (deepaa_jax.streaming), on a CPU.

python experiments/prepare_tfds.py --npz=../shared/data/cifar10.npz \
  --data_dir=/tmp/tfds --name=cifar10_jpeg64 --upscale=2 --encoding=jpeg
python -m deepaa_jax.main --config=configs/cifar10_stream_cpu.py \
  --workdir=/tmp/runs/stream_cpu --config.input.data_dir=/tmp/tfds

The streaming path (the one configs/imagenet_resnet50.py takes) on a real,
small image dataset: no image-classification set with real photos installs
offline from a package (scikit-learn's digits are 8 x 8 grey), so the first
command writes the offline CIFAR-10 (`../shared/data/cifar10.npz`) upscaled 2x
(Pillow bicubic) as quality-95 JPEGs into a prepared TFDS dataset (35 s,
125 MB). Training then reads it a batch at a time: tf.data decodes each JPEG
on the host, resizes the shorter side to 64 (an identity resize: the
256/224 rule with S = 56 gives round(56 * 256 / 224) = 64) and centre-crops
56 x 56; the official CIFAR policy cifar_1 then runs per example on the
device. The normalisation constants are measured once from 2,000 training
images and cached in the workdir (input_stats.json).

A narrow ResNet-18 (base width 16, 0.7 M params; ImageNet stem: 56 -> 14 px
before the first block) for 2 epochs (3,124 steps of 32), lr 0.05 after a
quarter-epoch linear warm-up from 0, cosine to 0, Nesterov, wd 5e-4 off BN,
clip 5, the policy with the random sign flip; the 10,000 test images at the
end (same resize 64 / crop 56). This checks the streamed pipeline end to
end; it does not reproduce a paper number.

Measured on 2 CPU cores shared with other jobs (load average 6-8): 6 min 50 s
wall for the command (402 s in `train`, 385 s of it training), 305 images/s,
test accuracy 51.9 % (top-5 93.1 %), peak RSS 2.0 GB.

Streamed vs in memory (`--config.input.pipeline=memory`, which decodes all
60,000 JPEGs up front and trains on the whole 64 x 64 images, so both at
`--config.input.image_size=64`, 500 steps, two runs each in alternating order,
load average 3-5): 541 and 361 images/s streamed, 369 and 352 in memory:
streaming is no slower here (the host-side JPEG decode keeps up with the
step; the spread is the shared machine's). Peak RSS 2.0 GB streamed, 4.0 GB
in memory.
"""

from deepaa_jax import config as config_lib


def get_config():
  """The streamed CIFAR-10 JPEG run (no arguments)."""
  config = config_lib.base_config()
  config.model.name = "resnet18_w16"  # ImageNet-style ResNet-18 at 1/4 width: 56 px -> 14 px stem.
  config.policy.kind = "official"  # the authors' searched policy.
  config.policy.path = config_lib.official_policy_path("cifar_1")  # policy_DeepAA_cifar_1.npz.
  config.policy.space = "cifar"  # the CIFAR transform set, on the 56 x 56 image.
  config.train.num_epochs = 2.0  # 2 x 1,562 steps of 32 (drop_last).
  config.train.batch_size = 32  # small batches are faster per image on XLA:CPU.
  config.train.learning_rate = 0.05  # peak.
  config.train.warmup_epochs = 0.25  # linear from 0 over the first 390 steps.
  config.train.min_lr = 0.0  # cosine to 0.
  config.train.eval_every_epochs = 0  # the 10k test set only at the end.
  config.train.eval_batch_size = 500  # 20 test batches.
  config.train.checkpoint_every_steps = 1562  # once per epoch.
  config.train.log_every_steps = 250  # 12 records per run.
  config.input.name = "cifar10_jpeg64"  # written by experiments/prepare_tfds.py (above).
  config.input.source = "tfds"  # a prepared TFDS dir; pass --config.input.data_dir.
  config.input.pipeline = "stream"  # decode a batch at a time on the host.
  config.input.image_size = 56  # S: the centre crop.
  config.input.resize_size = 64  # shorter side first: 64 -> 64, the 256/224 rule.
  config.input.shuffle_buffer = 10_000  # encoded JPEGs (~2 kB each): ~20 MB.
  return config
