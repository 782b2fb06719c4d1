"""Runs one data-parallel check in a fresh process (used by test_parallel.py).

XLA's host device count must be set before JAX starts, so each check runs
here, in a subprocess whose environment sets
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (and `JAX_PLATFORMS=cpu`);
optionally the process joins a multi-process job first
(`jax.distributed.initialize` on localhost, gloo CPU collectives). Results
go to an .npz file that the test compares across device counts.

  python tests/parallel_worker.py search OUT.npz --stage=1 [--loop=scan]
  python tests/parallel_worker.py train OUT.npz --npz=DATA.npz --workdir=DIR
  python tests/parallel_worker.py errors OUT.npz
  ... --coordinator=localhost:PORT --num_processes=2 --process_id=0
"""

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEARCH_SIZE = 8  # search image side (pixels)


def _search(args):
  """search_layer for 2 steps (stage 1, or stage 2 on a random layer 1)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deepaa_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  from deepaa_jax import search as SE  # pylint: disable=g-import-not-at-top
  from tests.conftest import synthetic_images  # pylint: disable=g-import-not-at-top
  from tests.test_reward import Tiny  # pylint: disable=g-import-not-at-top

  model = Tiny(num_classes=2)
  variables = jax.jit(lambda k: model.init(
      k, jnp.zeros((1, SEARCH_SIZE, SEARCH_SIZE, 3)), train=False))(
          jax.random.key(0))
  search_model = SE.make_search_model(
      model, variables["params"], variables["batch_stats"],
      mean=ip.CIFAR_SEARCH_MEAN, std=ip.CIFAR_STD)
  images = np.concatenate([synthetic_images(SEARCH_SIZE, s)
                           for s in range(4)])
  labels = np.arange(len(images)) % 2
  data = SE.make_search_data(
      ip.Split(images[:16], labels[:16]),
      ip.Split(images[16:], labels[16:]), 2)
  config = SE.default_search_config()
  config.num_images = 16  # 2 per device on 8 devices
  config.val_batch = 2
  config.gt_samples = 4
  config.g_prefixes = 2
  config.chunk_size = 256  # one chunk per image: few unrolled passes on CPU
  config.loop = args.loop
  if args.stage == 1:
    earlier = np.zeros((0, 139), np.float32)
  else:
    logits = np.random.default_rng(0).normal(0, 2, (args.stage - 1, 139))
    earlier = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  logits, history = SE.search_layer(
      jax.random.key(11), search_model, earlier, data, config, num_steps=2,
      progress=False)
  out = {"logits": np.asarray(logits)}
  out.update({f"diag_{k}": np.asarray(v) for k, v in history.items()
              if k != "top5"})
  return out


def _train(args):
  """train.train for a few steps on a tiny npz; the final parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deepaa_jax import train  # pylint: disable=g-import-not-at-top
  from tests.test_train import tiny_config  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_disable_most_optimizations", True)
  config = tiny_config(args.npz, num_steps=3, ba_copies=args.ba_copies,
                       checkpoint_every_steps=2, log_every_steps=3)
  state, metrics = train.train(config, args.workdir)
  leaves = jax.tree.leaves(state.params)
  out = {f"param_{i}": np.asarray(x) for i, x in enumerate(leaves)}
  out["train_loss"] = np.asarray(metrics["train_loss"])
  out["test_loss"] = np.asarray(metrics["test_loss"])
  return out


def _errors(args):
  """The messages of bad batch / device combinations, and process_slice."""
  del args
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deepaa_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deepaa_jax import parallel  # pylint: disable=g-import-not-at-top
  from deepaa_jax import search as SE  # pylint: disable=g-import-not-at-top
  from deepaa_jax import space as space_lib  # pylint: disable=g-import-not-at-top
  from tests.test_train import load_config  # pylint: disable=g-import-not-at-top

  messages = {}

  def catch(name, fn):
    try:
      fn()
      messages[name] = ""
    except ValueError as e:
      messages[name] = str(e)

  cfg = load_config("cifar10")
  cfg.search.num_images = 12
  catch("validate_search", lambda: config_lib.validate(cfg))
  search_cfg = SE.default_search_config()
  search_cfg.num_images = 12
  catch("step_settings", lambda: SE.step_settings(
      search_cfg, space_lib.cifar_space(), mesh=parallel.make_mesh()))
  single = load_config("cifar10")
  single.search.num_images = 12
  single.search.data_parallel = False  # one device: any number of images
  catch("validate_search_single", lambda: config_lib.validate(single))
  train_cfg = load_config("test")
  train_cfg.train.batch_size = 12
  catch("validate_train", lambda: config_lib.validate(train_cfg))
  mesh = parallel.make_mesh()
  rows = [parallel.process_slice(n, mesh) for n in (8, 16)]
  return {"messages": np.asarray(json.dumps(messages)),
          "rows": np.asarray([[r.start, r.stop] for r in rows]),
          "devices": np.asarray(jax.device_count())}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("check", choices=("search", "train", "errors"))
  parser.add_argument("out")
  parser.add_argument("--stage", type=int, default=1)
  parser.add_argument("--loop", default="auto")
  parser.add_argument("--npz", default="")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--ba_copies", type=int, default=1)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if args.coordinator:
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
  out = {"search": _search, "train": _train, "errors": _errors}[args.check](
      args)
  out["device_count"] = np.asarray(jax.device_count())
  out["process_count"] = np.asarray(jax.process_count())
  np.savez(args.out, **out)


if __name__ == "__main__":
  main()
