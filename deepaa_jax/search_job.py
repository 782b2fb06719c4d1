"""The search job: pretrain the search network, search layers 1..K, write
the policy (CLI `job="search"`).

`search.py` is the algorithm (paper §3.3); this module is what runs it as a
job, the way `train.py` runs training: data pools, the search network
(trained by `train.train` or restored), layer after layer with orbax
checkpoints and bit-exact resume, metrics (JSONL + TensorBoard), the policy
files, plots and cost report, and the optional evaluation of the found
policy.

Workdir layout:
  pretrain/                the search network's training run (`train.train`)
  search_checkpoints/      orbax: layer index, finished layers, layer state
  search_metrics.jsonl     one record per search step (layer, step, cos_sim,
                           p_identity, rewards of the watched transforms...)
  search_tb/               TensorBoard events of the same
  search_costs.json        per-layer wall time, steps/s, peak memory, the
                           reward's signal-to-noise (snr, snr_excess)
  policy.json, policy.npz  the found policy (ours; the official format)
  policy_*.png, search_history.png, policy_summary.txt, cost_report.json
  results.json             written last: its presence marks a finished run
  evaluate/                the evaluation run (`config.evaluate.enabled`)
"""

import json
import time
from typing import Any, Dict, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import plots
from deepaa_jax import policy as policy_lib
from deepaa_jax import search as search_lib
from deepaa_jax import space as space_lib
from deepaa_jax import streaming
from deepaa_jax import train as train_lib
from deepaa_jax import utils

Array = jax.Array

# config.search fields that may change between an interrupted search and its
# resumption: they do not change the result (bookkeeping, or how the same
# numbers are computed).
_RESUMABLE_FIELDS = ("checkpoint_every_steps", "augment_method", "loop",
                     "chunk_size", "data_parallel")


# ---------------------------------------------------------------------------
# Data and the search network.
# ---------------------------------------------------------------------------


def load_search_pools(config, *, workdir=None):
  """The search and validation pools from `config.input` and the split rule.

  `config.search.data_split`: "official" (spec §2.2: pretrain =
  train[0:5000], search pool = train[5000:40000], validation pool =
  train[40000:50000], all in the original CIFAR order), "small" (the same
  proportions of whatever train split is loaded, for tests and tiny data),
  or "stream" for a streamed input (ImageNet): the pools are the TFDS slices
  `config.search.search_pool` and `val_pool` read into memory at S x S
  (`StreamingDataset.take`), the validation pool keeping the first
  `val_per_class` images of each class, the search pool only the classes
  with `val_batch` validation images (class-conditional sampling needs
  them); pretraining streams `config.input.tfds_train_split` itself.

  Args:
    config: a search config.
    workdir: where a streamed dataset without published normalisation
      constants caches its channel statistics (None: not cached).

  Returns:
    (dataset, splits): an in-memory `input_pipeline.Dataset` with
    {"pretrain", "search", "val"} splits, or a `streaming.StreamingDataset`
    with {"search", "val"}.
  """
  if config.search.data_split == "stream":
    return _stream_pools(config, workdir)
  dataset = input_pipeline.load_dataset(config.input)
  train = dataset.splits.get("train_full", dataset.splits["train"])
  try:
    splits = input_pipeline.official_search_splits(
        train, allow_small=config.search.data_split == "small")
  except errors.DataError as e:
    if config.search.data_split == "small":
      raise
    raise errors.DataError(
        f"config.search.data_split='official' takes CIFAR's 50,000-image "
        f"index ranges (spec §2.2), but {dataset.name!r} has {train.size} "
        "training images; use --config.search.data_split=small and "
        "--config.pretrain.train.train_split=pretrain_small (the same "
        "shares of any training set).") from e
  return dataset, splits


