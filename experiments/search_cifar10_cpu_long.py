"""Deep layers that move: the long CPU search, its layer-2 std ablation, and
where the deep-layer mass goes next to the official policies.

  python experiments/search_cifar10_cpu_long.py        # ~1 h on 2 CPU cores

1. The search of `configs/cifar10_cpu_long.py` (320 Adam steps x lr 0.05 per
   layer, 3 layers; the library call of `python -m deepaa_jax.main
   --config=configs/cifar10_cpu_long.py`) in `--search_workdir`: reused when
   finished, resumed when interrupted.
2. The ablation: layer 2 searched again on top of the same layer 1 with the
   std penalty off (std_coef 0 instead of the official 1), with the same keys
   (`search_layer` with fold_in(key, 1), as `search_layers` uses), so only c
   differs. Written to `<search_workdir>/ablation_std0/` (policy.json: the
   found layer 1 + the ablation's layer 2; metrics.jsonl); reused when done.
3. `docs/results_search_cifar10_cpu_long.md`: op mass per layer (Identity,
   RandCrop, RandFlip, RandCutout, the rest) for the found policy, the
   ablation and the official cifar_1/cifar_2; how far the watched logits
   moved; the measured reward noise (the mean and std parts of Eq. 10, per
   step); the cost per layer; and the history plot
   (`docs/search_cifar10_cpu_long_history.png`).
"""

import json
import pathlib
import shutil
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import plots  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import search  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import search_job  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import low_data_cifar10 as low_data  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("search_workdir", "runs/cifar10_cpu_long",
                    "Workdir of the long search (reused if finished).")
flags.DEFINE_string("search_config",
                    str(REPO / "configs" / "cifar10_cpu_long.py"),
                    "Search config file.")
flags.DEFINE_string("out_prefix",
                    str(REPO / "docs" / "search_cifar10_cpu_long"),
                    "Prefix of the docs outputs.")

WATCHED = search.WATCHED
LABELS = {name: space_lib.cifar_space().transform_name(n)
          for name, n in WATCHED}


def run_search(config, workdir: pathlib.Path):
  if (workdir / "policy.json").is_file() and (workdir /
                                              "cost_report.json").is_file():
    print(f"Reusing the finished search in {workdir}", flush=True)
    return
  config_lib.validate(config)
  search_job.run(config, workdir)


def run_ablation(config, workdir: pathlib.Path):
  """Layer 2 with std_coef 0 on top of the found layer 1 (same keys)."""
  out = workdir / "ablation_std0"
  if (out / "policy.json").is_file():
    print(f"Reusing the finished ablation in {out}", flush=True)
    return
  out.mkdir(parents=True, exist_ok=True)
  found = policy_lib.load_policy(workdir / "policy.json")
  config.pretrain_checkpoint = str(workdir / "pretrain")
  dataset, splits = search_job.load_search_pools(config)
  model, params, batch_stats, _ = search_job.pretrain(config, workdir,
                                                  dataset=dataset)
  mean, std = input_pipeline.normalization_constants(
      dataset.name, phase="search", default=(dataset.mean, dataset.std))
  search_model = search.make_search_model(model, params, batch_stats,
                                          mean=mean, std=std)
  data = search_job.search_data(splits, dataset.num_classes, config)
  cfg = config.search
  cfg.std_coef = 0.0
  records = []

  def on_step(step, state, diag):
    del state
    records.append({"layer": 2, "step": step, **diag})

  t0 = time.time()
  key = jax.random.fold_in(jax.random.key(cfg.seed), 1)  # layer 2's key
  logits, _ = search.search_layer(key, search_model, found.probs[:1], data,
                                  cfg, callback=on_step)
  wall = time.time() - t0
  probs = np.asarray(jax.nn.softmax(logits), np.float64)
  policy = policy_lib.Policy(
      np.stack([found.probs[0], probs / probs.sum()]), found.space_name,
      "deepaa_jax_search_std0", policy_lib.provenance(
          source="deepaa-jax search, layer-2 ablation std_coef=0",
          wall_s=wall))
  (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                             for r in records))
  policy_lib.save_policy(out / "policy.json", policy)
  print(f"Ablation layer 2 (std_coef 0): {wall:.0f} s", flush=True)


def _records(path: pathlib.Path):
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _mass_row(name, layer, probs):
  other = 1 - probs[[n for _, n in WATCHED]].sum()
  return (f"| {name} | {layer} | " + " | ".join(
      f"{probs[n]:.3f}" for _, n in WATCHED) + f" | {other:.3f} |")


