"""Paper Fig. 4 at CPU scale: gradient-similarity improvement per layer,
DeepAA (searched) vs DeepTA (uniform layers).

  python experiments/deepaa_vs_deepta.py --search_workdir=runs/cifar10_cpu

What is measured (paper §4.4, "Validity of Optimizing Gradient Matching with
Regularization", and Figure 4). For each of N search images x (drawn as the
search draws them, spec §2.6: a class uniformly, then one search-pool image
and `val_batch` clean validation-pool images of that class), with the frozen
search network (BN in inference mode, gradient space without BN gamma/beta,
per-example cross-entropy without L2; spec §2.4):

  v      = (1/V) sum_{j in V(x)} grad l(x_j)       clean validation gradient
  g_0    = grad l(x)                               the original image
  g_k    = (1/M) sum_{s=1..M} grad l(t_{n_k^s} o ... o t_{n_1^s}(x)),
           n_j^s ~ p_j: M Monte-Carlo chains of layers 1..k (paper Eq. 8)
  c_k(x) = cos(v, g_k),  k = 0..K

The paper defines "the improvement of gradient similarity" as "subtracting
the cosine similarity of the original image batch from that of the augmented
batch", and plots its mean (Fig. 4a) and standard deviation (Fig. 4b) over
256 independently sampled original images against the augmentation depth.
This module implements exactly that:

  improvement at depth k:  d_k(x) = c_k(x) - c_0(x)           (primary)

with the mean and the population std (ddof 0, as in Eq. 10) over the images.
Because the paper's prose on Fig. 4a ("the cosine similarity of DeepTA
reaches the peak at the fifth layer, and stacking more layers decreases the
cosine similarity") reads naturally with the cumulative d_k, d_k is the
primary quantity; the marginal gain of layer k alone,
c_k(x) - c_{k-1}(x) = d_k(x) - d_{k-1}(x), is reported next to it. The
paper does not give M; here it is a flag (default 32).

Policies: the searched policy (`policy.json` of a search workdir, K layers)
and DeepTA with the same K (`policy.baseline("deepta")`: every layer uniform
over the 139 transforms, no default augmentations). c_0 is shared.

Monte-Carlo details. Chain s of image n uses the per-example key
fold_in(policy key, n * M + s) for its transform indices
(`policy.sample_indices`) and its random-op draws (`space.apply_chain_batch`),
layer j of it fold_in(., j); so the depth-k chain is the first k layers of
the depth-K chain (common random numbers across k: the curves are smoother
than with independent draws at each depth, and their expectations are the
same), and the numbers do not depend on how images are chunked. The two
policies use independent keys. A finite M biases cos(v, g_k) downwards
(|g_k| picks up the MC variance, ~tr Cov / M); to show how large that is,
g_k is accumulated as two independent halves of M/2 chains, and the
cosine with each half is kept as well (`cos_half`: same cost, since every
chain is back-propagated once either way).

Computation: backward passes via `reward.group_weighted_grads` (one group =
one image's M/2 chains, weights 2/M; or its V validation images, weights
1/V), a host loop over a compiled chunk function on CPU (backward passes
inside `lax.scan` are 15-28x slower on XLA:CPU), images processed
`images_per_chunk` at a time with a progress bar.

Inputs: a finished search workdir W of `python -m deepaa_jax.main
--config=configs/cifar10_cpu.py --workdir=W`: `W/policy.json`, and the
pretrained search network in `W/pretrain` (or `config.pretrain_checkpoint`).
The network is restored by `search_job.pretrain(config, ...)` run on a scratch
copy of that folder (so the search workdir is only read; a finished
pretraining is restored, not retrained; an unfinished one is refused). The
config is the one saved in `policy.json` (the search's own), or `--config`.

Outputs: `<out_dir>/gradient_similarity.json` (per-image numbers),
`--out_md` (default docs/deepaa_vs_deepta.md) and `--out_png`
(docs/deepaa_vs_deepta.png).
"""

