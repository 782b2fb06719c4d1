"""The ImageNet search (configs/imagenet.py, configs/imagenet_cpu.py): the
configs validate, the pools' selection rules, the whole job on TFDS's mock
imagenet2012 with a kill and a bit-identical resume, and the CLI's one line
when ImageNet is not prepared."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import input_pipeline as ip
from deepaa_jax import search_job
from tests.conftest import mock_tfds

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _load(name, *args):
  return config_lib.load_config_file(CONFIGS / name, *args)


def test_imagenet_configs_validate_and_reject_overlapping_or_missing_pools(
    imagenet_policy):
  config = _load("imagenet.py")
  config_lib.validate(config)
  assert (config.search.space, config.search.num_layers,
          config.input.image_size, config.pretrain.model.name) == (
              "imagenet", 5, 224, "resnet18")
  config_lib.validate(_load("imagenet_cpu.py"))
  # ResNet-50 (official README): trained on all of train, so only with a
  # given network (whose data is not the search's) do the pools validate.
  r50 = _load("imagenet.py", "resnet50")
  assert r50.pretrain.model.name == "resnet50"
  r50.pretrain.policy.path = imagenet_policy  # a stand-in without ../shared
  with pytest.raises(errors.ConfigError, match="overlaps"):
    config_lib.validate(r50)
  r50.pretrain_checkpoint = "/some/imagenet_resnet50/workdir"
  config_lib.validate(r50)
  for field, value, match in [
      ("search.val_pool", "train[150000:250000]", "overlaps"),
      ("search.search_pool", "", "must name a TFDS split slice"),
      ("search.data_split", "official", "does not fit"),
      ("search.val_per_class", 8, "must be 0 or >= "),
  ]:
    bad = _load("imagenet.py")
    section, name = field.split(".")
    bad[section][name] = value
    with pytest.raises(errors.ConfigError, match=match):
      config_lib.validate(bad)
  # The ImageNet space needs streamed input; in-memory data cannot stream.
  cifar = _load("cifar10_cpu.py")
  cifar.search.space = "imagenet"
  with pytest.raises(errors.ConfigError, match="streamed"):
    config_lib.validate(cifar)
  cifar = _load("cifar10_cpu.py")
  cifar.search.data_split = "stream"
  with pytest.raises(errors.ConfigError, match="does not fit"):
    config_lib.validate(cifar)


def test_streamed_pool_selection_rules():
  images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones(
      (1, 2, 2, 3), np.uint8)
  val = ip.Split(images, np.array([0, 1, 0, 2, 0, 1, 1, 0, 2, 1]))
  capped = search_job.first_per_class(val, 2)
  # The first two of each class, in split order.
  np.testing.assert_array_equal(capped.labels, [0, 1, 0, 2, 1, 2])
  np.testing.assert_array_equal(capped.images[:, 0, 0, 0], [0, 1, 2, 3, 5, 8])
  search = ip.Split(images[:4], np.array([3, 0, 2, 1]))
  kept = search_job.classes_with(search, capped, 2)
  np.testing.assert_array_equal(kept.labels, [0, 2, 1])  # class 3 has none
  with pytest.raises(errors.DataError, match="no class of the search pool"):
    search_job.classes_with(search, capped, 3)


def _tiny_config(data_dir):
  """configs/imagenet_cpu.py at test size: S = 32, ResNet-18 at width 4."""
  config = _load("imagenet_cpu.py")
  config.input.data_dir = str(data_dir)
  config.input.image_size = 32
  config.input.tfds_eval_split = "validation"
  config.pretrain.model.name = "resnet18_w4"
  for field, value in {"num_steps": 2, "batch_size": 8,
                       "eval_batch_size": 20, "log_every_steps": 1}.items():
    config.pretrain.train[field] = value
  # One layer: a second (stage k >= 2) would add ~20 s of compilation; the
  # stage-k resume is tested on CIFAR (tests/test_search.py).
  for field, value in {"num_layers": 1, "steps_per_layer": 3,
                       "num_images": 2, "gt_samples": 4,
                       # configs/imagenet.py's class-conditional pools (the
                       # mock's 40 random labels of 1000 rarely repeat, so
                       # one validation image per class):
                       "class_conditional": True, "val_batch": 1,
                       "val_per_class": 1,
                       "g_prefixes": 1, "chunk_size": 139,
                       "checkpoint_every_steps": 1}.items():
    config.search[field] = value
  return config


@pytest.mark.usefixtures("fast_compiles")
def test_imagenet_search_job_on_mock_data_resumes_bit_identical(
    tmp_path, monkeypatch):
  """configs/imagenet_cpu.py shrunk, on TFDS's mock imagenet2012 (streamed
  pretraining, pools read into memory, ImageNet space): killed in layer 1,
  rerun, it ends with the policy of an uninterrupted run (~35 s, most of it
  compiling the pretraining and the search step)."""
  pytest.importorskip("tensorflow_datasets")
  data_dir = tmp_path / "tfds"
  config = _tiny_config(data_dir)
  config_lib.validate(config)
  crashed, full = tmp_path / "crashed", tmp_path / "full"
  write = search_job.utils.JsonlWriter.write_scalars

  def failing_write(self, step, scalars):  # Ctrl-C at layer 1, step 2
    if "layer" in scalars and step == 2:
      raise KeyboardInterrupt(f"simulated Ctrl-C at step {step}")
    write(self, step, scalars)

  with mock_tfds(40, data_dir):
    with monkeypatch.context() as patch:
      patch.setattr(search_job.utils.JsonlWriter, "write_scalars",
                    failing_write)
      with pytest.raises(errors.Interrupted, match="Rerun the same command"):
        search_job.run(config, crashed)
    assert (crashed / "pretrain" / "results.json").is_file()
    assert not (crashed / "policy.json").exists()
    # The uninterrupted run, on the same (restored) search network.
    reference = _tiny_config(data_dir)
    reference.pretrain_checkpoint = str(crashed / "pretrain")
    out = search_job.run(reference, full)
    resumed = search_job.run(config, crashed)
  assert out["probs"].shape == (1, 139)
  np.testing.assert_array_equal(resumed["probs"], out["probs"])
  pretrained = search_job.utils.read_json(crashed / "pretrain" /
                                          "results.json")
  assert pretrained["dataset"]["pipeline"] == "stream"
  assert pretrained["model"] == "resnet18_w4"
  for name in ("policy.json", "policy.npz", "cost_report.json",
               "results.json"):
    assert (crashed / name).is_file(), name
  from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top
  found = policy_lib.load_official_npz(crashed / "policy.npz")
  assert found.space_name == "imagenet"


def test_cli_without_prepared_imagenet_is_one_line(tmp_path):
  """configs/imagenet.py validates; a data_dir without ImageNet ends with one
  ERROR line naming it, no traceback."""
  empty = tmp_path / "tfds"
  empty.mkdir()
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "deepaa_jax.main", "--config=configs/imagenet.py",
       f"--workdir={tmp_path / 'run'}", f"--config.input.data_dir={empty}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors_ = [l for l in result.stderr.splitlines() if l.startswith("ERROR")]
  assert len(errors_) == 1, result.stderr[-2000:]
  assert "imagenet2012" in errors_[0] and str(empty) in errors_[0]
  assert "not found as a prepared TFDS dataset" in errors_[0]
