"""DeepAA policy search on ImageNet (paper §4.2; spec §2.12-§2.13), streamed.

python -m deepaa_jax.main --config=configs/imagenet.py \
  --workdir=gs://BUCKET/runs/search_imagenet --config.input.data_dir=gs://BUCKET/tfds

Needs a prepared TFDS `imagenet2012` in `config.input.data_dir` (as for
configs/imagenet_resnet50.py); without one the CLI stops with one line
naming the directory. Every image is brought to S x S = 224 x 224 on the host
(shorter side to 256, bicubic antialiased, centre crop; `deepaa_jax.
streaming`). TFDS writes ImageNet's training examples in a shuffled order, so
the fixed slices below are random subsets of the classes' images.

Stages (all resumable from `--workdir`):
  1. Search network (paper L151): ResNet-18 trained for 30 epochs on the
     first 200,000 training images, `config.input.tfds_train_split`
     ("train[:200000]"), streamed. The recipe is not published; this one is
     the standard ImageNet ResNet recipe: RandResizeCrop + flip (policy
     "standard" of the ImageNet space), batch 1024, Nesterov SGD, lr 0.4
     (0.1 x 1024 / 256) after a 2-epoch warm-up, cosine to 0, weight decay
     1e-4 off BN, bf16. 195 steps per epoch, 5,859 steps.
  2. Pools, read into memory at 224 x 224 (`StreamingDataset.take`),
     disjoint from the pretraining images: the search pool
     `config.search.search_pool` = train[200000:210000] (10,000 images,
     1.5 GB; official: 100,000 of a seed-300 random split) and the validation
     pool from `val_pool` = train[210000:330000], keeping the first
     `val_per_class` = 64 images of each class (<= 64,000 images, 9.6 GB;
     official: 400,000). The official validation batch is 64 images of the
     search image's class (spec §2.6), so every class needs >= 64 of them;
     search images of the few classes with fewer in the scanned 120,000 are
     left out (logged). Reading takes ~140k JPEG decodes and ~40 GB of host
     memory at its peak; the pools are replicated on every device (~11 GB).
  3. The search: 5 layers (the shipped ImageNet policies have 5; the README
     says 6) of 1024 steps with the CIFAR settings (paper: "the same settings
     as in CIFAR-10"): 16 search images per step, 64 validation images each,
     M = 556 chains for g and E = 16 prefixes x 139 for G at k >= 2, Keras
     Adam lr 0.025, identity init.

**ResNet-50 instead of ResNet-18 (the official README).** The official code
restores a ResNet-50 checkpoint (never released) and searches with it.
`--config=configs/imagenet.py:resnet50` makes the search network the
ResNet-50 of configs/imagenet_resnet50.py (same model, policy, recipe and
input sections), so a finished run of that config is reused as is:

  python -m deepaa_jax.main --config=configs/imagenet.py:resnet50 \
    --config.pretrain_checkpoint=gs://BUCKET/runs/in_resnet50 \
    --workdir=gs://BUCKET/runs/search_imagenet_r50 --config.input.data_dir=...

`config.pretrain_checkpoint` names the workdir of that training run; its
checkpoint is restored (its settings and data must match the `pretrain` and
`input` sections, which the resnet50 variant copies; a mismatch is refused
with the differing fields named). That network trained on all of train, so
the pools overlap its training images, as with the official checkpoint.
Without `pretrain_checkpoint` the variant would train the ResNet-50 (270
epochs) inside the search workdir, and validation refuses the overlap.

**Deviations forced by static shapes** (spec §2.12; the ImageNet space's
docstring): the official search keeps each image at its native resolution
through the ops (Translate fractions and the Cutout-60 centre box refer to
the full image), centre-crops the result to 224 *without a resize* (skipped
for stage >= 2 prefixes), and centre-crops the clean validation images to
224 at native resolution. One jitted step needs one image shape, so here
every image, search and validation, is first resized (shorter side 256) and
centre-cropped to 224 x 224, the ops act on that, RandResizeCrop resizes its
box back to 224, and the final crop is the identity. The ops therefore see
~87% of the shorter side at ~0.5-0.7x the native scale. Other deviations:
the pools are fixed slices of TFDS's order, not a seeded random split; each
class's validation batch is its 64 pool images (official: 64 drawn from
~400), `--config.search.val_per_class=128` doubles the pool (19 GB).

**Cost (an estimate, not measured on an accelerator).** Per stage-k step
the search runs 16 x (64 + 556) = 9,920 images through ResNet-18's backward
pass (v and g) and 16 x 16 x 139 = 35,584 through its JVP (the rewards);
stage 1 runs 16 x (64 + 139) = 3,248 and 16 x 139 = 2,224.
`benchmarks/search_step_imagenet.py` measured on this repo's 2-core CPU VM
(float32, ResNet-18 at 224, chunks of 8, median of 2 after warm-up):
0.225 s and 9.93 GFLOP (XLA's count) per image for a backward pass, 0.194 s
and 9.88 GFLOP per image for a JVP, 47 GFLOP/s; a whole small stage-k step
(1 search image, 4 validation images, M = 4, E = 1: 8 backward + 139 JVP
images) took 28.4 s against 28.8 s from those per-image costs, so the step
is the sum of its passes. Projected: a paper stage-k step is 450 TFLOP
(2.5 h on that CPU), a stage-1 step 54 TFLOP (0.3 h). At an ASSUMED
100-200 TFLOP/s effective (H200 TF32 or a TPU v4-8 at ~20-40% of peak;
not measured) that is 2.3-4.5 s per stage-k step and 0.3-0.5 s per
stage-1 step: ~5-9 min for layer 1, ~2.6-5.1 h for layers 2-5 (1024 steps
each), ~3-5 h for the search. The ResNet-18 pretraining (6M images x ~11
GFLOP = 65 PFLOP) is minutes of compute and likely bound by decoding 6M
JPEGs on the host (~0.5 h at ~3,000-5,000 images/s). Memory: a stage-k
step holds its 16 x 2,224 augmented float32 JVP images (21 GB) plus the
pools (~11 GB) on one device; data parallel over D devices divides the
former by D. The same benchmark runs unchanged on an accelerator (not run
here: no accelerator was available).

Evaluating the found policy is a job of its own (the search's `input` is the
200k pretraining subset, so `config.evaluate` stays off): train ResNet-50 on
all of ImageNet with it,

  python -m deepaa_jax.main --config=configs/imagenet_resnet50.py \
    --config.policy.kind=file --config.policy.path=WORKDIR/policy.json ...

A reduced variant that runs on a CPU in minutes: configs/imagenet_cpu.py.
"""