import datetime
import functools
import json
import pathlib
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, Mapping, NamedTuple, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import policy as policy_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import reward as reward_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import search as search_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deepaa_jax import search_job  # pylint: disable=g-import-not-at-top,wrong-import-position

Array = jax.Array
PyTree = Any

REFERENCES = ("original", "previous")


# --------------------------------------------------------------------------
# Library: chains, cosines, summaries.
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num",))
def _sample_indices(key: Array, probs: Array, offset: Array, *, num: int):
  return policy_lib.sample_indices(key, probs, num, offset=offset)


@functools.partial(jax.jit, static_argnames=("space", "method"))
def _apply_chains(key: Array, images: Array, indices: Array, offset: Array, *,
                  space: space_lib.SearchSpace, method: str):
  return space_lib.apply_chain_batch(key, images, indices, space,
                                     method=method, offset=offset)


def chain_images(key: Array, images: Array, probs: Array, *, samples: int,
                 space: space_lib.SearchSpace, offset: int = 0,
                 method: str = "auto") -> Array:
  """M augmentation chains of every depth k = 1..K for each image.

  Args:
    key: the policy's PRNG key.
    images: uint8 or float32[N, H, W, 3] with integer values in [0, 255].
    probs: float32[K, T], the policy's layer probabilities (layer 1 first).
    samples: M, chains per image.
    space: the search space.
    offset: global index of images[0]; chain s of image n uses the
      per-example key fold_in(key', (offset + n) * M + s) (key' = the two
      halves of split(key), for the indices and the random-op draws), so
      results do not depend on the chunking.
    method: `space.apply_chain_batch` method.

  Returns:
    float32[N, K, M, H, W, 3]: [n, k - 1, s] is chain s of image n through
    layers 1..k, i.e. the depth-K chain s with layers k+1..K replaced by
    Identity: the depth-k chains are prefixes of the depth-K ones. (All K
    depths run the same compiled K-layer chain, which is cheaper to compile
    than K chains of different lengths.)
  """
  images = jnp.asarray(images)
  n, h, w, c = images.shape
  probs = jnp.asarray(probs, jnp.float32)
  num_layers = int(probs.shape[0])
  k_index, k_apply = jax.random.split(key)
  first = jnp.asarray(offset * samples, jnp.int32)
  indices = _sample_indices(k_index, probs, first, num=n * samples)
  flat = jnp.repeat(images.astype(jnp.float32), samples, axis=0)
  identity = space.index_of(space.op_names[space_lib.IDENTITY])
  depths = []
  for k in range(1, num_layers + 1):
    masked = jnp.where(jnp.arange(num_layers) < k, indices, identity)
    depths.append(_apply_chains(k_apply, flat, masked, first, space=space,
                                method=method))
  out = jnp.stack(depths, axis=1).reshape(n, samples, num_layers, h, w, c)
  return out.transpose(0, 2, 1, 3, 4, 5)


@functools.partial(jax.jit, static_argnames=("num_layers", "halves"))
def _cosines(v: PyTree, g0: PyTree, g: PyTree, *, num_layers: int,
             halves: int):
  """cos(v, g_k) for k = 0..K [C, K + 1] and per-half cosines [C, K, H].

  g_0 joins the depth axis (copied into each half; the mean of identical
  halves is exact), so every depth's cosine runs through the same reduction
  and an Identity layer's improvement is exactly 0.
  """
  groups = jax.tree.leaves(v)[0].shape[0]

  def with_depth0(x, x0):
    x = x.reshape((groups, num_layers, halves) + x.shape[1:])
    x0 = jnp.broadcast_to(x0[:, None, None], (groups, 1, halves) +
                          x0.shape[1:])
    return jnp.concatenate([x0, x], axis=1)

  g = jax.tree.map(with_depth0, g, g0)  # [C, K + 1, H, ...]
  full = jax.tree.map(lambda x: x.mean(axis=2), g)
  cos = reward_lib.cosine
  cos_k = jax.vmap(lambda a, b: jax.vmap(lambda x: cos(a, x))(b))(v, full)
  cos_h = jax.vmap(lambda a, b: jax.vmap(jax.vmap(lambda x: cos(a, x)))(b))(
      v, g)
  return cos_k, cos_h[:, 1:]


