"""Tests for deepaa_jax/search.py: sampler, optimiser, MC estimates, a toy
problem with a known answer, determinism and resume."""

import jax
import jax.numpy as jnp
import numpy as np
from optax import tree_utils as otu
import pytest
from scipy import stats

from deepaa_jax import errors
from deepaa_jax import input_pipeline as ip
from deepaa_jax import reward as R
from deepaa_jax import search as SE
from deepaa_jax import search_job
from deepaa_jax import space as S
from tests.conftest import synthetic_images
from tests.test_reward import Tiny

CIFAR = S.cifar_space()

Split = ip.Split


class _Pool:
  """A pool with unchecked arrays (Split would reject them itself)."""

  def __init__(self, images, labels):
    self.images, self.labels = np.asarray(images), np.asarray(labels)


def _model(seed=0, num_classes=2):
  model = Tiny(num_classes=num_classes)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)),
                                           train=False))(jax.random.key(seed))
  return SE.make_search_model(model, variables["params"],
                              variables["batch_stats"],
                              mean=ip.CIFAR_SEARCH_MEAN, std=ip.CIFAR_STD)


def _config(**overrides):
  config = SE.default_search_config()
  config.num_images = 2
  config.val_batch = 3
  config.gt_samples = 8
  config.g_prefixes = 2
  config.chunk_size = 64
  config.loop = "host"
  config.update(overrides)
  return config


def _data(num_classes=2):
  images = np.concatenate([synthetic_images(32, s) for s in range(3)])
  labels = np.arange(len(images)) % num_classes
  return SE.make_search_data(Split(images[:12], labels[:12]),
                             Split(images[12:], labels[12:]), num_classes)


def test_initial_logits_and_keras_adam():
  logits = SE.initial_logits(139, "identity")
  p = jax.nn.softmax(logits)
  np.testing.assert_allclose(p[0], np.exp(8) / (np.exp(8) + 138), rtol=1e-6)
  np.testing.assert_allclose(logits[0], 8 - 8 / 139, rtol=1e-6)
  np.testing.assert_allclose(SE.initial_logits(5, "uniform"), 0)
  # Keras Adam by hand: m, v, then lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps).
  config = _config(policy_lr=0.1, adam_eps=1e-3)
  opt = SE.policy_optimizer(config)
  x = jnp.asarray([1.0, -2.0])
  state = opt.init(x)
  m = v = np.zeros(2)
  expected = np.asarray(x)
  for t, grad in enumerate([np.asarray([0.5, 1.0]), np.asarray([-0.2, 3.0]),
                            np.asarray([0.1, -1.0])], start=1):
    updates, state = opt.update(jnp.asarray(grad, jnp.float32), state, x)
    x = x + updates
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad ** 2
    expected = expected - 0.1 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * (
        m / (np.sqrt(v) + 1e-3))
    np.testing.assert_allclose(x, expected, rtol=1e-5)


def test_sampler_draws_class_matched_validation_batches():
  images = np.zeros((200, 2, 2, 3), np.uint8)
  labels = np.arange(200) % 5
  images[:, 0, 0, 0] = np.arange(200)  # identify images by their pixel
  data = SE.make_search_data(Split(images[:100], labels[:100]),
                             Split(images[100:], labels[100:]), 5)
  batch = jax.jit(lambda k: SE.sample_batch(k, data, num_images=16,
                                            val_batch=8))(jax.random.key(0))
  assert batch.images.shape == (16, 2, 2, 3)
  assert batch.val_images.shape == (16, 8, 2, 2, 3)
  np.testing.assert_array_equal(batch.val_labels,
                                np.repeat(batch.labels[:, None], 8, axis=1))
  ids = np.asarray(batch.val_images[..., 0, 0, 0])
  assert all(len(set(row)) == 8 for row in ids)  # without replacement
  assert ids.min() >= 100  # validation pool only
  # Deterministic per key, different across keys.
  again = SE.sample_batch(jax.random.key(0), data, num_images=16, val_batch=8)
  np.testing.assert_array_equal(again.val_images, batch.val_images)
  other = SE.sample_batch(jax.random.key(1), data, num_images=16, val_batch=8)
  assert not np.array_equal(other.val_images, batch.val_images)
  # Classes are uniform (chi-square over many draws).
  many = jax.vmap(lambda k: SE.sample_batch(k, data, num_images=16,
                                            val_batch=8).labels)(
                                                jax.random.split(
                                                    jax.random.key(2), 500))
  counts = np.bincount(np.asarray(many).ravel(), minlength=5)
  assert stats.chisquare(counts).pvalue > 1e-3
  # Paper reading: any validation images.
  loose = SE.sample_batch(jax.random.key(0), data, num_images=16, val_batch=8,
                          class_conditional=False)
  assert not np.all(np.asarray(loose.val_labels) == np.asarray(
      loose.labels)[:, None])