def _stream_pools(config, workdir):
  """`load_search_pools` for data_split="stream" (see there)."""
  s = config.search
  dataset = streaming.open_streaming(config.input, stats_dir=workdir)

  def read(spec):
    size = dataset.split_size(spec)
    logging.info("Reading %d images of %s %r into memory at %d x %d",
                 size, dataset.name, spec, dataset.image_size,
                 dataset.image_size)
    return dataset.take(size, spec=spec)

  val = read(s.val_pool)
  if s.val_per_class:
    val = first_per_class(val, int(s.val_per_class))
  search = read(s.search_pool)
  if s.class_conditional:
    search = classes_with(search, val, int(s.val_batch),
                          where=f"{dataset.where}, {s.search_pool!r}")
  logging.info("Search pool: %d images of %d classes (%r); validation pool: "
               "%d images (%r, at most %s per class)", search.size,
               len(np.unique(search.labels)), s.search_pool, val.size,
               s.val_pool, s.val_per_class or "all")
  return dataset, {"search": search, "val": val}


def first_per_class(split, count: int):
  """The first `count` images of each class of `split`, in split order."""
  labels = np.asarray(split.labels)
  keep = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    keep[np.flatnonzero(labels == c)[:count]] = True
  return split.take(np.flatnonzero(keep))


def classes_with(search, val, val_batch: int, *, where: str = "the search "
                 "pool"):
  """The images of `search` whose class has >= `val_batch` images in `val`
  (a class-conditional validation batch is drawn without replacement).

  Raises:
    errors.DataError: no class is left.
  """
  counts = np.bincount(np.asarray(val.labels),
                       minlength=int(np.max(search.labels)) + 1)
  keep = counts[np.asarray(search.labels)] >= val_batch
  dropped = len(np.unique(np.asarray(search.labels)[~keep]))
  if not keep.any():
    raise errors.DataError(
        f"{where}: no class of the search pool has config.search.val_batch="
        f"{val_batch} images in the validation pool; read a larger "
        "config.search.val_pool or lower val_batch (or set "
        "config.search.class_conditional=False).")
  if dropped:
    logging.warning("%s: %d class(es) have fewer than val_batch=%d "
                    "validation images; their %d search image(s) are left "
                    "out.", where, dropped, val_batch, int((~keep).sum()))
  return search.take(np.flatnonzero(keep))


def search_data(splits, num_classes: int, config) -> search_lib.SearchData:
  """The device-resident pools of `load_search_pools`' splits."""
  s = config.search
  if not s.class_conditional and splits["val"].size < s.val_batch:
    raise errors.DataError(
        f"config.search.val_batch={s.val_batch} exceeds the "
        f"{splits['val'].size} images of the validation pool.")
  try:
    # Class-conditional batches need val_batch images of every class.
    return search_lib.make_search_data(
        splits["search"], splits["val"], num_classes,
        val_batch=s.val_batch if s.class_conditional else None)
  except ValueError as e:
    raise errors.DataError(str(e)) from None


def pretrain(config, workdir, *, dataset=None):
  """The search network: trained by `train.train` (resumable) or restored.

  `config.pretrain_checkpoint` names an existing pretraining workdir to
  reuse (its checkpoint is restored and its config must match); otherwise
  the network is trained into `workdir/pretrain` with the official recipe
  (`config.pretrain`: 45 epochs on train[0:5000], crop + flip + cutout,
  Nesterov SGD, cosine 0.1 -> 1e-7, clip 5, Keras L2 5e-4; spec §2.3).

  Returns:
    (flax module, params, batch_stats, pretraining metrics).
  """
  cfg = config_lib.train_job_config(config.pretrain, config.input)
  target = (config.pretrain_checkpoint or
            utils.prepare_workdir(workdir) / "pretrain")
  if config.pretrain_checkpoint:
    logging.info("Using the pretrained search network in %s", target)
  if dataset is None:  # loaded here once: train() and the logits size need it
    dataset = streaming.open_dataset(cfg.input, stats_dir=workdir)
  state, metrics = train_lib.train(cfg, target, dataset=dataset)
  num_classes = int(cfg.model.num_classes) or dataset.num_classes
  model = train_lib.build_model(cfg.model, num_classes=num_classes)
  params, batch_stats = state.params, state.batch_stats
  if jax.device_count() == 1:
    # A restored state is committed to its device, a freshly trained one is
    # not, and jit compiles the search step once for each: commit both.
    params, batch_stats = jax.device_put((params, batch_stats),
                                         jax.devices()[0])
  return model, params, batch_stats, metrics


