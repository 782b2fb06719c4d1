"""Tests of deepaa_jax.train and deepaa_jax.config on tiny synthetic data.

Every run uses WRN-10-1 on 16x16 images with a handful of steps, with XLA's
optimisations mostly disabled (fast compiles, flax examples' train_test.py);
compiled steps are cached per static setting, so the resume tests reuse the
end-to-end test's compilation.
"""

import bisect
import json
import logging as py_logging
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
from deepaa_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 16  # image side: small, but the CIFAR ops (pad-4 crop, cutout) work


pytestmark = pytest.mark.usefixtures("fast_compiles")


def load_config(name: str) -> ml_collections.ConfigDict:
  return config_lib.load_config_file(REPO / "configs" / f"{name}.py")


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
  """A policy file in the official npz format, for configs whose default
  policy lives in ../shared: validation only needs the file to exist. The
  standard baseline written by `save_official_npz`, so the tests run (not
  skip) without ../shared."""
  path = tmp_path_factory.mktemp("policy") / "policy_standard.npz"
  return str(policy_lib.save_official_npz(path, policy_lib.baseline(
      "standard", space_lib.cifar_space())))


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  labels = np.arange(64) % 4
  # Class-dependent brightness so that there is something to learn.
  images = rng.integers(0, 64, (64, SIZE, SIZE, 3)) + 48 * labels[:, None,
                                                                 None, None]
  test_labels = np.arange(20) % 4
  test = rng.integers(0, 64, (20, SIZE, SIZE, 3)) + 48 * test_labels[
      :, None, None, None]
  np.savez(path, train_images=images.astype(np.uint8), train_labels=labels,
           test_images=test.astype(np.uint8), test_labels=test_labels)
  return str(path)


def tiny_config(npz, **train_overrides):
  config = load_config("test")
  config.input.name = "tiny"
  config.input.npz_path = npz
  config.input.train_subset = 0
  config.train.batch_size = 8
  config.train.eval_batch_size = 16
  config.train.num_steps = 4
  config.train.checkpoint_every_steps = 2
  config.train.log_every_steps = 2
  config.train.update(train_overrides)
  return config


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------
# End to end and resume.
# ---------------------------------------------------------------------------


def test_run_writes_outputs(tiny_npz, tmp_path):
  metrics = train.run(tiny_config(tiny_npz), str(tmp_path))
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["step"] == results["total_steps"] == 4 and results["complete"]
  # Recomputed from the final state (restored by a second `train` call, a
  # no-op on a finished run) with one plain forward pass over the 20 test
  # images, not through `evaluate`'s padded and masked batches of 16.
  config = tiny_config(tiny_npz)
  state, _ = train.train(config, str(tmp_path))
  dataset = input_pipeline.load_dataset(config.input)
  test = dataset.splits["test"]
  assert not config.train.bf16 and config.train.normalization == "eval"
  logits = train.build_model(config.model, num_classes=4).apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      input_pipeline.normalize(test.images, dataset.mean, dataset.std),
      train=False)
  correct = int(np.sum(np.argmax(logits, -1) == test.labels))
  np.testing.assert_equal(results["test_accuracy"], correct / test.size)
  np.testing.assert_allclose(results["test_loss"], np.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, test.labels)),
                             rtol=1e-5)
  assert math.isfinite(results["test_loss"])
  assert results["policy"]["name"] == "deepta"
  assert results["config"]["train"]["num_steps"] == 4
  assert results["wall_time_s"] > 0 and results["images_per_s"] > 0
  assert metrics["test_accuracy"] == results["test_accuracy"]
  records = [json.loads(l) for l in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train_loss" in r] == [2, 4]
  assert [r["step"] for r in records if "test_accuracy" in r] == [4]
  assert (tmp_path / "checkpoints" / "4").is_dir()
  assert (tmp_path / "config.json").is_file()


def test_resume_is_bit_identical_and_loud(tiny_npz, tmp_path, caplog):
  config = tiny_config(tiny_npz)
  full, _ = train.train(config, tmp_path / "full")

  # A run "killed" after step 3, whose last checkpoint is step 2.
  killed = tmp_path / "killed"
  train.train(config, killed, stop_after_step=3)
  shutil.rmtree(killed / "checkpoints" / "3")
  caplog.set_level(py_logging.WARNING)
  resumed, metrics = train.train(config, killed)

  assert metrics["resumed_from_step"] == 2
  banner = [r.getMessage() for r in caplog.records
            if r.levelno == py_logging.WARNING and "RESUMING" in r.getMessage()]
  assert banner and "from step 2 of 4" in banner[0]
  assert str(killed) in banner[0]
  leaves_equal(full.params, resumed.params)
  leaves_equal(full.batch_stats, resumed.batch_stats)
  leaves_equal(full.opt_state, resumed.opt_state)
  assert int(resumed.step) == 4

  # The metric log has no duplicate steps and matches the uninterrupted run.
  def train_records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(l) for l in lines if "train_loss" in l]
  assert train_records(killed) == train_records(tmp_path / "full")


