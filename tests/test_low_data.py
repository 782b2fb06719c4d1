"""experiments/low_data_cifar10.py: run keys and policy variants.

The record (docs/results_low_data_runs.json) skips every run whose key it
holds, so a variant (first K layers, then a baseline) must get a key of its
own, and the keys of the runs recorded before variants existed must not
change.
"""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
import pytest

from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "low_data_cifar10.py"
# The flags the script defines, and the settings of the recorded table.
NAMES = re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', SCRIPT.read_text())
RECORDED = dict(subset=1000, epochs=60.0, model="wrn_10_1", batch=32,
                lr=0.05)


@pytest.fixture(scope="module")
def script():
  """The script as a module. Its flags are defined on the global FLAGS for
  the module's tests only: a flag of the same name defined by another test
  module (deepaa_jax.main's --workdir) is set aside and put back."""
  fv = flags.FLAGS
  saved = {n: fv[n] for n in NAMES if n in fv}
  for n in saved:
    delattr(fv, n)
  spec = importlib.util.spec_from_file_location("low_data_cifar10", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    for n in NAMES:
      if n in fv:
        delattr(fv, n)
    for n, flag in saved.items():
      fv[n] = flag


def _set_flags(**values):
  """The script's flags at their defaults, then the recorded settings and
  `values` (set one by one: parsing the global FLAGS would also validate
  other modules' required flags)."""
  fv = flags.FLAGS
  for n in NAMES:
    fv[n].unparse()
  fv.mark_as_parsed()
  for n, v in dict(RECORDED, **values).items():
    setattr(fv, n, v)


def _two_layer_file(tmp_path):
  path = tmp_path / "two.json"
  policy_lib.save_policy(path, policy_lib.baseline(
      "standard", space_lib.cifar_space()))
  return path


def test_recorded_keys_are_unchanged(script):
  recorded = json.loads((REPO / "docs" / "results_low_data_runs.json")
                        .read_text())
  builtin = [r for r in recorded if r["policy"] in script.POLICIES]
  assert builtin  # the record holds built-in runs to compare with
  for r in builtin:
    # Each record under its own regime (60- and 200-epoch runs).
    epochs = float(re.search(r"\|epochs=([0-9.]+)\|", r["key"]).group(1))
    _set_flags(epochs=epochs)
    assert script.run_key(r["policy"], r["seed"]) == r["key"]


def test_variant_keys_differ_and_name_their_settings(script, tmp_path):
  _set_flags(policy_files=[f"two={_two_layer_file(tmp_path)}"])
  specs = ["deepaa_cifar_1", "deepaa_cifar_1@k1", "deepaa_cifar_1@k3",
           "deepaa_cifar_1@k3+standard_cutout",
           "deepaa_cifar_1+standard_cutout", "deepaa_cifar_1+standard",
           "two", "two@k1", "two+standard_cutout", "two@k1+standard_cutout"]
  keys = [script.run_key(s, 0) for s in specs]
  assert len(set(keys)) == len(keys)
  assert script.run_key("deepaa_cifar_1@k3", 0) != script.run_key(
      "deepaa_cifar_1@k3", 1)
  key = script.run_key("two@k1+standard_cutout", 2)
  assert key.startswith("two@k1+standard_cutout|")
  assert key.endswith("|first_layers=1|then=standard_cutout")
  # The file's content digest is kept for its variants.
  assert key.split("|")[1] == script.run_key("two", 2).split("|")[1] != ""
  plain = script.run_key("two", 2)
  assert "first_layers" not in plain and "then" not in plain


def test_parse_policy_and_config(script):
  _set_flags()
  assert script.parse_policy("standard") == ("standard", 0, "")
  assert script.parse_policy("found@k1+standard_cutout") == (
      "found", 1, "standard_cutout")
  assert script.parse_policy("deepaa_cifar_2@k12") == ("deepaa_cifar_2", 12,
                                                       "")
  for bad in ("standard@3", "standard@k0", "standard@k", "x+cutout",
              "x+deepta", "x+"):
    with pytest.raises(app.UsageError):
      script.parse_policy(bad)
  config = script.make_config("standard_cutout@k2+standard", 1)
  assert (config.policy.kind, config.policy.first_layers,
          config.policy.then, config.train.seed) == (
              "standard_cutout", 2, "standard", 1)
  policy = policy_lib.make_policy(config.policy, space_lib.cifar_space())
  cifar = space_lib.cifar_space()
  np.testing.assert_array_equal(
      policy.probs, np.concatenate([
          policy_lib.baseline("standard_cutout", cifar).probs[:2],
          policy_lib.baseline("standard", cifar).probs]))


def test_check_policies(script, tmp_path):
  _set_flags(policy_files=[f"two={_two_layer_file(tmp_path)}"])
  # A file NAME is added unless --policies names a variant of it.
  assert script.check_policies(["none"]) == ["none", "two"]
  assert script.check_policies(["two@k1+standard"]) == ["two@k1+standard"]
  with pytest.raises(app.UsageError, match=r"first_layers=3 .* has 2 layer"):
    script.check_policies(["two@k3"])
  with pytest.raises(app.UsageError, match="unknown"):
    script.check_policies(["nothing@k1"])


def test_cli_bad_variant_is_one_error_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--policies=standard@k5",
       f"--record={tmp_path / 'r.json'}", f"--workdir={tmp_path / 'w'}"],
      capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith("ERROR:")]
  assert errors == [
      "ERROR: --policies: 'standard@k5': config.policy.first_layers=5 but "
      "policy 'standard' has 2 layer(s): keep 1..2 (0 = all)"]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()
