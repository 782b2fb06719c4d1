"""Tests for deepaa_jax/pil.py: the Pillow applier of policies (PyTorch use).

Parity: the transform and its random parameters are forced equal on both
sides. The JAX side draws them from a key (`space.layer_randomness`, exactly
what `space.apply_transform` does with that key); the Pillow side is given
them explicitly (`pil.apply_transform(..., draws, sign=...)`).
"""

import copy
import inspect
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from scipy import stats

from benchmarks import pil_reference as ref
from deepaa_jax import errors
from deepaa_jax import pil
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as S
from tests.conftest import OFFICIAL_POLICIES, REPO, synthetic_images

CIFAR = S.cifar_space()
IMAGENET = S.imagenet_space()


def _forced(space, images, seed):
  """JAX outputs of every (image, transform) pair, each with its own key and
  random sign, and the same draws as `pil.Draws` and signs."""
  n, h, w, _ = images.shape
  keys = jax.random.split(jax.random.key(seed), n * space.size).reshape(
      n, space.size)
  method = "switch" if space.resized_crop else "stages"
  fn = jax.jit(jax.vmap(jax.vmap(
      lambda k, x, i: S.apply_transform(k, x, i, space, random_sign=True,
                                        method=method),
      in_axes=(0, None, 0)), in_axes=(0, 0, None)))
  out = np.asarray(fn(keys, jnp.asarray(images), jnp.arange(space.size)))
  rnd = jax.tree.map(np.asarray, jax.vmap(jax.vmap(
      lambda k: S.layer_randomness(k, h, w, space, random_sign=True)))(keys))
  d = rnd.draws
  draws = [[pil.Draws(flip=bool(d.flip[a, i]),
                      cutout_center=tuple(float(v)
                                          for v in d.cutout_center[a, i]),
                      crop_offsets=tuple(int(v) for v in d.crop_offsets[a, i]),
                      resized_crop_box=tuple(int(v) for v in
                                             d.resized_crop_box[a, i]))
            for i in range(space.size)] for a in range(n)]
  signs = np.where(rnd.flip_sign, -1, 1)
  return out, draws, signs


# --------------------------------------------------------------------------
# The table, and pixel parity with the JAX ops.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["search", "evaluation"])
@pytest.mark.parametrize("name", ["cifar", "imagenet"])
def test_transform_table_is_the_jax_spaces_table(name, phase):
  """Both tables of level values (issue 20, finding 13): the search's
  (float32 m / 12) and the evaluation's (float64), as the JAX spaces."""
  space = S.get_space(name, phase=phase)
  table = pil.transform_table(name, phase=phase)
  assert [t.op for t in table] == [space.op_names[o] for o in space.ops]
  assert [t.level for t in table] == list(space.levels)
  assert [t.value for t in table] == list(space.values)  # exact float64
  assert pil._table_of(space) == table  # pylint: disable=protected-access
  # The module's default is the official evaluation's table.
  assert (pil.transform_table(name) == table) == (phase == "evaluation")


def test_deepaa_policy_applies_the_official_evaluation_values():
  """DeepAAPolicy draws from the evaluation table: value = m / 12 * (hi - lo)
  + lo in float64 (spec §4.1), e.g. Brightness m=8 receives 1.2999999999999998
  (the search's float32 m / 12 gives 1.3000000357627868)."""
  augment = pil.DeepAAPolicy(np.full((1, 139), 1 / 139), seed=0)
  brightness8 = augment.table[CIFAR.index_of("Brightness", 8)]
  assert brightness8.value == 8 / 12 * (1.9 - 0.1) + 0.1 == 1.2999999999999998
  assert augment.table == pil.transform_table("cifar", phase="evaluation")
  from_policy = pil.DeepAAPolicy(policy_lib.baseline("deepta", CIFAR))
  assert from_policy.table == augment.table


@pytest.mark.parametrize("phase", ["search", "evaluation"])
def test_all_139_cifar_transforms_match_jax_bit_for_bit(phase, exact_cifar):
  """24 byte-exact CIFAR-10 images x 139 transforms, each pair with its own
  draws and random sign (both signs occur for every signed transform), with
  either table of level values."""
  space = S.cifar_space(phase=phase)
  out, draws, signs = _forced(space, exact_cifar, seed=0)
  table = pil.transform_table("cifar", phase=phase)
  for a, image in enumerate(exact_cifar):
    for i in range(139):
      np.testing.assert_array_equal(
          pil.apply_transform(image, i, draws[a][i], phase=phase,
                              sign=signs[a, i]),
          out[a, i], err_msg=f"image {a} transform {i} {table[i]} "
          f"{draws[a][i]} sign {signs[a, i]}")
  signed = np.isin([t.op for t in table], pil.SIGNED_OPS)
  assert ((signs[:, signed] < 0).any(0) & (signs[:, signed] > 0).any(0)).all()
  assert {d[136].flip for d in draws} == {False, True}
  assert len({d[138].crop_offsets for d in draws}) > 10