# ---------------------------------------------------------------------------
# Layers 1..K.
# ---------------------------------------------------------------------------


def _search_state(layer: int, probs: np.ndarray, layer_state) -> Dict[str, Any]:
  return {"layer": np.asarray(layer, np.int32), "probs": probs,
          "layer_state": jax.device_get(layer_state)}


def search_layers(key: Array, model: search_lib.SearchModel,
                  data: search_lib.SearchData, config, workdir, *,
                  identity: Optional[Mapping[str, Any]] = None,
                  ) -> Dict[str, Any]:
  """Layers 1..K with checkpoints every N steps and after each layer.

  Resumes from the newest checkpoint in `workdir/search_checkpoints` that
  restores (and says so loudly), after checking that it belongs to the same
  run (`identity`). Layer k uses key fold_in(key, k) and step s of it
  fold_in(fold_in(key, k), s): a resumed search equals an uninterrupted one
  bit for bit. Ctrl-C (and SIGTERM under `main`) saves the current step
  and raises `errors.Interrupted`. The workdir is locked while it runs
  (`utils.WorkdirLock`); a finished search (its results.json) without a
  checkpoint is refused (`errors.ResumeRefusedError`), not searched again.

  Args:
    key: the search key.
    model, data: the frozen network and the pools.
    config: the `config.search` section.
    workdir: output folder.
    identity: what must match for a checkpoint to be resumed (default: the
      search config without `_RESUMABLE_FIELDS`).

  Returns:
    dict with "probs" float32[K', T] (K' <= K layers found, fewer if the
    Identity stop fired), "history" (per-step records; empty except in
    process 0), "costs" (per-layer wall time, steps/s, peak memory),
    "stopped_early" (bool).
  """
  workdir = utils.prepare_workdir(workdir)
  with utils.workdir_lock(workdir, "search"):
    return _search_layers(key, model, data, config, workdir,
                          identity=identity)


