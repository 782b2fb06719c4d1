"""Tests for experiments/deepaa_vs_deepta.py (paper Fig. 4 measurement):
an all-Identity layer improves nothing, and the cosines equal a float64
recomputation from per-example `jax.grad` gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepaa_jax import input_pipeline as ip
from deepaa_jax import search as SE
from deepaa_jax import space as S
from experiments import deepaa_vs_deepta as F
from tests.conftest import synthetic_images
from tests.test_reward import Tiny

CIFAR = S.cifar_space()


pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def model():
  net = Tiny(num_classes=3)
  variables = jax.jit(lambda k: net.init(k, jnp.zeros((1, 32, 32, 3)),
                                         train=False))(jax.random.key(0))
  stats = jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])
  return SE.make_search_model(net, variables["params"], stats,
                              mean=ip.CIFAR_SEARCH_MEAN, std=ip.CIFAR_STD)


def _batch(n, v=3):
  images = np.concatenate([synthetic_images(32, s) for s in range(2)])
  labels = np.arange(len(images)) % 3
  val = np.stack([np.roll(images[(i + 1 + np.arange(v)) % len(images)],
                          i, axis=2) for i in range(n)])
  return SE.Batch(images[:n], labels[:n].astype(np.int32), val,
                  np.repeat(labels[:n, None], v, axis=1).astype(np.int32))


def _one_hot(*names):
  probs = np.zeros((len(names), CIFAR.size), np.float32)
  for k, name in enumerate(names):
    probs[k, CIFAR.index_of(name)] = 1.0
  return probs


def test_improvement_and_summary():
  cos = np.array([[0.5, 0.6, 0.55], [0.2, 0.2, 0.4]])
  np.testing.assert_allclose(F.improvement(cos), [[0.1, 0.05], [0.0, 0.2]])
  np.testing.assert_allclose(F.improvement(cos, reference="previous"),
                             [[0.1, -0.05], [0.0, 0.2]])
  s = F.summarize(cos)
  np.testing.assert_allclose(s["mean"], [0.05, 0.125])
  np.testing.assert_allclose(s["std"], [0.05, 0.075])
  np.testing.assert_allclose(s["cos_mean"], [0.35, 0.4, 0.475])
  with pytest.raises(ValueError, match="reference"):
    F.improvement(cos, reference="first")


def test_chain_images_are_prefixes():
  images = synthetic_images(32, 0)[:3]
  run = lambda key, x, probs, offset=0: np.asarray(F.chain_images(
      key, x, probs, samples=2, space=CIFAR, offset=offset))
  # Deterministic chain: Invert, Invert. (Shapes as in the recomputation
  # test below, so the compiled chain is shared.)
  out = run(jax.random.key(1), images[:2], _one_hot("Invert", "Invert"))
  assert out.shape == (2, 2, 2, 32, 32, 3)
  x = np.broadcast_to(images[:2, None].astype(np.float32), out[:, 0].shape)
  np.testing.assert_array_equal(out[:, 0], 255 - x)
  np.testing.assert_array_equal(out[:, 1], x)
  # Random policies (same shapes: no recompilation). Depth k depends only on
  # layers 1..k; the chunk offset reproduces the unchunked draws.
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(CIFAR.size), 2).astype(np.float32)
  other = probs.copy()
  other[1] = rng.dirichlet(np.ones(CIFAR.size))
  key = jax.random.key(2)
  a, b = run(key, images[:2], probs), run(key, images[:2], other)
  np.testing.assert_array_equal(a[:, 0], b[:, 0])
  assert not np.array_equal(a[:, 1], b[:, 1])
  np.testing.assert_array_equal(a[1], run(key, images[1:], probs, 1)[0])


@pytest.mark.parametrize("samples,images_per_chunk", [(1, 4), (4, 1)])
def test_identity_layers_improve_nothing(model, samples, images_per_chunk):
  # Chunks of 4 chains with 2 layers, as in the other tests: one compilation.
  n = 4 if samples == 1 else 2
  res = F.gradient_similarity(
      jax.random.key(0), model, _batch(n),
      {"id": _one_hot("Identity", "Identity")}, samples=samples, space=CIFAR,
      images_per_chunk=images_per_chunk, progress=False)
  d = F.improvement(res["id"]["cos"])
  assert d.shape == (n, 2)
  if samples == 1:  # the same backward pass on the same image: exactly 0
    np.testing.assert_array_equal(d, 0.0)
  else:  # the mean of M identical gradients, up to float32 rounding
    np.testing.assert_allclose(d, 0.0, atol=2e-6)
  assert np.all(np.abs(res["cos0"]) <= 1) and np.all(res["cos0"] != 0)


def test_cosines_match_float64_recomputation(model):
  batch = _batch(2, v=3)
  rng = np.random.default_rng(1)
  policies = {"searched": rng.dirichlet(np.ones(CIFAR.size) * 0.1, 2),
              "uniform": np.full((2, CIFAR.size), 1.0 / CIFAR.size)}
  samples = 4
  key = jax.random.key(3)
  res = F.gradient_similarity(key, model, batch, policies, samples=samples,
                              space=CIFAR, images_per_chunk=1, chunk_size=2,
                              progress=False)

  grad = jax.jit(jax.grad(lambda w, image, label: model.loss(
      w, model.frozen, image[None], label[None])[0]))

  def grad64(image, label):  # one image's gradient, flattened to float64
    g = grad(model.w, image, label)
    return np.concatenate([np.asarray(x, np.float64).ravel()
                           for x in jax.tree.leaves(g)])

  def cos64(a, b):
    return a @ b / np.sqrt((a @ a) * (b @ b))

  x = np.asarray(batch.images, np.float32)
  for p_index, (name, probs) in enumerate(policies.items()):
    chains = np.asarray(F.chain_images(
        jax.random.fold_in(key, p_index), x,
        jnp.asarray(probs, jnp.float32), samples=samples, space=CIFAR))
    for i in range(2):
      label = jnp.asarray(batch.labels[i])
      v = np.mean([grad64(jnp.asarray(im, jnp.float32), jnp.asarray(lab))
                   for im, lab in zip(batch.val_images[i],
                                      batch.val_labels[i])], axis=0)
      expected = [cos64(v, grad64(jnp.asarray(x[i]), label))]
      halves = []
      for k in range(2):
        per_chain = [grad64(jnp.asarray(c), label) for c in chains[i, k]]
        expected.append(cos64(v, np.mean(per_chain, axis=0)))
        halves.append([cos64(v, np.mean(per_chain[:2], axis=0)),
                       cos64(v, np.mean(per_chain[2:], axis=0))])
      np.testing.assert_allclose(res[name]["cos"][i], expected, atol=1e-5)
      np.testing.assert_allclose(res[name]["cos_half"][i], halves, atol=1e-5)
    np.testing.assert_array_equal(res[name]["cos"][:, 0], res["cos0"])
  # The recomputation is not trivially equal: augmentation changes the cosine.
  assert np.abs(F.improvement(res["uniform"]["cos"])).max() > 1e-3
