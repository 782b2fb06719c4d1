"""Tests for the policy preview of deepaa_jax/plots.py (issue 13, item 2).

The other figures are tested in test_policy.py.
"""

import jax
import numpy as np
import pytest

from deepaa_jax import plots
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
from tests.conftest import synthetic_images

CIFAR = space_lib.cifar_space()


def _one_hot(*indices, space=CIFAR, name="one_hot"):
  probs = np.zeros((len(indices), space.size))
  probs[np.arange(len(indices)), indices] = 1.0
  return policy_lib.Policy(probs, space.name, name)


def _example_key(key, i):
  """The key `apply_policy` gives example i's chain."""
  _, k_apply = jax.random.split(key)
  return space_lib.example_keys(k_apply, i + 1)[i]


def test_preview_is_apply_policy_with_every_layer_kept():
  """Shapes; stage 0 is the input, stage k the chain of the first k drawn
  transforms, stage K what `apply_policy` gives the same example (example
  i = n * S + s), random sign included."""
  images = synthetic_images()[:3]
  policy = policy_lib.baseline("deepta", CIFAR, num_layers=3)
  key = jax.random.key(5)
  preview = plots.sample_preview(key, policy, images, samples=4,
                                 random_sign=True)
  assert preview.stages.shape == (3, 4, 4, 32, 32, 3)
  assert preview.indices.shape == (3, 4, 3)
  assert preview.outputs.shape == (3, 4, 32, 32, 3)
  assert len(preview.labels) == 3 and len(preview.labels[0]) == 4
  assert all(len(labels) == 3 for row in preview.labels for labels in row)
  np.testing.assert_array_equal(
      preview.stages[:, :, 0],
      np.broadcast_to(images[:, None], (3, 4, 32, 32, 3)))
  expected = policy_lib.apply_policy(key, np.repeat(images, 4, axis=0), policy,
                                     random_sign=True)
  np.testing.assert_array_equal(preview.outputs.reshape(12, 32, 32, 3),
                                np.asarray(expected))
  n, s = 2, 3
  for k in (1, 2):
    chain = space_lib.apply_chain(_example_key(key, n * 4 + s), images[n],
                                  preview.indices[n, s, :k], CIFAR,
                                  random_sign=True)
    np.testing.assert_array_equal(preview.stages[n, s, k], np.asarray(chain))


def test_labels_name_the_sampled_transforms_signs_and_flips():
  """Each label is the op drawn in that layer, with the value it received:
  the sign and flip coins agree with `policy.applied_transforms`."""
  images = synthetic_images()[:2]
  policy = policy_lib.baseline("deepta", CIFAR, num_layers=4)
  key = jax.random.key(1)
  preview = plots.sample_preview(key, policy, images, samples=6,
                                 random_sign=True)
  seen_negated = seen_unflipped = 0
  for n in range(2):
    for s in range(6):
      applied = policy_lib.applied_transforms(key, policy, n * 6 + s,
                                              images.shape[1:],
                                              random_sign=True)
      for k, layer in enumerate(applied):
        index = int(preview.indices[n, s, k])
        assert layer["index"] == index
        label = preview.labels[n][s][k]
        op = CIFAR.op_names[CIFAR.ops[index]]
        assert label.startswith(op), (label, op)
        # The preview shows what training applies: the evaluation table's
        # level values (float64 m / 12, spec §4.1), e.g. TranslateY(-0.37)
        # where the search's float32 table rounds to -0.38.
        assert label == plots.transform_label(
            policy.space, index, negated=layer["sign"] == -1,
            flipped=layer["draws"]["flip"])
        seen_negated += layer["sign"] == -1
        seen_unflipped += label == "RandFlip(no)"
  assert seen_negated > 0  # the random sign shows in the captions


def test_transform_label():
  idx = CIFAR.index_of
  assert plots.transform_label(CIFAR, 0) == "Identity"
  assert plots.transform_label(CIFAR, idx("ShearX", 0)) == "ShearX(-0.3)"
  assert plots.transform_label(CIFAR, idx("ShearX", 2),
                               negated=True) == "ShearX(0.2)"
  assert plots.transform_label(CIFAR, idx("Rotate", 12)) == "Rotate(30)"
  assert plots.transform_label(CIFAR, idx("Rotate", 12),
                               negated=True) == "Rotate(-30)"
  # Enhance ops are never mirrored; Posterize shows the bits it keeps.
  assert plots.transform_label(CIFAR, idx("Color", 4),
                               negated=True) == "Color(0.7)"
  assert plots.transform_label(CIFAR, idx("Posterize", 2)) == "Posterize(4)"
  assert plots.transform_label(CIFAR, idx("Solarize", 1)) == "Solarize(21.3)"
  assert plots.transform_label(CIFAR, idx("Equalize")) == "Equalize"
  assert plots.transform_label(CIFAR, idx("RandFlip")) == "RandFlip"
  assert plots.transform_label(CIFAR, idx("RandFlip"),
                               flipped=False) == "RandFlip(no)"
  imagenet = space_lib.imagenet_space()
  assert plots.transform_label(
      imagenet, imagenet.index_of("RandResizeCrop_imagenet")) == (
          "RandResizeCrop")