def _search_layers(key, model, data, config, workdir, *, identity):
  """`search_layers` in its locked, prepared workdir."""
  space = space_lib.get_space(config.space)
  num_layers = int(config.num_layers)
  steps = int(config.steps_per_layer)
  if identity is None:
    identity = utils.run_identity(config, ignore=_RESUMABLE_FIELDS)
  ckpt = utils.Checkpointer(workdir / "search_checkpoints",
                            save_interval_steps=config.checkpoint_every_steps)
  jsonl = utils.JsonlWriter(workdir / "search_metrics.jsonl",
                            step_key="global_step")
  writer = None  # created when a step runs: a finished run writes nothing
  template = _search_state(0, np.zeros((num_layers, space.size), np.float32),
                           search_lib.init_layer_state(config, space))
  latest, restored, meta = ckpt.restore_latest(template)
  done = utils.read_json(workdir / "results.json")
  if latest is None and done is not None and done.get("complete"):
    ckpt.close()
    raise errors.ResumeRefusedError(
        f"{workdir} holds a finished search (results.json, "
        f"{workdir / 'policy.json'}) but no checkpoint in {ckpt.directory}, "
        "so it is not searched again over its results; use a new "
        "--workdir, or delete its results.json to search again.")
  start_layer, probs, layer_state = 0, template["probs"], None
  if latest is not None:
    utils.check_identity(meta.get("identity"), identity, workdir)
    start_layer = int(restored["layer"])
    probs = np.asarray(restored["probs"], np.float32)
    layer_state = jax.tree.map(jnp.asarray, restored["layer_state"])
    done_steps = int(layer_state.step)
    if done_steps >= steps and start_layer < num_layers:
      # Saved at its last step (Ctrl-C) but not closed: close it now.
      probs[start_layer] = np.asarray(jax.nn.softmax(layer_state.logits))
      start_layer += 1
      layer_state, done_steps = None, 0
    if start_layer < num_layers:
      utils.resume_banner(
          "the policy search", workdir,
          f"checkpoint {latest}: layer {start_layer + 1}, step {done_steps} "
          f"of {steps} ({start_layer} layer(s) finished)")
  if jax.process_index() == 0:
    jsonl.truncate_after(latest)
  cost_path = workdir / "search_costs.json"
  costs = []
  if latest is not None:
    costs = [c for c in utils.read_json(cost_path) or []
             if c["layer"] <= start_layer]
  meta = {"identity": identity}
  stopped_early = False
  finished = start_layer
  threshold = float(config.stop_identity_threshold)
  try:
    for k in range(start_layer, num_layers):
      if threshold > 0 and k > 0 and probs[k - 1, 0] >= threshold:
        # Checked before each layer, so a resumed run stops where it stopped.
        logging.warning("Layer %d converged to Identity (p = %.3f >= %.3f): "
                        "stopping at depth %d.", k, probs[k - 1, 0],
                        threshold, k)
        stopped_early = True
        break
      layer_key = jax.random.fold_in(key, k)
      times = []
      first_step = int(layer_state.step) if layer_state is not None else 0
      report = utils.progress_reporter(steps, None, max(1, steps // 10))
      current = {"state": layer_state}

      def on_step(step, state, diag, k=k, times=times, report=report,
                  current=current):
        times.append(time.perf_counter())
        global_step = k * steps + step
        writer.write_scalars(global_step, {
            "layer": k + 1, "step": step,
            **{n: v for n, v in diag.items() if n != "top5"}})
        report(step)
        if step % max(1, steps // 10) == 0 or step == steps:
          logging.info("layer %d, step %d/%d: cos(v, g) %.3f, p(Identity) "
                       "%.3f", k + 1, step, steps, diag["cos_sim"],
                       diag["p_identity"])
        if step < steps and ckpt.should_save(global_step):
          # A gs:// log is uploaded before the checkpoint can commit.
          writer.flush()
          ckpt.save(global_step, _search_state(k, probs, state), meta)
        # A host copy for Ctrl-C: the device buffers are donated to the next
        # step. Set last, so that the saved step's record is in the log.
        current["state"] = jax.device_get(state)
        if utils.preemption_reached(global_step):  # several processes
          raise KeyboardInterrupt("preempted")
        return False

      if writer is None:
        writer, jsonl, _ = utils.metric_writer(
            workdir / "search_tb", jsonl.path, step_key="global_step")
      start = time.perf_counter()
      try:
        logits, _ = search_lib.search_layer(
            layer_key, model, probs[:k], data, config, state=layer_state,
            num_steps=steps, callback=on_step)
      except KeyboardInterrupt:
        state = current["state"]
        if state is not None and int(state.step) > 0:
          writer.flush()
          ckpt.save(k * steps + int(state.step),
                    _search_state(k, probs, state), meta)
        raise
      wall = time.perf_counter() - start
      layer_state = None
      probs[k] = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
      steady = ((times[-1] - times[0]) / (len(times) - 1) if len(times) > 1
                else float("nan"))
      # The layer's reward signal-to-noise over all its steps (the state's
      # running sums survive a resume): search.reward_snr.
      snr = (search_lib.layer_snr(current["state"])
             if current["state"] is not None else {})
      costs.append({"layer": k + 1, "wall_s": wall,
                    "steps": steps - first_step,
                    "steady_s_per_step": steady,
                    "first_step_s": (times[0] - start) if times else None,
                    "peak_memory_bytes": utils.peak_memory_bytes(),
                    "device": str(jax.devices()[0]), **snr})
      if jax.process_index() == 0:
        utils.write_json(cost_path, costs)
      # Close the layer: the next run starts at layer k + 2.
      ckpt.save((k + 1) * steps, _search_state(
          k + 1, probs, search_lib.init_layer_state(config, space)), meta)
      finished = k + 1
      summary = policy_lib.Policy(
          probs[k:k + 1].astype(np.float64) / probs[k:k + 1].sum(),
          space.name).summary(5).splitlines()[1]
      logging.info("Layer %d done in %.1f s: %s", k + 1, wall,
                   summary.replace("layer 1", f"layer {k + 1}", 1))
      if threshold > 0 and probs[k, 0] >= threshold and k + 1 < num_layers:
        logging.warning("Layer %d converged to Identity (p = %.3f >= %.3f): "
                        "stopping at depth %d.", k + 1, probs[k, 0],
                        threshold, k + 1)
        stopped_early = True
        break
  except KeyboardInterrupt:
    ckpt.close()
    raise errors.Interrupted(
        f"Interrupted; the search is saved in {ckpt.directory}. Rerun the "
        "same command to resume.") from None
  ckpt.close()
  if writer is not None:
    writer.flush()
  # Process 0 writes the log (and may be rewriting it on a resume while the
  # others get here): only it reads the history back.
  records = []
  if jax.process_index() == 0 and jsonl.path.exists():
    records = [json.loads(l) for l in jsonl.path.read_text().splitlines()
               if l.strip()]
  return {"probs": probs[:finished], "history": records, "costs": costs,
          "stopped_early": stopped_early}


# ---------------------------------------------------------------------------
# Outputs and the job.
# ---------------------------------------------------------------------------


def snr_line(costs) -> str:
  """One line with each layer's reward signal-to-noise excess (the per-layer
  cost records' "snr_excess", `search.reward_snr`)."""
  values = ", ".join(
      f"L{c['layer']} {c['snr_excess']:.2f}" if "snr_excess" in c else
      f"L{c['layer']} n/a" for c in costs)
  return (f"Reward signal-to-noise excess per layer (1 = noise alone, < "
          f"{search_lib.SNR_WARN_EXCESS:g} warned): {values or 'none'}")


def write_outputs(workdir, result: Mapping[str, Any], config) -> Dict[str, str]:
  """Writes the found policy (JSON + the official npz), plots and the cost
  report; returns the paths written (process 0 only)."""
  workdir = utils.as_path(workdir)
  probs = np.asarray(result["probs"], np.float64)
  probs = probs / probs.sum(axis=1, keepdims=True)
  meta = policy_lib.provenance(
      source="deepaa-jax search", seed=int(config.search.seed),
      config=json.loads(config.to_json()) if hasattr(config, "to_json") else
      None, stopped_early=bool(result["stopped_early"]),
      costs=result["costs"])
  policy = policy_lib.Policy(probs, config.search.space, "deepaa_jax_search",
                             meta)
  paths = {}
  if jax.process_index() != 0:
    return paths
  paths["policy_json"] = str(policy_lib.save_policy(workdir / "policy.json",
                                                    policy))
  paths["policy_npz"] = str(policy_lib.save_official_npz(
      workdir / "policy.npz", policy))
  paths["op_mass_png"] = str(plots.policy_op_mass(
      workdir / "policy_op_mass.png", policy))
  paths["magnitudes_png"] = str(plots.policy_magnitudes(
      workdir / "policy_magnitudes.png", policy))
  # policy_preview.png: what training with the found policy does to images
  # (the first test image of each class of config.input, else synthetic).
  # ImageNet-space searches stream S x S images: preview at that S.
  evaluate = config.get("evaluate")
  previews, source = plots.write_previews(
      workdir, policy, config.input, seed=int(config.search.seed),
      image_size=(int(config.input.image_size)
                  if policy.space.name == "imagenet" else 0),
      random_sign=bool(evaluate.train.random_sign) if evaluate else True)
  logging.info("policy_preview.png shows %s", source)
  paths.update(previews)
  if result["history"]:
    paths["history_png"] = str(plots.search_history(
        workdir / "search_history.png", result["history"]))
  report = {"layers": result["costs"],
            "total_wall_s": float(sum(c["wall_s"] for c in result["costs"])),
            "peak_memory_bytes": max([c["peak_memory_bytes"]
                                      for c in result["costs"]] or [0]),
            "stopped_early": bool(result["stopped_early"]),
            "num_layers": int(probs.shape[0]),
            # A layer's "snr_excess" below this is warned about.
            "snr_warn_excess": search_lib.SNR_WARN_EXCESS}
  utils.write_json(workdir / "cost_report.json", report)
  paths["cost_report"] = str(workdir / "cost_report.json")
  summary = policy.summary(5)
  (workdir / "policy_summary.txt").write_text(summary + "\n\n" +
                                             policy.op_mass_markdown() + "\n")
  print(summary)
  print(f"Search cost: {report['total_wall_s']:.0f} s over "
        f"{report['num_layers']} layer(s) on {jax.devices()[0]}; peak memory "
        f"{report['peak_memory_bytes'] / 2**20:.0f} MiB")
  print(snr_line(result["costs"]))
  return paths


def evaluate_config(config, policy_path):
  """The `job="train"` config that evaluates a search's found policy:
  `config.evaluate` with the policy file at `policy_path` (kind "file", the
  search's space). The section's policy.first_layers and policy.then are
  kept: DeepAA-simple (configs/cifar10_cpu_simple.py) evaluates the found
  layer followed by standard_cutout."""
  cfg = config_lib.train_job_config(config.evaluate, config.input)
  cfg.policy.kind = "file"
  cfg.policy.path = str(policy_path)
  cfg.policy.space = config.search.space
  return cfg


def run(config, workdir) -> Dict[str, Any]:
  """Pretrain -> search layers 1..K -> write the policy -> (evaluate).

  The CLI entry (`job="search"`); resumable at every stage from `workdir`.
  A finished run (its `results.json` written) is not redone: rerunning it
  prints the found policy and leaves every file as it was.

  Returns:
    dict with "policy_path", "probs", "costs", "pretrain" metrics and (if
    `config.evaluate.enabled`) "evaluate" metrics.
  """
  config_lib.validate(config)
  workdir = utils.prepare_workdir(workdir)
  with utils.workdir_lock(workdir, "search"):
    return _run(config, workdir)


def _run(config, workdir) -> Dict[str, Any]:
  """`run` in its locked, prepared workdir."""
  dataset, splits = load_search_pools(config, workdir=workdir)
  data = search_data(splits, dataset.num_classes, config)
  model, params, batch_stats, pre_metrics = pretrain(config, workdir,
                                                     dataset=dataset)
  mean, std = input_pipeline.normalization_constants(
      dataset.name, phase="search", default=(dataset.mean, dataset.std))
  search_model = search_lib.make_search_model(model, params, batch_stats,
                                              mean=mean, std=std)
  identity = utils.run_identity(
      config.search, ignore=_RESUMABLE_FIELDS,
      data=dataset.fingerprint(),
      network=utils.content_hash((params, batch_stats)))
  result = search_layers(jax.random.key(config.search.seed), search_model,
                         data, config.search, workdir, identity=identity)
  done = utils.read_json(workdir / "results.json")
  if done is not None and done.get("complete") and (
      workdir / "policy.json").is_file():
    logging.warning("%s holds a finished search; nothing was redone and no "
                    "file was changed. Found policy:", workdir)
    print(policy_lib.load_policy(workdir / "policy.json").summary(5))
    return dict(done, probs=result["probs"])
  paths = write_outputs(workdir, result, config)
  out = {"policy_path": paths.get("policy_json",
                                  str(workdir / "policy.json")),
         "probs": result["probs"], "costs": result["costs"],
         "pretrain": pre_metrics, "paths": paths}
  if config.evaluate.enabled:
    cfg = evaluate_config(config, out["policy_path"])
    out["evaluate"] = train_lib.run(cfg, workdir / "evaluate")
  if jax.process_index() == 0:
    summary = {k: v for k, v in out.items() if k != "probs"}
    summary["complete"] = True
    utils.write_json(workdir / "results.json", summary)
  return out

