"""Search-step cost: seconds per stage-1 and stage-k step, split into parts.

  python benchmarks/search_bench.py                       # CPU-config sizes
  python benchmarks/search_bench.py --preset=paper        # WRN-40-2, 16 x 64, E=16
  python benchmarks/search_bench.py --preset=paper --project_only

For each stage the step is timed in its three parts, each compiled on its
own and timed after warm-up (median of --repeats):
  augmentation  sampling the batch + all augmented images (`_prepare`);
  gradients     v and g (backward passes, chunked: host loop or scan);
  rewards       the JVPs along u, the aggregation and the Adam update.
Also reported: achieved FLOP/s from XLA's cost analysis of the gradient and
JVP chunk programs against this machine's measured float32 matmul peak, and
the compiled temporary memory of the JVP path vs the Jacobian path (and the
JVP path at 1x and 2x |T| images per search image, which must not grow).

On a 2-core CPU a paper-size stage-k step takes minutes; with
`--project_only` the expensive parts are timed on ONE chunk and multiplied by
the number of chunks (printed as "projected"), which is exact up to the
per-chunk overhead because the work is a sequence of identical chunks.
"""

import json
import resource
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from deepaa_jax import input_pipeline as ip
from deepaa_jax import models
from deepaa_jax import reward as R
from deepaa_jax import search as SE
from deepaa_jax import space as S

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "paper"], "Sizes to benchmark.")
flags.DEFINE_string("model", None, "Override the model name.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median).")
flags.DEFINE_bool("project_only", False,
                  "Time one chunk of the big parts and project the step.")
flags.DEFINE_string("json_out", None, "Write the results as JSON here.")

PRESETS = {
    # The official CIFAR search (spec §2): WRN-40-2, 16 search images with
    # 64 validation images each, M = 556, E = 16, chunks of 256.
    "paper": dict(model="wrn_40_2_search", num_images=16, val_batch=64,
                  gt_samples=556, g_prefixes=16, chunk_size=256),
    # configs/cifar10_cpu.py: WRN-10-1, 4 search images x 16 validation
    # images, M = 32, E = 2, chunks of 64.
    "cpu": dict(model="wrn_10_1_search", num_images=4, val_batch=16,
                gt_samples=32, g_prefixes=2, chunk_size=64),
}


def _median_time(fn, repeats):
  jax.block_until_ready(fn())  # warm-up / compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _matmul_peak():
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / _median_time(lambda: f(a), 3)


def _compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile()


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _temp_bytes(compiled):
  mem = compiled.memory_analysis()
  return int(getattr(mem, "temp_size_in_bytes", 0)) if mem else -1