def test_identity_policy_leaves_images_unchanged():
  images = synthetic_images()[:4]
  preview = plots.sample_preview(jax.random.key(0), _one_hot(0, 0, 0), images,
                                 samples=3)
  for k in range(4):
    np.testing.assert_array_equal(
        preview.stages[:, :, k], np.broadcast_to(images[:, None],
                                                 (4, 3, 32, 32, 3)))
  assert {l for row in preview.labels for ls in row for l in ls} == {
      "Identity"}
  assert plots._preview_caption(preview.labels[0][0]) == "untouched"


@pytest.mark.parametrize("op,level", [("ShearX", 0), ("RandCutout", None),
                                      ("RandFlip", None)])
def test_one_hot_policy_applies_exactly_that_transform(op, level):
  """A one-layer one-hot policy gives `space.apply_transform` with the
  example's layer-1 key, for a deterministic and for random ops."""
  index = CIFAR.index_of(op, level)
  images = synthetic_images()[:3]
  key = jax.random.key(2)
  preview = plots.sample_preview(key, _one_hot(index), images, samples=2)
  assert (preview.indices == index).all()
  for n in range(3):
    for s in range(2):
      layer_key = jax.random.fold_in(_example_key(key, n * 2 + s), 0)
      expected = space_lib.apply_transform(layer_key, images[n], index, CIFAR)
      np.testing.assert_array_equal(preview.outputs[n, s],
                                    np.asarray(expected))
      assert preview.labels[n][s][0].startswith(op)
  if op == "ShearX":
    assert preview.labels[0][0] == ("ShearX(-0.3)",)
    assert plots._preview_caption(preview.labels[0][0]) == "L1 ShearX(-0.3)"


def test_policy_preview_writes_pngs(tmp_path):
  """The figure for a K-layer policy, with and without the per-layer rows,
  and for the K = 0 baseline ("none")."""
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top
  images = synthetic_images()[:2]
  policy = policy_lib.baseline("standard_cutout", CIFAR)
  heights = {}
  for layers in (False, True):
    path = plots.policy_preview(tmp_path / f"p_{layers}.png",
                                jax.random.key(0), policy, images, samples=3,
                                layers=layers)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heights[layers] = mpimg.imread(path).shape[0]
  assert heights[True] > 2 * heights[False]  # 3 rows per image, not 1
  none = policy_lib.baseline("none", CIFAR)
  path = plots.policy_preview(tmp_path / "none.png", jax.random.key(0), none,
                              images, samples=2, layers=True)
  assert path.stat().st_size > 1000


def test_preview_rejects_bad_images():
  from deepaa_jax import errors  # pylint: disable=g-import-not-at-top
  policy = policy_lib.baseline("standard", CIFAR)
  with pytest.raises(errors.ImageContractError):
    plots.sample_preview(jax.random.key(0), policy,
                         np.zeros((2, 32, 32, 3), np.float32) + 0.5)
  with pytest.raises(ValueError, match="samples"):
    plots.sample_preview(jax.random.key(0), policy,
                         synthetic_images()[:1], samples=0)


def test_search_history_has_the_reward_snr_panel(tmp_path, monkeypatch):
  """Records carrying snr_excess get a log-scale panel with each layer's
  curve and the noise level 1 and the warning level as horizontal lines;
  records without it get no such panel."""
  from deepaa_jax import search  # pylint: disable=g-import-not-at-top
  figures = []
  save = plots._save
  monkeypatch.setattr(plots, "_save", lambda fig, path, dpi: (
      figures.append(fig), save(fig, path, dpi))[1])
  base = [{"layer": k, "step": s, "cos_sim": 0.5, "p_identity": 0.9,
           "entropy": 1.0, "reward_std": 0.1} for k in (1, 2)
          for s in range(1, 6)]
  excess = {1: [np.nan, 1.1, 1.3, 1.2, 1.4], 2: [np.nan, 3.0, 5.0, 6.0, 8.0]}
  records = [dict(r, snr=0.1, snr_excess=excess[r["layer"]][r["step"] - 1])
             for r in base]
  path = plots.search_history(tmp_path / "snr.png", records)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  panels = [ax for ax in figures[-1].axes if "SNR" in ax.get_title()]
  assert len(panels) == 1
  ax = panels[0]
  assert ax.get_yscale() == "log"
  curves = [l for l in ax.get_lines() if l.get_label().startswith("layer")]
  for layer, line in zip((1, 2), curves):
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 6))
    np.testing.assert_array_equal(line.get_ydata(), excess[layer])
  levels = sorted(l.get_ydata()[0] for l in ax.get_lines()
                  if not l.get_label().startswith("layer"))
  assert levels == [1.0, search.SNR_WARN_EXCESS]
  plots.search_history(tmp_path / "plain.png", base)
  assert not [ax for ax in figures[-1].axes if "SNR" in ax.get_title()]