def test_search_data_validation():
  with pytest.raises(ValueError, match="uint8"):
    SE.make_search_data(_Pool(np.zeros((2, 4, 4, 3), np.float32), [0, 1]),
                        Split(np.zeros((2, 4, 4, 3), np.uint8), [0, 1]), 2)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
    SE.make_search_data(Split(np.zeros((2, 4, 4, 3), np.uint8), [0, 5]),
                        Split(np.zeros((2, 4, 4, 3), np.uint8), [0, 1]), 2)


def _settings(**kw):
  base = dict(space=CIFAR, num_images=1, val_batch=1, class_conditional=True,
              gt_samples=8, g_prefixes=2, std_coef=1.0, stage1_std_coef=0.0,
              normalization="cosine", loss_scale_stage1=0.25,
              loss_scale_stage_k=None, chunk_size=64, loop="host",
              augment_method="auto", policy_lr=0.025, adam_b1=0.9,
              adam_b2=0.999, adam_eps=1e-7, adam_style="keras")
  base.update(kw)
  return SE.StepSettings(**base)


def _one_hot_policy(support, probs):
  p = np.zeros(139)
  p[list(support)] = probs
  return p


def test_stage_k_monte_carlo_estimates_converge_to_the_exact_expectation():
  """Eq. 7-8 on a small support: earlier layer over {Identity, ShearX m=0,
  Invert}, current layer over {Rotate +30, Equalize}. The M full-chain
  samples follow p1 x p2 (chi-square), and the Monte-Carlo g converges to the
  exact sum over the 6 chains; the E prefixes follow p1 and each is followed
  by all 139 transforms."""
  model = _model()
  image = synthetic_images()[6]
  batch = SE.Batch(jnp.asarray(image[None]), jnp.asarray([1]),
                   jnp.asarray(image[None, None]), jnp.asarray([[1]]))
  p1 = _one_hot_policy([0, 1, 62], [0.2, 0.5, 0.3])
  p2 = _one_hot_policy([60, 63], [0.6, 0.4])
  chain = jax.jit(lambda idx: S.apply_chain(jax.random.key(0), image, idx,
                                            CIFAR))
  chains = {(a, b): np.asarray(chain(jnp.asarray([a, b])))
            for a in (0, 1, 62) for b in (60, 63)}
  loss = model.loss

  def mean_grad(imgs):
    imgs = jnp.asarray(imgs, jnp.float32)[None]
    labels = jnp.ones(imgs.shape[:2], jnp.int32)
    weights = jnp.full(imgs.shape[:2], 1.0 / imgs.shape[1])
    return R.group_weighted_grads(loss, model.w, model.frozen, imgs, labels,
                                  weights, chunk_size=512, loop="host")

  exact = jax.tree.map(lambda *gs: sum(gs), *[
      jax.tree.map(lambda g, c=p1[a] * p2[b]: c * g, mean_grad(img[None]))
      for (a, b), img in chains.items()])
  m, e = 2000, 150
  settings = _settings(gt_samples=m, g_prefixes=e)
  aug = jax.jit(lambda k: SE._augment(settings, k, batch, jnp.asarray(
      p1[None], jnp.float32), jnp.asarray(p2, jnp.float32)))(jax.random.key(3))
  samples = np.asarray(aug.g_images[0])
  keys = [next(k for k, c in chains.items() if np.array_equal(s, c))
          for s in samples]  # every sample is one of the 6 chains
  counts = np.asarray([keys.count(k) for k in chains])
  expected = np.asarray([p1[a] * p2[b] for a, b in chains]) * m
  assert stats.chisquare(counts, expected).pvalue > 1e-3
  # G: prefix e followed by every transform n.
  prefixes = np.asarray(aug.jvp_images[0]).reshape(e, 139, 32, 32, 3)
  singles = {a: np.asarray(chain(jnp.asarray([a, 0]))) for a in (0, 1, 62)}
  firsts = [next(a for a, single in singles.items()
                 if np.array_equal(pre[0], single)) for pre in prefixes]
  counts = np.asarray([firsts.count(a) for a in (0, 1, 62)])
  assert stats.chisquare(counts, np.asarray([0.2, 0.5, 0.3]) * e
                         ).pvalue > 1e-3
  n = 60  # a deterministic transform: prefix then Rotate +30
  np.testing.assert_array_equal(
      prefixes[0, n], S.apply_transform(jax.random.key(0), prefixes[0, 0], n,
                                        CIFAR))
  # The Monte-Carlo g approaches the exact expectation as M grows.
  errors = {}
  for size in (40, m):
    estimate = mean_grad(samples[:size])
    errors[size] = float(otu.tree_norm(jax.tree.map(
        jnp.subtract, estimate, exact)) / otu.tree_norm(exact))
  assert errors[2000] < errors[40]
  assert errors[2000] < 0.05, errors


