r"""Augmentation throughput: deepaa_jax against Pillow one image at a time.

  python benchmarks/augment_bench.py
  python benchmarks/augment_bench.py --batch_sizes=16,256 --repeats=7 \
      --json_out=/tmp/augment_bench.json

Workloads, each run by JAX on the default device and by
`benchmarks/pil_reference.py` in a plain per-image Python loop on the host:
  apply_all  every one of the 139 CIFAR transforms of each image of a batch
             (`space.apply_all`, jit + vmap, one key per image); Pillow makes
             one `random_draws` per image and applies the 139 transforms to
             it. Throughput counts transformed images (batch x 139).
  chain      a 5-layer chain of transforms drawn uniformly from the 139 per
             image and layer (`space.apply_chain_batch`, methods "sequential"
             and "vectorized"); Pillow draws `random_draws` per layer and runs
             `pil_reference.apply_chain`. Throughput counts chained images.
The inputs are byte-exact CIFAR-10 images (uint8), already on the device for
JAX and NumPy arrays for Pillow; both produce an array per image (float32 with
uint8 values for JAX, uint8 for Pillow). Timing: JAX compilation is timed
separately (`jit(...).lower(...).compile()`); after a warm-up, --repeats
samples of JAX (seconds per call, `block_until_ready` on every call) and of
Pillow are taken interleaved, so both sides see the same load on a shared
machine, and the medians are reported. The target (issue: >= 5x Pillow on a
2-core CPU) is printed as PASS / MISS per row.

Runs unchanged on a GPU/TPU, where method "auto" resolves to "vectorized".
"""

import json
import math
import os
import pathlib
import platform
import random
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import PIL
import PIL.Image

# Allow `python benchmarks/augment_bench.py` without installing the package.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top
from benchmarks import pil_reference as ref
from deepaa_jax import space as S
# pylint: enable=g-import-not-at-top

_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["16", "256"], "Batch sizes of the apply_all workload.")
_CHAIN_BATCH_SIZES = flags.DEFINE_list(
    "chain_batch_sizes", ["256"], "Batch sizes of the chain workload.")
_CHAIN_LAYERS = flags.DEFINE_integer("chain_layers", 5,
                                     "Transforms per chain.")
_METHODS = flags.DEFINE_list(
    "methods", ["sequential", "vectorized"],
    "apply_chain_batch methods to time ('auto' allowed).")
_REPEATS = flags.DEFINE_integer(
    "repeats", 7, "Timed samples per row, JAX and Pillow interleaved (median).")