def test_resume_refuses_a_different_config(tiny_npz, tmp_path):
  train.train(tiny_config(tiny_npz), tmp_path, stop_after_step=2)
  with pytest.raises(ValueError, match=r"config\.train\.learning_rate"):
    train.train(tiny_config(tiny_npz, learning_rate=0.5), tmp_path)


def test_nan_guard_fails_fast(tiny_npz, tmp_path):
  config = tiny_config(tiny_npz, learning_rate=1e30, grad_clip_norm=0.0,
                       num_steps=6)
  config.policy.kind = "none"
  with pytest.raises(train.NonFiniteLossError,
                     match=r"Training diverged .* at step \d+ .*loss "):
    train.train(config, tmp_path)
  assert not (tmp_path / "results.json").exists()


# ---------------------------------------------------------------------------
# Batch Augmentation.
# ---------------------------------------------------------------------------


def test_batch_augmentation_loss_is_mean_over_all_copies():
  b, m = 4, 3
  model = train.build_model(ml_collections.ConfigDict({"name": "wrn_10_1"}),
                            num_classes=4)
  params, stats = train.init_variables(model, (SIZE, SIZE, 3),
                                       jax.random.key(0))
  policy = policy_lib.baseline("deepta", space_lib.cifar_space(),
                               num_layers=1)
  tx = optax.sgd(0.1)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  step = train.make_train_step(model, policy, tx, mean=mean, std=std,
                               ba_copies=m, ba_per_copy_bn=True,
                               donate=False)
  rng = np.random.default_rng(1)
  batch = {"image": rng.integers(0, 256, (b, SIZE, SIZE, 3), dtype=np.uint8),
           "label": np.arange(b, dtype=np.int32)}
  state = train.TrainState(step=jnp.int32(5), params=params,
                           batch_stats=stats, opt_state=tx.init(params))
  key = jax.random.key(7)
  _, metrics = step(state, batch, key)

  # The images the step saw: B*M, the copies of one image differ.
  k = train.step_key(key, 5)
  images = train.augment_batch(jax.random.fold_in(k, 0), batch["image"],
                               policy, copies=m)
  assert images.shape == (b * m, SIZE, SIZE, 3)
  copies = np.asarray(images).reshape(m, b, -1)
  for i in range(b):
    assert len({copies[c, i].tobytes() for c in range(m)}) > 1

  # Reference: mean CE over all B*M images, BN statistics per copy of B
  # images (as on each of the official 8 GPUs).
  x = input_pipeline.normalize(images, mean, std)
  apply = jax.jit(lambda g: model.apply(
      {"params": params, "batch_stats": stats}, g, train=True,
      mutable=["batch_stats"])[0])
  logits = np.concatenate([apply(g) for g in np.split(np.asarray(x), m)])
  labels = np.tile(batch["label"], m)
  expected = np.mean(np.asarray(train.cross_entropy(logits, labels)))
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