@pytest.mark.parametrize("size,num", [(64, 8), (224, 4)])
def test_imagenet_transforms_match_jax(size, num, exact_cifar):
  """The ImageNet space at S x S (CIFAR images upsampled with BICUBIC):
  transforms 0..137 (RandCutout60 included) are bit-exact; RandResizeCrop
  (resized back to S x S, as the JAX space does) is within the documented
  float32-weight tolerance, |diff| <= 2 on < 0.5% of its values."""
  images = np.stack([np.asarray(PIL.Image.fromarray(x).resize(
      (size, size), PIL.Image.BICUBIC)) for x in exact_cifar[:num]])
  out, draws, signs = _forced(IMAGENET, images, seed=1)
  for a, image in enumerate(images):
    for i in range(139):
      got = pil.apply_transform(image, i, draws[a][i], space="imagenet",
                                phase="search",
                                sign=signs[a, i]).astype(np.int32)
      if i < 138:
        np.testing.assert_array_equal(got, out[a, i], err_msg=f"{a} {i}")
      else:
        diff = np.abs(got - out[a, i])
        assert diff.max() <= 2 and (diff > 0).mean() < 0.005, (
            draws[a][i], diff.max(), (diff > 0).mean())


def test_matches_the_independent_pillow_reference():
  """pil.py and benchmarks/pil_reference.py (two separate readings of the
  spec) agree on all 139 CIFAR transforms given the same draws."""
  rng = np.random.default_rng(0)
  ref_table = ref.transform_table(ref.CIFAR_OPS)  # the search's values
  for image in synthetic_images():
    for i in range(139):
      d = pil.sample_draws(rng, pil.transform_table("cifar")[i].op, 32, 32)
      rd = ref.Draws(flip=d.flip, cutout_center=d.cutout_center,
                     crop_offsets=d.crop_offsets)
      np.testing.assert_array_equal(pil.apply_transform(image, i, d,
                                                        phase="search"),
                                    ref.apply_transform(image, i, rd,
                                                        ref_table))


def test_a_call_is_its_sampled_choices_applied_in_order(exact_cifar):
  """`__call__` consumes the generator exactly as `sample` + `apply`; a
  chain of choices equals JAX's apply_chain given the same draws."""
  p = policy_lib.baseline("deepta", CIFAR, num_layers=4)
  a, b = pil.DeepAAPolicy(p, seed=3), pil.DeepAAPolicy(p, seed=3)
  for image in exact_cifar[:8]:
    np.testing.assert_array_equal(a(image), b.apply(image, b.sample(32, 32)))
  key, image = jax.random.key(7), exact_cifar[0]
  indices = [138, 55, 37, 137, 100, 136]
  # The policy's space: the evaluation table, as DeepAAPolicy's.
  expected = np.asarray(S.apply_chain(key, image, jnp.asarray(indices),
                                      p.space, random_sign=True))
  choices = []
  for k, index in enumerate(indices):
    r = S.layer_randomness(jax.random.fold_in(key, k), 32, 32, p.space,
                           random_sign=True)
    choices.append(pil.Choice(index, pil.Draws(
        flip=bool(r.draws.flip),
        cutout_center=tuple(float(v) for v in r.draws.cutout_center),
        crop_offsets=tuple(int(v) for v in r.draws.crop_offsets)),
                              -1 if bool(r.flip_sign) else 1))
  np.testing.assert_array_equal(a.apply(image, choices), expected)


# --------------------------------------------------------------------------
# Sampling law.
# --------------------------------------------------------------------------