def test_toy_problem_moves_probability_onto_the_aligning_transform():
  """The validation image is the inverted search image, so Invert (and its
  exact duplicate Solarize(0)) makes the augmented gradient equal to v: the
  search must move the probability there and raise the cosine."""
  model = _model()
  x = synthetic_images()[6][None]
  data = SE.make_search_data(Split(x, [0]),
                             Split((255 - x).astype(np.uint8), [0]), 2)
  config = _config(num_images=1, val_batch=1, chunk_size=139)
  logits, history = SE.search_layer(jax.random.key(0), model,
                                    np.zeros((0, 139)), data, config,
                                    num_steps=120, progress=False)
  p = np.asarray(jax.nn.softmax(logits))
  invert = CIFAR.index_of("Invert")
  solarize0 = CIFAR.index_of("Solarize", 0)
  assert set(np.argsort(-p)[:2]) == {invert, solarize0}
  assert p[invert] + p[solarize0] > 0.25  # from 6e-4 at init
  np.testing.assert_allclose(p[invert], p[solarize0], rtol=1e-4)  # duplicates
  assert history["cos_sim"][-1] > history["cos_sim"][0] + 0.3
  # Stage 1: sum_n p_n r_n = 0, so the expected reward stays ~0.
  assert max(abs(r) for r in history["expected_reward"]) < 1e-4


def _stage_k_known_answer(prefix_index, num_steps=120, std_coef=1.0):
  """Layer 2 on top of a one-transform layer 1; the validation image is the
  search image itself, so the best layer 2 undoes layer 1."""
  model = _model()
  x = synthetic_images()[6][None]
  data = SE.make_search_data(Split(x, [0]), Split(x, [0]), 2)
  config = _config(num_images=1, val_batch=1, chunk_size=139, gt_samples=16,
                   g_prefixes=1, std_coef=std_coef)
  earlier = np.zeros((1, 139))
  earlier[0, prefix_index] = 1.0
  logits, history = SE.search_layer(jax.random.key(0), model, earlier, data,
                                    config, num_steps=num_steps,
                                    progress=False)
  return np.asarray(jax.nn.softmax(logits)), history


def test_stage_k_known_answer_moves_probability_onto_the_undoing_transform():
  """A non-Identity prefix: layer 1 is Invert with probability 1 and v is the
  clean image's gradient, so layer 2's answer is Invert again (or its exact
  duplicate Solarize(0)), which restores the image. The same search with an
  Identity layer 1 must not pick Invert: the prefix decides the answer."""
  invert = CIFAR.index_of("Invert")
  solarize0 = CIFAR.index_of("Solarize", 0)
  p, history = _stage_k_known_answer(invert)
  assert set(np.argsort(-p)[:2]) == {invert, solarize0}
  assert p[invert] + p[solarize0] > 0.1  # from 6e-4 at init
  assert history["cos_sim"][-1] > history["cos_sim"][0] + 0.3
  assert history["logit_identity"][-1] < history["logit_identity"][0] - 1
  control, _ = _stage_k_known_answer(0, num_steps=30)
  assert control[invert] + control[solarize0] < 2e-3
  assert np.argmax(control) == 0  # Identity already matches v


