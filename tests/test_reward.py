"""Tests for deepaa_jax/reward.py: the reward is the exact derivative of the
cosine, the JVP path equals the Jacobian path, and the aggregates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from optax import tree_utils as otu
import pytest

from deepaa_jax import reward as R
from deepaa_jax import space as S
from tests.conftest import synthetic_images

MEAN, STD = (0.49, 0.48, 0.45), (0.2, 0.2, 0.2)


class Tiny(nn.Module):
  """A small conv net with BatchNorm (named bn*, as our models do)."""
  num_classes: int = 3
  param_dtype: type = jnp.float32

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Conv(6, (3, 3), strides=2, param_dtype=self.param_dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn1",
                     param_dtype=self.param_dtype)(x)
    x = nn.relu(x)
    x = nn.Conv(6, (3, 3), strides=2, param_dtype=self.param_dtype)(x)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, param_dtype=self.param_dtype)(x)


def _setup(dtype=jnp.float32, seed=0):
  model = Tiny(param_dtype=dtype)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3), dtype),
                                           train=False))(jax.random.key(seed))
  # Non-trivial BN statistics, so inference-mode BN is exercised.
  stats = jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])
  w, frozen = R.split_frozen(variables["params"], stats)
  return R.PerExampleLoss(model, MEAN, STD), w, frozen


def _images(n, dtype, seed=0):
  base = synthetic_images(32, seed)
  reps = -(-n // len(base))
  images = np.concatenate([np.roll(base, k, axis=1) for k in range(reps)])[:n]
  labels = np.arange(n) % 3
  return jnp.asarray(images, dtype), jnp.asarray(labels, jnp.int32)


def _random_tree(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def _flat(tree):
  """All leaves of a tree as one float64 numpy vector (an independent
  reference for the tree algebra)."""
  return np.concatenate([np.asarray(l, np.float64).ravel()
                         for l in jax.tree.leaves(tree)])


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


def test_split_excludes_batchnorm_from_the_gradient_space():
  _, w, frozen = _setup()
  names = jax.tree_util.tree_flatten_with_path(w)[0]
  assert not any("bn1" in jax.tree_util.keystr(p) for p, _ in names)
  assert set(frozen["bn"]["bn1"]) == {"scale", "bias"}


def test_per_example_losses_do_not_depend_on_the_batch():
  loss, w, frozen = _setup()
  images, labels = _images(6, jnp.float32)
  whole = loss(w, frozen, images, labels)
  single = jnp.stack([loss(w, frozen, images[i:i + 1], labels[i:i + 1])[0]
                      for i in range(6)])
  np.testing.assert_allclose(whole, single, rtol=1e-6)


def test_jvp_rewards_equal_the_jacobian_contraction_float64():
  """grad l(x_j) . u by forward mode == G^T u from vmap(grad) (rel <= 1e-5;
  float64 makes it ~1e-14)."""
  with jax.enable_x64(True):
    loss, w, frozen = _setup(jnp.float64)
    images, labels = _images(12, jnp.float64)
    images, labels = images.reshape(2, 6, 32, 32, 3), labels.reshape(2, 6)
    u = R.stack_groups([_random_tree(w, 1), _random_tree(w, 2)])
    jvp = R.jvp_rewards(loss, w, frozen, images, labels, u, chunk_size=4)
    jac = R.jacobian_rewards(loss, w, frozen, images, labels, u)
    assert jvp.dtype == jnp.float64 and jvp.shape == (2, 6)
    assert _rel(jvp, jac) <= 1e-5


def test_jvp_rewards_equal_the_jacobian_contraction_float32():
  loss, w, frozen = _setup()
  images, labels = _images(8, jnp.float32)
  images, labels = images.reshape(1, 8, 32, 32, 3), labels.reshape(1, 8)
  u = R.stack_groups([_random_tree(w, 3)])
  jvp = R.jvp_rewards(loss, w, frozen, images, labels, u, chunk_size=3)
  jac = R.jacobian_rewards(loss, w, frozen, images, labels, u)
  assert _rel(jvp, jac) <= 1e-4


def test_chunked_jacobian_rows_equal_per_example_grads_by_hand_float64():
  """`jacobian_rewards` in chunks (the search's "jacobian" path): the rows
  it contracts are each image's own jax.grad (taken one image at a time
  here), whatever the chunk size, and the contraction equals the JVP path."""
  with jax.enable_x64(True):
    loss, w, frozen = _setup(jnp.float64)
    images, labels = _images(10, jnp.float64)
    images, labels = images.reshape(2, 5, 32, 32, 3), labels.reshape(2, 5)
    u = R.stack_groups([_random_tree(w, 4), _random_tree(w, 5)])
    by_hand = np.asarray([[_flat(jax.grad(
        lambda p: loss(p, frozen, images[g, j][None], labels[g, j][None])[0]
    )(w)) @ _flat(jax.tree.map(lambda t: t[g], u)) for j in range(5)]
                          for g in range(2)])
    for chunk in (1, 2, 5, 0):  # 2 does not divide 5: resolved to 1
      got = R.jacobian_rewards(loss, w, frozen, images, labels, u,
                               chunk_size=chunk)
      np.testing.assert_allclose(got, by_hand, rtol=1e-10, atol=1e-14)
    jvp = R.jvp_rewards(loss, w, frozen, images, labels, u, chunk_size=5)
    np.testing.assert_allclose(jvp, by_hand, rtol=1e-10, atol=1e-14)


def test_rewards_from_gradients_jacobian_method_matches_jvp_float32():
  loss, w, frozen = _setup()
  images, labels = _images(12, jnp.float32)
  images, labels = images.reshape(2, 6, 32, 32, 3), labels.reshape(2, 6)
  v = R.stack_groups([_random_tree(w, 6), _random_tree(w, 7)])
  g = R.stack_groups([_random_tree(w, 8), _random_tree(w, 9)])
  out = {m: R.rewards_from_gradients(loss, w, frozen, v, g, images, labels,
                                     chunk_size=4, method=m)
         for m in R.REWARD_METHODS}
  assert _rel(out["jacobian"][0], out["jvp"][0]) <= 1e-4
  np.testing.assert_array_equal(out["jacobian"][1], out["jvp"][1])  # cos
  with pytest.raises(ValueError, match="reward method"):
    R.rewards_from_gradients(loss, w, frozen, v, g, images, labels,
                             chunk_size=4, method="fd")


def test_rewards_from_gradients_norms_and_cosine_float32_match_numpy():
  """The per-group |g|, |v|, cos(v, g) (optax's tree algebra, vmapped over
  groups) against float64 numpy on the flattened trees; float32 in, float32
  out. Tolerance 1e-5: float32 sums over the ~700 weights of `Tiny`."""
  loss, w, frozen = _setup()
  images, labels = _images(4, jnp.float32)
  images, labels = images.reshape(2, 2, 32, 32, 3), labels.reshape(2, 2)
  vs, gs = [_random_tree(w, s) for s in (10, 11)], [
      _random_tree(w, s) for s in (12, 13)]
  # Group 1's g is correlated with its v, so the cosines differ in size.
  gs[1] = jax.tree.map(lambda a, b: a + 2 * b, gs[1], vs[1])
  rewards, cos, g_norm, v_norm = R.rewards_from_gradients(
      loss, w, frozen, R.stack_groups(vs), R.stack_groups(gs), images, labels,
      chunk_size=2)
  for out in (rewards, cos, g_norm, v_norm):
    assert out.dtype == jnp.float32
  v_np, g_np = [_flat(t) for t in vs], [_flat(t) for t in gs]
  np.testing.assert_allclose(v_norm, [np.linalg.norm(x) for x in v_np],
                             rtol=1e-5)
  np.testing.assert_allclose(g_norm, [np.linalg.norm(x) for x in g_np],
                             rtol=1e-5)
  expected_cos = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                  for a, b in zip(v_np, g_np)]
  assert expected_cos[1] > 0.5 > abs(expected_cos[0])
  np.testing.assert_allclose(cos, expected_cos, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_group_weighted_grads_equal_the_per_example_sum(loop):
  with jax.enable_x64(True):
    loss, w, frozen = _setup(jnp.float64)
    images, labels = _images(12, jnp.float64)
    images, labels = images.reshape(2, 6, 32, 32, 3), labels.reshape(2, 6)
    weights = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 6)))
    got = R.group_weighted_grads(loss, w, frozen, images, labels, weights,
                                 chunk_size=4, loop=loop)
    for gidx in range(2):
      per_example = [jax.grad(lambda p: loss(p, frozen, images[gidx, j:j + 1],
                                             labels[gidx, j:j + 1])[0])(w)
                     for j in range(6)]
      expected = jax.tree.map(
          lambda *gs: sum(weights[gidx, j] * g for j, g in enumerate(gs)),
          *per_example)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a[gidx], b, rtol=1e-10, atol=1e-12)


def _stage1_problem():
  """v from 4 clean images; the 139 transforms of one image; G explicit."""
  loss, w, frozen = _setup(jnp.float64)
  images, labels = _images(5, jnp.float64, seed=1)
  space = S.cifar_space()
  dense = S.apply_all(jax.random.key(0), images[0], space).astype(jnp.float64)
  dense_labels = jnp.full((139,), labels[0])
  val, val_labels = images[1:], labels[1:]
  v = jax.grad(lambda p: jnp.mean(loss(p, frozen, val, val_labels)))(w)
  jac = jax.vmap(lambda x, y: jax.grad(
      lambda p: loss(p, frozen, x[None], y[None])[0])(w))(dense, dense_labels)
  return loss, w, frozen, v, dense, dense_labels, jac


def test_stage1_policy_gradient_is_the_gradient_of_the_cosine():
  """Paper Eq. 4 as an identity: with g = G softmax(theta), the update built
  from the rewards equals jax.grad of cos(v, g(theta)) w.r.t. theta."""
  with jax.enable_x64(True):
    loss, w, frozen, v, dense, dense_labels, jac = _stage1_problem()
    theta = jnp.asarray(np.random.default_rng(0).normal(size=139))
    p = jax.nn.softmax(theta)

    def cosine_of_theta(th):
      q = jax.nn.softmax(th)
      g = jax.tree.map(lambda jl: jnp.tensordot(q, jl, axes=1), jac)
      return R.cosine(v, g)

    expected = jax.grad(cosine_of_theta)(theta)
    g = jax.tree.map(lambda jl: jnp.tensordot(p, jl, axes=1), jac)
    rewards, cos, _, _ = R.rewards_from_gradients(
        loss, w, frozen, R.stack_groups([v]), R.stack_groups([g]),
        dense[None], dense_labels[None], chunk_size=139)
    # d policy_loss / d theta = -scale * p (R - p.R) = -scale * d cos / d theta
    got = -jax.grad(R.policy_loss)(theta, rewards[0], scale=0.25) / 0.25
    assert _rel(got, expected) <= 1e-5
    np.testing.assert_allclose(cos[0], cosine_of_theta(theta), rtol=1e-10)
    # u is orthogonal to g, so the policy-weighted reward vanishes.
    assert abs(float(jnp.sum(p * rewards[0]))) <= 1e-10 * float(
        jnp.max(jnp.abs(rewards[0])))


def test_rewards_are_the_derivative_of_the_cosine_in_p():
  """r_n = d cos(v, G p) / d p_n (the official normalisation), checked by
  central finite differences of the cosine in the direction of each e_n."""
  with jax.enable_x64(True):
    loss, w, frozen, v, dense, dense_labels, jac = _stage1_problem()
    p = jax.nn.softmax(jnp.asarray(np.random.default_rng(1).normal(size=139)))
    g = jax.tree.map(lambda jl: jnp.tensordot(p, jl, axes=1), jac)
    rewards, _, _, _ = R.rewards_from_gradients(
        loss, w, frozen, R.stack_groups([v]), R.stack_groups([g]),
        dense[None], dense_labels[None], chunk_size=139)

    def cos_at(q):
      return R.cosine(v, jax.tree.map(lambda jl: jnp.tensordot(q, jl, axes=1),
                                      jac))

    eps = 1e-6
    for n in (0, 17, 62, 100, 138):
      e = jnp.zeros(139).at[n].set(eps)
      fd = (cos_at(p + e) - cos_at(p - e)) / (2 * eps)
      np.testing.assert_allclose(rewards[0, n], fd, rtol=1e-6)


def test_paper_normalisation_differs_by_the_norm_of_v():
  jvp = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
  g, v = jnp.asarray([2.0, 4.0]), jnp.asarray([5.0, 10.0])
  np.testing.assert_allclose(R.normalize_rewards(jvp, g, v),
                             [[0.1, 0.2], [0.075, 0.1]])
  np.testing.assert_allclose(
      R.normalize_rewards(jvp, g, v, normalization="paper"),
      [[0.5, 1.0], [0.75, 1.0]])
  with pytest.raises(ValueError, match="normalization"):
    R.normalize_rewards(jvp, g, v, normalization="other")


def test_regularized_reward_is_mean_minus_population_std():
  r = np.random.default_rng(0).normal(size=(16, 139))
  np.testing.assert_allclose(R.regularized_reward(jnp.asarray(r), std_coef=1.0),
                             r.mean(0) - r.std(0, ddof=0), atol=1e-6)
  np.testing.assert_allclose(R.regularized_reward(jnp.asarray(r), std_coef=0.0),
                             r.mean(0), atol=1e-6)


def test_tangent_is_orthogonal_to_g():
  v = {"a": jnp.asarray([1.0, 2.0]), "b": jnp.asarray([[3.0]])}
  g = {"a": jnp.asarray([0.5, -1.0]), "b": jnp.asarray([[2.0]])}
  u = R.tangent(v, g)
  assert abs(float(otu.tree_vdot(u, g))) < 1e-6
  # Hand computation: v.g = 0.5 - 2 + 6 = 4.5, |g|^2 = 5.25.
  np.testing.assert_allclose(u["a"], [1 - 4.5 / 5.25 * 0.5,
                                      2 + 4.5 / 5.25], rtol=1e-6)