def test_sampling_frequencies_match_the_policy():
  """Chi-square goodness of fit of 60,000 sampled indices per layer to a
  non-uniform two-layer policy with zero entries (never drawn)."""
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.full(139, 0.5), size=2)
  probs[0, ::7] = 0.0
  probs[1, :60] = 0.0
  probs /= probs.sum(axis=1, keepdims=True)
  augment = pil.DeepAAPolicy(probs, seed=0)
  n = 60000
  indices = np.asarray([[c.index for c in augment.sample(32, 32)]
                        for _ in range(n)])
  for k in range(2):
    counts = np.bincount(indices[:, k], minlength=139)
    zero = probs[k] == 0
    assert counts[zero].sum() == 0
    expected = n * probs[k][~zero]
    # Pool the rare transforms so every bin expects >= 5 draws.
    rare = expected < 5
    obs = np.append(counts[~zero][~rare], counts[~zero][rare].sum())
    exp = np.append(expected[~rare], expected[rare].sum())
    keep = exp > 0
    result = stats.chisquare(obs[keep], exp[keep])
    assert result.pvalue > 1e-3, (k, result)


def test_random_parameters_follow_the_official_law():
  """Flip coin and sign 1/2 (binomial); crop offsets uniform on {0..8}^2
  (chi-square); cutout centres uniform on [0, W) x [0, H) (KS)."""
  flip, crop, cut, sign = (np.eye(139)[[i]] for i in (136, 138, 137, 60))
  n = 20000
  one = lambda probs: pil.DeepAAPolicy(probs, seed=1)
  a = one(flip)
  flips = np.asarray([a.sample(32, 32)[0].draws.flip for _ in range(n)])
  assert stats.binomtest(int(flips.sum()), n, 0.5).pvalue > 1e-3
  a = one(sign)
  signs = np.asarray([a.sample(32, 32)[0].sign for _ in range(n)])
  assert set(signs) == {-1, 1}
  assert stats.binomtest(int((signs < 0).sum()), n, 0.5).pvalue > 1e-3
  unsigned = pil.DeepAAPolicy(sign, random_sign=False)
  assert {c.sign for c in unsigned.sample(32, 32)} == {1}
  a = one(crop)
  offsets = np.asarray([a.sample(32, 32)[0].draws.crop_offsets
                        for _ in range(n)])
  table = np.zeros((9, 9))
  np.add.at(table, (offsets[:, 0], offsets[:, 1]), 1)
  assert stats.chisquare(table.reshape(-1)).pvalue > 1e-3
  a = one(cut)
  centers = np.asarray([a.sample(40, 24)[0].draws.cutout_center
                        for _ in range(n)])
  assert stats.kstest(centers[:, 0] / 40, "uniform").pvalue > 1e-3
  assert stats.kstest(centers[:, 1] / 24, "uniform").pvalue > 1e-3


# --------------------------------------------------------------------------
# Policy sources, the torchvision convention, processes.
# --------------------------------------------------------------------------


def test_policy_sources_give_the_same_transform(tmp_path):
  p = policy_lib.baseline("trivialaugment", CIFAR)
  path = policy_lib.save_policy(tmp_path / "policy.json", p)
  for source in (p, path, str(path), p.probs):
    augment = pil.DeepAAPolicy(source, seed=0)
    np.testing.assert_array_equal(augment.probs, p.probs)
    assert augment.space_name == "cifar" and augment.num_layers == 4
  # Every refusal is the project's PolicyFileError (a ValueError).
  with pytest.raises(errors.PolicyFileError, match="imagenet"):
    pil.DeepAAPolicy(path, space="imagenet")
  with pytest.raises(errors.PolicyFileError, match="sum to"):
    pil.DeepAAPolicy(np.full((1, 139), 0.5))
  with pytest.raises(errors.PolicyFileError, match="138 transforms"):
    pil.DeepAAPolicy(np.full((1, 138), 1 / 138))


@pytest.mark.parametrize("name", ["cifar_1", "imagenet_1"])
def test_official_npz_files_read_as_load_official_npz(name):
  path = OFFICIAL_POLICIES / f"policy_DeepAA_{name}.npz"
  if not path.is_file():
    pytest.skip(f"official policy not found at {path}")
  augment = pil.DeepAAPolicy(path)
  expected = policy_lib.load_official_npz(path)
  assert augment.space_name == expected.space_name
  np.testing.assert_allclose(augment.probs, expected.probs, rtol=0, atol=1e-15)
  assert augment.table == pil.transform_table(expected.space_name)