def main(argv):
  del argv
  t0 = time.time()
  workdir = pathlib.Path(FLAGS.search_workdir)
  config = config_lib.load_config_file(FLAGS.search_config)
  run_search(config, workdir)
  run_ablation(config_lib.load_config_file(FLAGS.search_config), workdir)
  found = policy_lib.load_policy(workdir / "policy.json")
  ablation = policy_lib.load_policy(workdir / "ablation_std0" / "policy.json")
  main_records = _records(workdir / "search_metrics.jsonl")
  abl_records = _records(workdir / "ablation_std0" / "metrics.jsonl")
  report = json.loads((workdir / "cost_report.json").read_text())
  official = {n: policy_lib.load_official_npz(
      config_lib.official_policy_path(n)) for n in ("cifar_1", "cifar_2")}

  prefix = pathlib.Path(FLAGS.out_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  plots.search_history(f"{prefix}_history.png", main_records,
                       title="configs/cifar10_cpu_long.py (std_coef 1)")
  plots.search_history(
      f"{prefix}_ablation_history.png",
      [r for r in main_records if r["layer"] == 2] +
      [dict(r, layer=20) for r in abl_records],
      title="layer 2: std_coef 1 (layer 2) vs 0 (layer 20)")
  shutil.copy(workdir / "policy_op_mass.png", f"{prefix}_op_mass.png")

  mass = ["| policy | layer | " + " | ".join(LABELS[n] for n, _ in WATCHED)
          + " | all other ops |", "|---|---:|" + "---:|" * (len(WATCHED) + 1)]
  for k in range(found.num_layers):
    mass.append(_mass_row("found (std_coef 1)", k + 1, found.probs[k]))
  mass.append(_mass_row("ablation (std_coef 0)", 2, ablation.probs[1]))
  for name, pol in official.items():
    for k in range(pol.num_layers):
      mass.append(_mass_row(f"official {name}", k + 1, pol.probs[k]))

  def moved(records, layer):
    rows = [r for r in records if r["layer"] == layer]
    first, last = rows[0], rows[-1]
    return [(n, first[f"logit_{n}"], last[f"logit_{n}"],
             max(abs(r[f"logit_{n}"] - first[f"logit_{n}"]) for r in rows))
            for n, _ in WATCHED]

  logit_lines = ["| run | layer | " + " | ".join(
      f"{LABELS[n]} start → end (max move)" for n, _ in WATCHED) + " |",
                 "|---|---:|" + "---|" * len(WATCHED)]
  for run, records in (("std_coef 1", main_records),
                       ("std_coef 0", abl_records)):
    for layer in sorted({r["layer"] for r in records}):
      logit_lines.append(f"| {run} | {layer} | " + " | ".join(
          f"{a:+.2f} → {b:+.2f} ({m:.1f})" for _, a, b, m in moved(
              records, layer)) + " |")

  noise = ["| run | layer | op | mean part: mean over steps | mean part: "
           "std over steps | std part c·std: mean | R: mean over steps | "
           "steps with R > 0 |", "|---|---:|---|---:|---:|---:|---:|---:|"]
  for run, records in (("std_coef 1", main_records),
                       ("std_coef 0", abl_records)):
    for layer in sorted({r["layer"] for r in records}):
      rows = [r for r in records if r["layer"] == layer]
      for n, _ in WATCHED:
        m = np.asarray([r[f"R_mean_{n}"] for r in rows])
        sd = np.asarray([r[f"R_std_{n}"] for r in rows])
        rr = np.asarray([r[f"R_{n}"] for r in rows])
        noise.append(f"| {run} | {layer} | {LABELS[n]} | {m.mean():+.4f} | "
                     f"{m.std():.4f} | {sd.mean():.4f} | {rr.mean():+.4f} | "
                     f"{100 * np.mean(rr > 0):.0f} % |")

  cost = "\n".join(
      f"| {c['layer']} | {c['steps']} | {c['wall_s']:.0f} | "
      f"{c['steady_s_per_step']:.2f} |" for c in report["layers"])
  lines = [
      "# Deep layers that move: the long CPU search (real CIFAR-10)",
      "",
      f"Generated by `python experiments/search_cifar10_cpu_long.py` "
      f"({time.strftime('%Y-%m-%d')}). Search: `configs/cifar10_cpu_long.py` "
      "(WRN-10-1 search network pretrained 4 epochs on train[0:5000]; "
      f"{found.num_layers} layers x {report['layers'][0]['steps']} Adam "
      "steps at lr 0.05; 4 search images x 16 validation images, M = 32, "
      "E = 1). Ablation: layer 2 searched again on the same layer 1 with the "
      "same keys and std_coef 0.",
      "",
      "## Op mass per layer, beside the official policies",
      "",
      "Probability of Identity, the three random ops and everything else.",
      "",
  ] + mass + [
      "",
      "## Found policy",
      "",
      "```",
      found.summary(5),
      "```",
      "",
      f"![op mass]({prefix.name}_op_mass.png)",
      "",
      "## How far the logits moved",
      "",
      "Logit above the layer's mean logit, at the first and the last step, "
      "and the largest move from the first step (units of logit; "
      "initialisation: Identity +7.94, every other transform -0.06).",
      "",
  ] + logit_lines + [
      "",
      "## Reward noise (per step)",
      "",
      "The watched transforms' regularised reward R = mean − c·std over the "
      "4 search images (Eq. 10), its mean part (and that part's "
      "step-to-step std, the noise Adam averages over) and its std part.",
      "",
  ] + noise + [
      "",
      f"![search history]({prefix.name}_history.png)",
      "",
      f"![layer-2 ablation]({prefix.name}_ablation_history.png)",
      "",
      "## Cost",
      "",
      f"Search {report['total_wall_s'] / 60:.0f} min for the layers (the "
      "machine was shared with the low-data training table, so these times "
      "are about twice those of an idle machine).",
      "",
      "| layer | steps | wall s | steady s / step |",
      "|---:|---:|---:|---:|",
      cost,
      "",
  ]
  path = prefix.parent / f"results_{prefix.name}.md"
  reading = low_data.hand_written_reading(path)  # kept across regeneration
  if reading:
    at = lines.index("## Op mass per layer, beside the official policies")
    lines[at:at] = reading + [""]
  path.write_text("\n".join(lines))
  print(f"Wrote {path} ({(time.time() - t0) / 60:.1f} min)")


if __name__ == "__main__":
  app.run(main)
