"""ImageNet search-step cost: ResNet-18 at 224 x 224, measured small, projected.

  python benchmarks/search_step_imagenet.py [--model=resnet18 --image_size=224]

The paper-scale ImageNet step (configs/imagenet.py: 16 search images x 64
validation images, M = 556, E = 16, |T| = 139) is far too big for a CPU, so
this measures its parts on a small step and projects:
  * seconds and XLA-counted FLOPs per image of one backward chunk (v and g)
    and of one JVP chunk (the rewards), timed after warm-up (median);
  * one whole measured stage-k step at 1 search image, 4 validation images,
    M = 4, E = 1 (139 JVP images), checked against the per-image model;
  * the paper step's image counts x those per-image costs (CPU seconds), its
    FLOPs, and the time at an assumed effective accelerator rate
    (--accelerator_tflops, an assumption, printed as such).
"""

import json
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
flags.DEFINE_string("model", "resnet18", "Search network.")
flags.DEFINE_integer("image_size", 224, "S.")
flags.DEFINE_integer("chunk", 8, "Images per timed chunk.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median).")
flags.DEFINE_float("accelerator_tflops", 150.0,
                   "ASSUMED effective float32/TF32 TFLOP/s of an accelerator "
                   "for the projection (not measured here).")
flags.DEFINE_string("json_out", None, "Write the results as JSON here.")

PAPER = dict(num_images=16, val_batch=64, gt_samples=556, g_prefixes=16)


