"""experiments/gpu_evidence.py: the --tiny run on the CPU without TF, CLU,
dm-pix or ml_collections; runs trained together equal runs trained alone by
the project's own training step; the speed check drops runs over budget; the
prepared data file is the class-balanced subset."""

import json
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import numpy.testing as npt
import pytest

from deepaa_jax import config as config_lib
from deepaa_jax import input_pipeline as ip
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
from deepaa_jax import train as train_lib
from experiments import gpu_evidence as G

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "dm_pix",
           "ml_collections")

pytestmark = pytest.mark.usefixtures("fast_compiles")

# Two runs that differ in policy (2 vs 4 layers: standard is padded with
# Identity layers) and seed; 3 steps, the first two in the warm-up.
RECIPE = G.Recipe(model="wrn_10_1", batch_size=8, epochs=2,
                  learning_rate=0.1, warmup_epochs=0.5, weight_decay=5e-4,
                  bf16=False, train_size=32)
RUNS = [G.Run("standard", 0), G.Run("trivialaugment", 1)]
STEPS = 3


@pytest.fixture(scope="module")
def data():
  return G.synthetic_data(RECIPE.train_size, 20)


@pytest.fixture(scope="module")
def policies():
  space = space_lib.cifar_space()
  return {r.policy: policy_lib.baseline(r.policy, space) for r in RUNS}


def test_tiny_runs_without_tf_clu_dm_pix_or_ml_collections(tmp_path):
  out = tmp_path / "tiny.json"
  code = ("import runpy, sys\n"
          f"for m in {BLOCKED!r}: sys.modules[m] = None\n"
          f"sys.argv = ['gpu_evidence.py', '--tiny', '--json_out={out}']\n"
          "runpy.run_path('experiments/gpu_evidence.py', "
          "run_name='__main__')\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=600, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["tiny"] and result["dropped"] == []
  assert [(r["policy"], r["seed"]) for r in result["runs"]] == [
      ("none", 0), ("standard", 0)]
  for r in result["runs"]:
    assert 0.0 <= r["test_accuracy"] <= 1.0
  assert result["total_steps"] == 8 and result["train_s"] > 0
  rows = [l for l in proc.stdout.splitlines() if l.startswith("| ")]
  assert [l.split("|")[1].strip() for l in rows[1:]] == ["none", "standard"]
  for r, line in zip(result["runs"], rows[1:]):
    assert f"{100 * r['test_accuracy']:.2f}" in line


def test_augment_is_apply_policy_with_the_policy_as_data(data, policies):
  """Bit for bit, for a policy padded with Identity layers (standard: 2 of
  4 layers) and an unpadded one, with the keys of the first steps."""
  probs = G.stacked_probs([policies[r.policy] for r in RUNS])
  augment = jax.jit(G.augment)
  for r, run in enumerate(RUNS):
    _, run_key = train_lib.run_keys(run.seed)
    for step in range(STEPS):
      k_aug, _ = train_lib.step_keys(run_key, step)
      x = data["train_images"][8 * step:8 * step + 8]
      expected = train_lib.augment_batch(k_aug, x, policies[run.policy],
                                         random_sign=True)
      npt.assert_array_equal(augment(k_aug, x, probs[r]), expected)


def _project_state(cfg, policy, seed, split):
  """STEPS steps of `train.make_train_step` for one run (the reference)."""
  model = train_lib.build_model(cfg.model, num_classes=10)
  spec = train_lib.OptimizerSpec(ml_collections.FrozenConfigDict(cfg.train),
                                 RECIPE.steps_per_epoch)
  init_key, run_key = train_lib.run_keys(seed)
  state = train_lib.create_train_state(init_key, cfg, model, (32, 32, 3))
  step = train_lib.make_train_step(
      model, policy, spec, mean=ip.CIFAR_EVAL_MEAN, std=ip.CIFAR_STD,
      random_sign=True, augment_method="vectorized", donate=False)
  batches = ip.batches(split, RECIPE.batch_size, seed=seed, epoch=0)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, next(batches), run_key)
    losses.append(float(metrics["loss"]))
  return state, losses


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("batching", ["vmap", "map"])
def test_runs_trained_together_equal_the_training_step_alone(
    batching, data, policies):
  trainer = G.Trainer(RUNS, policies, RECIPE, data, batching)
  init = jax.device_get(trainer.state["params"])
  losses = [trainer.steps(1)["loss"] for _ in range(STEPS)]
  cfg = config_lib.base_config()
  cfg.model.name = RECIPE.model
  cfg.train.batch_size = RECIPE.batch_size
  cfg.train.num_epochs = RECIPE.epochs
  cfg.train.learning_rate = RECIPE.learning_rate
  cfg.train.warmup_epochs = RECIPE.warmup_epochs
  cfg.train.weight_decay = RECIPE.weight_decay
  split = ip.Split(data["train_images"], data["train_labels"])
  for r, run in enumerate(RUNS):
    ref, ref_losses = _project_state(cfg, policies[run.policy], run.seed,
                                     split)
    npt.assert_allclose([l[r] for l in losses], ref_losses, rtol=1e-5)
    start = _flat(jax.tree.map(lambda a, r=r: a[r], init))
    ours = _flat(jax.tree.map(lambda a, r=r: np.asarray(a[r]),
                              trainer.state["params"]))
    theirs = _flat(jax.device_get(ref.params))
    npt.assert_array_equal(start, _flat(jax.device_get(
        train_lib.create_train_state(train_lib.run_keys(run.seed)[0], cfg,
                                     train_lib.build_model(
                                         cfg.model, num_classes=10),
                                     (32, 32, 3)).params)))
    # The 3 updates agree to float tolerance relative to their size
    # (measured: 1e-6 for standard; 2e-3 for trivialaugment, whose losses
    # still agree to 2e-7 over the 3 steps).
    update = np.linalg.norm(theirs - start)
    assert update > 0.1
    assert np.linalg.norm(ours - theirs) < 1e-2 * update
    for name in ("batch_stats",):
      npt.assert_allclose(
          _flat(jax.tree.map(lambda a, r=r: np.asarray(a[r]),
                             trainer.state[name])),
          _flat(jax.device_get(getattr(ref, name))), rtol=1e-2, atol=1e-3)


