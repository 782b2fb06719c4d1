"""config.policy.first_layers and config.policy.then: validation, the search
config for DeepAA-simple, the search's evaluation config and the run
identity of a training run."""

import pathlib

import pytest

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import search_job
from deepaa_jax import train
from deepaa_jax import utils
from tests.conftest import run_cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def _train_config(**policy):
  config = config_lib.load_config_file(REPO / "configs" / "test.py")
  for field, value in policy.items():
    config.policy[field] = value
  return config


@pytest.mark.parametrize("field,value,expected", [
    ("then", "cutout",
     "config.policy.then must be a baseline made of layers, one of "
     "('standard', 'standard_cutout', 'trivialaugment') (or '' for none), "
     "got 'cutout'"),
    ("then", "none", "config.policy.then must be a baseline made of layers"),
    ("first_layers", -1,
     "config.policy.first_layers must be an integer >= 0 (0 = all layers), "
     "got -1"),
])
def test_validate_refuses_bad_variant_fields(field, value, expected):
  with pytest.raises(errors.ConfigError) as e:
    config_lib.validate(_train_config(**{field: value}))
  assert str(e.value).startswith(expected)
  assert "\n" not in str(e.value)
  for good in ("", "standard", "standard_cutout", "trivialaugment"):
    config_lib.validate(_train_config(then=good, first_layers=1))


def test_search_sections_are_named_and_checked_against_the_search():
  config = config_lib.load_config_file(REPO / "configs" / "cifar10_cpu.py")
  config.pretrain.policy.then = "flip"
  with pytest.raises(errors.ConfigError,
                     match=r"^config\.pretrain\.policy\.then must be"):
    config_lib.validate(config)
  config.pretrain.policy.then = ""
  config.evaluate.enabled = True
  config.evaluate.policy.first_layers = 4  # the search finds 3
  with pytest.raises(errors.ConfigError) as e:
    config_lib.validate(config)
  assert str(e.value) == ("config.evaluate.policy.first_layers=4 but the "
                          "search finds config.search.num_layers=3 layer(s)")
  config.evaluate.policy.first_layers = 3
  config_lib.validate(config)


def test_simple_config_and_its_evaluation_keep_then(tmp_path):
  base = config_lib.load_config_file(REPO / "configs" / "cifar10_cpu.py")
  simple = config_lib.load_config_file(
      REPO / "configs" / "cifar10_cpu_simple.py")
  config_lib.validate(simple)
  assert simple.search.num_layers == 1
  assert simple.evaluate.policy.then == "standard_cutout"
  assert simple.pretrain.policy.then == ""  # the pretraining is unchanged
  # Everything else is configs/cifar10_cpu.py.
  flat, flat_base = (utils.flat_config(c) for c in (simple, base))
  assert {k for k in flat if flat[k] != flat_base[k]} == {
      "search.num_layers", "evaluate.policy.then"}
  # The search's evaluation: the found policy file, then standard_cutout.
  cfg = search_job.evaluate_config(simple, tmp_path / "policy.json")
  assert (cfg.job, cfg.policy.kind, cfg.policy.path, cfg.policy.then) == (
      "train", "file", str(tmp_path / "policy.json"), "standard_cutout")
  assert cfg.policy.space == simple.search.space


def test_run_identity_holds_the_variant_fields():
  def identity(config):
    return utils.run_identity(config, ignore=train._identity_ignore(config),
                              policy="p")

  plain = identity(_train_config())
  # A checkpoint written before the fields existed: same identity.
  old = _train_config()
  with old.policy.unlocked():
    del old.policy["then"]
    del old.policy["first_layers"]
  assert utils.identity_differences(identity(old), plain) == []
  # Another value is refused, naming the field.
  for field, value in (("then", "standard_cutout"), ("first_layers", 1)):
    changed = identity(_train_config(**{field: value}))
    assert utils.identity_differences(plain, changed) == [
        f"config.policy.{field}: None -> {value!r}"]
    with pytest.raises(errors.ResumeRefusedError, match=f"policy.{field}"):
      utils.check_identity(plain, changed, "w")
    with pytest.raises(errors.ResumeRefusedError, match=f"policy.{field}"):
      utils.check_identity(changed, plain, "w")
  assert utils.identity_differences(
      identity(_train_config(then="standard")),
      identity(_train_config(then="standard_cutout"))) == [
          "config.policy.then: 'standard' -> 'standard_cutout'"]


def test_cli_bad_then_is_one_error_line(tmp_path):
  result = run_cli("--config.policy.then=cutout", workdir=tmp_path,
                   timeout=120)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert "Traceback" not in result.stderr
  # The prefix is main.py's (tests/test_main.py); the message is the field's.
  assert "config.policy.then must be a baseline made of layers" in lines[0]
