"""DeepAA's regularised gradient-matching reward as pure functions.

Notation (paper §3.3, spec §2.7). w are the network's trainable weights
without BatchNorm gamma/beta (spec §2.4); l(x) is the per-example softmax
cross-entropy of the frozen network with BN in inference mode (so per-example
losses do not depend on the batch, which the decompositions below rely on).
For one search image x with its class-matched validation batch V:

  v = (1/|V|) sum_{j in V} grad l(x_j)                 clean validation gradient
  g = sum_n p_n grad l(t_n x) = G p                    paper Eq. 3 (stage 1), or
  g = (1/M) sum_s grad l(t_{n_s^k} ... t_{n_s^1} x)    its Monte-Carlo estimate,
                                                        paper Eq. 8 (stage k >= 2)
  u = v - (v.g / |g|^2) g                              the part of v orthogonal to g
  r_n = grad l(t_n x) . u / (|g| |v|)                  = d cos(v, g) / d p_n

r is the exact derivative of the cosine similarity with respect to the
probabilities (the official code's normalisation; the paper's Eq. 5 omits the
1/|v|, available here as `normalization="paper"`). It is computed by
forward-mode `jax.jvp` along u over the augmented images, which never builds
the D x |T| Jacobian G (`jvp_rewards`); `jacobian_rewards` builds G with
`vmap(grad)` as the independent cross-check. Across the search images the
reward is aggregated as mean - c * std (paper Eq. 10; population std).

Memory is bounded by chunking the image axis: gradient sums and JVPs run over
chunks of `chunk_size` images, either inside the compiled graph (`loop="scan"`,
the accelerator path) or as a host loop over one compiled chunk function
(`loop="host"`; backward passes inside `lax.scan` are 15-28x slower on
XLA:CPU, jax-ml/jax#12868).
"""

import dataclasses
import functools
from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from deepaa_jax import models

Array = jax.Array
PyTree = Any

LOOPS = ("scan", "host")
NORMALIZATIONS = ("cosine", "paper")
# How grad l(t_n x) . u is computed: forward mode (G never built) or the
# exact Jacobian rows from jax.vmap(jax.grad), chunk by chunk.
REWARD_METHODS = ("jvp", "jacobian")


@dataclasses.dataclass(frozen=True)
class PerExampleLoss:
  """Per-example cross-entropy of a frozen network, BN in inference mode.

  A hashable value (a static argument of compiled functions). Call as
  `loss(w, frozen, images, labels) -> float32[N]` where `w` are the non-BN
  parameters (the gradient space), `frozen = {"bn": ..., "batch_stats": ...}`,
  `images: float32[N, H, W, 3]` with values in [0, 255] (normalised here with
  `mean`/`std`, given in [0, 1] units), `labels: int32[N]`.
  """
  model: Any  # a flax.linen.Module with __call__(x, *, train)
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]

  def __call__(self, w: PyTree, frozen: PyTree, images: Array,
               labels: Array) -> Array:
    params = models.merge_bn(w, frozen["bn"])
    x = jnp.asarray(images)
    # Floating images keep their precision (float64 in exactness tests).
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x = (x.astype(dtype) / 255.0 - jnp.asarray(self.mean, dtype)) / (
        jnp.asarray(self.std, dtype))
    logits = self.model.apply(
        {"params": params, "batch_stats": frozen["batch_stats"]}, x,
        train=False)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def split_frozen(params: PyTree, batch_stats: PyTree) -> Tuple[PyTree, PyTree]:
  """(w, frozen): the gradient space and the frozen rest of a trained model."""
  w, bn = models.split_bn(params)
  return w, {"bn": bn, "batch_stats": batch_stats}


# --------------------------------------------------------------------------
# Tree algebra: optax.tree_utils (`tree_vdot` contracts at
# Precision.HIGHEST, `tree_norm` is the global L2 norm; both keep the trees'
# dtype: float32 in, float32 out). Over trees with a leading group axis G
# they are jax.vmap-ed, giving [G].
# --------------------------------------------------------------------------


def tangent(v: PyTree, g: PyTree) -> PyTree:
  """u = v - (v.g / |g|^2) g: the component of v orthogonal to g."""
  coef = otu.tree_vdot(v, g) / otu.tree_vdot(g, g)
  return jax.tree.map(lambda a, b: a - coef * b, v, g)


# --------------------------------------------------------------------------
# Chunked gradient sums and JVP rewards.
# --------------------------------------------------------------------------


def _grad_chunk(loss: PerExampleLoss, w, frozen, images, labels, weights):
  """sum_j weights[j] grad l(images[j]): one plain batched backward pass."""
  return jax.grad(lambda p: jnp.sum(weights * loss(p, frozen, images,
                                                   labels)))(w)


_grad_chunk_jit = jax.jit(_grad_chunk, static_argnums=0)


def resolve_chunk(chunk_size: int, n: int) -> int:
  """Images per chunk: the largest count <= chunk_size that divides n.

  Args:
    chunk_size: the requested images per chunk (>= 1; larger than n is n).
    n: images per group.

  Returns:
    An int in [1, n] dividing n (the search's chunk loop uses it too).
  """
  per_chunk = max(1, min(n, chunk_size))
  while n % per_chunk:
    per_chunk -= 1
  return per_chunk


