"""Tests for the inspect job (issue 13, item 3): any policy in, summary, the
expected-ops table and the plots out; bad inputs as one line."""

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import inspect_job
from deepaa_jax import plots
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
from deepaa_jax import train
from tests.conftest import CIFAR10_NPZ
from tests.conftest import OFFICIAL_POLICIES

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR = space_lib.cifar_space()
OUTPUTS = ("policy_summary.txt", "expected_ops.csv", "policy_op_mass.png",
           "policy_magnitudes.png", "policy_preview.png")

needs_official = pytest.mark.skipif(
    not OFFICIAL_POLICIES.is_dir(),
    reason=f"official policies not found at {OFFICIAL_POLICIES}")


def _official(name):
  return str(OFFICIAL_POLICIES / f"policy_DeepAA_{name}.npz")


def _config(path, **inspect):
  """configs/inspect.py for `path`, small previews, synthetic images unless
  the test asks for the npz."""
  config = config_lib.load_config_file(REPO / "configs" / "inspect.py")
  config.policy.path = path
  config.input.npz_path = "/nonexistent/cifar10.npz"
  config.inspect.update(dict(dict(num_images=3, samples=3, layer_images=1),
                             **inspect))
  return config


def _policy_config(path, kind="auto", space="auto"):
  c = inspect_job.inspect_policy_config(path)
  c.kind, c.space = kind, space
  return c


def _cli(*args, workdir):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "deepaa_jax.main", "--config=configs/inspect.py",
       f"--workdir={workdir}", *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _found_policy(tmp_path):
  """A policy as a search writes it (our JSON)."""
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.full(CIFAR.size, 0.3), size=3)
  policy = policy_lib.Policy(probs, "cifar", "deepaa_jax_search",
                             policy_lib.provenance(source="test"))
  return str(policy_lib.save_policy(tmp_path / "found" / "policy.json",
                                    policy)), policy


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------


def test_expected_ops_table_by_hand():
  """Layer 1: Identity 0.5, RandFlip 0.2, ShearX 0.3; layer 2: Identity
  0.25, RandCrop 0.75."""
  probs = np.zeros((2, CIFAR.size))
  probs[0, [0, CIFAR.index_of("RandFlip"), CIFAR.index_of("ShearX", 0)]] = (
      0.5, 0.2, 0.3)
  probs[1, [0, CIFAR.index_of("RandCrop")]] = 0.25, 0.75
  rows = policy_lib.expected_ops_table(policy_lib.Policy(probs, "cifar"))
  assert [r["layer"] for r in rows] == [1, 2, "total"]
  expected = {  # p_identity, expected_ops, random_ops, untouched, flip-adjusted
      1: (0.5, 0.5, 0.2, 0.5, 0.5 + 0.1),
      2: (0.25, 0.75, 0.75, 0.5 * 0.25, 0.6 * 0.25),
      "total": (None, 1.25, 0.95, 0.125, 0.15)}
  for row in rows:
    want = expected[row["layer"]]
    got = (row["p_identity"], row["expected_ops"], row["random_ops"],
           row["p_untouched"], row["p_untouched_flip"])
    assert got[0] == want[0] if want[0] is None else got[0] == pytest.approx(
        want[0])
    assert got[1:] == pytest.approx(want[1:])
  markdown = policy_lib.expected_ops_markdown(rows)
  assert "| 2 | 0.2500 | 0.7500 | 0.7500 | 0.1250 | 0.1500 |" in markdown
  assert "| total |  | 1.2500 | 0.9500 | 0.1250 | 0.1500 |" in markdown
  parsed = list(csv.DictReader(io.StringIO(policy_lib.expected_ops_csv(rows))))
  assert [r["layer"] for r in parsed] == ["1", "2", "total"]
  assert float(parsed[2]["expected_ops"]) == pytest.approx(1.25)
  assert parsed[2]["p_identity"] == ""
  # K = 0: nothing happens to an image.
  none = policy_lib.expected_ops_table(policy_lib.baseline("none", CIFAR))
  assert none == [{"layer": "total", "p_identity": None, "expected_ops": 0.0,
                   "random_ops": 0.0, "p_untouched": 1.0,
                   "p_untouched_flip": 1.0}]


# ---------------------------------------------------------------------------
# Which policy; errors.
# ---------------------------------------------------------------------------


def test_load_any_policy_baselines_and_found_file(tmp_path):
  for name in inspect_job.BASELINES:
    policy = inspect_job.load_any_policy(_policy_config(name))
    assert policy.name == name and policy.space_name == "cifar"
  deepta = inspect_job.load_any_policy(_policy_config("deepta"))
  assert deepta.num_layers == 6
  imagenet = inspect_job.load_any_policy(_policy_config("standard",
                                                        space="imagenet"))
  assert imagenet.space_name == "imagenet"
  path, found = _found_policy(tmp_path)
  assert inspect_job.load_any_policy(_policy_config(path)) == found
  assert inspect_job.load_any_policy(_policy_config(path, kind="file")) == found