def test_stage_k_rewards_with_an_identity_prefix_equal_stage_1_exact():
  """With layer 1 = Identity (probability 1), the stage-k rewards estimate
  the stage-1 rewards, which are the exact d cos(v, g) / d p of Eq. 3-5: the
  Monte-Carlo g of Eq. 8 over M chains replaces g = G p. The estimate must
  sit within its Monte-Carlo error of the exact value (4 standard errors
  over independent keys) and its error must shrink as M grows. The random
  ops (Flip, Cutout, Crop) are realised differently in the two stages, so
  the deterministic transforms are compared."""
  model = _model()
  images = synthetic_images()
  batch = SE.Batch(jnp.asarray(images[[6, 2]]), jnp.asarray([0, 1]),
                   jnp.asarray(images[[[0, 6], [3, 2]]]),
                   jnp.asarray([[0, 0], [1, 1]]))
  probs = _one_hot_policy([0, 1, 60, 62, 63, 100], [0.3, 0.15, 0.15, 0.15,
                                                    0.15, 0.1])
  probs = jnp.asarray(probs, jnp.float32)
  deterministic = ~np.asarray(CIFAR.is_random)
  exact, _ = SE.batch_rewards(_settings(num_images=2, val_batch=2), model,
                              batch, jax.random.key(0),
                              jnp.zeros((0, 139)), probs)
  exact = np.asarray(exact)[:, deterministic]
  identity = jnp.asarray(_one_hot_policy([0], [1.0])[None], jnp.float32)
  errors = {}
  for m in (8, 256):
    settings = _settings(num_images=2, val_batch=2, gt_samples=m,
                         g_prefixes=1, chunk_size=256)
    draws = np.stack([np.asarray(SE.batch_rewards(
        settings, model, batch, jax.random.key(10 + r), identity, probs)[0])[
            :, deterministic] for r in range(4)])
    # Relative L2 error of each independent estimate.
    errors[m] = [float(np.linalg.norm(d - exact) / np.linalg.norm(exact))
                 for d in draws]
  # u depends on g non-linearly, so the estimate is consistent (bias and
  # spread shrink as M grows), not unbiased: the error must fall with M and
  # be small at M = 256.
  assert max(errors[256]) < 0.2, errors  # measured 0.10-0.14 (M = 8: 0.4-3)
  assert np.mean(errors[256]) < np.mean(errors[8]) / 2, errors
  # Not vacuous: the exact rewards differ across transforms.
  assert np.std(exact) > 0.2 * np.abs(exact).max()


@pytest.mark.parametrize("stage", [1, 2])
def test_jacobian_reward_path_matches_jvp_in_a_search(stage):
  """config.search.reward="jacobian" (G's rows by vmap(grad), chunked in the
  compiled step) gives the JVP path's rewards within float32 rounding, and
  runs the search."""
  model, data = _model(), _data()
  batch = SE.sample_batch(jax.random.key(2), data, num_images=2, val_batch=3)
  earlier = (jnp.zeros((0, 139)) if stage == 1 else
             jnp.full((1, 139), 1 / 139, jnp.float32))
  probs = jax.nn.softmax(jnp.asarray(SE.initial_logits(139, "identity")))
  out = {}
  for method in ("jvp", "jacobian"):
    settings = _settings(num_images=2, val_batch=3, chunk_size=32,
                         reward=method)
    out[method] = np.asarray(SE.batch_rewards(
        settings, model, batch, jax.random.key(3), earlier, probs)[0])
  scale = np.abs(out["jvp"]).max()
  assert scale > 0
  np.testing.assert_allclose(out["jacobian"], out["jvp"], rtol=0,
                             atol=1e-4 * scale)
  config = _config(reward="jacobian", chunk_size=32)
  logits, history = SE.search_layer(jax.random.key(1), model,
                                    np.asarray(earlier), data, config,
                                    num_steps=2, progress=False)
  ref, _ = SE.search_layer(jax.random.key(1), model, np.asarray(earlier),
                           data, _config(chunk_size=32), num_steps=2,
                           progress=False)
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)
  assert len(history["R_identity"]) == 2


def test_watched_rewards_are_logged_as_mean_minus_c_std():
  model, data = _model(), _data()
  config = _config(std_coef=1.0)
  _, history = SE.search_layer(jax.random.key(4), model,
                               np.full((1, 139), 1 / 139), data, config,
                               num_steps=2, progress=False)
  for name in ("identity", "flip", "cutout", "crop"):
    np.testing.assert_allclose(
        history[f"R_{name}"], np.asarray(history[f"R_mean_{name}"]) -
        np.asarray(history[f"R_std_{name}"]), rtol=1e-5, atol=1e-7)
    assert all(v >= 0 for v in history[f"R_std_{name}"])
  # Stage 1 (c = 0 officially): no std part.
  _, history = SE.search_layer(jax.random.key(4), model, np.zeros((0, 139)),
                               data, config, num_steps=1, progress=False)
  assert history["R_std_crop"] == [0.0]


