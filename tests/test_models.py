"""Tests for deepaa_jax.models: modes, BN helpers, Shake-Shake, ResNet."""

import functools
import math

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import numpy.testing as npt
import pytest

from deepaa_jax import models
from deepaa_jax.models import shake_shake as shake_lib


def _key(seed):
  # XLA RngBitGenerator keys: on a 2-core CPU, compiling the ~30 initialisers
  # of a tiny model takes ~8 s with (partitionable) threefry, ~2 s with
  # unsafe_rbg. The models are impl-agnostic; only the random bits differ.
  return jax.random.key(seed, impl="unsafe_rbg")


_KEY = _key(0)


@functools.lru_cache(maxsize=None)
def _abstract_variables(name: str, num_classes: int):
  """Shapes of `init` for a registry model, without allocating (32x32 input)."""
  model = models.get_model(name, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(
      lambda k, x: model.init(k, x, train=False), _KEY, x)


def _images(n, size=32, seed=1):
  return _normal(seed, (n, size, size, 3))


def _normal(seed, shape):
  # numpy, not jax.random: no compilation per shape.
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _tiny_models():
  """(id, module, image size) triples that init and run in well under 1 s."""
  return [
      ("wrn_10_1", models.get_model("wrn_10_1", num_classes=10), 16),
      ("wrn_10_1_search",
       models.get_model("wrn_10_1_search", num_classes=10), 16),
      ("shake_8_2x8d",
       models.ShakeShake(depth=8, base_width=8, num_classes=10), 16),
      ("resnet_bottleneck_tiny",
       models.ResNet(stage_sizes=(1, 1), block="bottleneck",
                     base_width=8, num_classes=10), 32),
      ("resnet_basic_tiny",
       models.ResNet(stage_sizes=(1, 1), block="basic", base_width=8,
                     num_classes=10), 32),
  ]


_TINY = _tiny_models()
_TINY_IDS = [t[0] for t in _TINY]


def _init(model, x):
  """Jitted `init` in eval mode (eager flax init dispatches op by op: slow)."""
  return jax.jit(functools.partial(model.init, train=False))(_KEY, x)


def _host_init(model, x, seed=0):
  """Random variables drawn with numpy in the shapes `model.init` would give.

  For tests where the initialisers' values are not under test: on CPU,
  compiling ~100 ms of XLA per random initialiser dominates these tests.
  Kernels get N(0, 1/fan_in), BN scale/bias and running statistics random
  non-trivial values.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), _KEY, x)

  def draw(path, leaf):
    name = path[-1].key
    z = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == "kernel":
      return z / np.sqrt(math.prod(leaf.shape[:-1]))
    if name in ("scale", "var"):
      return 1 + 0.2 * np.abs(z)
    return 0.2 * z  # biases, BN shift, running means

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def _fresh_variables(idx: int):
  name, model, size = _TINY[idx]
  if name.startswith("shake"):
    # Shake-Shake's initial values are not under test; its ~60 initialisers
    # would cost ~4 s of compilation.
    return _host_init(model, _images(1, size))
  return _init(model, _images(1, size))


@functools.lru_cache(maxsize=None)
def _eval_fn(idx: int):
  model = _TINY[idx][1]
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


@functools.lru_cache(maxsize=None)
def _train_fn(idx: int):
  model = _TINY[idx][1]
  return jax.jit(lambda v, x, key: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"shake": key}))


@functools.lru_cache(maxsize=None)
def _tiny_variables(idx: int):
  """Variables of a tiny model after one train-mode BN update.

  The update makes the running statistics non-trivial, so the eval-mode
  tests below do not pass merely because mean = 0 and var = 1.
  """
  _, _, size = _TINY[idx]
  variables = _fresh_variables(idx)
  _, updates = _train_fn(idx)(variables, _images(8, size, seed=2),
                              _key(3))
  return {**variables, **updates}


# --- Parameter counts ---------------------------------------------------------


@pytest.mark.parametrize("name, num_classes, published, rel_tol", [
    # Zagoruyko & Komodakis (2016), Table / text: WRN-28-10 36.5M, WRN-40-2
    # 2.2M (2.24M); both counts there omit the conv biases the authors' code
    # adds (~10k and ~3k parameters), hence the tolerances.
    ("wrn_28_10", 10, 36.5e6, 5e-3),
    ("wrn_40_2", 10, 2.24e6, 5e-3),
    ("wrn_40_2_search", 10, 2.24e6, 5e-3),
    # Gastaldi (2017), Table 1: 26.2M.
    ("shake_shake_26_2x96d", 10, 26.2e6, 1e-3),
    # torchvision's ResNet-18/50 (same layout as the authors'): exact.
    ("resnet18", 1000, 11_689_512, 0),
    ("resnet50", 1000, 25_557_032, 0),
    # ResNet-200 in the same layout (e.g. timm `resnet200`): 64.7M.
    ("resnet200", 1000, 64.7e6, 1e-3),
])
def test_param_count_matches_published(name, num_classes, published,
                                       rel_tol):
  n = models.count_params(_abstract_variables(name, num_classes)["params"])
  if rel_tol == 0:
    assert n == published
  else:
    npt.assert_allclose(n, published, rtol=rel_tol)


def _wrn_closed_form(depth, k, num_classes):
  """Parameter count of the authors' WRN-depth-k, derived from the diagram.

  Every conv has a kernel (kh*kw*c_in*c_out) and a bias (c_out); every BN a
  scale and a bias (2c); a block is bn(c_in), conv3x3(c_in->c),
  bn(c), conv3x3(c->c) plus a biased 1x1 conv shortcut when c_in != c.
  """
  conv = lambda c_in, c_out, ks: ks * ks * c_in * c_out + c_out
  bn = lambda c: 2 * c
  n = (depth - 4) // 6
  total = conv(3, 16, 3)
  c_in = 16
  for c in (16 * k, 32 * k, 64 * k):
    for _ in range(n):
      total += bn(c_in) + conv(c_in, c, 3) + bn(c) + conv(c, c, 3)
      if c_in != c:
        total += conv(c_in, c, 1)
      c_in = c
  return total + bn(c_in) + c_in * num_classes + num_classes


def test_wrn_closed_form_param_count():
  # WRN-10-1, 10 classes, worked by hand:
  #   stem 3*9*16+16 = 448
  #   group1 (16->16): 32 + 2320 + 32 + 2320 = 4704
  #   group2 (16->32): 32 + 4640 + 64 + 9248 + 544 (1x1 shortcut) = 14528
  #   group3 (32->64): 64 + 18496 + 128 + 36928 + 2112 = 57728
  #   head: bn 128 + dense 64*10+10 = 778          total 78186
  assert _wrn_closed_form(10, 1, 10) == 78_186
  for depth, k, num_classes in [(10, 1, 10), (16, 2, 100), (22, 3, 7)]:
    for variant in ("eval", "search"):
      model = models.WideResNet(depth=depth, widen_factor=k,
                                num_classes=num_classes, variant=variant)
      shapes = jax.eval_shape(
          lambda key, m=model: m.init(key, jnp.zeros((1, 32, 32, 3)),
                                      train=False), _KEY)
      assert (models.count_params(shapes["params"])
              == _wrn_closed_form(depth, k, num_classes)), (depth, k, variant)


def test_batch_stats_mirror_bn_params():
  # Two running statistics per BN channel, exactly as many as BN scale+bias.
  for name in ("wrn_28_10", "shake_shake_26_2x96d", "resnet50"):
    v = _abstract_variables(name, 10)
    _, bn = models.split_bn(v["params"])
    assert models.count_params(bn) == models.count_params(v["batch_stats"])


# --- Forward: shapes, dtypes, modes -----------------------------------------


@pytest.mark.parametrize("idx", range(len(_TINY)), ids=_TINY_IDS)
def test_output_shape_and_dtype(idx):
  _, _, size = _TINY[idx]
  logits = _eval_fn(idx)(_tiny_variables(idx), _images(6, size))
  assert logits.shape == (6, 10) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("name, num_classes", [
    ("wrn_10_1", 10), ("wrn_40_2_search", 10), ("shake_shake_26_2x96d", 10),
    ("resnet50", 1000)])
@pytest.mark.parametrize("train", [False, True])
def test_bfloat16_compute_returns_float32_logits(name, num_classes, train):
  # Abstract evaluation: no compilation, yet every dtype is the real one.
  model = models.get_model(name, num_classes=num_classes, dtype=jnp.bfloat16)
  variables = _abstract_variables(name, num_classes)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  logits, state = jax.eval_shape(
      lambda v, x: model.apply(
          v, x, train=train, rngs={"shake": _KEY}, capture_intermediates=True,
          mutable=["batch_stats", "intermediates"]), variables, x)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
  # Parameters and running statistics stay float32.
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  for leaf in jax.tree.leaves(state["batch_stats"]):
    assert leaf.dtype == jnp.float32
  # Every conv / BN / dense output, i.e. the computation, is bfloat16.
  flat = traverse_util.flatten_dict(state["intermediates"])
  layer_outputs = [
      v for p, v in flat.items()
      if len(p) > 1 and p[-2].startswith(("conv", "bn", "head", "shortcut_"))
  ]
  assert len(layer_outputs) > 10
  for out in layer_outputs:
    assert jax.tree.leaves(out)[0].dtype == jnp.bfloat16


def test_bfloat16_logits_close_to_float32():
  _, model, size = _TINY[0]
  variables = _tiny_variables(0)
  x = _images(6, size)
  bf16 = model.clone(dtype=jnp.bfloat16)
  logits = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
  ref = _eval_fn(0)(variables, x)
  assert logits.dtype == jnp.float32
  assert not np.array_equal(np.asarray(logits), np.asarray(ref))  # really bf16
  npt.assert_allclose(logits, ref, rtol=0.1, atol=0.1)


def test_registry_dtype_is_forwarded():
  model = models.get_model("wrn_10_1", num_classes=5, dtype=jnp.bfloat16)
  assert model.dtype == jnp.bfloat16 and model.num_classes == 5


@pytest.mark.parametrize("idx", range(len(_TINY)), ids=_TINY_IDS)
def test_eval_mode_is_deterministic_and_per_example(idx):
  _, _, size = _TINY[idx]
  variables = _tiny_variables(idx)
  apply = functools.partial(_eval_fn(idx), variables)
  x = _images(6, size)
  full = np.asarray(apply(x))
  npt.assert_array_equal(np.asarray(apply(x)), full)
  perm = np.array([4, 1, 5, 0, 3, 2])
  npt.assert_allclose(apply(x[perm]), full[perm], rtol=1e-5, atol=1e-5)
  # A different batch size and different companions: logits of examples 0..1
  # must not move.
  other = jnp.concatenate([x[:2], _images(4, size, seed=9)])
  npt.assert_allclose(apply(other)[:2], full[:2], rtol=1e-5, atol=1e-5)
  npt.assert_allclose(apply(x[1:2]), full[1:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("idx", range(len(_TINY)), ids=_TINY_IDS)
def test_train_mode_updates_batch_stats(idx):
  _, _, size = _TINY[idx]
  variables = _fresh_variables(idx)
  x = _images(8, size)
  key = _key(5)
  logits, updates = _train_fn(idx)(variables, x, key)
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert len(old) == len(new) > 0
  assert all(not np.array_equal(a, b) for a, b in zip(old, new))
  # Batch statistics couple the examples in train mode.
  other = jnp.concatenate([x[:2], _images(6, size, seed=9)])
  logits2, _ = _train_fn(idx)(variables, other, key)
  assert not np.allclose(logits[:2], logits2[:2], atol=1e-5)


# --- BN helpers ---------------------------------------------------------------


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_bn_mask_matches_batch_norm_modules(name):
  v = _abstract_variables(name, 10)
  flat_params = traverse_util.flatten_dict(v["params"])
  flat_mask = traverse_util.flatten_dict(models.bn_param_mask(v["params"]))
  assert flat_mask.keys() == flat_params.keys()
  # Ground truth from another collection: exactly the modules that own BN
  # running statistics are BatchNorms.
  bn_modules = {p[:-1] for p in traverse_util.flatten_dict(v["batch_stats"])}
  for path, is_bn in flat_mask.items():
    assert is_bn == (path[:-1] in bn_modules), path
    if is_bn:
      assert path[-1] in ("scale", "bias")
    else:
      assert path[-1] in ("kernel", "bias")
  assert sum(flat_mask.values()) == 2 * len(bn_modules)


def test_bn_helpers_on_a_hand_made_tree():
  params = {
      "conv1": {"kernel": np.zeros((3, 3, 2, 4)), "bias": np.zeros(4)},
      "bn1": {"scale": np.ones(4), "bias": np.zeros(4)},
      "block": {"BatchNorm_0": {"scale": np.ones(2), "bias": np.zeros(2)},
                "Dense_0": {"kernel": np.zeros((2, 5)), "bias": np.zeros(5)}},
  }
  assert models.bn_param_mask(params) == {
      "conv1": {"kernel": False, "bias": False},
      "bn1": {"scale": True, "bias": True},
      "block": {"BatchNorm_0": {"scale": True, "bias": True},
                "Dense_0": {"kernel": False, "bias": False}},
  }
  assert models.count_params(params) == 72 + 4 + 8 + 4 + 10 + 5
  non_bn, bn = models.split_bn(params)
  assert set(non_bn) == {"conv1", "block"} and set(bn) == {"bn1", "block"}
  assert set(bn["block"]) == {"BatchNorm_0"}
  # FrozenDict in, FrozenDict out, so masks match optax's pytree types.
  frozen = flax.core.freeze(params)
  assert isinstance(models.bn_param_mask(frozen), flax.core.FrozenDict)
  merged = models.merge_bn(*models.split_bn(frozen))
  assert jax.tree.structure(merged) == jax.tree.structure(frozen)


def test_split_merge_bn_round_trip_and_gradient_space():
  variables = _tiny_variables(0)
  params = variables["params"]
  non_bn, bn = models.split_bn(params)
  merged = models.merge_bn(non_bn, bn)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    npt.assert_array_equal(a, b)
  assert not any(jax.tree.leaves(models.bn_param_mask(non_bn)))
  assert all(jax.tree.leaves(models.bn_param_mask(bn)))
  assert (models.count_params(non_bn) + models.count_params(bn)
          == models.count_params(params))
  # The search differentiates w.r.t. non-BN parameters only.
  model = _TINY[0][1]
  x = _images(2, 16)

  def loss(non_bn_params):
    full = {**variables, "params": models.merge_bn(non_bn_params, bn)}
    return model.apply(full, x, train=False).sum()

  grads = jax.jit(jax.grad(loss))(non_bn)
  assert jax.tree.structure(grads) == jax.tree.structure(non_bn)
  with pytest.raises(ValueError, match="both inputs"):
    models.merge_bn(params, bn)


# --- Architecture details -----------------------------------------------------


def test_wrn_init_conventions():
  flat = {
      v: traverse_util.flatten_dict(_fresh_variables(i)["params"])
      for i, v in ((0, "eval"), (1, "search"))
  }
  for path, w in flat["eval"].items():
    if path[-1] == "kernel":
      bound = 1 / math.sqrt(math.prod(w.shape[:-1]))  # 1/sqrt(fan_in)
      assert np.abs(w).max() <= bound, path
  # Conv/dense biases: U(±1/sqrt(fan_in)) for PyTorch, zeros for Keras.
  bias = flat["eval"][("group3_block1", "conv2", "bias")]
  assert 0 < np.abs(bias).max() <= 1 / math.sqrt(9 * 64)
  assert not np.any(flat["search"][("group3_block1", "conv2", "bias")])
  # Keras he_normal: std sqrt(2 / fan_in); PyTorch: sqrt(1 / (3 fan_in)).
  path = ("group3_block1", "conv2", "kernel")
  npt.assert_allclose(flat["search"][path].std(), math.sqrt(2 / 576),
                      rtol=0.05)
  npt.assert_allclose(flat["eval"][path].std(), math.sqrt(1 / (3 * 576)),
                      rtol=0.05)


@pytest.mark.parametrize("idx, padding", [(0, ((1, 1), (1, 1))),
                                          (1, ((0, 1), (0, 1)))],
                         ids=["eval_torch_pad", "search_tf_same"])
def test_wrn_stride_on_second_conv_with_variant_padding(idx, padding):
  _, model, size = _TINY[idx]
  variables = _tiny_variables(idx)
  x = _images(2, size)
  _, state = jax.jit(lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=True,
      mutable=["intermediates"]))(variables, x)
  inter = state["intermediates"]["group2_block1"]
  (h_bn2,) = inter["bn2"]["__call__"]
  (h_conv1,) = inter["conv1"]["__call__"]
  (h_conv2,) = inter["conv2"]["__call__"]
  # conv1 keeps the resolution, conv2 halves it.
  assert h_conv1.shape[1:3] == (size, size)
  assert h_conv2.shape[1:3] == (size // 2, size // 2)
  p = variables["params"]["group2_block1"]["conv2"]
  expected = jax.lax.conv_general_dilated(
      jax.nn.relu(h_bn2), p["kernel"], (2, 2), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
  npt.assert_allclose(h_conv2, expected, rtol=1e-5, atol=1e-5)


def _bn_scales(params):
  flat = traverse_util.flatten_dict(params)
  return {p[:-1]: v for p, v in flat.items()
          if p[-1] == "scale" and p[-2].startswith("bn")}


@pytest.mark.parametrize("idx, last_bn", [(3, "bn3"), (4, "bn2")],
                         ids=["bottleneck", "basic"])
def test_resnet_last_bn_gamma_is_zero_at_init(idx, last_bn):
  params = _fresh_variables(idx)["params"]
  scales = _bn_scales(params)
  blocks = [k for k in params if k.startswith("stage")]
  assert len(blocks) == 2
  for module, scale in scales.items():
    if module[-1] == last_bn and module[0] in blocks:
      npt.assert_array_equal(scale, 0.0)
    else:
      npt.assert_array_equal(scale, 1.0)
  assert sum(m[-1] == last_bn for m in scales) == 2


def test_resnet_bottleneck_stride_on_3x3():
  _, model, size = _TINY[3]
  _, state = jax.jit(lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=True,
      mutable=["intermediates"]))(_tiny_variables(3), _images(1, size))
  inter = state["intermediates"]["stage2_block1"]
  in_res = size // 4  # after stem conv/2 and max-pool/2
  assert inter["conv1"]["__call__"][0].shape[1:3] == (in_res, in_res)
  assert inter["conv2"]["__call__"][0].shape[1:3] == (in_res // 2,) * 2
  assert inter["conv3"]["__call__"][0].shape[-1] == 4 * 16


# --- Shake-Shake --------------------------------------------------------------


def test_shake_shake_function_forward_and_vjp():
  x1, x2, g = (_normal(seed, (3, 2, 2, 4)) for seed in (7, 8, 9))
  alpha = jnp.array([0.1, 0.5, 0.9]).reshape(3, 1, 1, 1)
  beta = jnp.array([0.7, 0.2, 0.4]).reshape(3, 1, 1, 1)
  out, vjp = jax.vjp(models.shake_shake_mix, x1, x2, alpha, beta)
  npt.assert_allclose(out, alpha * x1 + (1 - alpha) * x2, rtol=1e-6)
  d1, d2, da, db = vjp(g)
  npt.assert_allclose(d1, beta * g, rtol=1e-6)
  npt.assert_allclose(d2, (1 - beta) * g, rtol=1e-6)
  npt.assert_array_equal(da, 0.0)
  npt.assert_array_equal(db, 0.0)


def _run_block(train, key=_key(11)):
  block = shake_lib.ShakeBlock(features=4, stride=2)
  x = _images(5, 8)
  variables = _host_init(block, x)
  g = _normal(12, (5, 4, 4, 4))

  def loss(params):
    out, state = block.apply(
        {**variables, "params": params}, x, train=train,
        rngs={"shake": key}, capture_intermediates=True,
        mutable=["batch_stats", "intermediates"])
    return jnp.sum(out * g), (out, state["intermediates"])

  grads, (out, inter) = jax.jit(jax.grad(loss, has_aux=True))(
      variables["params"])
  return out, inter, grads, g


def test_shake_block_eval_is_half_half():
  out, inter, _, _ = _run_block(train=False)
  h1 = inter["branch1"]["__call__"][0]
  h2 = inter["branch2"]["__call__"][0]
  shortcut = inter["shortcut"]["__call__"][0]
  assert "shake_alpha" not in inter
  npt.assert_allclose(out, shortcut + 0.5 * h1 + 0.5 * h2, rtol=1e-6,
                      atol=1e-6)


def test_shake_block_train_forward_alpha_backward_beta():
  out, inter, grads, g = _run_block(train=True)
  h1 = inter["branch1"]["__call__"][0]
  h2 = inter["branch2"]["__call__"][0]
  shortcut = inter["shortcut"]["__call__"][0]
  (alpha,) = inter["shake_alpha"]
  (beta,) = inter["shake_beta"]
  assert alpha.shape == beta.shape == (5,)
  assert np.all((alpha >= 0) & (alpha < 1)) and np.all((beta >= 0) & (beta < 1))
  assert len(np.unique(alpha)) == 5  # one coefficient per example
  assert np.abs(alpha - beta).min() > 1e-3  # independent draws
  a = alpha.reshape(5, 1, 1, 1)
  b = beta.reshape(5, 1, 1, 1)
  npt.assert_allclose(out, shortcut + a * h1 + (1 - a) * h2, rtol=1e-5,
                      atol=1e-6)
  # Each branch ends in BN(...) + bias, so d(sum(out * g))/d bias of a
  # branch's last BN is the channel sum of the cotangent reaching that branch:
  # beta * g for branch 1 and (1 - beta) * g for branch 2 (alpha would be the
  # true gradient of the forward mix).
  npt.assert_allclose(grads["branch1"]["bn2"]["bias"],
                      jnp.sum(b * g, axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
  npt.assert_allclose(grads["branch2"]["bn2"]["bias"],
                      jnp.sum((1 - b) * g, axis=(0, 1, 2)), rtol=1e-5,
                      atol=1e-5)
  assert not np.allclose(grads["branch1"]["bn2"]["bias"],
                         jnp.sum(a * g, axis=(0, 1, 2)), atol=1e-3)


def test_shake_shake_train_randomness_comes_from_shake_stream():
  idx = 2
  _, model, size = _TINY[idx]
  variables = _tiny_variables(idx)
  x = _images(8, size)

  def run(key):
    return np.asarray(_train_fn(idx)(variables, x, key)[0])

  npt.assert_array_equal(run(_key(1)), run(_key(1)))
  assert not np.allclose(run(_key(1)), run(_key(2)))
  with pytest.raises(Exception, match="shake"):
    model.apply(variables, x, train=True, mutable=["batch_stats"])


def test_shake_shortcut_matches_authors_offsets():
  # Path 1 reads even pixels (0, 2, ...), path 2 the odd ones (1, 3, ...).
  shortcut = shake_lib.ShakeShortcut(features=4, stride=2)
  x = jnp.abs(_images(1, 4))  # relu is then the identity
  variables = _host_init(shortcut, x)
  _, state = jax.jit(lambda v, x: shortcut.apply(
      v, x, train=False, capture_intermediates=True,
      mutable=["intermediates"]))(variables, x)
  inter = state["intermediates"]
  p = variables["params"]
  h1 = inter["conv1"]["__call__"][0]
  h2 = inter["conv2"]["__call__"][0]
  npt.assert_allclose(h1, x[:, ::2, ::2] @ p["conv1"]["kernel"][0, 0],
                      rtol=1e-5, atol=1e-6)
  npt.assert_allclose(h2, x[:, 1::2, 1::2] @ p["conv2"]["kernel"][0, 0],
                      rtol=1e-5, atol=1e-6)


# --- Registry -----------------------------------------------------------------


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError) as err:
    models.get_model("wrn_27_10", num_classes=10)
  msg = str(err.value)
  assert "wrn_27_10" in msg
  for name in ("wrn_28_10", "wrn_40_2", "wrn_40_2_search", "wrn_10_1",
               "shake_shake_26_2x96d", "resnet18", "resnet50", "resnet200"):
    assert name in msg


def test_registry_names_build_their_architectures():
  assert isinstance(models.get_model("wrn_40_2_search", num_classes=10),
                    models.WideResNet)
  m = models.get_model("wrn_40_2_search", num_classes=10)
  assert (m.depth, m.widen_factor, m.variant) == (40, 2, "search")
  m = models.get_model("wrn_28_10", num_classes=100)
  assert (m.depth, m.widen_factor, m.variant, m.num_classes) == (
      28, 10, "eval", 100)
  m = models.get_model("resnet200", num_classes=1000)
  assert tuple(m.stage_sizes) == (3, 24, 36, 3) and m.block == "bottleneck"
  with pytest.raises(ValueError, match="variant"):
    jax.eval_shape(functools.partial(
        models.WideResNet(variant="keras").init, train=False),
                   _KEY, _images(1, 8))