def test_speed_check_drops_runs_over_a_tiny_budget(data, policies, capsys):
  kept, batching, checks, dropped = G.plan(
      RUNS, policies, RECIPE, data, batching="vmap", budget_s=1.0,
      speed_steps=1, eval_batch=10)
  assert kept == RUNS[:1] and dropped == RUNS[1:] and batching == "vmap"
  # Measured with both runs, then again with the one kept.
  assert [c["runs"] for c in checks] == [2, 1]
  assert all(c["step_s"] > 0 and c["compile_s"] > 0 for c in checks)
  assert "WARNING: even 1 run(s) are projected over the budget" in (
      capsys.readouterr().out)


def test_fit_runs_keeps_what_the_projection_allows():
  # 6 runs together take 0.6 s/step (0.1 s/step per run); 1000 steps.
  fit = lambda budget: G.fit_runs(6, step_s=0.6, steps=1000, fixed_s=50.0,
                                  budget_s=budget)
  assert fit(50 + 600) == 6
  assert fit(50 + 599) == 5
  assert fit(50 + 300) == 3
  assert fit(50 + 99) == 1  # never fewer than one run
  assert fit(10) == 1


def test_run_order_puts_the_core_policies_first():
  runs = G.run_order(["trivialaugment", "none", "found", "standard"], 2)
  assert [(r.policy, r.seed) for r in runs] == [
      ("none", 0), ("found", 0), ("standard", 0),
      ("none", 1), ("found", 1), ("standard", 1),
      ("trivialaugment", 0), ("trivialaugment", 1)]


def test_stacked_probs_pad_with_identity_layers():
  space = space_lib.cifar_space()
  none, ta = (policy_lib.baseline(k, space) for k in ("none",
                                                       "trivialaugment"))
  probs = G.stacked_probs([none, ta])
  assert probs.shape == (2, 4, space.size) and probs.dtype == np.float32
  identity = space.index_of("Identity")
  npt.assert_array_equal(probs[0, :, identity], 1.0)
  npt.assert_array_equal(probs[1], ta.probs.astype(np.float32))


def test_prepare_writes_the_class_balanced_subset(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 12)
  source = tmp_path / "cifar10.npz"
  np.savez(source, train_images=rng.integers(0, 256, (120, 32, 32, 3),
                                             dtype=np.uint8),
           train_labels=labels.astype(np.int64),
           test_images=rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
           test_labels=np.arange(30) % 10)
  policy = tmp_path / "cifar_1.npz"
  policy.write_bytes(b"official policy bytes")
  data, copy = tmp_path / "out" / "data.npz", tmp_path / "out" / "p.npz"
  G.prepare(source, policy, data, copy, train_size=40, subset_seed=0)
  assert copy.read_bytes() == policy.read_bytes()
  out = G.load_data(data)
  with np.load(source) as raw, np.load(data) as written:
    expected = ip.random_subset_indices(raw["train_labels"], 40, 0)
    npt.assert_array_equal(written["train_indices"], expected)
    npt.assert_array_equal(out["train_images"],
                           raw["train_images"][expected])
    npt.assert_array_equal(out["test_images"], raw["test_images"])
  assert out["train_images"].dtype == np.uint8
  npt.assert_array_equal(np.bincount(out["train_labels"]), [4] * 10)