def test_same_seed_same_policy_and_resume_is_bit_identical():
  model, data = _model(), _data()
  config = _config()
  earlier = np.full((1, 139), 1 / 139)
  key = jax.random.key(5)
  full, _ = SE.search_layer(key, model, earlier, data, config, num_steps=4,
                            progress=False)
  again, _ = SE.search_layer(key, model, earlier, data, config, num_steps=4,
                             progress=False)
  np.testing.assert_array_equal(full, again)
  states = []
  keep = lambda step, state, diag: states.append(jax.device_get(state))
  SE.search_layer(key, model, earlier, data, config, num_steps=4,
                  progress=False, callback=keep)
  full_state = states.pop()
  states = []
  SE.search_layer(key, model, earlier, data, config, num_steps=2,
                  progress=False, callback=keep)
  resumed, _ = SE.search_layer(key, model, earlier, data, config,
                               state=states[-1], num_steps=4, progress=False,
                               callback=keep)
  np.testing.assert_array_equal(resumed, full)
  # The reward statistics (the SNR) resume bit for bit too.
  assert int(states[-1].step) == 4
  np.testing.assert_array_equal(states[-1].reward_mean, full_state.reward_mean)
  np.testing.assert_array_equal(states[-1].reward_m2, full_state.reward_m2)
  assert np.abs(full_state.reward_m2).max() > 0
  other, _ = SE.search_layer(jax.random.key(6), model, earlier, data, config,
                             num_steps=4, progress=False)
  assert not np.array_equal(other, full)


def test_host_and_scan_loops_agree():
  model, data = _model(), _data()
  out = {}
  for loop in ("host", "scan"):
    config = _config(loop=loop)
    out[loop], _ = SE.search_layer(jax.random.key(1), model,
                                   np.zeros((0, 139)), data, config,
                                   num_steps=2, progress=False)
  np.testing.assert_allclose(out["host"], out["scan"], rtol=1e-5, atol=1e-6)


def test_search_layers_resume_after_a_crash_is_bit_identical(
    tmp_path, caplog, monkeypatch):
  model, data = _model(), _data()
  config = _config(num_layers=2, steps_per_layer=3, checkpoint_every_steps=2)
  key = jax.random.key(7)
  full = search_job.search_layers(key, model, data, config, tmp_path / "full")
  assert full["probs"].shape == (2, 139)
  assert [r["step"] for r in full["history"]] == [1, 2, 3, 1, 2, 3]
  crashed = tmp_path / "crashed"
  write = search_job.utils.JsonlWriter.write_scalars

  def failing_write(self, step, scalars):  # Ctrl-C in layer 2, at step 3
    if step == 3 + 3:
      raise KeyboardInterrupt(f"simulated Ctrl-C at step {step}")
    write(self, step, scalars)

  with monkeypatch.context() as patch:
    patch.setattr(search_job.utils.JsonlWriter, "write_scalars", failing_write)
    with pytest.raises(errors.Interrupted, match="Rerun the same command"):
      search_job.search_layers(key, model, data, config, crashed)
  with caplog.at_level("WARNING"):
    resumed = search_job.search_layers(key, model, data, config, crashed)
  assert any("RESUMING the policy search" in r.getMessage()
             for r in caplog.records)
  np.testing.assert_array_equal(resumed["probs"], full["probs"])
  # Layer 2 resumed at step 2: its reward SNR is the uninterrupted one.
  assert [c["snr_excess"] for c in resumed["costs"]] == [
      c["snr_excess"] for c in full["costs"]]
  assert all(np.isfinite(c["snr_excess"]) for c in full["costs"])
  line = search_job.snr_line(full["costs"])  # printed by write_outputs
  assert line.endswith(": L1 {:.2f}, L2 {:.2f}".format(
      *[c["snr_excess"] for c in full["costs"]])), line
  # The metric log has every step exactly once.
  assert [(r["layer"], r["step"]) for r in resumed["history"]] == [
      (r["layer"], r["step"]) for r in full["history"]]
  # A finished search resumes to the same answer without work.
  again = search_job.search_layers(key, model, data, config, crashed)
  np.testing.assert_array_equal(again["probs"], full["probs"])


