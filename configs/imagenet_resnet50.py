"""ImageNet, ResNet-50, DeepAA policy imagenet_1 (spec §4.3-§4.4), streamed.

python -m deepaa_jax.main --config=configs/imagenet_resnet50.py \
  --workdir=gs://BUCKET/runs/in_resnet50 --config.input.data_dir=gs://BUCKET/tfds

Reads a prepared TFDS `imagenet2012` (TFRecord, as `tfds build` writes it) a
batch at a time (`deepaa_jax.streaming`): each process reads its own share,
decodes on the host, and brings every image to S x S = 224 x 224 (shorter side
to 256, bicubic antialiased, centre crop); the policy then runs on the device
per example. Evaluation: resize 256 / centre crop 224 (spec §4.3), reported
as top-1 and top-5 on the 50,000 validation images.

The recipe is the official `resnet50_imagenet_DeepAA_8x256_{1,2}.yaml`: 8 GPUs
x 256 = 2048 per step, 270 epochs, lr 0.1 x 8 = 0.8 peak reached by a 5-epoch
linear warm-up from 0.1 (GradualWarmupScheduler multiplier 8), then x0.1 at
epochs 90/180/240 counted after warm-up (absolute 95/185/245), wd 1e-4 off
BN, no clipping, Nesterov 0.9, test every 20 epochs. Batch Augmentation:
`--config.train.ba_copies=M` (not in the official ImageNet recipe).

**Deviation (static shapes):** the official training input applies the policy
to the full-resolution image and then centre pads/crops to 224 without a
resize (spec §2.12/§4.3); here the policy runs on the 224 x 224 image of the
rule above, and RandResizeCrop resizes its box back to 224.

Scale: 1,281,167 / 2048 = 625 steps per epoch, 168,750 steps. Not run here
(no ImageNet offline, no accelerator); the same code path runs in the tests on
TFDS's mock imagenet2012 with a narrow ResNet at S = 32
(tests/test_streaming.py).
"""

from deepaa_jax import config as config_lib


def get_config(policy: str = "imagenet_1"):
  """`policy`: "imagenet_1" (default) or "imagenet_2"."""
  config = config_lib.base_config()
  config.model.name = "resnet50"  # torchvision-layout ResNet-50, last BN gamma 0.
  config.policy.kind = "official"  # the authors' searched policy.
  config.policy.path = config_lib.official_policy_path(policy)  # op 16 read as the 60 px cutout.
  config.policy.space = "imagenet"  # 139 ImageNet transforms (RRC, Cutout60).
  config.train.num_epochs = 270  # official: 270.
  config.train.batch_size = 2048  # 8 GPUs x 256.
  config.train.learning_rate = 0.8  # 0.1 x multiplier 8.
  config.train.warmup_epochs = 5.0  # official: 5.
  config.train.warmup_init_lr = 0.1  # warm-up 0.1 -> 0.8.
  config.train.schedule = "step"  # MultiStepLR after warm-up.
  config.train.step_milestones = (90, 180, 240)  # after warm-up: absolute 95/185/245.
  config.train.step_factor = 0.1  # gamma.
  config.train.weight_decay = 1e-4  # official: 1e-4, BN excluded.
  config.train.decay_mask = "non_bn"  # PyTorch eval code.
  config.train.grad_clip_norm = 0.0  # official: clip 0 (off).
  config.train.random_sign = True  # eval code's random_mirror = True.
  config.train.eval_every_epochs = 20  # official: every 20 epochs.
  config.train.eval_batch_size = 1000  # 50k validation images.
  config.train.checkpoint_every_steps = 1000  # ~1.6 epochs between saves.
  config.train.bf16 = True  # accelerators: bfloat16 compute, f32 params.
  config.input.name = "imagenet2012"  # TFDS name.
  config.input.source = "tfds"  # prepared TFDS dir (download=False).
  config.input.pipeline = "stream"  # never whole in memory.
  config.input.image_size = 224  # S: official 224.
  config.input.resize_size = 256  # shorter side before the crop (spec §4.3 test).
  config.input.shuffle_buffer = 50_000  # encoded JPEGs (~110 kB each): ~5.5 GB.
  return config
