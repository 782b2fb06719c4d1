"""The CLI turns config mistakes into one line on stderr, never a traceback."""

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import run_cli

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,expected", [
    # A typo in a field name: checked against the config file's own fields.
    ("--config.train.num_epoch=3",
     "--config.train.num_epoch=3: no field 'num_epoch' in config.train; did "
     "you mean 'num_epochs'?"),
    # A valid field with an invalid value: rejected by config.validate.
    ("--config.train.schedule=cosin",
     "config.train.schedule must be one of ('cosine', 'step'), got 'cosin'"),
])
def test_config_mistakes_are_one_line(override, expected, tmp_path):
  result = run_cli(override, workdir=tmp_path, timeout=120)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert "Traceback" not in result.stderr
  assert lines[0].startswith("ERROR: ")
  assert expected in lines[0]
  assert not (tmp_path / "checkpoints").exists()


TINY_SEARCH_CONFIG = '''
import pathlib
from deepaa_jax import config as config_lib
def get_config():
  config = config_lib.load_config_file(
      pathlib.Path({repo!r}) / "configs" / "cifar10_cpu.py")
  config.input.name = "tiny"
  config.input.npz_path = {npz!r}
  config.pretrain.train.train_split = "pretrain_small"
  config.pretrain.train.num_epochs = 0
  config.pretrain.train.num_steps = 2
  config.pretrain.train.batch_size = 8
  config.pretrain.train.eval_batch_size = 20
  config.pretrain.train.log_every_steps = 1
  config.search.data_split = "small"
  config.search.num_layers = 2
  config.search.steps_per_layer = 2
  config.search.num_images = 2
  config.search.val_batch = 4
  config.search.gt_samples = 4
  config.search.g_prefixes = 1
  config.search.chunk_size = 139
  config.search.checkpoint_every_steps = 1
  return config
'''


def test_search_job_end_to_end(tmp_path):
  """`job="search"` on tiny data: pretrain -> 2 layers -> policy files."""
  import json  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = np.arange(200) % 4
  images = (rng.integers(0, 64, (200, 16, 16, 3)) +
            48 * labels[:, None, None, None]).astype(np.uint8)
  npz = tmp_path / "tiny.npz"
  np.savez(npz, train_images=images, train_labels=labels,
           test_images=images[:20], test_labels=labels[:20])
  config = tmp_path / "tiny_search.py"
  config.write_text(TINY_SEARCH_CONFIG.format(repo=str(REPO), npz=str(npz)))
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  result = subprocess.run(
      [sys.executable, "-m", "deepaa_jax.main", f"--config={config}",
       f"--workdir={workdir}"], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  found = policy_lib.load_policy(workdir / "policy.json")
  assert found.probs.shape == (2, 139)
  np.testing.assert_allclose(found.probs.sum(axis=1), 1.0, atol=1e-9)
  # The official-format npz holds the same table.
  official = policy_lib.load_official_npz(workdir / "policy.npz")
  np.testing.assert_allclose(official.probs, found.probs, rtol=1e-6)
  for name in ("policy_op_mass.png", "policy_magnitudes.png",
               "search_history.png", "cost_report.json", "results.json",
               "pretrain/results.json"):
    assert (workdir / name).is_file(), name
  report = json.loads((workdir / "cost_report.json").read_text())
  assert [c["layer"] for c in report["layers"]] == [1, 2]
  assert all(c["steps"] == 2 for c in report["layers"])
  # 2 Adam steps moved the policy away from its initialisation.
  from deepaa_jax import search  # pylint: disable=g-import-not-at-top
  init = np.exp(search.initial_logits(139, "identity"))
  assert np.abs(found.probs[0] - init / init.sum()).max() > 1e-4
  # Rerunning the finished search redoes nothing and changes no file (issue
  # 11, finding 5): every byte of the workdir is as it was.
  files = {p: p.read_bytes() for p in sorted(workdir.rglob("*"))
           if p.is_file()}
  again = subprocess.run(
      [sys.executable, "-m", "deepaa_jax.main", f"--config={config}",
       f"--workdir={workdir}"], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "finished search" in again.stderr
  assert {p: p.read_bytes() for p in sorted(workdir.rglob("*"))
          if p.is_file()} == files


@pytest.mark.usefixtures("fast_compiles")
def test_search_on_another_tfds_dataset_with_overrides_only(tmp_path):
  """The search job on a second TFDS dataset (SVHN via TFDS's mock data),
  changed from the CPU config by overrides only: pretrain -> 1 layer ->
  policy files."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  tfds = pytest.importorskip("tensorflow_datasets")
  from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import search_job  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(REPO / "configs" / "cifar10_cpu.py")
  for field, value in {
      "input.source": "tfds", "input.name": "svhn_cropped",
      "search.data_split": "small", "search.num_layers": 1,
      "search.steps_per_layer": 1, "search.num_images": 2,
      "search.val_batch": 2, "search.chunk_size": 139,
      "pretrain.train.num_epochs": 0.0, "pretrain.train.num_steps": 2,
      "pretrain.train.batch_size": 8, "pretrain.train.train_split":
      "pretrain_small"}.items():
    section, name = field.rsplit(".", 1)
    node = config
    for part in section.split("."):
      node = node[part]
    node[name] = value
  with tfds.testing.mock_data(num_examples=200):
    out = search_job.run(config, tmp_path)
  found = policy_lib.load_policy(tmp_path / "policy.json")
  assert found.probs.shape == (1, 139)
  np.testing.assert_allclose(found.probs, out["probs"], rtol=1e-6)