import ml_collections

from deepaa_jax import config as config_lib
from deepaa_jax import input_pipeline
from deepaa_jax import search


def _resnet18_pretraining():
  """The paper's search network: ResNet-18, 30 epochs on 200k images."""
  c = config_lib.default_pretrain_config()
  c.model.name = "resnet18"  # paper L151 (official README: ResNet-50 checkpoint).
  c.policy.kind = "standard"  # ImageNet space: RandResizeCrop + flip (recipe unpublished).
  c.policy.space = "imagenet"  # RandResizeCrop to S, Cutout60.
  c.train.train_split = "train"  # streamed: config.input.tfds_train_split, the 200k subset.
  c.train.num_epochs = 30.0  # paper L151.
  c.train.batch_size = 1024  # 195 steps per epoch of 200k.
  c.train.learning_rate = 0.4  # 0.1 x 1024 / 256 (Goyal et al.).
  c.train.warmup_epochs = 2.0  # linear warm-up from 0.
  c.train.min_lr = 0.0  # cosine to 0.
  c.train.weight_decay = 1e-4  # ImageNet ResNet standard.
  c.train.decay_mask = "non_bn"  # BN excluded (PyTorch style).
  c.train.grad_clip_norm = 0.0  # no clipping.
  c.train.clip_includes_weight_decay = False  # (no clipping).
  c.train.normalization = "eval"  # ImageNet mean/std, as the search uses.
  c.train.eval_every_epochs = 0  # the 50k validation images once, at the end.
  c.train.eval_batch_size = 1000  # 50 batches.
  c.train.checkpoint_every_steps = 500  # ~2.6 epochs between saves.
  c.train.bf16 = True  # accelerators: bfloat16 compute, float32 params.
  return c


def _resnet50_pretraining():
  """The official README's search network: configs/imagenet_resnet50.py's
  ResNet-50 (model, policy, recipe and input), to restore a finished run of
  that config through `config.pretrain_checkpoint`."""
  import pathlib  # pylint: disable=g-import-not-at-top
  train_config = config_lib.load_config_file(
      pathlib.Path(__file__).with_name("imagenet_resnet50.py"))
  input_config = train_config.input
  del train_config["input"]
  del train_config["job"]
  train_config.lock()
  return train_config, input_config


def get_config(network: str = "resnet18"):
  """`network`: "resnet18" (paper, default) or "resnet50" (official README,
  with --config.pretrain_checkpoint)."""
  config = ml_collections.ConfigDict()
  config.job = "search"  # pretrain -> search -> policy -> (evaluate).
  config.input = input_pipeline.default_input_config()  # governs every stage.
  config.input.name = "imagenet2012"  # TFDS name.
  config.input.source = "tfds"  # prepared TFDS dir (download=False).
  config.input.pipeline = "stream"  # never whole in memory.
  config.input.image_size = 224  # S: official 224.
  config.input.resize_size = 256  # shorter side before the centre crop (spec §4.3 test).
  config.input.tfds_train_split = "train[:200000]"  # pretraining subset (paper L151: 200k random images).
  config.input.shuffle_buffer = 50_000  # encoded JPEGs (~110 kB each): ~5.5 GB.
  config.pretrain = _resnet18_pretraining()  # ResNet-18, 30 epochs (paper L151).
  config.pretrain_checkpoint = ""  # reuse an existing pretraining workdir (see docstring).
  if network == "resnet50":
    config.pretrain, config.input = _resnet50_pretraining()
  elif network != "resnet18":
    raise ValueError(f"configs/imagenet.py: network must be 'resnet18' or "
                     f"'resnet50', got {network!r}")
  config.search = search.default_search_config()  # CIFAR settings (paper §4.2).
  config.search.space = "imagenet"  # 139 transforms with RandResizeCrop to S, Cutout60.
  config.search.num_layers = 5  # shipped imagenet_1/2 policies: 5 (README: 6).
  config.search.data_split = "stream"  # pools are TFDS slices read into memory.
  config.search.search_pool = "train[200000:210000]"  # 10,000 images (official: 100,000).
  config.search.val_pool = "train[210000:330000]"  # scanned for the validation pool (official: 400,000).
  config.search.val_per_class = 64  # = val_batch: <= 64,000 images, 9.6 GB at 224.
  config.search.chunk_size = 128  # images per backward/JVP chunk: ResNet-18 at 224 (CIFAR: 256).
  config.evaluate = config_lib.default_evaluate_config()  # off: evaluate with configs/imagenet_resnet50.py.
  return config