def gradient_similarity(key: Array, model: search_lib.SearchModel,
                        batch: search_lib.Batch,
                        policies: Mapping[str, np.ndarray], *, samples: int,
                        space: space_lib.SearchSpace,
                        images_per_chunk: int = 8, chunk_size: int = 64,
                        loop: str = "host", method: str = "auto",
                        progress: bool = True) -> Dict[str, Any]:
  """cos(v, g_k), k = 0..K, per image, for each policy (see module doc).

  Args:
    key: PRNG key of the chains; policy number i (in `policies` order) uses
      fold_in(key, i).
    model: the frozen search network (`search.make_search_model`).
    batch: the images (`search.sample_batch`): images uint8[N, H, W, 3],
      labels int32[N], val_images uint8[N, V, H, W, 3], val_labels
      int32[N, V].
    policies: name -> float[K, T] layer probabilities (every policy the same
      K or not; each gets its own depth range).
    samples: M, Monte-Carlo chains per image and depth.
    space: the search space.
    images_per_chunk: images processed per host-loop iteration (memory:
      about images_per_chunk * (2 + 2K) gradient-sized trees).
    chunk_size: at most this many images per backward pass.
    loop: `reward.group_weighted_grads` loop: "host" (CPU) or "scan".
    method: `space.apply_chain_batch` method.
    progress: show a progress bar.

  Returns:
    dict with "cos0": float64[N] = cos(v, grad l(x)); and per policy name a
    dict with "cos": float64[N, K + 1] (column 0 = cos0) and "cos_half":
    float64[N, K, 2] (cosine with each half of the M chains; None if M is
    odd or 1); "timing": first chunk seconds (with compilation) and steady
    seconds per image after it.
  """
  clash = {"cos0", "timing"} & set(policies)
  if clash:
    raise ValueError(f"policy names {sorted(clash)} are reserved")
  loss, w, frozen = model.loss, model.w, model.frozen
  n = int(batch.labels.shape[0])
  halves = 2 if samples >= 2 and samples % 2 == 0 else 1
  per_half = samples // halves
  val_n = int(batch.val_labels.shape[1])
  cos0 = np.zeros(n)
  results = {name: {"cos": np.zeros((n, np.shape(p)[0] + 1)),
                    "cos_half": np.zeros((n, np.shape(p)[0], halves))}
             for name, p in policies.items()}
  step = max(1, min(int(images_per_chunk), n))
  t_start, t_first = time.perf_counter(), None
  bar = None
  if progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=n, desc="images", unit="img")

  def grads(images, labels, weights):
    return reward_lib.group_weighted_grads(
        loss, w, frozen, images, labels, weights, chunk_size=chunk_size,
        loop=loop)

  for start in range(0, n, step):
    sl = slice(start, min(n, start + step))
    images = jnp.asarray(batch.images[sl])
    labels = jnp.asarray(batch.labels[sl])
    c = int(labels.shape[0])
    h, wd = images.shape[1:3]
    v = grads(jnp.asarray(batch.val_images[sl]).astype(jnp.float32),
              jnp.asarray(batch.val_labels[sl]),
              jnp.full((c, val_n), 1.0 / val_n, jnp.float32))
    g0 = grads(images.astype(jnp.float32)[:, None], labels[:, None],
               jnp.ones((c, 1), jnp.float32))
    for p_index, (name, probs) in enumerate(policies.items()):
      probs = jnp.asarray(np.asarray(probs, np.float32))
      k_max = int(probs.shape[0])
      chains = chain_images(jax.random.fold_in(key, p_index), images, probs,
                            samples=samples, space=space, offset=start,
                            method=method)  # [c, K, M, H, W, 3]
      groups = c * k_max * halves
      g = grads(chains.reshape(groups, per_half, h, wd, 3),
                jnp.repeat(labels, k_max * samples).reshape(groups, per_half),
                jnp.full((groups, per_half), 1.0 / per_half, jnp.float32))
      ck, ch = jax.device_get(_cosines(v, g0, g, num_layers=k_max,
                                       halves=halves))
      cos0[sl] = ck[:, 0]
      results[name]["cos"][sl] = ck
      results[name]["cos_half"][sl] = ch
    if t_first is None:
      t_first = time.perf_counter()
    if bar is not None:
      bar.update(c)
      done = sl.stop  # running mean of the deepest improvement d_K
      bar.set_postfix({
          f"d_K {name}": f"{np.mean(r['cos'][:done, -1] - cos0[:done]):+.3f}"
          for name, r in results.items()})
  if bar is not None:
    bar.close()
  for r in results.values():
    if halves == 1:
      r["cos_half"] = None
  t_end = time.perf_counter()
  timing = {"first_chunk_s": t_first - t_start,
            "steady_s_per_image": ((t_end - t_first) / (n - step)
                                   if n > step else float("nan"))}
  return {"cos0": cos0, "timing": timing, **results}