@needs_official
def test_load_any_policy_official_by_name_path_and_content(tmp_path):
  by_name = inspect_job.load_any_policy(_policy_config("imagenet_2"))
  assert by_name.space_name == "imagenet" and by_name.name == (
      "deepaa_imagenet_2")
  # An npz under any name is read as an official file (decided by content).
  copy = tmp_path / "renamed.policy"
  copy.write_bytes(pathlib.Path(_official("cifar_2")).read_bytes())
  policy = inspect_job.load_any_policy(_policy_config(str(copy)))
  np.testing.assert_array_equal(
      policy.probs, policy_lib.load_official_npz(_official("cifar_2")).probs)


def test_bad_inputs_are_one_line_errors(tmp_path):
  """No such file or name, a typo of a baseline, not a policy, a directory,
  a policy over another space: each a DeepAAError whose message names the
  problem (main prints it as one `ERROR:` line)."""
  text = tmp_path / "notes.txt"
  text.write_text("not a policy\n")
  path, _ = _found_policy(tmp_path)
  cases = [
      (_policy_config(str(tmp_path / "missing.json")), errors.PolicyFileError,
       "no such file, and not an official name"),
      (_policy_config("standart"), errors.PolicyFileError,
       "did you mean 'standard'?"),
      (_policy_config(str(text)), errors.PolicyFileError,
       "not valid JSON"),
      (_policy_config(str(tmp_path)), errors.PolicyFileError,
       "it is a directory"),
      (_policy_config(path, space="imagenet"), errors.PolicyFileError,
       "over the 'cifar' space but config.policy.space='imagenet'"),
      (_policy_config("standard", kind="standrd"), errors.ConfigError,
       "config.policy.kind must be"),
  ]
  for config, error, message in cases:
    with pytest.raises(error, match=None) as info:
      inspect_job.load_any_policy(config)
    assert isinstance(info.value, errors.DeepAAError)
    line = errors.one_line(info.value)
    assert message in line, line
    assert "\n" not in line


def test_validate_inspect_config():
  config = _config("cifar_1")
  config_lib.validate(config)
  for field, value, message in (
      ("inspect.samples", 0, "config.inspect.samples must be an integer >= 1"),
      ("policy.space", "mnist", "config.policy.space must be one of"),
      ("policy.path", "", "config.policy.path is required")):
    bad = _config("cifar_1")
    section, name = field.split(".")
    bad[section][name] = value
    with pytest.raises(errors.ConfigError, match=message):
      config_lib.validate(bad)


# ---------------------------------------------------------------------------
# Preview images.
# ---------------------------------------------------------------------------


def test_preview_images_fall_back_to_synthetic_and_resize():
  config = _config("cifar_1")
  images, source = plots.preview_images(config.input, CIFAR, num=4)
  assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
  assert source.startswith("synthetic images (no npz file at")
  assert len({im.tobytes() for im in images}) == 4  # all different
  config.input.source = "tfds"
  config.input.data_dir = "/nonexistent/tfds"
  images, source = plots.preview_images(
      config.input, space_lib.imagenet_space(), num=2)
  assert images.shape == (2, 224, 224, 3)
  # A TFDS input that is not prepared: synthetic, saying why.
  assert "TFDS 'cifar10' could not be read" in source, source
  assert "224x224" in source
  images, _ = plots.preview_images(config.input, CIFAR, num=2,
                                         image_size=48)
  assert images.shape == (2, 48, 48, 3)


@pytest.mark.skipif(not CIFAR10_NPZ.is_file(), reason="no CIFAR-10 npz")
def test_preview_images_are_the_first_test_image_of_each_class():
  config = config_lib.load_config_file(REPO / "configs" / "inspect.py")
  config.input.npz_path = str(CIFAR10_NPZ)
  images, source = plots.preview_images(config.input, CIFAR, num=3)
  with np.load(CIFAR10_NPZ) as data:
    labels = data["test_labels"][:100]
    test = data["test_images"][:100]
  firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(3)]
  np.testing.assert_array_equal(images, test[firsts])
  assert source.startswith("the first test image of each class of")


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------


def _check_outputs(workdir, out, layers=True):
  for name in OUTPUTS + (("policy_preview_layers.png",) if layers else ()):
    assert (workdir / name).is_file(), name
  summary = (workdir / "policy_summary.txt").read_text()
  assert summary.startswith(f"Policy {out['policy'].name!r}")
  assert "E[non-Identity ops]" in summary and "| op | " in summary
  rows = list(csv.DictReader(io.StringIO(
      (workdir / "expected_ops.csv").read_text())))
  assert len(rows) == out["policy"].num_layers + 1


