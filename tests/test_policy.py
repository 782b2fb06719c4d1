"""Tests for deepaa_jax/policy.py: policy values, files, sampling, plots."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from deepaa_jax import ops
from deepaa_jax import plots
from deepaa_jax import policy as P
from deepaa_jax import space as S
from tests.conftest import OFFICIAL_POLICIES, synthetic_images

CIFAR = S.cifar_space()

# Spec §3.3, `policy_DeepAA_cifar_1.npz`: probability mass per operation.
CIFAR_1_MASS = np.array([
    [0.0236, 0.0166, 0.0352, 0.0429, 0.0725, 0.9653],
    [0.0449, 0.0018, 0.0004, 0.0020, 0.0014, 0.0002],
    [0.0527, 0.0008, 0.0002, 0.0001, 0.0001, 0.0001],
    [0.1642, 0.0043, 0.0020, 0.0001, 0.0001, 0.0001],
    [0.1282, 0.0009, 0.0002, 0.0001, 0.0001, 0.0001],
    [0.0719, 0.0010, 0.0002, 0.0001, 0.0001, 0.0001],
    [0.0006, 0.0000, 0.0013, 0.0041, 0.0189, 0.0053],
    [0.0172, 0.0001, 0.0000, 0.0000, 0.0000, 0.0000],
    [0.0742, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000],
    [0.1605, 0.0003, 0.0002, 0.0001, 0.0001, 0.0001],
    [0.0003, 0.0004, 0.0086, 0.0009, 0.0005, 0.0080],
    [0.0619, 0.0003, 0.0003, 0.0001, 0.0001, 0.0001],
    [0.0855, 0.0023, 0.0107, 0.0541, 0.5778, 0.0005],
    [0.0718, 0.0004, 0.0011, 0.0003, 0.0003, 0.0002],
    [0.0383, 0.0003, 0.0005, 0.0001, 0.0001, 0.0001],
    [0.0001, 0.0017, 0.0105, 0.7309, 0.0001, 0.0001],
    [0.0040, 0.9177, 0.0310, 0.0140, 0.0089, 0.0001],
    [0.0000, 0.0511, 0.8975, 0.1502, 0.3188, 0.0198],
]).T
# Spec §3.3, `policy_DeepAA_imagenet_1.npz`.
IMAGENET_1_MASS = np.array([
    [0.0005, 0.0002, 0.0010, 0.0062, 0.0124],
    [0.0187, 0.0101, 0.0235, 0.0535, 0.0299],
    [0.0452, 0.0101, 0.0266, 0.0442, 0.0244],
    [0.1523, 0.0104, 0.0080, 0.0084, 0.0079],
    [0.1645, 0.0104, 0.0144, 0.0106, 0.0084],
    [0.1144, 0.0251, 0.0242, 0.0221, 0.0074],
    [0.0005, 0.0003, 0.0013, 0.0192, 0.0156],
    [0.0191, 0.0041, 0.0087, 0.0025, 0.0021],
    [0.0317, 0.0308, 0.0930, 0.0235, 0.0031],
    [0.1137, 0.0091, 0.0241, 0.0167, 0.0088],
    [0.0056, 0.0036, 0.0296, 0.2071, 0.1176],
    [0.0351, 0.0048, 0.0139, 0.0246, 0.0208],
    [0.0087, 0.0049, 0.0227, 0.0931, 0.1915],
    [0.0802, 0.0084, 0.0163, 0.0195, 0.0217],
    [0.0055, 0.0026, 0.0186, 0.2560, 0.2153],
    [0.0005, 0.0047, 0.2996, 0.1196, 0.2692],
    [0.0052, 0.1177, 0.2589, 0.0038, 0.0028],
    [0.1987, 0.7426, 0.1158, 0.0694, 0.0411],
]).T


def _official(name):
  path = OFFICIAL_POLICIES / f"policy_DeepAA_{name}.npz"
  if not path.is_file():
    pytest.skip(f"official policy not found at {path}")
  return path


def test_official_cifar_policy_loads_to_the_spec_mass_table():
  policy = P.load_official_npz(_official("cifar_1"))
  assert policy.space_name == "cifar" and policy.num_layers == 6
  np.testing.assert_allclose(policy.op_mass(), CIFAR_1_MASS, atol=5.1e-5)
  # Spec: entropy per layer 3.64, 0.42, 0.54, 0.98, 1.48, 0.21 nats.
  np.testing.assert_allclose(policy.entropy(),
                             [3.64, 0.42, 0.54, 0.98, 1.48, 0.21], atol=5.1e-3)
  np.testing.assert_allclose(policy.probs.sum(axis=1), 1.0, atol=1e-15)
  # Layer-1 top transform: Color m=0 (0.10) with 0.0812.
  index, _, prob = policy.top(0, 1)[0]
  assert index == 100 and abs(prob - 0.0812) < 5e-5


def test_official_imagenet_policy_and_the_op16_decision(caplog):
  with caplog.at_level("WARNING"):
    policy = P.load_official_npz(_official("imagenet_1"))
  assert policy.space_name == "imagenet" and policy.num_layers == 5
  assert "RandCutout60" in policy.metadata["op16_decision"]
  assert any("RandCutout60" in r.getMessage() for r in caplog.records)
  np.testing.assert_allclose(policy.op_mass(), IMAGENET_1_MASS, atol=5.1e-5)
  with pytest.raises(P.PolicyFileError, match="cutout60=True"):
    P.load_official_npz(_official("imagenet_1"), cutout60=False)


def test_official_npz_round_trip(tmp_path):
  policy = P.load_official_npz(_official("cifar_2"))
  path = P.save_official_npz(tmp_path / "p.npz", policy)
  again = P.load_official_npz(path)
  np.testing.assert_allclose(again.probs, policy.probs, atol=1e-7)
  with np.load(path) as a, np.load(_official("cifar_2")) as b:
    for key in ("ops", "mags", "l_ops", "l_mags", "op_names"):
      np.testing.assert_array_equal(a[key], b[key])


def test_bad_official_npz_files(tmp_path):
  good = dict(np.load(_official("cifar_1")))
  cases = {
      "missing": ({k: v for k, v in good.items() if k != "mags"}, "missing"),
      "shape": (dict(good, policy_probs=good["policy_probs"][:, :100]),
                "shape"),
      "order": (dict(good, mags=good["mags"][::-1]), "canonical"),
      "rows": (dict(good, policy_probs=good["policy_probs"] * 1.5), "sum to"),
  }
  for name, (contents, message) in cases.items():
    path = tmp_path / f"{name}.npz"
    np.savez(path, **contents)
    with pytest.raises(P.PolicyFileError, match=message):
      P.load_official_npz(path)
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not a zip")
  with pytest.raises(P.PolicyFileError, match="not a readable"):
    P.load_official_npz(garbage)


def test_json_round_trip_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 139)) * 3
  policy = P.from_logits(logits, "cifar", name="random",
                         metadata=P.provenance(seed=3, config={"a": 1}))
  path = P.save_policy(tmp_path / "policy.json", policy)
  again = P.load_policy(path)
  assert again == policy
  np.testing.assert_array_equal(again.probs, policy.probs)
  doc = json.loads(path.read_text())
  assert doc["layers"][0]["top"][0]["probability"] == policy.top(0, 1)[0][2]
  assert doc["transforms"][1] == {"index": 1, "op": "ShearX", "level": 0,
                                  "value": CIFAR.values[1]}


def test_corrupt_json_files_are_clear_errors(tmp_path):
  policy = P.baseline("deepta", CIFAR, num_layers=2)
  good = json.loads(P.to_json(policy))
  path = tmp_path / "p.json"

  def write(doc):
    path.write_text(json.dumps(doc))
    return path

  text = P.to_json(policy)
  path.write_text(text[:len(text) // 2])
  with pytest.raises(P.PolicyFileError, match="truncated or corrupt"):
    P.load_policy(path)
  with pytest.raises(P.PolicyFileError, match="format"):
    P.load_policy(write(dict(good, format="something-else")))
  with pytest.raises(P.PolicyFileError, match="unknown search space"):
    P.load_policy(write(dict(good, space="svhn")))
  with pytest.raises(P.PolicyFileError, match="expected 'imagenet'"):
    P.load_policy(write(good), space_name="imagenet")
  bad = json.loads(text)
  bad["num_transforms"] = 138
  with pytest.raises(P.PolicyFileError, match="138 transforms"):
    P.load_policy(write(bad))
  bad = json.loads(text)
  bad["layers"][1]["probs"][0] += 0.5
  with pytest.raises(P.PolicyFileError, match=r"layer\(s\) \[2\] sum to"):
    P.load_policy(write(bad))
  bad = json.loads(text)
  bad["layers"][0]["probs"] = bad["layers"][0]["probs"][:-1]
  with pytest.raises(P.PolicyFileError, match="malformed|expected 139"):
    P.load_policy(write(bad))
  bad = json.loads(text)
  bad["transforms"][5]["level"] = 6
  with pytest.raises(P.PolicyFileError, match="transform 5"):
    P.load_policy(write(bad))
  bad = json.loads(text)
  del bad["layers"]
  with pytest.raises(P.PolicyFileError, match="missing field 'layers'"):
    P.load_policy(write(bad))


def test_policy_rejects_invalid_probabilities():
  with pytest.raises(ValueError, match="non-negative"):
    P.Policy(np.full((1, 139), 1 / 139) - np.eye(1, 139) * 0.5, "cifar")
  with pytest.raises(ValueError, match="139"):
    P.Policy(np.full((1, 138), 1 / 138), "cifar")


def test_baselines():
  none = P.baseline("none", CIFAR)
  assert none.num_layers == 0
  std = P.baseline("standard", CIFAR)
  assert [std.top(k, 1)[0][1] for k in range(2)] == ["RandCrop", "RandFlip"]
  cut = P.baseline("standard_cutout", CIFAR)
  assert cut.top(2, 1)[0][1] == "RandCutout"
  ta = P.baseline("trivialaugment", CIFAR)
  mass = ta.op_mass()[0]
  np.testing.assert_allclose(mass[:15], 1 / 15)  # uniform over image ops
  np.testing.assert_allclose(mass[15:], 0)
  assert [ta.top(k, 1)[0][1] for k in (1, 2, 3)] == ["RandCrop", "RandFlip",
                                                     "RandCutout"]
  deepta = P.baseline("deepta", CIFAR, num_layers=5)
  np.testing.assert_allclose(deepta.probs, 1 / 139)
  with pytest.raises(ValueError, match="unknown baseline"):
    P.baseline("randaugment", CIFAR)


def test_make_policy_from_config(tmp_path):
  config = ml_collections.ConfigDict({"kind": "deepta", "path": "",
                                      "num_layers": 3})
  assert P.make_policy(config, CIFAR).num_layers == 3
  config.kind = "nonsense"
  with pytest.raises(ValueError, match="config.policy.kind must be one of"):
    P.make_policy(config, CIFAR)
  config.kind = "file"
  with pytest.raises(ValueError, match="config.policy.path is required"):
    P.make_policy(config, CIFAR)
  config.path = str(tmp_path / "missing.json")
  with pytest.raises(FileNotFoundError, match="config.policy.path"):
    P.make_policy(config, CIFAR)
  P.save_policy(config.path, P.baseline("standard", CIFAR))
  assert P.make_policy(config, CIFAR).name == "standard"
  with pytest.raises(ValueError, match="imagenet"):
    P.make_policy(config, S.imagenet_space())


def test_sampled_transform_frequencies_match_the_policy():
  """Chi-square goodness of fit of the per-layer draws (20,000 examples)."""
  policy = P.load_official_npz(_official("cifar_1"))
  n = 20000
  indices = np.asarray(jax.jit(lambda k: P.sample_indices(
      k, policy.probs, n))(jax.random.key(0)))
  assert indices.shape == (n, 6)
  for layer in range(6):
    counts = np.bincount(indices[:, layer], minlength=139)
    expected = policy.probs[layer] * n
    big = expected >= 5  # pool the rare transforms into one bin
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    pvalue = stats.chisquare(obs[keep], exp[keep] * obs.sum() /
                             exp[keep].sum()).pvalue
    assert pvalue > 1e-4, (layer, pvalue)
  # Layers are drawn independently of each other.
  table = np.zeros((2, 2))
  crop1 = indices[:, 2] == 138
  flip = indices[:, 3] == 136
  np.add.at(table, (crop1.astype(int), flip.astype(int)), 1)
  assert stats.chi2_contingency(table).pvalue > 1e-4


def test_apply_policy_is_per_example_and_batch_size_independent():
  images = np.concatenate([synthetic_images()] * 2)  # each image twice
  policy = P.baseline("deepta", CIFAR, num_layers=3)
  fn = jax.jit(lambda k, x, o: P.apply_policy(k, x, policy, offset=o))
  key = jax.random.key(3)
  whole = np.asarray(fn(key, images, 0))
  halves = np.concatenate([np.asarray(fn(key, images[:6], 0)),
                           np.asarray(fn(key, images[6:], 6))])
  np.testing.assert_array_equal(whole, halves)
  # The same image at two positions gets independent draws.
  n = len(synthetic_images())
  assert sum(not np.array_equal(whole[i], whole[i + n]) for i in range(n)) >= 5
  # Same key, same result; other key, other result.
  np.testing.assert_array_equal(np.asarray(fn(key, images, 0)), whole)
  assert not np.array_equal(np.asarray(fn(jax.random.key(4), images, 0)), whole)
  # No layers: the images come back unchanged (as float32).
  out = P.apply_policy(key, images, P.baseline("none", CIFAR))
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, images)


def test_apply_policy_standard_flips_half_and_always_crops():
  image = synthetic_images()[2]  # a gradient: every crop/flip is visible
  images = np.repeat(image[None], 400, axis=0)
  policy = P.baseline("standard", CIFAR)
  out = np.asarray(jax.jit(lambda k: P.apply_policy(k, images, policy))(
      jax.random.key(0)))
  # Undo the possible flip, then every output must be a pad-crop of the image.
  crops = {}
  for top in range(9):
    for left in range(9):
      from deepaa_jax import ops  # pylint: disable=g-import-not-at-top
      crops[(top, left)] = np.asarray(ops.pad_crop(image, jnp.asarray(
          [top, left])))
  flipped = 0
  for o in out:
    matches = [c for c in crops.values() if np.array_equal(o, c)]
    if not matches:
      matches = [c for c in crops.values() if np.array_equal(o[:, ::-1], c)]
      flipped += 1
    assert matches
  assert 160 < flipped < 240


def test_policy_plots_and_summary(tmp_path):
  policy = P.load_official_npz(_official("cifar_1"))
  text = policy.summary(3)
  assert "layer 2 (entropy 0.42 nats): RandCutout 0.918" in text
  assert policy.op_mass_markdown().startswith("| op | L1 |")
  for fn in (plots.policy_op_mass, plots.policy_magnitudes):
    path = fn(tmp_path / f"{fn.__name__}.png", policy)
    assert path.stat().st_size > 10_000


def test_search_history_plot_has_the_watched_reward_row(tmp_path):
  """The history figure gains a second row when the records carry the
  watched rewards; the reward panels are smoothed by a trailing mean."""
  np.testing.assert_allclose(plots._smooth([1.0, 3.0, 5.0, 7.0], 2),
                             [1.0, 2.0, 4.0, 6.0])
  np.testing.assert_allclose(plots._smooth([1.0, 3.0], 1), [1.0, 3.0])
  base = [{"layer": k, "step": s, "cos_sim": 0.5, "p_identity": 0.9,
           "entropy": 1.0, "reward_std": 0.1} for k in (1, 2)
          for s in range(1, 6)]
  watched = [dict(r, **{f"{part}_{n}": 0.01 * r["step"]
                        for part in ("R", "R_mean", "R_std", "logit")
                        for n in ("identity", "crop", "flip", "cutout")})
             for r in base]
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top
  heights = {}
  for name, records in (("plain", base), ("watched", watched)):
    path = plots.search_history(tmp_path / f"{name}.png", records)
    heights[name] = mpimg.imread(path).shape[0]
  assert heights["watched"] > 1.7 * heights["plain"]  # two rows, not one


# --------------------------------------------------------------------------
# Variants: the first k layers, then a baseline (config.policy.first_layers,
# config.policy.then; paper §4.4 Table 5 and DeepAA-simple).
# --------------------------------------------------------------------------


def _variant_config(kind="deepta", **fields):
  return ml_collections.ConfigDict(dict(
      {"kind": kind, "path": "", "num_layers": 4, "first_layers": 0,
       "then": ""}, **fields))


def test_then_appends_the_baselines_layers():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(CIFAR.size), size=2)
  found = P.Policy(probs, "cifar", "found")
  for kind, ops in (("standard", ["RandCrop", "RandFlip"]),
                    ("standard_cutout", ["RandCrop", "RandFlip",
                                         "RandCutout"])):
    out = P.followed_by(found, kind)
    assert out.num_layers == 2 + len(ops)
    np.testing.assert_array_equal(out.probs[:2], probs)
    np.testing.assert_array_equal(out.probs[2:],
                                  P.baseline(kind, CIFAR).probs)
    # One-hot rows on the baseline's ops, in its order.
    assert [out.top(k, 1)[0][1] for k in range(2, out.num_layers)] == ops
    np.testing.assert_array_equal(out.probs[2:].max(axis=1), 1.0)
    assert out.name == f"found+{kind}" and out.metadata["then"] == kind
  # From a config: K + 3 layers, the last three standard_cutout's.
  policy = P.make_policy(_variant_config(then="standard_cutout"), CIFAR)
  assert policy.num_layers == 4 + 3
  np.testing.assert_allclose(policy.probs[:4], 1 / CIFAR.size)
  np.testing.assert_array_equal(
      policy.probs[4:], P.baseline("standard_cutout", CIFAR).probs)
  # ImageNet: the baseline of the policy's own space.
  imagenet = S.imagenet_space()
  inet = P.followed_by(P.baseline("deepta", imagenet, num_layers=1),
                       "standard")
  np.testing.assert_array_equal(inet.probs[1:],
                                P.baseline("standard", imagenet).probs)


def test_first_layers_keeps_exactly_the_first_k_rows():
  probs = np.random.default_rng(1).dirichlet(np.ones(CIFAR.size), size=5)
  found = P.Policy(probs, "cifar", "found")
  for k in range(1, 6):
    out = P.truncate(found, k)
    assert out.probs.shape == (k, CIFAR.size)
    np.testing.assert_array_equal(out.probs, probs[:k])
    assert (out.metadata["first_layers"], out.metadata["source_layers"]) == (
        k, 5)
  # Truncation comes before `then`: first k rows, then the baseline's.
  policy = P.make_policy(_variant_config(first_layers=2, then="standard"),
                         CIFAR)
  assert policy.name == "deepta[:2]+standard"
  np.testing.assert_array_equal(
      policy.probs, np.concatenate([np.full((2, CIFAR.size), 1 / CIFAR.size),
                                    P.baseline("standard", CIFAR).probs]))
  # 0 = all layers; unset fields (older configs) = all layers, nothing after.
  assert P.make_policy(_variant_config(), CIFAR).num_layers == 4
  plain = ml_collections.ConfigDict({"kind": "deepta", "path": "",
                                     "num_layers": 4})
  assert P.make_policy(plain, CIFAR).num_layers == 4


def test_bad_variants_are_one_line_errors():
  with pytest.raises(ValueError) as e:
    P.make_policy(_variant_config(first_layers=5), CIFAR)
  assert str(e.value) == ("config.policy.first_layers=5 but policy 'deepta' "
                          "has 4 layer(s): keep 1..4 (0 = all)")
  with pytest.raises(ValueError, match="has 0 layer"):  # "none": no layers
    P.make_policy(_variant_config("none", first_layers=1), CIFAR)
  for bad in ("cutout", "none", "deepta", "official"):
    with pytest.raises(ValueError, match="config.policy.then must be one of"):
      P.make_policy(_variant_config(then=bad), CIFAR)
  with pytest.raises(ValueError, match="has 4"):
    P.truncate(P.baseline("deepta", CIFAR, num_layers=4), 0)


def test_apply_policy_with_then_is_the_policy_then_crop_and_flip_by_hand():
  """A forced layer (Invert, deterministic) then "standard": every output is
  Invert, then a pad-4 crop on a grey canvas, then maybe a horizontal flip,
  built here in NumPy. Invert before the crop leaves the padding grey; the
  other order would invert it too."""
  forced = np.zeros((1, CIFAR.size))
  forced[0, CIFAR.index_of("Invert")] = 1.0
  policy = P.followed_by(P.Policy(forced, "cifar", "invert"), "standard")
  images = np.concatenate([synthetic_images()] * 4)  # 24 images
  out = np.asarray(jax.jit(lambda k, x: P.apply_policy(
      k, x, policy, random_sign=True))(jax.random.key(7), images))

  def crops(image):  # {(top, left, flipped): pad-4 crop, maybe flipped}
    h, w = image.shape[:2]
    padded = np.empty((h + 8, w + 8, 3), np.float32)
    padded[:] = ops.GREY_FILL  # the official RandCrop's mean-colour canvas
    padded[4:4 + h, 4:4 + w] = image
    table = {}
    for top in range(9):
      for left in range(9):
        crop = padded[top:top + h, left:left + w]
        table[(top, left, False)], table[(top, left, True)] = (
            crop, crop[:, ::-1])
    return table

  found = []
  for o, image in zip(out, images.astype(np.float32)):
    then_first = crops(255.0 - image)  # the policy, then crop and flip
    hits = [k for k, c in then_first.items() if np.array_equal(o, c)]
    assert hits, "not Invert followed by a crop and a flip"
    found.append(hits[0])
    if hits[0][:2] != (4, 4):  # padding visible: not crop, then Invert
      assert not any(np.array_equal(o, 255.0 - c)
                     for c in crops(image).values())
  assert sum(t[:2] != (4, 4) for t in found) > 12
  assert 0 < sum(t[2] for t in found) < len(found)