def test_torchvision_convention():
  augment = pil.DeepAAPolicy(policy_lib.baseline("deepta", CIFAR), seed=0)
  image = PIL.Image.fromarray(synthetic_images()[6])
  for _ in range(20):
    out = augment(image)
    assert isinstance(out, PIL.Image.Image)
    assert out.mode == "RGB" and out.size == image.size
  grey = augment(image.convert("L"))  # other modes are converted to RGB
  assert grey.mode == "RGB"
  array = augment(np.asarray(image))
  assert array.dtype == np.uint8 and array.shape == (32, 32, 3)
  with pytest.raises(TypeError, match="uint8"):
    augment(np.zeros((32, 32, 3), np.float32))
  assert "deepta" in repr(augment)
  # Official ImageNet output size for RandResizeCrop, when asked for.
  rrc = pil.DeepAAPolicy(np.eye(139)[[138]], space="imagenet", seed=0,
                         resized_crop_size=(224, 224))
  assert rrc(PIL.Image.new("RGB", (300, 200))).size == (224, 224)
  # Pickled copies (spawned workers) keep the settings, not the stream.
  clone = pickle.loads(pickle.dumps(augment))
  assert clone.seed == 0
  assert clone._rng is None  # pylint: disable=protected-access


def test_every_process_and_torch_worker_draws_its_own_stream(monkeypatch):
  probs = np.full((1, 139), 1 / 139)
  parent = pil.DeepAAPolicy(probs, seed=0)
  first = [parent.sample(32, 32)[0].index for _ in range(20)]
  # A forked child holds a bit-for-bit copy of the parent's generator; it is
  # told apart by its process id (faked here: forking a process that runs
  # JAX risks a deadlock) and draws a stream of its own, also when seeded.
  streams = []
  for pid in (10 ** 6 + 1, 10 ** 6 + 2):
    child = copy.copy(parent.__dict__)
    forked = object.__new__(pil.DeepAAPolicy)
    forked.__dict__.update(child)
    monkeypatch.setattr(pil.os, "getpid", lambda pid=pid: pid)
    streams.append([forked.sample(32, 32)[0].index for _ in range(20)])
  monkeypatch.undo()
  assert streams[0] != streams[1] and first not in streams
  # Seeded, one process: reproducible.
  again = pil.DeepAAPolicy(probs, seed=0)
  assert [again.sample(32, 32)[0].index for _ in range(20)] == first
  # A torch DataLoader worker (faked: torch is not a dependency): the stream
  # follows the worker's seed, and changes with it.
  info = types.SimpleNamespace(seed=1234)
  fake = types.ModuleType("torch")
  fake.utils = types.SimpleNamespace(data=types.SimpleNamespace(
      get_worker_info=lambda: info))
  monkeypatch.setitem(sys.modules, "torch", fake)

  def worker_stream(seed):
    info.seed = seed
    clone = pickle.loads(pickle.dumps(parent))
    return [clone.sample(32, 32)[0].index for _ in range(20)]

  assert worker_stream(1234) == worker_stream(1234)
  assert worker_stream(1234) != worker_stream(1235)
  assert worker_stream(1234) != first


def test_the_module_imports_only_numpy_and_pillow():
  """deepaa_jax.pil, with JAX and torch blocked, augments an image (what a
  DataLoader worker needs); of the project it loads only the JAX-free policy
  file validator (`policy_format`) and `errors`."""
  code = """
import sys
sys.modules["jax"] = None  # any import of jax now fails
sys.modules["torch"] = None
from deepaa_jax import pil
import numpy as np, PIL.Image
out = pil.DeepAAPolicy(np.full((3, 139), 1 / 139), seed=0)(
    PIL.Image.new("RGB", (32, 32), (10, 200, 30)))
assert out.size == (32, 32)
loaded = {m for m in sys.modules if sys.modules[m] is not None}
assert not any(m.startswith(("jax", "flax", "tensorflow")) for m in loaded)
project = {m for m in loaded if m.startswith("deepaa_jax")}
assert project == {"deepaa_jax", "deepaa_jax.pil", "deepaa_jax.policy_format",
                   "deepaa_jax.errors"}, project
print("ok")
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_api_conventions():
  """As tests/test_api.py for the JAX modules: public functions and methods
  are documented and take their options keyword-only."""
  public = [obj for name, obj in vars(pil).items() if not name.startswith("_")
            and inspect.isfunction(obj) and obj.__module__ == pil.__name__]
  public += [fn for name, fn in vars(pil.DeepAAPolicy).items()
             if not name.startswith("_") and inspect.isfunction(fn)]
  public.append(pil.DeepAAPolicy.__init__)
  assert len(public) > 8
  for fn in public:
    assert fn.__doc__ or fn is pil.DeepAAPolicy.__init__, fn.__qualname__
    for p in inspect.signature(fn).parameters.values():
      if p.default is not inspect.Parameter.empty:
        assert p.kind == inspect.Parameter.KEYWORD_ONLY, (fn.__qualname__,
                                                          p.name)