def test_audit_replays_a_real_training_step(tiny_npz, monkeypatch):
  """(seed, step, example) -> the exact transforms: the audit alone rebuilds
  every augmented image of a real training step (2 layers, Batch
  Augmentation x2, the evaluation's random sign), bit for bit."""
  seed, step_no, b, m = 3, 9, 8, 2
  dataset = input_pipeline.load_dataset(tiny_config(tiny_npz).input)
  split = dataset.splits["train"]
  model = train.build_model(ml_collections.ConfigDict({"name": "wrn_10_1"}),
                            num_classes=4)
  params, stats = train.init_variables(model, (SIZE, SIZE, 3),
                                       jax.random.key(0))
  policy = policy_lib.baseline("deepta", space_lib.cifar_space(),
                               num_layers=2)
  tx = optax.sgd(0.1)
  captured = []
  real_augment = train.augment_batch

  def recording(*args, **kwargs):  # what the step's network sees
    images = real_augment(*args, **kwargs)
    jax.debug.callback(lambda x: captured.append(np.asarray(x)), images)
    return images
  monkeypatch.setattr(train, "augment_batch", recording)
  step = train.make_train_step(model, policy, tx, mean=(0.5,) * 3,
                               std=(0.25,) * 3, ba_copies=m,
                               random_sign=True, donate=False)
  # The batch the training loop feeds at step 9 (epoch 1, offset 1).
  spe = input_pipeline.steps_per_epoch(split.size, b, True)
  epoch, offset = divmod(step_no, spe)
  batch = next(input_pipeline.batches(split, b, seed=seed, epoch=epoch,
                                      start_step=offset))
  state = train.TrainState(step=jnp.int32(step_no), params=params,
                           batch_stats=stats, opt_state=tx.init(params))
  _, run_key = train.run_keys(seed)
  jax.block_until_ready(step(state, batch, run_key))
  (seen,) = captured
  assert seen.shape == (m * b, SIZE, SIZE, 3)

  names = set()
  for row in range(m * b):
    image_index = train.training_example(split.size, b, seed=seed,
                                         step=step_no, row=row % b)
    np.testing.assert_array_equal(split.images[image_index],
                                  batch["image"][row % b])
    records = train.audit_example(policy, seed=seed, step=step_no,
                                  example=row, image_shape=(SIZE, SIZE, 3),
                                  random_sign=True)
    assert [r["layer"] for r in records] == [1, 2]
    x = split.images[image_index]
    for r in records:
      assert r["name"] == policy.space.transform_name(r["index"])
      x = space_lib.replay_transform(x, r["index"], r["randomness"],
                                     policy.space)
      names.add(r["name"])
    np.testing.assert_array_equal(np.asarray(x), seen[row])
  assert len(names) > 10  # 32 draws from the uniform 139: varied transforms
  # Another step or example: other choices.
  other = train.audit_example(policy, seed=seed, step=step_no + 1, example=0,
                              image_shape=(SIZE, SIZE, 3), random_sign=True)
  first = train.audit_example(policy, seed=seed, step=step_no, example=0,
                              image_shape=(SIZE, SIZE, 3), random_sign=True)
  assert ([r["index"] for r in other], other[0]["draws"]) != (
      [r["index"] for r in first], first[0]["draws"])


# ---------------------------------------------------------------------------
# Learning-rate schedule.
# ---------------------------------------------------------------------------


def schedule_config(**kw):
  c = config_lib.train_config()
  c.update(kw)
  return c


def test_cifar_schedule_warmup_from_zero_then_cosine():
  spe = 7
  c = schedule_config(num_epochs=20, warmup_epochs=5.0, learning_rate=0.1)
  fn = train.learning_rate_schedule(c, spe)
  steps = np.arange(20 * spe + 1)
  t = steps / spe
  expected = np.where(
      t < 5, 0.1 * t / 5,
      0.5 * 0.1 * (1 + np.cos(np.pi * np.clip(t - 5, 0, 15) / 15)))
  got = np.array([float(fn(s)) for s in steps])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
  assert got[0] == 0.0 and abs(got[5 * spe] - 0.1) < 1e-7
  assert got[-1] < 1e-8