def main(argv):
  del argv
  preset = dict(PRESETS[FLAGS.preset])
  if FLAGS.model:
    preset["model"] = FLAGS.model
  print(f"devices: {jax.devices()}  jax {jax.__version__}  preset "
        f"{FLAGS.preset}: {preset}")
  space = S.cifar_space()
  model = models.get_model(preset["model"], num_classes=10)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)),
                                           train=False))(jax.random.key(0))
  search_model = SE.make_search_model(
      model, variables["params"], variables["batch_stats"],
      mean=ip.CIFAR_SEARCH_MEAN, std=ip.CIFAR_STD)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(2000) % 10
  data = SE.make_search_data(
      ip.Split(images[:1000], labels[:1000]),
      ip.Split(images[1000:], labels[1000:]), 10)
  config = SE.default_search_config()
  for key in ("num_images", "val_batch", "gt_samples", "g_prefixes",
              "chunk_size"):
    config[key] = preset[key]
  settings = SE.step_settings(config, space)
  print(f"loop={settings.loop}")
  peak = _matmul_peak()
  results = {"preset": FLAGS.preset, "settings": preset,
             "device": str(jax.devices()[0]), "matmul_peak_flops": peak,
             "stages": {}}
  s, v, chunk = preset["num_images"], preset["val_batch"], preset["chunk_size"]
  for stage, earlier in (("stage1", np.zeros((0, 139), np.float32)),
                         ("stage_k", np.full((1, 139), 1 / 139, np.float32))):
    earlier = jnp.asarray(earlier)
    state = SE.init_layer_state(config, space)
    key = jax.random.key(1)
    t_aug = _median_time(lambda: SE._prepare_jit(
        settings, data, key, earlier, state.logits), FLAGS.repeats)
    aug = SE._prepare_jit(settings, data, key, earlier, state.logits)
    n_grad = aug.val_labels.size + aug.g_labels.size
    n_jvp = aug.jvp_labels.size
    per_group = R.resolve_chunk(chunk, aug.g_labels.shape[1])
    grad_chunk_args = (search_model.loss, search_model.w, search_model.frozen,
                       aug.g_images[0, :per_group], aug.g_labels[0, :per_group],
                       aug.g_weights[0, :per_group])
    grad_compiled = jax.jit(R._grad_chunk, static_argnums=0).lower(
        *grad_chunk_args).compile()
    if FLAGS.project_only:
      t_chunk = _median_time(lambda: R._grad_chunk_jit(*grad_chunk_args),
                             FLAGS.repeats)
      t_grad = t_chunk * n_grad / per_group
    else:
      t_grad = _median_time(lambda: SE._gradients(
          settings, search_model, aug, settings.loop), FLAGS.repeats)
    v_grad, g_grad = SE._gradients(settings, search_model, aug, "host") if (
        not FLAGS.project_only) else (None, None)
    u = jax.tree.map(lambda p: jnp.ones((s,) + p.shape, p.dtype) * 1e-3,
                     search_model.w)
    jvp_per_group = R.resolve_chunk(chunk, aug.jvp_labels.shape[1])

    def jvp_chunk(imgs, labs):
      return R.jvp_rewards(search_model.loss, search_model.w,
                           search_model.frozen, imgs, labs, u,
                           chunk_size=chunk)

    jvp_args = (aug.jvp_images[:, :jvp_per_group],
                aug.jvp_labels[:, :jvp_per_group])
    jvp_compiled = _compiled(jvp_chunk, *jvp_args)
    if FLAGS.project_only:
      t_jvp_chunk = _median_time(lambda: jvp_compiled(*jvp_args),
                                 FLAGS.repeats)
      t_rewards = t_jvp_chunk * n_jvp / (s * jvp_per_group)
    else:
      t_rewards = _median_time(
          lambda: SE._finish_jit(settings, search_model, jax.tree.map(
              jnp.copy, state), aug, v_grad, g_grad,
                                 stage == "stage1")[1]["cos_sim"],
          FLAGS.repeats)
    total = t_aug + t_grad + t_rewards
    grad_flops = _flops(grad_compiled) * n_grad / per_group
    jvp_flops = _flops(jvp_compiled) * n_jvp / (s * jvp_per_group)
    row = {
        "augmentation_s": t_aug, "gradients_s": t_grad,
        "rewards_update_s": t_rewards, "step_s": total,
        "augmentation_plus_overhead_fraction": t_aug / total,
        "images_backward": int(n_grad), "images_jvp": int(n_jvp),
        "achieved_flops": (grad_flops + jvp_flops) / (t_grad + t_rewards),
        "projected": bool(FLAGS.project_only),
    }
    row["fraction_of_matmul_peak"] = row["achieved_flops"] / peak
    results["stages"][stage] = row
    print(f"{stage}: step {total:.2f} s ({'projected' if FLAGS.project_only else 'measured'}) = "
          f"augmentation {t_aug:.2f} + gradients {t_grad:.2f} "
          f"({n_grad} images) + rewards/update {t_rewards:.2f} "
          f"({n_jvp} JVP images); augmentation share "
          f"{100 * t_aug / total:.1f}%; {row['achieved_flops'] / 1e9:.1f} "
          f"GFLOP/s = {100 * row['fraction_of_matmul_peak']:.1f}% of the "
          f"{peak / 1e9:.1f} GFLOP/s matmul peak")
  # Memory: JVP path vs Jacobian path on one chunk, and the JVP path with
  # twice the images per search image (|T| independence).
  aug = SE._prepare_jit(settings, data, jax.random.key(2),
                        jnp.zeros((0, 139)), state.logits)
  one = (aug.jvp_images[:1, :jvp_per_group], aug.jvp_labels[:1, :jvp_per_group])
  u1 = jax.tree.map(lambda p: p[:1], u)
  jvp_mem = _temp_bytes(_compiled(lambda i, l: R.jvp_rewards(
      search_model.loss, search_model.w, search_model.frozen, i, l, u1,
      chunk_size=jvp_per_group), *one))
  jac_mem = _temp_bytes(_compiled(lambda i, l: R.jacobian_rewards(
      search_model.loss, search_model.w, search_model.frozen, i, l, u1), *one))
  two = tuple(jnp.concatenate([a, a], axis=1) for a in one)
  jvp_mem_2x = _temp_bytes(_compiled(lambda i, l: R.jvp_rewards(
      search_model.loss, search_model.w, search_model.frozen, i, l, u1,
      chunk_size=jvp_per_group), *two))
  results["memory"] = {"jvp_temp_bytes": jvp_mem, "jacobian_temp_bytes":
                       jac_mem, "jvp_temp_bytes_2x_images": jvp_mem_2x,
                       "images": int(jvp_per_group),
                       "max_rss_bytes": resource.getrusage(
                           resource.RUSAGE_SELF).ru_maxrss * 1024}
  print(f"memory for {jvp_per_group} images of one search image: JVP path "
        f"{jvp_mem / 2**20:.1f} MiB, Jacobian path {jac_mem / 2**20:.1f} MiB; "
        f"JVP path with 2x the images {jvp_mem_2x / 2**20:.1f} MiB")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
