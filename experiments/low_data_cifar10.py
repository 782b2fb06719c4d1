"""Low-data CIFAR-10: seven augmentation policies x 3 seeds on 4,000 images.

  python experiments/low_data_cifar10.py                 # full run, ~1 h on 2 CPU cores
  python experiments/low_data_cifar10.py --epochs=1 --seeds=1 --subset=400 \
      --policies=none,deepaa_cifar_1 --workdir=/tmp/low_data_smoke \
      --out_md=/tmp/low_data_smoke/results.md --out_png=/tmp/low_data_smoke/results.png

Every run trains with `train.train` (the same loop as the paper recipes) on a
class-balanced 4,000-image subset of the real CIFAR-10 training set
(`../shared/data/cifar10.npz`, 400 images per class, the same subset for every
run) and is evaluated on the full 10,000-image test set. Policies:

  none             no augmentation
  standard         pad-4 crop + horizontal flip
  standard_cutout  standard + Cutout-16
  trivialaugment   one uniform TrivialAugment layer, then crop, flip, Cutout
  deepta           6 layers uniform over the 139 transforms (DeepTA, paper §4.4)
  deepaa_cifar_1   the authors' searched policy policy_DeepAA_cifar_1.npz
  deepaa_cifar_2   the authors' searched policy policy_DeepAA_cifar_2.npz

Budget choice (about one hour on 2 CPU cores for the 21 runs): the network is
WRN-10-1 (78k parameters; WRN-16-2 measured ~5x slower per step), batch 32
(faster per image than 128 on XLA:CPU), 10 epochs of the 4,000 images (1,250
steps), lr 0.05 with a half-epoch warm-up then cosine to 0, SGD Nesterov 0.9,
wd 5e-4 off BN, clip 5, random sign flip on (the official evaluation
semantics) — `configs/cifar10_train_cpu.py` with more epochs. Measured on the
shared 2-core VM: ~0.12 s per step of 32 (265 img/s) with a 6-layer policy,
so ~150 s of training per run plus ~15 s for initialisation, checkpoints and
the 10k-image test pass, and 10-25 s of compilation per policy (cached across
seeds): ~60 min in all. Ten epochs is a short schedule; strong augmentation
pays off over long schedules (the paper trains 200 epochs), so the ranking
here is a low-budget, low-data result, not a reproduction of the paper's
tables.

Each run has its own workdir (`<workdir>/<policy>/seed<k>`) and is skipped if
its `results.json` exists, so an interrupted experiment resumes (an
interrupted run itself resumes from its last checkpoint). The script writes a
markdown table of mean ± sample std test accuracy (`--out_md`, default
docs/results_low_data.md) and a bar plot (`--out_png`).
"""

import json
import pathlib
import platform
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

POLICIES = ("none", "standard", "standard_cutout", "trivialaugment", "deepta",
            "deepaa_cifar_1", "deepaa_cifar_2")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/low_data_cifar10", "Root of the runs.")
flags.DEFINE_float("epochs", 10, "Epochs of the subset per run.")
flags.DEFINE_integer("seeds", 3, "Seeds per policy (0..seeds-1).")
flags.DEFINE_list("policies", list(POLICIES), "Policies to run.")
flags.DEFINE_integer("subset", 4000, "Class-balanced training subset size.")
flags.DEFINE_string("model", "wrn_10_1", "Network (config.model.name).")
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_float("lr", 0.05, "Peak learning rate.")
flags.DEFINE_string("npz", None, "CIFAR-10 npz (default ../shared/data).")
flags.DEFINE_list("policy_files", [],
                  "Extra policies NAME=PATH (our JSON or an official-format "
                  "npz), e.g. found=runs/cifar10_cpu/policy.json; NAME is "
                  "added to --policies.")
flags.DEFINE_string("out_md", str(REPO / "docs" / "results_low_data.md"),
                    "Markdown results.")
flags.DEFINE_string("out_png", str(REPO / "docs" / "results_low_data.png"),
                    "Bar plot.")