def _median_time(fn, repeats):
  jax.block_until_ready(fn())  # warm-up / compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def main(argv):
  del argv
  size, chunk = FLAGS.image_size, FLAGS.chunk
  space = S.imagenet_space()
  model = models.get_model(FLAGS.model, num_classes=1000)
  variables = jax.jit(lambda k: model.init(
      k, jnp.zeros((1, size, size, 3)), train=False))(jax.random.key(0))
  search_model = SE.make_search_model(
      model, variables["params"], variables["batch_stats"],
      mean=ip.IMAGENET_MEAN, std=ip.IMAGENET_STD)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)
  labels = np.arange(64) % 4
  data = SE.make_search_data(ip.Split(images[:32], labels[:32]),
                             ip.Split(images[32:], labels[32:]), 1000)
  config = SE.default_search_config()
  config.space = "imagenet"
  config.update(dict(num_images=1, val_batch=4, gt_samples=4, g_prefixes=1,
                     chunk_size=chunk, loop="host"))
  settings = SE.step_settings(config, space)
  print(f"devices: {jax.devices()}  jax {jax.__version__}  {FLAGS.model} at "
        f"{size} x {size}, chunks of {chunk}")

  # Per-image costs of the two kinds of pass.
  x = jnp.asarray(rng.uniform(0, 255, (chunk, size, size, 3)), jnp.float32)
  y = jnp.zeros((chunk,), jnp.int32)
  w8 = jnp.ones((chunk,), jnp.float32) / chunk
  grad_args = (search_model.loss, search_model.w, search_model.frozen, x, y,
               w8)
  t0 = time.perf_counter()
  grad_compiled = jax.jit(R._grad_chunk, static_argnums=0).lower(  # pylint: disable=protected-access
      *grad_args).compile()
  grad_compile_s = time.perf_counter() - t0
  t_grad = _median_time(lambda: grad_compiled(*grad_args[1:]), FLAGS.repeats)
  u = jax.tree.map(lambda p: jnp.ones((1,) + p.shape, p.dtype) * 1e-3,
                   search_model.w)

  def jvp_chunk(imgs, labs):
    return R.jvp_rewards(search_model.loss, search_model.w,
                         search_model.frozen, imgs, labs, u, chunk_size=chunk)

  t0 = time.perf_counter()
  jvp_compiled = jax.jit(jvp_chunk).lower(x[None], y[None]).compile()
  jvp_compile_s = time.perf_counter() - t0
  t_jvp = _median_time(lambda: jvp_compiled(x[None], y[None]), FLAGS.repeats)
  per_image = {"backward_s": t_grad / chunk, "jvp_s": t_jvp / chunk,
               "backward_flops": _flops(grad_compiled) / chunk,
               "jvp_flops": _flops(jvp_compiled) / chunk}
  print(f"per image: backward {per_image['backward_s']:.3f} s "
        f"({per_image['backward_flops'] / 1e9:.2f} GFLOP), JVP "
        f"{per_image['jvp_s']:.3f} s ({per_image['jvp_flops'] / 1e9:.2f} "
        f"GFLOP); compile {grad_compile_s:.0f} s / {jvp_compile_s:.0f} s")

  # One whole small stage-k step, against the per-image model.
  earlier = jnp.full((1, space.size), 1 / space.size, jnp.float32)
  state = SE.init_layer_state(config, space)
  key = jax.random.key(1)
  t_aug = _median_time(lambda: SE._prepare_jit(  # pylint: disable=protected-access
      settings, data, key, earlier, state.logits), FLAGS.repeats)
  aug = SE._prepare_jit(settings, data, key, earlier, state.logits)  # pylint: disable=protected-access
  n_back = int(aug.val_labels.size + aug.g_labels.size)
  n_jvp = int(aug.jvp_labels.size)
  n_aug = int(aug.g_labels.size + aug.jvp_labels.size)

  def step():
    st = jax.tree.map(jnp.copy, state)
    return SE.layer_step(settings, search_model, data, st, key, earlier)[1][
        "cos_sim"]

  t_step = _median_time(step, max(1, FLAGS.repeats - 1))
  modelled = (t_aug + n_back * per_image["backward_s"] +
              n_jvp * per_image["jvp_s"])
  print(f"small stage-k step ({n_back} backward, {n_jvp} JVP images): "
        f"measured {t_step:.1f} s, per-image model {modelled:.1f} s "
        f"(augmentation {t_aug:.2f} s for {n_aug} images)")

  # The paper-scale steps.
  projections = {}
  s, v, m, e, t = (PAPER["num_images"], PAPER["val_batch"],
                   PAPER["gt_samples"], PAPER["g_prefixes"], space.size)
  for stage, back, jvp, augmented in (
      ("stage1", s * (v + t), s * t, s * t),
      ("stage_k", s * (v + m), s * e * t, s * (m + e * t))):
    cpu_s = (back * per_image["backward_s"] + jvp * per_image["jvp_s"] +
             augmented * t_aug / n_aug)
    flops = back * per_image["backward_flops"] + jvp * per_image["jvp_flops"]
    acc_s = flops / (FLAGS.accelerator_tflops * 1e12)
    projections[stage] = {"backward_images": back, "jvp_images": jvp,
                          "cpu_s": cpu_s, "tflop": flops / 1e12,
                          "accelerator_s_assumed": acc_s}
    print(f"paper {stage}: {back} backward + {jvp} JVP images = "
          f"{flops / 1e12:.0f} TFLOP; this CPU {cpu_s / 3600:.2f} h; at an "
          f"ASSUMED {FLAGS.accelerator_tflops:.0f} TFLOP/s {acc_s:.2f} s")
  results = {"model": FLAGS.model, "image_size": size, "chunk": chunk,
             "device": str(jax.devices()[0]), "per_image": per_image,
             "small_step": {"measured_s": t_step, "modelled_s": modelled,
                            "backward_images": n_back, "jvp_images": n_jvp},
             "cpu_flops_per_s": (per_image["backward_flops"] + per_image[
                 "jvp_flops"]) / (per_image["backward_s"] +
                                  per_image["jvp_s"]),
             "paper": projections,
             "accelerator_tflops_assumed": FLAGS.accelerator_tflops}
  print(f"CPU achieved {results['cpu_flops_per_s'] / 1e9:.1f} GFLOP/s")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