def _flat_chunks(x: Array, per_chunk: int) -> Array:
  """[G, N, ...] -> [G * N / per_chunk, per_chunk, ...] (group-major)."""
  g, n = x.shape[:2]
  return x.reshape((g * (n // per_chunk), per_chunk) + x.shape[2:])


def group_weighted_grads(loss: PerExampleLoss, w: PyTree, frozen: PyTree,
                         images: Array, labels: Array, weights: Array, *,
                         chunk_size: int, loop: str = "scan") -> PyTree:
  """Weighted gradient sums, one per group (a VJP; never per-example grads).

  Each chunk holds images of one group and runs one plain batched backward
  pass (vmapping the backward over groups makes XLA use grouped
  convolutions, measured 2x slower on CPU).

  Args:
    loss: the per-example loss.
    w: the gradient-space parameters.
    frozen: the frozen BN parameters and statistics.
    images: float32[G, N, H, W, 3] in [0, 255] (G groups, e.g. search images).
    labels: int32[G, N].
    weights: float32[G, N].
    chunk_size: at most this many images per backward pass.
    loop: "scan" (in-graph; traceable) or "host" (Python loop over a compiled
      chunk function; not traceable, fastest on CPU).

  Returns:
    The tree of w with a leading axis G: sum_j weights[g, j] grad l(x_gj).
  """
  groups, n = labels.shape
  per_chunk = resolve_chunk(chunk_size, n)
  chunks_per_group = n // per_chunk
  if loop == "host":
    out = []
    for gi in range(groups):
      acc = None
      for c in range(chunks_per_group):
        sl = slice(c * per_chunk, (c + 1) * per_chunk)
        grad = _grad_chunk_jit(loss, w, frozen, images[gi, sl],
                               labels[gi, sl], weights[gi, sl])
        acc = grad if acc is None else jax.tree.map(jnp.add, acc, grad)
      out.append(acc)
    return stack_groups(out)
  if loop != "scan":
    raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
  xs = (_flat_chunks(images, per_chunk), _flat_chunks(labels, per_chunk),
        _flat_chunks(weights, per_chunk),
        jnp.repeat(jnp.arange(groups), chunks_per_group))
  zeros = jax.tree.map(lambda p: jnp.zeros((groups,) + p.shape, p.dtype), w)

  def body(acc, chunk):
    img, lab, wts, gi = chunk
    grad = _grad_chunk(loss, w, frozen, img, lab, wts)
    return jax.tree.map(lambda a, d: a.at[gi].add(d), acc, grad), None

  return jax.lax.scan(body, zeros, xs)[0]


def jvp_rewards(loss: PerExampleLoss, w: PyTree, frozen: PyTree,
                images: Array, labels: Array, u: PyTree, *,
                chunk_size: int) -> Array:
  """grad l(x_gj) . u_g for every image, by forward mode (G never built).

  Args:
    loss: the per-example loss.
    w, frozen: parameters.
    images: float32[G, N, H, W, 3] in [0, 255].
    labels: int32[G, N].
    u: tree of w with a leading axis G (one tangent per group).
    chunk_size: at most this many images per forward-mode pass; memory is
      bounded by it, not by N.

  Returns:
    float32[G, N].
  """
  groups, n = labels.shape
  per_chunk = resolve_chunk(chunk_size, n)
  xs = (_flat_chunks(images, per_chunk), _flat_chunks(labels, per_chunk),
        jnp.repeat(jnp.arange(groups), n // per_chunk))

  def chunk_fn(chunk):
    img, lab, gi = chunk
    tan = jax.tree.map(lambda t: t[gi], u)
    return jax.jvp(lambda p: loss(p, frozen, img, lab), (w,), (tan,))[1]

  # One plain forward-mode pass per chunk (forward passes are fast inside
  # lax.map on CPU too); vmapping the JVP over groups with different
  # tangents was measured 4x slower.
  return jax.lax.map(chunk_fn, xs).reshape(groups, n)


def _per_example_grads(loss: PerExampleLoss, w: PyTree, frozen: PyTree,
                       images: Array, labels: Array) -> PyTree:
  """The exact Jacobian rows: a tree of w with a leading axis N,
  `jax.vmap(jax.grad)` of the per-example loss (images float32[N, H, W, 3])."""
  return jax.vmap(lambda x, y: jax.grad(
      lambda p: loss(p, frozen, x[None], y[None])[0])(w))(images, labels)


def jacobian_rewards(loss: PerExampleLoss, w: PyTree, frozen: PyTree,
                     images: Array, labels: Array, u: PyTree, *,
                     chunk_size: int = 0) -> Array:
  """The same quantity as `jvp_rewards` from the exact per-example Jacobian.

  Builds the rows of G = vmap(grad l) (one D-vector per image), chunk by
  chunk inside the compiled graph (`lax.map`; memory is bounded by
  `chunk_size` x D floats, not by N), and contracts each with its group's u.
  This is the product card's reward path (`config.search.reward =
  "jacobian"`); `jvp_rewards` computes the same numbers without building G.

  Args:
    loss, w, frozen: as in `jvp_rewards`.
    images: float32[G, N, H, W, 3] in [0, 255].
    labels: int32[G, N].
    u: tree of w with a leading axis G.
    chunk_size: at most this many Jacobian rows at once; 0: a whole group.

  Returns:
    float32[G, N].
  """
  groups, n = labels.shape
  per_chunk = resolve_chunk(chunk_size or n, n)
  xs = (_flat_chunks(images, per_chunk), _flat_chunks(labels, per_chunk),
        jnp.repeat(jnp.arange(groups), n // per_chunk))

  def chunk_fn(chunk):
    img, lab, gi = chunk
    rows = _per_example_grads(loss, w, frozen, img, lab)  # [chunk, D] as trees
    tan = jax.tree.map(lambda t: t[gi], u)
    return jax.vmap(lambda g: otu.tree_vdot(g, tan))(rows)

  return jax.lax.map(chunk_fn, xs).reshape(groups, n)


# --------------------------------------------------------------------------
# From gradients to rewards to the policy update.
# --------------------------------------------------------------------------


def normalize_rewards(jvp: Array, g_norm: Array, v_norm: Array, *,
                      normalization: str = "cosine") -> Array:
  """r = jvp / (|g| |v|) ("cosine", the official code: exactly d cos / d p)
  or jvp / |g| ("paper", Eq. 5). `jvp: float32[G, ...]`, norms float32[G]."""
  extra = (1,) * (jvp.ndim - 1)
  if normalization == "cosine":
    return jvp / (g_norm * v_norm).reshape((-1,) + extra)
  if normalization == "paper":
    return jvp / g_norm.reshape((-1,) + extra)
  raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                   f"{normalization!r}")


def regularized_reward(rewards: Array, *, std_coef: float) -> Array:
  """Paper Eq. 10: mean_i r_i - c * std_i r_i over search images (axis 0).

  Args:
    rewards: float32[S, T], one reward vector per search image.
    std_coef: c (1.0 in the paper for layers >= 2; the official stage 1 uses
      the plain mean, c = 0).

  Returns:
    float32[T].
  """
  mean = jnp.mean(rewards, axis=0)
  if std_coef == 0:
    return mean
  return mean - std_coef * jnp.std(rewards, axis=0)  # population std (ddof 0)


def policy_loss(logits: Array, reward: Array, *, scale: float) -> Array:
  """J(theta) = -scale * sum_n softmax(theta)_n R_n (R held constant).

  Its gradient, -scale * p * (R - p.R), is the paper's Eq. 4 / 12 up to the
  scale (0.25 in stage 1 and the number of search images after, as in the
  official code; Adam makes the scale nearly irrelevant).
  """
  return -scale * jnp.sum(jax.nn.softmax(logits) * jax.lax.stop_gradient(
      reward))


def cosine(v: PyTree, g: PyTree) -> Array:
  """cos(v, g) over all leaves."""
  return otu.tree_vdot(v, g) / (otu.tree_norm(v) * otu.tree_norm(g))


@functools.partial(jax.jit, static_argnames=("loss", "chunk_size",
                                             "normalization", "method"))
def rewards_from_gradients(loss: PerExampleLoss, w: PyTree, frozen: PyTree,
                           v: PyTree, g: PyTree, images: Array, labels: Array,
                           *, chunk_size: int,
                           normalization: str = "cosine",
                           method: str = "jvp"):
  """Given per-group v and g, the normalised rewards of the images.

  Args:
    v, g: trees with a leading group axis G.
    images: float32[G, N, H, W, 3]; labels: int32[G, N].
    method: "jvp" (`jvp_rewards`) or "jacobian" (`jacobian_rewards`, the
      chunked vmap(grad) Jacobian); equal up to float32 rounding.

  Returns:
    (rewards float32[G, N], cos float32[G], g_norm float32[G],
     v_norm float32[G]).
  """
  u = jax.vmap(tangent)(v, g)
  g_norm = jax.vmap(otu.tree_norm)(g)
  v_norm = jax.vmap(otu.tree_norm)(v)
  if method == "jvp":
    jvp = jvp_rewards(loss, w, frozen, images, labels, u,
                      chunk_size=chunk_size)
  elif method == "jacobian":
    jvp = jacobian_rewards(loss, w, frozen, images, labels, u,
                           chunk_size=chunk_size)
  else:
    raise ValueError(f"reward method must be one of {REWARD_METHODS}, got "
                     f"{method!r}")
  rewards = normalize_rewards(jvp, g_norm, v_norm, normalization=normalization)
  cos = jax.vmap(otu.tree_vdot)(v, g) / (g_norm * v_norm)
  return rewards, cos, g_norm, v_norm


def stack_groups(trees: Sequence[PyTree]) -> PyTree:
  """Stacks trees into one tree with a leading group axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