def _base_config():
  return config_lib.load_config_file(REPO / "configs" / "cifar10_train_cpu.py")


def policy_files():
  """{name: path} from --policy_files (NAME=PATH entries)."""
  files = {}
  for entry in FLAGS.policy_files:
    name, sep, path = entry.partition("=")
    if not sep or not name or not path:
      raise app.UsageError(f"--policy_files: expected NAME=PATH, got {entry!r}")
    if name in POLICIES:
      raise app.UsageError(f"--policy_files: {name!r} is a built-in policy")
    if not pathlib.Path(path).is_file():
      raise app.UsageError(f"--policy_files: no file at {path!r}")
    files[name] = str(pathlib.Path(path).resolve())
  return files


def make_config(policy: str, seed: int):
  """The config of one run."""
  config = _base_config()
  files = policy_files()
  if policy in files:
    config.policy.kind = "file" if files[policy].endswith(".json") else (
        "official")
    config.policy.path = files[policy]
  elif policy.startswith("deepaa_"):
    config.policy.kind = "official"
    config.policy.path = config_lib.official_policy_path(
        policy[len("deepaa_"):])
  else:
    config.policy.kind = policy
  config.policy.num_layers = 6  # deepta: K = 6
  config.model.name = FLAGS.model
  config.train.num_epochs = FLAGS.epochs
  config.train.batch_size = FLAGS.batch
  config.train.learning_rate = FLAGS.lr
  config.train.seed = seed
  config.train.checkpoint_every_steps = 500
  config.input.train_subset = FLAGS.subset
  if FLAGS.npz:
    config.input.npz_path = FLAGS.npz
  return config


def write_report(rows, settings, path_md, path_png, wall_s):
  """Markdown table + bar plot of mean ± std test accuracy per policy."""
  by_policy = {}
  for r in rows:
    by_policy.setdefault(r["policy"], []).append(r)
  lines = [
      "# Low-data CIFAR-10: augmentation policies on 4,000 images",
      "",
      "Generated by `python experiments/low_data_cifar10.py` "
      f"({time.strftime('%Y-%m-%d')}). Test accuracy on the full "
      "10,000-image CIFAR-10 test set, mean ± sample std over seeds "
      "(seed = initialisation, data order and augmentation draws; the "
      "training subset is the same for every run).",
      "",
      "| policy | test accuracy (%) | seeds | per seed (%) | test loss | "
      "train s / run |",
      "|---|---:|---:|---|---:|---:|",
  ]
  stats = []
  for policy in [p for p in POLICIES if p in by_policy] + sorted(
      set(by_policy) - set(POLICIES)):
    runs = sorted(by_policy[policy], key=lambda r: r["seed"])
    acc = np.array([100 * r["test_accuracy"] for r in runs])
    std = float(acc.std(ddof=1)) if len(acc) > 1 else float("nan")
    stats.append((policy, float(acc.mean()), std))
    lines.append(
        f"| {policy} | {acc.mean():.2f} ± {std:.2f} | {len(acc)} | "
        + ", ".join(f"{a:.2f}" for a in acc) + " | "
        f"{np.mean([r['test_loss'] for r in runs]):.3f} | "
        f"{np.mean([r['train_time_s'] for r in runs]):.0f} |")
  lines += ["", "## Settings", ""]
  lines += [f"- {k}: {v}" for k, v in settings.items() if k != "subset size"]
  lines += [f"- wall time of this invocation: {wall_s / 60:.1f} min "
            "(runs already done were skipped, not re-timed)"]
  lines += ["", f"![test accuracy]({pathlib.Path(path_png).name})", ""]
  path_md = pathlib.Path(path_md)
  path_md.parent.mkdir(parents=True, exist_ok=True)
  path_md.write_text("\n".join(lines))

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(1.2 * len(stats) + 2, 4))
  names = [s[0] for s in stats]
  means = [s[1] for s in stats]
  errs = [0 if np.isnan(s[2]) else s[2] for s in stats]
  ax.bar(range(len(stats)), means, yerr=errs, capsize=4,
         color=["#999999" if n == "none" else "#ee7733" if n not in POLICIES
                else "#4477aa" if n.startswith("deepaa") else "#88bbdd"
                for n in names])
  ax.set_xticks(range(len(stats)))
  ax.set_xticklabels(names, rotation=30, ha="right")
  ax.set_ylabel("test accuracy (%)")
  low = min(m - e for m, e in zip(means, errs))
  ax.set_ylim(max(0, low - 5), min(100, max(m + e for m, e in
                                            zip(means, errs)) + 3))
  ax.set_title(f"CIFAR-10, {settings['subset size']} training images, "
               f"{settings['model']}, {settings['epochs']:g} epochs")
  fig.tight_layout()
  pathlib.Path(path_png).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path_png, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  t0 = time.time()
  rows, settings = run_all(FLAGS.policies)
  write_report(rows, settings, FLAGS.out_md, FLAGS.out_png, time.time() - t0)
  print(f"Wrote {FLAGS.out_md} and {FLAGS.out_png} "
        f"({(time.time() - t0) / 60:.1f} min)")