def improvement(cos: np.ndarray, *, reference: str = "original") -> np.ndarray:
  """Gradient-similarity improvement per depth from cos[N, K + 1].

  reference="original" (paper §4.4): c_k - c_0, the augmented minus the
  original image's cosine. reference="previous": c_k - c_{k-1}, the gain of
  layer k alone. Returns float64[N, K].
  """
  cos = np.asarray(cos, np.float64)
  if reference == "original":
    return cos[:, 1:] - cos[:, :1]
  if reference == "previous":
    return cos[:, 1:] - cos[:, :-1]
  raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


def summarize(cos: np.ndarray) -> Dict[str, np.ndarray]:
  """Per-depth statistics over the images (population std, ddof 0).

  Returns dict of float64 arrays: cos_mean/cos_std [K + 1]; for the paper's
  improvement d_k = c_k - c_0: mean/std/sem [K]; for the per-layer gain
  c_k - c_{k-1}: step_mean/step_std/step_sem [K].
  """
  cos = np.asarray(cos, np.float64)
  n = cos.shape[0]
  out = {"cos_mean": cos.mean(0), "cos_std": cos.std(0)}
  for prefix, ref in (("", "original"), ("step_", "previous")):
    d = improvement(cos, reference=ref)
    out[prefix + "mean"] = d.mean(0)
    out[prefix + "std"] = d.std(0)
    out[prefix + "sem"] = d.std(0, ddof=1) / np.sqrt(n) if n > 1 else (
        np.full(d.shape[1], np.nan))
  return out


# --------------------------------------------------------------------------
# Loading a search run.
# --------------------------------------------------------------------------


class SearchRun(NamedTuple):
  config: Any  # the search config (ml_collections.ConfigDict)
  config_source: str
  policy: policy_lib.Policy
  model: search_lib.SearchModel
  data: search_lib.SearchData
  pretrain_metrics: Dict[str, Any]