_TARGET = flags.DEFINE_float("target", 5.0, "Required JAX / Pillow ratio.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    "Directory holding cifar10_exact_subset.npz (default: <repo>/../shared/"
    "data).")
_JSON_OUT = flags.DEFINE_string("json_out", None,
                                "Also write the results as JSON here.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of keys, indices and draws.")

EXACT_SUBSET = "cifar10_exact_subset.npz"


def load_images(data_dir: pathlib.Path, num: int) -> np.ndarray:
  """uint8[num, 32, 32, 3]: byte-exact CIFAR-10 training images.

  Raises:
    FileNotFoundError: with the path looked at and how to override it.
  """
  path = data_dir / EXACT_SUBSET
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found. The benchmark reads CIFAR-10 images from "
        f"{EXACT_SUBSET} (see shared/data/README.md); pass "
        "--data_dir=/path/to/shared/data.")
  with np.load(path) as data:
    images = data["train_images"]
  reps = -(-num // images.shape[0])
  return np.ascontiguousarray(np.concatenate([images] * reps)[:num])


def compile_jax(fn: Callable, args) -> Tuple[Callable[[], Any], float]:
  """`jit(fn)` traced, lowered and compiled for `args`; (call, seconds)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return (lambda: compiled(*args)), time.perf_counter() - start


def _stats(times: List[float], calls: int) -> Dict[str, float]:
  return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
          "max_s": float(np.max(times)), "samples": len(times),
          "calls_per_sample": calls}


def measure(jax_calls: Dict[str, Callable[[], Any]],
            pil_call: Callable[[], Any], repeats: int,
            min_sample_s: float = 0.1):
  """Interleaved timings of compiled JAX calls and of a Pillow run.

  After a warm-up of each, every repetition times each JAX call and then the
  Pillow run, so that both sides see the same machine load (this machine is
  shared). A JAX sample repeats its call, blocking on each result, until the
  sample lasts about `min_sample_s`, and reports seconds per call.

  Returns:
    ({name: stats of one JAX call}, stats of one Pillow run), each stats dict
    holding the median, min and max seconds over `repeats` samples.
  """
  calls = {}
  for name, call in jax_calls.items():
    jax.block_until_ready(call())
    start = time.perf_counter()
    jax.block_until_ready(call())
    calls[name] = max(1, math.ceil(min_sample_s /
                                   (time.perf_counter() - start)))
  pil_call()
  jax_times = {name: [] for name in jax_calls}
  pil_times = []
  for _ in range(repeats):
    for name, call in jax_calls.items():
      start = time.perf_counter()
      for _ in range(calls[name]):
        jax.block_until_ready(call())
      jax_times[name].append((time.perf_counter() - start) / calls[name])
    start = time.perf_counter()
    pil_call()
    pil_times.append(time.perf_counter() - start)
  return ({name: _stats(t, calls[name]) for name, t in jax_times.items()},
          _stats(pil_times, 1))


def pil_apply_all(images: np.ndarray, table) -> np.ndarray:
  """Every transform of every image with Pillow: uint8[B, T, H, W, 3].

  One PIL image and one set of draws per image (as `apply_all` realises each
  random op once per image); the most favourable plain loop for Pillow.
  """
  b, h, w, c = images.shape
  out = np.empty((b, len(table), h, w, c), np.uint8)
  for n in range(b):
    draws = ref.random_draws(w, h)
    img = PIL.Image.fromarray(images[n])
    for t, (name, _, value) in enumerate(table):
      out[n, t] = np.asarray(ref.apply_op(img, name, value, draws))
  return out


def pil_chain(images: np.ndarray, indices: np.ndarray, table) -> np.ndarray:
  """A chain per image with Pillow, fresh draws per layer: uint8[B, H, W, 3]."""
  b, h, w, _ = images.shape
  out = np.empty_like(images)
  for n in range(b):
    draws = [ref.random_draws(w, h) for _ in range(indices.shape[1])]
    out[n] = ref.apply_chain(images[n], indices[n], draws, table)
  return out


def _row(workload, batch, method, outputs, jax_t, pil_t, target):
  jax_ips = outputs / jax_t["median_s"]
  pil_ips = outputs / pil_t["median_s"]
  ratio = jax_ips / pil_ips
  return {
      "workload": workload, "batch": batch, "method": method,
      "outputs": outputs, "jax": jax_t, "pillow": pil_t,
      "jax_images_per_s": jax_ips, "pillow_images_per_s": pil_ips,
      "ratio": ratio, "target": target,
      "verdict": "PASS" if ratio >= target else "MISS",
  }


def _print_table(rows: List[Dict]) -> None:
  header = (f"{'workload':<10} {'batch':>5} {'method':<18} {'outputs':>7} "
            f"{'compile s':>9} {'JAX s':>8} {'JAX img/s':>10} "
            f"{'Pillow s':>9} {'Pillow img/s':>12} {'JAX/Pillow':>10}  target")
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['workload']:<10} {r['batch']:>5} {r['method']:<18} "
          f"{r['outputs']:>7} {r['jax']['compile_s']:>9.2f} "
          f"{r['jax']['median_s']:>8.4f} {r['jax_images_per_s']:>10.0f} "
          f"{r['pillow']['median_s']:>9.4f} {r['pillow_images_per_s']:>12.0f} "
          f"{r['ratio']:>9.2f}x  {r['verdict']} (>= {r['target']:g}x)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  data_dir = pathlib.Path(_DATA_DIR.value) if _DATA_DIR.value else (
      _ROOT.parent / "shared" / "data")
  batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  chain_sizes = [int(b) for b in _CHAIN_BATCH_SIZES.value]
  num_layers = _CHAIN_LAYERS.value
  repeats = _REPEATS.value
  target = _TARGET.value
  images = load_images(data_dir, max(batch_sizes + chain_sizes))
  space = S.cifar_space()
  table = ref.transform_table(ref.CIFAR_OPS)
  auto = "sequential" if jax.default_backend() == "cpu" else "vectorized"
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
      os.cpu_count())
  info = {
      "devices": [str(d) for d in jax.devices()],
      "backend": jax.default_backend(), "jax": jax.__version__,
      "pillow": PIL.__version__, "numpy": np.__version__,
      "python": platform.python_version(), "cpu_count": os.cpu_count(),
      "cpus_available": cpus, "auto_method": auto,
      "load_average_start": os.getloadavg(),
      # Allocator and XLA settings change CPU timings (see README.md).
      "env": {k: v for k, v in os.environ.items()
              if k.startswith(("MALLOC_", "XLA_", "JAX_", "LD_PRELOAD"))},
  }
  print(f"devices: {info['devices']} (backend {info['backend']}; "
        f"apply_chain_batch method 'auto' -> '{auto}')")
  print(f"JAX {jax.__version__}, Pillow {PIL.__version__}, NumPy "
        f"{np.__version__}, Python {info['python']}; CPUs: {os.cpu_count()} "
        f"({cpus} available to this process); load average "
        f"{info['load_average_start'][0]:.2f}")
  if info["env"]:
    print(f"environment: {info['env']}")
  print(f"median of {repeats} interleaved samples after warm-up (JAX: seconds "
        "per call, compile excluded; Pillow: a per-image Python loop)\n")

  random.seed(_SEED.value)  # pil_reference.random_draws uses `random`.
  rng = np.random.default_rng(_SEED.value)
  base = jax.random.key(_SEED.value)
  rows = []

  all_fn = jax.vmap(lambda k, x: S.apply_all(k, x, space))
  for b in batch_sizes:
    x = images[:b]
    keys = jax.random.split(jax.random.fold_in(base, b), b)
    call, compile_s = compile_jax(all_fn, (keys, jax.device_put(x)))
    jax_t, pil_t = measure({"vmap": call},
                           lambda x=x: pil_apply_all(x, table), repeats)
    jax_t["vmap"]["compile_s"] = compile_s
    rows.append(_row("apply_all", b, "vmap", b * space.size, jax_t["vmap"],
                     pil_t, target))
    print(f"  apply_all batch {b}: done", flush=True)

  for b in chain_sizes:
    x = images[:b]
    indices = rng.integers(0, space.size, (b, num_layers), dtype=np.int32)
    args = (base, jax.device_put(x), jax.device_put(indices))
    calls, compile_s = {}, {}
    for method in _METHODS.value:
      calls[method], compile_s[method] = compile_jax(
          lambda k, x, i, m=method: S.apply_chain_batch(k, x, i, space,
                                                        method=m), args)
    jax_t, pil_t = measure(
        calls, lambda x=x, i=indices: pil_chain(x, i, table), repeats)
    for method in _METHODS.value:
      jax_t[method]["compile_s"] = compile_s[method]
      label = f"{method}->{auto}" if method == "auto" else method
      rows.append(_row(f"chain{num_layers}", b, label, b, jax_t[method],
                       pil_t, target))
    print(f"  chain batch {b}: done", flush=True)

  info["load_average_end"] = os.getloadavg()
  print()
  _print_table(rows)
  print(f"\nload average at the end: {info['load_average_end'][0]:.2f} "
        "(timings on a loaded machine are pessimistic for both sides)")
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump({"info": info, "rows": rows}, f, indent=1)
    print(f"wrote {_JSON_OUT.value}")


if __name__ == "__main__":
  app.run(main)
