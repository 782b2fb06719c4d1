"""Known-answer tests of the search on a trained network (issue 18).

A tiny network (`tests.test_reward.Tiny`) is trained, without flip or crop,
on synthetic 32 x 32 images whose class c is a bright vertical bar at column
1 + 4c (left half) on a noisy grey background, so it is neither flip- nor
shift-invariant (100 % clean accuracy, 28 % on mirrored images). The search
pool holds such images; the validation pool holds the same kind of images
MIRRORED left-right (or SHIFTED 5 px right, zero fill): the clean validation
gradient v is then the gradient of exactly what RandFlip (or TranslateX
-0.15, i.e. 5 px right with zero fill) makes of a search image. Maximising
cos(v, g) over the 139-transform simplex by plain gradient ascent on the
exact expected objective puts 0.93 on RandFlip (0.88 on TranslateX -0.15).

Measured (CPU, fast compiles, the seeds below, 60 Adam steps at lr 0.1,
S = 4, V = 8, M = 16; at init p = 3.2e-4 except Identity 0.956):

  mirrored, stage 2, E = 4, std_coef 1:  RandFlip 0.578 (Identity 0.232,
    Contrast 0.1 0.038); cos 0.12 -> 0.78.
  mirrored, stage 1:                     RandFlip 0.611 (Identity 0.162);
    cos 0.20 -> 0.80.
  control (unmirrored), stage 2:         Identity 0.458, RandFlip 0.0000.
  shifted, stage 2, E = 1, std_coef 0:   TranslateX -0.15 0.785 (right
    shifts + RandCrop 0.829, RandCrop alone 0.003); cos -0.08 -> 0.96.
  mirrored, stage 2, E = 1, std_coef 1:  RandFlip 0.0005; Identity 0.231,
    Contrast 0.1 0.202; cos 0.12 -> 0.40 (xfail below).
  shifted, stage 2, E = 4, std_coef 1:   right shifts + RandCrop 0.025;
    Identity 0.180, Equalize / AutoContrast 0.065 (xfail below).

The two xfails are findings: with the std regulariser (Eq. 10, c = 1) a
one-coin RandFlip column at E = 1 (`configs/cifar10_cpu*.py`) scores about
mean - std = min(flipped, unflipped) reward over the images, and per-image
rewards scaled by 1 / |g_i| vary so much across images that c = 1 also
rejects the exact, deterministic translation (c = 0 finds it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepaa_jax import input_pipeline as ip
from deepaa_jax import search as SE
from deepaa_jax import space as S
from tests.test_reward import Tiny

pytestmark = pytest.mark.usefixtures("fast_compiles")

CIFAR = S.cifar_space()
FLIP = CIFAR.index_of("RandFlip")
CROP = CIFAR.index_of("RandCrop")
# TranslateX levels with a negative value move the content right.
RIGHT_SHIFTS = [i for i in range(CIFAR.size)
                if CIFAR.ops[i] == S.TRANSLATE_X and CIFAR.values[i] < 0]
P_INIT = 1 / (np.exp(8) + 138)  # every non-Identity entry at init
NUM_CLASSES = 4
SHIFT = 5  # px; TranslateX -0.15 moves content right by 4.8 -> 5 px


def _images(rng, n, *, mirror=False, shift=0):
  """uint8[n, 32, 32, 3] and int labels: class c is a bar at 1 + 4c."""
  labels = np.arange(n) % NUM_CLASSES
  x = rng.normal(100, 8, (n, 32, 32, 3))
  for i, c in enumerate(labels):
    x[i, :, 1 + 4 * c:3 + 4 * c] += 30
  x = np.clip(x, 0, 255).astype(np.uint8)
  if mirror:
    x = x[:, :, ::-1]
  if shift:
    x = np.roll(x, shift, axis=2)
    x[:, :, :shift] = 0  # TranslateX's fill
  return x, labels


@pytest.fixture(scope="module")
def search_model():
  """Tiny trained 40 SGD steps (batch 64) on 512 unaugmented images."""
  rng = np.random.default_rng(0)
  x, y = _images(rng, 512)
  model = Tiny(num_classes=NUM_CLASSES)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  mean = jnp.asarray(ip.CIFAR_SEARCH_MEAN) * 255
  std = jnp.asarray(ip.CIFAR_STD) * 255
  opt = optax.sgd(0.005, momentum=0.9)

  @jax.jit
  def step(params, stats, opt_state, images, labels):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": stats},
                                (images - mean) / std, train=True,
                                mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean(), new["batch_stats"]
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = opt.init(params)
  xf = x.astype(np.float32)
  for _ in range(40):
    idx = rng.integers(0, len(x), 64)
    params, stats, opt_state = step(params, stats, opt_state, xf[idx], y[idx])
  # Not flip- or shift-invariant: chance level on mirrored test images.
  test_x, test_y = _images(np.random.default_rng(99), 200)
  predict = jax.jit(lambda z: model.apply(
      {"params": params, "batch_stats": stats}, (z - mean) / std,
      train=False).argmax(-1))
  clean = np.mean(predict(test_x.astype(np.float32)) == test_y)
  mirrored = np.mean(predict(test_x[:, :, ::-1].astype(np.float32)) == test_y)
  assert clean > 0.95 and mirrored < 0.5, (clean, mirrored)
  return SE.make_search_model(model, params, stats,
                              mean=ip.CIFAR_SEARCH_MEAN, std=ip.CIFAR_STD)


def _search(model, *, val, stage, g_prefixes=4, std_coef=1.0, seed=0):
  """p float32[139] after 60 steps (lr 0.1) of layer `stage` on top of
  Identity one-hot layers, and the history."""
  rng = np.random.default_rng(1)
  xs, ys = _images(rng, 64)
  xv, yv = _images(rng, 64, mirror=val == "mirror",
                   shift=SHIFT if val == "shift" else 0)
  data = SE.make_search_data(ip.Split(xs, ys), ip.Split(xv, yv), NUM_CLASSES,
                             val_batch=8)
  config = SE.default_search_config()
  config.update(num_images=4, val_batch=8, gt_samples=16,
                g_prefixes=g_prefixes, chunk_size=1024, loop="host",
                policy_lr=0.1, std_coef=std_coef)
  earlier = np.zeros((stage - 1, CIFAR.size))
  earlier[:, 0] = 1.0
  logits, history = SE.search_layer(jax.random.key(seed), model, earlier,
                                    data, config, num_steps=60)
  return np.asarray(jax.nn.softmax(logits)), history


def _assert_flip_wins(p, history):
  assert np.argmax(p) == FLIP, np.argsort(-p)[:5]
  assert p[FLIP] > 0.4 and p[FLIP] > 1000 * P_INIT, p[FLIP]
  assert p[FLIP] > 2 * np.delete(p, FLIP).max()
  assert np.mean(history["cos_sim"][-5:]) > history["cos_sim"][0] + 0.4


def test_mirrored_validation_pulls_stage_k_mass_to_randflip(search_model):
  """Stage 2 (MC g, E = 4 prefixes, mean - std over images): RandFlip wins;
  with an unmirrored validation pool (control) it stays at ~0."""
  p, history = _search(search_model, val="mirror", stage=2)
  _assert_flip_wins(p, history)
  control, _ = _search(search_model, val="none", stage=2)
  assert np.argmax(control) == 0, np.argsort(-control)[:5]
  assert control[FLIP] < 0.01


def test_mirrored_validation_pulls_stage_1_mass_to_randflip(search_model):
  p, history = _search(search_model, val="mirror", stage=1)
  _assert_flip_wins(p, history)


def test_shifted_validation_pulls_stage_k_mass_to_right_shifts(search_model):
  """Without the std term, the mass goes to TranslateX -0.15 (5 px right,
  the exact shift) and its neighbours, RandCrop included as a candidate."""
  p, history = _search(search_model, val="shift", stage=2, g_prefixes=1,
                       std_coef=0.0)
  group = RIGHT_SHIFTS + [CROP]
  assert np.argmax(p) == CIFAR.index_of("TranslateX", 4)
  assert p[group].sum() > 0.6 and p[group].sum() > 100 * len(group) * P_INIT
  assert p[group].sum() > 2 * p[0]
  assert p[FLIP] < 0.01
  assert np.mean(history["cos_sim"][-5:]) > 0.9


@pytest.mark.xfail(strict=True, reason=(
    "issue 18 finding: with one prefix (E = 1, configs/cifar10_cpu*.py) and "
    "std_coef 1, RandFlip's single coin per image makes mean - std over the "
    "images ~ min(flipped, unflipped) reward; RandFlip ends at 5e-4"))
def test_mirrored_stage_k_with_one_prefix_finds_randflip(search_model):
  p, history = _search(search_model, val="mirror", stage=2, g_prefixes=1)
  _assert_flip_wins(p, history)


@pytest.mark.xfail(strict=True, reason=(
    "issue 18 finding: per-image rewards scaled by 1/|g_i| vary so much "
    "across images that mean - 1 * std rejects the exact translation; the "
    "mass stays on Identity and spreads to AutoContrast, Equalize, Contrast"))
def test_shifted_stage_k_with_the_std_term_finds_the_shift(search_model):
  p, _ = _search(search_model, val="shift", stage=2)
  assert p[RIGHT_SHIFTS + [CROP]].sum() > 0.6