def test_inspect_job_on_a_found_policy(tmp_path, capsys):
  """A search's policy.json, on synthetic images (no data needed)."""
  path, found = _found_policy(tmp_path)
  out = inspect_job.run(_config(path), tmp_path / "run")
  assert out["policy"] == found
  _check_outputs(tmp_path / "run", out)
  printed = capsys.readouterr().out
  assert ("Policy 'deepaa_jax_search' over the cifar space, 3 layer(s)"
          in printed)
  assert "| total |" in printed and "Preview images: synthetic" in printed


def test_inspect_job_audits_a_training_step(tmp_path, capsys):
  """config.inspect.audit_step: the transforms a training step applied to
  each example (train.audit_example; its replay of a real step is tested in
  tests/test_train.py), printed and written to audit.json."""
  path, found = _found_policy(tmp_path)
  config = _config(path)
  config.inspect.update(dict(audit_step=9, audit_seed=3, audit_examples=3,
                             layer_images=0, num_images=1, samples=1))
  out = inspect_job.run(config, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "audit.json").read_text())
  assert saved == out["audit"] and [r["example"] for r in saved] == [0, 1, 2]
  for row in saved:
    expected = train.audit_example(found, seed=3, step=9,
                                   example=row["example"],
                                   image_shape=(32, 32, 3), random_sign=True)
    assert [l["index"] for l in row["layers"]] == [
        e["index"] for e in expected]
    assert [l["draws"] for l in row["layers"]] == [
        e["draws"] for e in expected]
  printed = capsys.readouterr().out
  assert "Transforms applied by training step 9 of a run with seed 3" in (
      printed)
  assert printed.count("  example ") == 3
  config.inspect.audit_step = -2
  with pytest.raises(errors.ConfigError, match="config.inspect.audit_step"):
    config_lib.validate(config)


@needs_official
@pytest.mark.parametrize("name", ["cifar_2", "imagenet_1", "imagenet_2"])
def test_inspect_job_on_official_policies(name, tmp_path):
  """The three official policies that the CLI test does not run, in-process
  (ImageNet ones on 224 x 224 images)."""
  out = inspect_job.run(_config(name, image_size=0), tmp_path)
  assert out["policy"].name == f"deepaa_{name}"
  _check_outputs(tmp_path, out)
  total = out["table"][-1]
  assert 4 < total["expected_ops"] <= out["policy"].num_layers
  assert total["p_untouched"] < 1e-3


@needs_official
def test_inspect_cli_on_official_cifar_1(tmp_path):
  """The command of the README: `configs/inspect.py` as it is (the official
  cifar_1 policy; real CIFAR images when ../shared has them)."""
  result = _cli("--config.policy.path=cifar_1", workdir=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Policy 'deepaa_cifar_1' over the cifar space, 6 layer(s)" in (
      result.stdout)
  assert "layer 2 (entropy 0.42 nats): RandCutout 0.918" in result.stdout
  assert "| total |  | 4.8439 |" in result.stdout
  for name in OUTPUTS + ("policy_preview_layers.png",):
    assert (tmp_path / name).is_file(), name


@needs_official
@pytest.mark.parametrize("args,message", [
    (("--config.policy.path=imagenet_1", "--config.policy.space=cifar"),
     "policy_DeepAA_imagenet_1.npz: the policy is over the 'imagenet' space "
     "but config.policy.space='cifar'"),
    (("--config.policy.path=configs/inspect.py",),
     "configs/inspect.py: not valid JSON"),
])
def test_inspect_cli_bad_inputs_are_one_line(args, message, tmp_path):
  result = _cli(*args, workdir=tmp_path / "run")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert "Traceback" not in result.stderr
  assert lines[-1].startswith("ERROR: ") and message in lines[-1], (
      result.stderr)
  assert not (tmp_path / "run" / "policy_preview.png").exists()


def test_search_outputs_include_the_preview(tmp_path):
  """`search_job.write_outputs` (the end of a search) writes
  policy_preview.png for the found policy, on the search config's input."""
  from deepaa_jax import search_job  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(REPO / "configs" / "cifar10_cpu.py")
  config.input.npz_path = "/nonexistent/cifar10.npz"  # synthetic images
  probs = np.full((2, CIFAR.size), 1 / CIFAR.size)
  costs = [{"layer": k, "wall_s": 1.0, "peak_memory_bytes": 1} for k in (1, 2)]
  paths = search_job.write_outputs(
      tmp_path, {"probs": probs, "costs": costs, "history": [],
                 "stopped_early": False}, config)
  assert paths["preview_png"] == str(tmp_path / "policy_preview.png")
  assert (tmp_path / "policy_preview.png").stat().st_size > 10_000