def test_search_stops_when_a_layer_converges_to_identity(tmp_path):
  model, data = _model(), _data()
  # Identity init with a threshold below p(Identity) at init (0.956) fires
  # after layer 1.
  config = _config(num_layers=3, steps_per_layer=1,
                   stop_identity_threshold=0.5)
  out = search_job.search_layers(jax.random.key(0), model, data, config, tmp_path)
  assert out["stopped_early"] and out["probs"].shape == (1, 139)
  again = search_job.search_layers(jax.random.key(0), model, data, config,
                                   tmp_path)
  assert again["stopped_early"] and again["probs"].shape == (1, 139)
  # Threshold 0 turns the stop off: the same layers (p(Identity) ~0.95 >= 0.5
  # after one step) run to the full depth.
  config = _config(num_layers=3, steps_per_layer=1,
                   stop_identity_threshold=0.0)
  off = search_job.search_layers(jax.random.key(0), model, data, config,
                                 tmp_path / "off")
  assert not off["stopped_early"] and off["probs"].shape == (3, 139)
  assert (off["probs"][:, 0] >= 0.5).all()  # it would have fired each time


def _numpy_snr(rewards):
  """The SNR of `reward_snr` recomputed in float64 from per-step rewards
  float[N, T]: centred over transforms, then std of the means over noise."""
  r = np.asarray(rewards, np.float64)
  c = r - r.mean(axis=1, keepdims=True)
  n = len(r)
  snr = c.mean(axis=0).std(ddof=1) / np.sqrt(np.mean(c.var(axis=0, ddof=1)))
  return c.mean(axis=0), ((c - c.mean(axis=0)) ** 2).sum(axis=0), snr, (
      snr * np.sqrt(n))


def _accumulate(rewards):
  """`accumulate_reward` over the rows of float32[N, T] (a lax.scan)."""
  t = rewards.shape[1]

  def step(carry, r):
    mean, m2, count = carry
    mean, m2 = SE.accumulate_reward(mean, m2, count, r)
    return (mean, m2, count + 1), None

  (mean, m2, count), _ = jax.lax.scan(
      step, (jnp.zeros(t), jnp.zeros(t), jnp.zeros((), jnp.int32)),
      jnp.asarray(rewards, jnp.float32))
  return mean, m2, count


def test_reward_snr_matches_numpy_and_is_one_for_noise_alone():
  """Known per-step rewards: the running statistics and the SNR equal a
  float64 numpy recomputation, also with transform means 50x their noise
  (Welford) and a large noise common to all transforms (centred away).
  Pure noise, with noise levels that differ across transforms, gives
  snr_excess ~1 on average; a fixed offset between transforms a large one."""
  rng = np.random.default_rng(0)
  n, t = 40, 139
  sigma = rng.uniform(0.005, 0.03, t)  # per-transform step noise
  offsets = rng.normal(0, 0.5, t)  # ~50x the noise
  common = rng.normal(0, 1.0, (n, 1))  # common to all transforms
  rewards = (offsets + sigma * rng.standard_normal((n, t)) + common).astype(
      np.float32)
  mean, m2, count = _accumulate(rewards)
  ref_mean, ref_m2, ref_snr, ref_excess = _numpy_snr(rewards)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m2, ref_m2, rtol=2e-3, atol=1e-7)
  snr, excess = SE.reward_snr(mean, m2, count)
  np.testing.assert_allclose([snr, excess], [ref_snr, ref_excess], rtol=1e-3)
  assert excess > 100  # the transforms are told apart
  # Pure noise (with the common noise): ~1 over many independent layers.
  noise = (sigma * rng.standard_normal((200, n, t)) +
           rng.normal(0, 1.0, (200, n, 1))).astype(np.float32)
  excess = np.asarray(jax.vmap(
      lambda r: SE.reward_snr(*_accumulate(r))[1])(jnp.asarray(noise)))
  np.testing.assert_allclose(excess.mean(), 1.0, atol=0.03)
  assert (excess < SE.SNR_WARN_EXCESS).all()
  np.testing.assert_allclose(excess[:5], [_numpy_snr(r)[3] for r in noise[:5]],
                             rtol=1e-3)
  # Offsets of +-4 standard errors of a transform's mean over the N steps:
  # excess ~ sqrt(1 + 4^2) = 4.1.
  shifted = noise[0] + np.where(np.arange(t) % 2, 4, -4) * sigma / np.sqrt(n)
  excess = SE.reward_snr(*_accumulate(shifted))[1]
  assert 3.3 < excess < 5, excess
  # Undefined before two steps.
  assert np.isnan(SE.reward_snr(*_accumulate(rewards[:1]))[1])