def search_config(search_workdir, *, config_path: Optional[str] = None):
  """(config, source): `config_path` if given, else the config saved in
  `policy.json`'s metadata (the search's own), else configs/cifar10_cpu.py."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  if config_path:
    return config_lib.load_config_file(config_path), str(config_path)
  policy = policy_lib.load_policy(pathlib.Path(search_workdir) / "policy.json")
  saved = policy.metadata.get("config")
  if isinstance(saved, dict) and "search" in saved and "pretrain" in saved:
    return (ml_collections.ConfigDict(saved),
            f"{pathlib.Path(search_workdir) / 'policy.json'} (metadata.config)")
  path = REPO / "configs" / "cifar10_cpu.py"
  logging.warning("policy.json carries no config; using %s", path)
  return config_lib.load_config_file(path), str(path)


def load_search_run(search_workdir, scratch_dir, *,
                    config_path: Optional[str] = None) -> SearchRun:
  """The found policy, the restored search network and the data pools.

  The pretraining folder (`config.pretrain_checkpoint` or `W/pretrain`) is
  copied to `scratch_dir/pretrain` and restored there with
  `search.pretrain`, which writes into the folder it restores (config.json,
  results.json, event files): the search workdir stays untouched.

  Raises:
    FileNotFoundError: no policy.json, or the pretraining did not finish
      (no results.json): restoring would train the network first.
  """
  workdir = pathlib.Path(search_workdir)
  if not (workdir / "policy.json").is_file():
    raise FileNotFoundError(f"{workdir / 'policy.json'} does not exist: the "
                            "search has not finished")
  policy = policy_lib.load_policy(workdir / "policy.json")
  config, source = search_config(workdir, config_path=config_path)
  config.unlock()
  source_dir = pathlib.Path(config.pretrain_checkpoint or workdir / "pretrain")
  done = source_dir / "results.json"
  if not done.is_file():
    raise FileNotFoundError(
        f"{done} does not exist: the search network's pretraining in "
        f"{source_dir} is missing or unfinished; refusing to (re)train it")
  finished_step = json.loads(done.read_text())["step"]
  scratch = pathlib.Path(scratch_dir)
  target = scratch / "pretrain"
  if target.exists():
    shutil.rmtree(target)
  shutil.copytree(source_dir, target)
  config.pretrain_checkpoint = ""
  dataset, splits = search_job.load_search_pools(config)
  model, params, batch_stats, metrics = search_job.pretrain(config, scratch,
                                                            dataset=dataset)
  if metrics.get("resumed_from_step") != finished_step or (
      metrics["step"] != finished_step):
    raise RuntimeError(
        f"restoring {source_dir} did not resume its finished step "
        f"{finished_step} (resumed from {metrics.get('resumed_from_step')}, "
        f"ended at {metrics['step']})")
  mean, std = input_pipeline.normalization_constants(
      dataset.name, phase="search", default=(dataset.mean, dataset.std))
  search_model = search_lib.make_search_model(model, params, batch_stats,
                                              mean=mean, std=std)
  data = search_job.search_data(splits, dataset.num_classes, config)
  return SearchRun(config, source, policy, search_model, data, metrics)


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

COLORS = {"DeepAA": "#4477aa", "DeepTA": "#ee7733"}


def plot(path, stats: Mapping[str, Mapping[str, np.ndarray]], *,
         title: str) -> pathlib.Path:
  """Fig. 4 style: (a) mean improvement c_k - c_0 with +-std bars, (b) its
  std, (c) mean cos(v, g_k) for k = 0..K (the paper's panel (c) is test
  accuracy, which this experiment does not measure)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  offsets = np.linspace(-0.08, 0.08, len(stats))
  for off, (name, s) in zip(offsets, stats.items()):
    k = np.arange(1, len(s["mean"]) + 1)
    color = COLORS.get(name)
    axes[0].errorbar(k + off, s["mean"], yerr=s["std"], marker="o",
                     capsize=4, label=name, color=color)
    axes[1].plot(k, s["std"], marker="o", label=name, color=color)
    axes[2].errorbar(np.arange(len(s["cos_mean"])) + off, s["cos_mean"],
                     yerr=s["cos_std"], marker="o", capsize=4, label=name,
                     color=color)
  axes[0].axhline(0, color="grey", lw=0.8)
  axes[0].set_title("(a) mean improvement $c_k - c_0$ (bars: ±std)")
  axes[1].set_title("(b) std of the improvement")
  axes[2].set_title("(c) mean $\\cos(v, g_k)$ (bars: ±std)")
  for ax in axes:
    ax.set_xlabel("augmentation depth k")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  for ax in axes[:2]:
    ax.set_xticks(np.arange(1, len(next(iter(stats.values()))["mean"]) + 1))
  axes[2].set_xticks(np.arange(len(next(iter(stats.values()))["cos_mean"])))
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=130)
  plt.close(fig)
  return path