def test_imagenet_schedule_warmup_multiplier_and_milestones():
  # resnet50_imagenet: base 0.1, multiplier 8, 5 warm-up epochs, then
  # MultiStepLR([90, 180, 240], 0.1) stepped with (epoch - 5).
  spe = 10
  c = schedule_config(num_epochs=270, warmup_epochs=5.0, warmup_init_lr=0.1,
                      learning_rate=0.8, schedule="step",
                      step_milestones=(90, 180, 240), step_factor=0.1)
  fn = train.learning_rate_schedule(c, spe)

  def official(t):  # GradualWarmupScheduler(multiplier=8) closed form
    if t < 5:
      return 0.1 * ((8 - 1) * t / 5 + 1)
    return 0.8 * 0.1 ** bisect.bisect_right([90, 180, 240], t - 5)

  for epoch in (0, 1.3, 2.5, 4.9, 5, 50, 94.9, 95, 120, 184.9, 185, 244.9,
                245, 269.9):
    np.testing.assert_allclose(float(fn(round(epoch * spe))), official(epoch),
                               rtol=1e-5, err_msg=f"epoch {epoch}")
  assert abs(float(fn(25)) - 0.45) < 1e-6  # epoch 2.5: 0.1 * (7 * 0.5 + 1)


def test_search_pretraining_schedule():
  # Spec §2.3: cosine 0.1 -> 1e-7 over 45 * 39 steps, no warm-up.
  c = schedule_config(num_epochs=45, warmup_epochs=0.0, min_lr=1e-7)
  fn = train.learning_rate_schedule(c, 39)
  total = 45 * 39
  for s in (0, 1, 500, total // 2, total - 1, total):
    expected = 1e-7 + (0.1 - 1e-7) * 0.5 * (1 + math.cos(math.pi * s / total))
    np.testing.assert_allclose(float(fn(s)), expected, rtol=1e-5, atol=1e-9)


def test_total_steps():
  assert config_lib.total_steps(schedule_config(num_epochs=2.5), 10) == 25
  assert config_lib.total_steps(
      schedule_config(num_epochs=0, num_steps=7), 10) == 7
  with pytest.raises(ValueError, match="Exactly one of config.train"):
    config_lib.total_steps(schedule_config(num_epochs=1, num_steps=7), 10)


# ---------------------------------------------------------------------------
# Optimiser.
# ---------------------------------------------------------------------------


def tiny_tree():
  return {
      "bn1": {"scale": jnp.full((2,), 2.0), "bias": jnp.full((2,), 0.5)},
      "conv1": {"kernel": jnp.full((1, 1, 2, 2), 1.0),
                "bias": jnp.full((2,), -1.0)},
      "head": {"kernel": jnp.full((2, 3), 3.0), "bias": jnp.full((3,), 4.0)},
  }


def opt_config(**kw):
  c = schedule_config(num_epochs=0, num_steps=100, warmup_epochs=0.0,
                      schedule="step", step_milestones=(), learning_rate=0.1)
  c.update(kw)
  return c


def test_weight_decay_masks():
  params = tiny_tree()
  non_bn = train.weight_decay_mask(params, kind="non_bn")
  keras = train.weight_decay_mask(params, kind="keras")
  assert non_bn == {"bn1": {"scale": False, "bias": False},
                    "conv1": {"kernel": True, "bias": True},
                    "head": {"kernel": True, "bias": True}}
  assert keras == {"bn1": {"scale": False, "bias": False},
                   "conv1": {"kernel": True, "bias": True},
                   "head": {"kernel": True, "bias": False}}


def test_weight_decay_mask_on_a_real_model():
  model = train.build_model(ml_collections.ConfigDict({"name": "wrn_10_1"}),
                            num_classes=4)
  params, _ = train.init_variables(model, (SIZE, SIZE, 3), jax.random.key(0))
  flat = jax.tree_util.tree_flatten_with_path(
      train.weight_decay_mask(params, kind="non_bn"))[0]
  for path, decay in flat:
    names = [p.key for p in path]
    assert decay == (not names[-2].startswith("bn")), names


def test_no_weight_decay_on_batchnorm():
  params = tiny_tree()
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = train.make_optimizer(opt_config(weight_decay=0.01, nesterov=False),
                            params, 10)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_array_equal(updates["bn1"]["scale"], 0.0)
  np.testing.assert_array_equal(updates["bn1"]["bias"], 0.0)
  # Momentum buffer starts at 0: first step is -lr * wd * w.
  np.testing.assert_allclose(updates["conv1"]["kernel"], -0.1 * 0.01 * 1.0)
  np.testing.assert_allclose(updates["head"]["bias"], -0.1 * 0.01 * 4.0)


@pytest.mark.parametrize("includes_wd", [False, True])
def test_clipping_order(includes_wd):
  params = {"conv1": {"kernel": jnp.array([3.0, 4.0])}}
  grads = {"conv1": {"kernel": jnp.array([30.0, 40.0])}}  # norm 50
  wd, clip, lr = 2.0, 1.0, 0.1
  tx = train.make_optimizer(
      opt_config(weight_decay=wd, grad_clip_norm=clip, momentum=0.0,
                 nesterov=False, clip_includes_weight_decay=includes_wd),
      params, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  g, w = np.array([30.0, 40.0]), np.array([3.0, 4.0])
  if includes_wd:  # Keras: clip(grad + wd * w)
    total = g + wd * w
    expected = -lr * total * clip / np.linalg.norm(total)
  else:  # PyTorch: clip(grad) + wd * w
    expected = -lr * (g * clip / np.linalg.norm(g) + wd * w)
  np.testing.assert_allclose(updates["conv1"]["kernel"], expected, rtol=1e-6)


def test_nesterov_matches_pytorch_sgd():
  # torch.optim.SGD(lr, momentum=mu, nesterov=True, weight_decay=wd):
  #   d = g + wd * w; buf = mu * buf + d; w -= lr * (d + mu * buf)
  lr, mu, wd = 0.1, 0.9, 0.01
  params = {"conv1": {"kernel": jnp.array([1.0, -2.0])}}
  tx = train.make_optimizer(
      opt_config(learning_rate=lr, momentum=mu, weight_decay=wd,
                 grad_clip_norm=0.0), params, 10)
  state = tx.init(params)
  w, buf = np.array([1.0, -2.0]), np.zeros(2)
  for g in (np.array([0.5, 0.25]), np.array([-1.0, 2.0]),
            np.array([0.1, 0.1])):
    updates, state = tx.update({"conv1": {"kernel": jnp.asarray(g)}}, state,
                               params)
    params = optax.apply_updates(params, updates)
    d = g + wd * w
    buf = mu * buf + d
    w = w - lr * (d + mu * buf)
    np.testing.assert_allclose(params["conv1"]["kernel"], w, rtol=1e-6)


# ---------------------------------------------------------------------------
# Config validation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("section,field,value,match", [
    ("train", "schedule", "cosin",
     r"config\.train\.schedule must be one of \('cosine', 'step'\), got "
     r"'cosin'"),
    ("train", "batch_size", 0, r"config\.train\.batch_size"),
    ("train", "num_steps", 10,
     r"Exactly one of config\.train\.num_epochs and config\.train\.num_steps"),
    ("train", "decay_mask", "all", r"config\.train\.decay_mask must be one of"),
    ("train", "ba_copies", 0, r"config\.train\.ba_copies"),
    ("train", "min_lr", 1.0, r"config\.train\.min_lr"),
    ("train", "train_split", "val", r"config\.train\.train_split"),
    ("train", "step_milestones", (180, 90), r"config\.train\.step_milestones"),
    ("model", "name", "wrn_27_10", r"config\.model\.name must be one of"),
    ("policy", "kind", "autoaugment", r"config\.policy\.kind must be one of"),
    ("policy", "path", "/nonexistent/policy.npz", r"config\.policy\.path"),
    ("input", "npz_path", "/nonexistent/data.npz", r"config\.input\.npz_path"),
])
def test_validate_names_the_field(tiny_npz, policy_file, section, field,
                                  value, match):
  config = load_config("cifar10_wrn28x10")
  config.input.npz_path = tiny_npz
  config.policy.path = policy_file
  if field == "path":
    config.policy.kind = "official"
  config[section][field] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_validate_accepts_the_shipped_configs(tiny_npz, policy_file):
  for name in ("test", "cifar10_wrn28x10", "cifar10_wrn28x10_ba",
               "cifar100_wrn28x10", "cifar100_wrn28x10_ba",
               "cifar10_train_cpu"):
    config = load_config(name)
    config.input.npz_path = tiny_npz  # CIFAR-100 is not available offline
    if config.policy.kind == "official":  # its file is in ../shared
      config.policy.path = policy_file
    config_lib.validate(config)