def test_snr_warning_fires_at_the_end_of_a_noise_only_layer(caplog):
  """search_layer warns in one line when a finished layer's snr_excess is
  below SNR_WARN_EXCESS (here a finished state with pure-noise statistics),
  and not for a layer that tells the transforms apart."""
  assert SE.snr_warning(2, 5.0) is None
  assert SE.snr_warning(2, float("nan")) is None
  model, data = _model(), _data()
  config = _config()
  rng = np.random.default_rng(1)
  noise = rng.normal(0, 0.01, (30, 139)).astype(np.float32)
  for rewards, warned in ((noise, True),
                          (noise + np.linspace(0, 1, 139, dtype=np.float32),
                           False)):
    mean, m2, count = _accumulate(rewards)
    state = SE.init_layer_state(config, CIFAR).replace(
        step=count, reward_mean=mean, reward_m2=m2)
    excess = _numpy_snr(rewards)[3]
    caplog.clear()
    with caplog.at_level("WARNING"):
      SE.search_layer(jax.random.key(0), model, np.zeros((1, 139)) + 1 / 139,
                      data, config, state=state, num_steps=30)
    lines = [r.getMessage() for r in caplog.records
             if "signal-to-noise" in r.getMessage()]
    assert len(lines) == (1 if warned else 0), lines
    if warned:
      assert lines[0].startswith("Layer 2: ")
      assert f"{excess:.2f} < 2" in lines[0] and "\n" not in lines[0]
      assert "pretrain the search network longer" in lines[0]


def test_reward_statistics_of_a_real_search_equal_a_recomputation():
  """After 3 steps of a stage-2 search the state's running statistics, and
  the logged snr, equal numpy on the steps' regularised rewards R (Eq. 10)
  recomputed independently with `batch_rewards` from the same keys."""
  model, data = _model(), _data()
  config = _config(std_coef=1.0)
  earlier = np.full((1, 139), 1 / 139, np.float32)
  key = jax.random.key(8)
  states = [jax.device_get(SE.init_layer_state(config, CIFAR))]
  _, history = SE.search_layer(
      key, model, earlier, data, config, num_steps=3,
      callback=lambda step, state, diag: states.append(jax.device_get(state)))
  # One compiled program (the scan loop: equal to the host loop within
  # float32 rounding); eager, it takes minutes.
  settings = SE.step_settings(_config(std_coef=1.0, loop="scan"), CIFAR)
  batch_rewards = jax.jit(lambda *args: SE.batch_rewards(settings, model,
                                                         *args)[0])
  rewards = []
  for step in range(3):
    k_batch, k_aug = jax.random.split(jax.random.fold_in(key, step))
    batch = SE.sample_batch(k_batch, data, num_images=2, val_batch=3)
    per_image = batch_rewards(batch, k_aug, earlier,
                              jax.nn.softmax(states[step].logits))
    per_image = np.asarray(per_image, np.float64)
    rewards.append(per_image.mean(0) - per_image.std(0))  # c = 1
  rewards = np.asarray(rewards)
  np.testing.assert_allclose(history["R_identity"], rewards[:, 0], rtol=1e-4,
                             atol=1e-6)
  ref_mean, ref_m2, _, ref_excess = _numpy_snr(rewards)
  scale = np.abs(rewards).max()
  assert ref_m2.max() > 0
  np.testing.assert_allclose(states[-1].reward_mean, ref_mean, rtol=0,
                             atol=1e-4 * scale)
  np.testing.assert_allclose(states[-1].reward_m2, ref_m2, rtol=1e-3,
                             atol=1e-5 * scale ** 2)
  np.testing.assert_allclose(history["snr_excess"][-1], ref_excess,
                             rtol=1e-3)
  np.testing.assert_allclose(history["snr_excess"][1],
                             _numpy_snr(rewards[:2])[3], rtol=1e-3)
  assert np.isnan(history["snr"][0])
  assert SE.layer_snr(states[-1])["snr_excess"] == history["snr_excess"][-1]