def run_all(policies):
  """Trains every (policy, seed) not yet done; returns (rows, settings)."""
  extra = list(policy_files())
  policies = list(policies) + [p for p in extra if p not in policies]
  unknown = [p for p in policies if p not in POLICIES + tuple(extra)]
  if unknown:
    raise app.UsageError(f"--policies: unknown {unknown}; valid: {POLICIES} "
                         "or a NAME from --policy_files")
  root = pathlib.Path(FLAGS.workdir)
  probe = make_config("none", 0)
  config_lib.validate(probe)
  dataset = input_pipeline.load_dataset(probe.input)  # loaded once
  rows = []
  # Seeds outside, policies inside: an interrupted experiment has the same
  # number of seeds for every policy.
  for seed in range(FLAGS.seeds):
    for policy in policies:
      workdir = root / policy / f"seed{seed}"
      results = workdir / "results.json"
      if results.exists():
        logging.info("Skipping %s seed %d: %s exists.", policy, seed, results)
      else:
        logging.info("Running %s seed %d in %s", policy, seed, workdir)
        train.train(make_config(policy, seed), workdir, dataset=dataset)
      r = json.loads(results.read_text())
      rows.append({"policy": policy, "seed": seed,
                   "test_accuracy": r["test_accuracy"],
                   "test_loss": r["test_loss"],
                   "train_time_s": r["train_time_s"],
                   "images_per_s": r["images_per_s"]})
      print(f"{policy:>16} seed {seed}: test accuracy "
            f"{100 * r['test_accuracy']:.2f} % ({r['train_time_s']:.0f} s "
            "training)", flush=True)
  c = probe.train
  settings = {
      "subset size": dataset.splits["train"].size,
      "training images": f"{dataset.splits['train'].size} (class-balanced "
                         f"subset, subset_seed {probe.input.subset_seed})",
      "test images": dataset.splits["test"].size,
      "model": FLAGS.model,
      "epochs": FLAGS.epochs,
      "batch size": FLAGS.batch,
      "optimiser": (f"SGD Nesterov {c.momentum}, peak lr {FLAGS.lr}, "
                    f"{c.warmup_epochs}-epoch warm-up from 0 then cosine to "
                    f"0, wd {c.weight_decay} off BN, clip {c.grad_clip_norm}"),
      "augmentation": "policy only, per image and layer on device, random "
                      "sign flip on (official eval semantics)",
      "seeds": FLAGS.seeds,
      "device": f"{jax.devices()[0].device_kind} x {jax.device_count()} "
                f"({platform.processor() or platform.machine()}), JAX "
                f"{jax.__version__}",
  }
  return rows, settings


if __name__ == "__main__":
  app.run(main)