def test_search_pretraining_config(tiny_npz):
  config = config_lib.search_pretraining_config()
  config.input.npz_path = tiny_npz  # the default CIFAR-10 is in ../shared
  config_lib.validate(config)
  t = config.train
  assert (t.train_split, t.decay_mask, t.clip_includes_weight_decay,
          t.min_lr, t.warmup_epochs) == ("pretrain", "keras", True, 1e-7, 0.0)
  # 5,000 images, batch 128, drop_last: 39 steps per epoch, 1,755 in all.
  assert config_lib.total_steps(t, 5000 // 128) == 1755


def test_imagenet_config_validates_and_streams_only(policy_file):
  config = load_config("imagenet_resnet50")
  config.policy.path = policy_file  # the official imagenet_1 is in ../shared
  config_lib.validate(config)
  assert (config.input.pipeline, config.input.image_size,
          config.input.resize_size) == ("stream", 224, 256)
  # 1,281,167 images / 2048: 625 steps per epoch, 270 epochs.
  assert config_lib.total_steps(config.train, 1281167 // 2048) == 168750
  config.input.pipeline = "memory"  # 150 GB in host memory: refused
  with pytest.raises(errors.ConfigError, match=r"config\.input\.name="):
    config_lib.validate(config)
  config.input.pipeline = "stream"
  config.input.train_subset = 1000  # a streamed subset is a TFDS slice
  with pytest.raises(errors.ConfigError, match=r"train\[:200000\]"):
    config_lib.validate(config)


def test_batch_size_must_divide_the_devices(tiny_npz, monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 3)
  config = tiny_config(tiny_npz)
  config.train.eval_batch_size = 15
  with pytest.raises(ValueError, match=r"config\.train\.batch_size=8 must be "
                     r"divisible by the number of devices \(3"):
    config_lib.validate(config)


def test_pretrain_split(tiny_npz):
  dataset = input_pipeline.load_dataset(tiny_config(tiny_npz).input)
  c = config_lib.train_config()
  c.train_split = "pretrain_small"
  split = train._train_split(dataset, c)  # first 10% in the stored order
  np.testing.assert_array_equal(split.images, dataset.train.images[:6])


def test_any_tfds_dataset_by_name_with_config_overrides_only(tmp_path):
  """A second TFDS dataset (SVHN, through TFDS's own mock data: the real
  TFDS code path with synthetic examples) trains with nothing but config
  overrides; num_classes comes from the dataset's label feature, the image
  size from the data, mean/std from the training images."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = load_config("test")
  config.input.source = "tfds"
  config.input.name = "svhn_cropped"
  config.input.train_subset = 0
  config.train.update(dict(batch_size=8, eval_batch_size=16, num_steps=2,
                           checkpoint_every_steps=0, log_every_steps=1))
  with tfds.testing.mock_data(num_examples=24):
    dataset = input_pipeline.load_dataset(config.input)
    _, metrics = train.train(config, tmp_path, dataset=dataset)
  assert dataset.num_classes == 10 and dataset.image_shape == (32, 32, 3)
  assert dataset.splits["train"].size == 24 and dataset.test.size == 24
  images = dataset.splits["train"].images.astype(np.float64) / 255
  np.testing.assert_allclose(dataset.mean, images.mean(axis=(0, 1, 2)),
                             rtol=1e-6)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["dataset"]["name"] == "svhn_cropped" and results["complete"]
  assert results["dataset"]["test_images"] == 24
  # The accuracy is over the 24 test images: a whole number of them.
  assert abs(metrics["test_accuracy"] * 24 - round(
      metrics["test_accuracy"] * 24)) < 1e-6