def _pm(mean, spread, digits=4):
  return f"{mean:+.{digits}f} ± {spread:.{digits}f}"


def report_markdown(stats, results, settings: Mapping[str, Any], *,
                    policy: policy_lib.Policy, png_name: str,
                    command: str) -> str:
  """The markdown report (tables, settings, command)."""
  names = list(stats)
  k_max = max(len(s["mean"]) for s in stats.values())
  n = len(results["cos0"])
  lines = [
      "# Gradient-similarity improvement per layer: DeepAA vs DeepTA "
      "(paper Fig. 4, CPU scale)",
      "",
      f"Generated by `{command}` on {settings['date']}.",
      "",
      "For each of N search images x with its clean validation batch of the "
      "same class: v = mean validation gradient, g_0 = ∇ℓ(x), g_k = mean "
      "gradient of M augmentation chains of layers 1..k, c_k = cos(v, g_k). "
      "The paper's improvement (§4.4: \"subtracting the cosine similarity of "
      "the original image batch from that of the augmented batch\") is "
      "d_k = c_k − c_0; mean and std are over the images (population std, "
      "as in Eq. 10). The marginal gain of layer k alone is "
      "c_k − c_{k−1}. DeepTA has the same K as the found policy, every "
      "layer uniform over the 139 transforms. Definitions and Monte-Carlo "
      "details: the docstring of `experiments/deepaa_vs_deepta.py`.",
      "",
      f"![Fig. 4 style]({png_name})",
      "",
      "## Improvement d_k = c_k − c_0 (mean ± std over "
      f"{n} images; paper Fig. 4a/4b)",
      "",
      "| layer k | " + " | ".join(f"{m} d_k" for m in names) +
      " | DeepAA − DeepTA (paired mean ± s.e.) |",
      "|---:|" + "---:|" * len(names) + "---:|",
  ]
  for k in range(k_max):
    cells = [(_pm(stats[m]["mean"][k], stats[m]["std"][k])
              if k < len(stats[m]["mean"]) else "–") for m in names]
    diff = "–"
    if "DeepAA" in results and "DeepTA" in results:
      a = improvement(results["DeepAA"]["cos"])
      b = improvement(results["DeepTA"]["cos"])
      if k < a.shape[1] and k < b.shape[1]:
        d = a[:, k] - b[:, k]
        diff = _pm(d.mean(), d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1
                   else float("nan"))
    lines.append(f"| {k + 1} | " + " | ".join(cells) + f" | {diff} |")
  lines += [
      "",
      "Standard error of a mean above = std / √N "
      f"(√N = {np.sqrt(n):.1f}).",
      "",
      "## Mean cosine c_k = cos(v, g_k) (± std over images)",
      "",
      "| depth k | " + " | ".join(names) + " |",
      "|---:|" + "---:|" * len(names),
  ]
  for k in range(k_max + 1):
    cells = [(_pm(stats[m]["cos_mean"][k], stats[m]["cos_std"][k])
              if k < len(stats[m]["cos_mean"]) else "–") for m in names]
    label = "0 (original image)" if k == 0 else str(k)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "## Marginal gain of layer k, c_k − c_{k−1} (mean ± std)",
      "",
      "| layer k | " + " | ".join(names) + " |",
      "|---:|" + "---:|" * len(names),
  ]
  for k in range(k_max):
    cells = [(_pm(stats[m]["step_mean"][k], stats[m]["step_std"][k])
              if k < len(stats[m]["step_mean"]) else "–") for m in names]
    lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
  if all(results[m]["cos_half"] is not None for m in names):
    m_half = settings["samples"] // 2
    lines += [
        "",
        f"## Monte-Carlo sensitivity: mean c_k with M/2 = {m_half} vs "
        f"M = {settings['samples']} chains",
        "",
        "A finite M biases c_k downwards (the MC noise adds to |g_k|), more "
        "for more diverse policies. Each g_k is the average of two "
        f"independent halves of {m_half} chains; the table gives the mean "
        "cosine with one half (averaged over both halves) next to the full "
        "estimate. A gap much smaller than the DeepAA–DeepTA difference "
        "means the comparison is not an MC artefact.",
        "",
        "| depth k | " + " | ".join(f"{m} M/2 | {m} M" for m in names) + " |",
        "|---:|" + "---:|---:|" * len(names),
    ]
    for k in range(k_max):
      cells = []
      for m in names:
        r = results[m]
        if k < r["cos_half"].shape[1]:
          cells += [f"{r['cos_half'][:, k].mean():.4f}",
                    f"{r['cos'][:, k + 1].mean():.4f}"]
        else:
          cells += ["–", "–"]
      lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "## The searched policy",
      "",
      "```",
      policy.summary(5),
      "```",
      "",
      "## Settings",
      "",
  ]
  lines += [f"- {k}: {v}" for k, v in settings.items()]
  lines += [
      "",
      "Scale caveats: the search network, the number of search steps and "
      "the validation batch are the reduced ones of the search config "
      "above, not the paper's (WRN-40-2, 512–1024 steps per layer, 64 "
      "validation images, 6 layers), and the paper does not state its M. "
      "The paper's Fig. 4c (test accuracy per depth) is not reproduced.",
      "",
  ]
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that
  importing this module for its functions registers no flags)."""
  flags.DEFINE_string("search_workdir", None,
                      "Workdir of a finished search (policy.json, pretrain/).")
  flags.DEFINE_string("config", None,
                      "Search config file; default: the config saved in "
                      "policy.json (else configs/cifar10_cpu.py).")
  flags.DEFINE_integer("num_images", 256, "Search images (paper: 256).")
  flags.DEFINE_integer("val_batch", 0,
                       "Validation images per search image; 0 = "
                       "config.search.val_batch.")
  flags.DEFINE_integer("samples", 32,
                       "M, Monte-Carlo chains per image and depth.")
  flags.DEFINE_integer("seed", 0, "PRNG seed (images and chains).")
  flags.DEFINE_integer("images_per_chunk", 8,
                       "Images per host-loop iteration.")
  flags.DEFINE_integer("chunk_size", 0,
                       "Images per backward pass; 0 = "
                       "config.search.chunk_size.")
  flags.DEFINE_string("out_dir", "runs/deepaa_vs_deepta",
                      "Workdir for the per-image JSON and the scratch copy of "
                      "the search network.")
  flags.DEFINE_string("out_md", str(REPO / "docs" / "deepaa_vs_deepta.md"),
                      "Markdown report.")
  flags.DEFINE_string("out_png", str(REPO / "docs" / "deepaa_vs_deepta.png"),
                      "Figure.")
  flags.mark_flag_as_required("search_workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  jax.config.update("jax_threefry_partitionable", True)
  t0 = time.time()
  out_dir = pathlib.Path(FLAGS.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir, prefix="scratch_") as scratch:
    run = load_search_run(FLAGS.search_workdir, scratch,
                          config_path=FLAGS.config)
  t_load = time.time() - t0
  config = run.config
  space = space_lib.get_space(config.search.space)
  num_layers = run.policy.num_layers
  policies = {"DeepAA": run.policy.probs,
              "DeepTA": policy_lib.baseline("deepta", space,
                                            num_layers=num_layers).probs}
  val_batch = FLAGS.val_batch or int(config.search.val_batch)
  chunk_size = FLAGS.chunk_size or int(config.search.chunk_size)
  loop = config.search.loop
  if loop == "auto":
    loop = "host" if jax.default_backend() == "cpu" else "scan"
  key = jax.random.key(FLAGS.seed)
  batch = jax.device_get(search_lib.sample_batch(
      jax.random.fold_in(key, 0), run.data, num_images=FLAGS.num_images,
      val_batch=val_batch,
      class_conditional=bool(config.search.class_conditional)))
  t1 = time.time()
  results = gradient_similarity(
      jax.random.fold_in(key, 1), run.model, batch, policies,
      samples=FLAGS.samples, space=space,
      images_per_chunk=FLAGS.images_per_chunk, chunk_size=chunk_size,
      loop=loop, method=config.search.augment_method)
  t_compute = time.time() - t1
  stats = {name: summarize(results[name]["cos"]) for name in policies}

  command = "python experiments/deepaa_vs_deepta.py " + " ".join(
      shlex.quote(a) for a in sys.argv[1:])
  settings = {
      "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
      "search workdir": str(pathlib.Path(FLAGS.search_workdir).resolve()),
      "search config": run.config_source,
      "search network": (f"{config.pretrain.model.name}, pretraining step "
                         f"{run.pretrain_metrics['step']}, test accuracy "
                         f"{run.pretrain_metrics['test_accuracy']:.4f}"),
      "found policy": (f"{num_layers} layers, "
                       f"{config.search.steps_per_layer} Adam steps per "
                       "layer in the search"),
      "images N": FLAGS.num_images,
      "validation images per search image V": val_batch,
      "class-conditional validation batch": bool(
          config.search.class_conditional),
      "samples": FLAGS.samples,
      "seed": FLAGS.seed,
      "images_per_chunk / backward chunk / loop": (
          f"{FLAGS.images_per_chunk} / {chunk_size} / {loop}"),
      "device": str(jax.devices()[0]),
      "jax": jax.__version__,
      "wall time": (f"{time.time() - t0:.0f} s (restore + data "
                    f"{t_load:.0f} s, gradients {t_compute:.0f} s: first "
                    f"chunk with compilation "
                    f"{results['timing']['first_chunk_s']:.0f} s, then "
                    f"{results['timing']['steady_s_per_image']:.2f} s per "
                    "image)"),
  }
  doc = {
      "settings": settings,
      "command": command,
      "definition": "cos[n, k] = cos(v_n, g_k(x_n)), k = 0..K; improvement "
                    "d_k = cos[:, k] - cos[:, 0] (paper §4.4)",
      "labels": np.asarray(batch.labels).tolist(),
      "policies": {name: {"probs_summary": (run.policy.summary(5)
                                            if name == "DeepAA" else
                                            "uniform over 139 per layer"),
                          "cos": results[name]["cos"].tolist(),
                          "cos_half": (None if results[name]["cos_half"] is
                                       None else
                                       results[name]["cos_half"].tolist()),
                          "summary": {k: v.tolist() for k, v in
                                      stats[name].items()}}
                   for name in policies},
  }
  json_path = out_dir / "gradient_similarity.json"
  json_path.write_text(json.dumps(doc, indent=1))
  png = plot(FLAGS.out_png, stats,
             title=(f"CIFAR-10, {config.pretrain.model.name} search network, "
                    f"N = {FLAGS.num_images} images, M = {FLAGS.samples} "
                    f"chains, V = {val_batch}"))
  md = pathlib.Path(FLAGS.out_md)
  md.parent.mkdir(parents=True, exist_ok=True)
  md.write_text(report_markdown(stats, results, settings, policy=run.policy,
                                png_name=pathlib.Path(png).name,
                                command=command))
  for name, s in stats.items():
    print(f"{name}: d_k mean " + ", ".join(f"{x:+.4f}" for x in s["mean"]) +
          "; std " + ", ".join(f"{x:.4f}" for x in s["std"]))
  print(f"Wrote {md}, {png}, {json_path} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  define_flags()
  app.run(main)
