"""Data parallelism over every device of every process: one mesh axis "data".

The search and the training step are data parallel in the same way:

* a 1-D `Mesh` over `jax.devices()` (all processes; on a TPU pod slice every
  host runs the same program, `jax.distributed.initialize()` having been
  called first), axis name `DATA`;
* the per-example axis (the search's S search images, each with its
  validation batch; the training batch) is sharded over `DATA`
  (`data_sharding`), everything else (parameters, optimiser state, policy
  logits, the search pools, keys) is replicated (`replicated`);
* per-example PRNG keys are derived from the global example index
  (`space.example_keys`: fold_in(key, offset + i)), so a run on 1 device and
  a run on 8 devices draw the same augmentations and differ only in the
  floating-point order of the cross-device reductions.

Process-local input: each process holds only the rows of a global batch that
its devices address (`process_slice`) and `from_process_local` assembles the
global array (`jax.make_array_from_process_local_data`), as in the flax and
big_vision multi-host input pipelines.

Every global batch size must be divisible by the device count;
`check_divisible` raises a `ValueError` naming the config field.
"""

from typing import Any, Mapping, Optional, Sequence

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

PyTree = Any
DATA = "data"  # the mesh axis the example axis is sharded over


def make_mesh(*, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis `DATA` over `devices` (default: all, all processes).

  `jax.devices()` lists each process's devices together, so each process
  addresses one contiguous block of the rows of a sharded batch. The axis is
  of the default (automatic) type: compiled functions are partitioned by
  GSPMD except where `jax.shard_map` says otherwise.

  Args:
    devices: the devices, in mesh order (a subset for tests and benchmarks).

  Returns:
    `jax.sharding.Mesh` of shape (len(devices),).
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over `DATA`; other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(value: int, field: str, *,
                    num_devices: Optional[int] = None, hint: str = "") -> None:
  """Raises ValueError unless `value` splits evenly over the devices.

  Args:
    value: a global batch size (e.g. `config.search.num_images`).
    field: the config field it comes from, without "config." (named in the
      error, e.g. "search.num_images").
    num_devices: default `jax.device_count()` (all processes).
    hint: appended to the message (another way out).

  Raises:
    ValueError: "config.<field>=<value> must be divisible by the number of
      devices (<n>, jax.device_count()); use a multiple of <n><hint>".
  """
  n = jax.device_count() if num_devices is None else int(num_devices)
  if int(value) % n:
    raise ValueError(
        f"config.{field}={value} must be divisible by the number of devices "
        f"({n}, jax.device_count()); use a multiple of {n}{hint}")


def process_slice(n: int, mesh: Mesh) -> slice:
  """The rows of a global batch of `n` that this process's devices hold.

  Args:
    n: global batch size (divisible by `mesh.size`).
    mesh: a mesh from `make_mesh`.

  Returns:
    slice(start, stop): one contiguous block (the whole batch in a single
    process).
  """
  if n % mesh.size:
    raise ValueError(f"a global batch of {n} does not split over the "
                     f"{mesh.size} devices of the mesh")
  index = data_sharding(mesh).addressable_devices_indices_map((n,))
  starts = [idx[0].start or 0 for idx in index.values()]
  stops = [n if idx[0].stop is None else idx[0].stop for idx in index.values()]
  start, stop = min(starts), max(stops)
  if stop - start != sum(b - a for a, b in zip(starts, stops)):
    raise ValueError("this process's devices do not hold one contiguous block "
                     "of the batch; build the mesh with make_mesh()")
  return slice(start, stop)


def from_process_local(batch: Mapping[str, np.ndarray], mesh: Mesh,
                       global_size: int) -> Mapping[str, jax.Array]:
  """A global batch sharded over `DATA` from this process's rows.

  Args:
    batch: dict of arrays [n_local, ...], the rows `process_slice(global_size,
      mesh)` of the global batch (all of it in a single process).
    mesh: the mesh.
    global_size: the global batch size.

  Returns:
    dict of `jax.Array`s [global_size, ...] with `data_sharding(mesh)`.
  """
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(dict(batch), sharding)
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (global_size,) + np.shape(v)[1:])
          for k, v in batch.items()}


def shard_batch(batch: Mapping[str, np.ndarray],
                mesh: Mesh) -> Mapping[str, jax.Array]:
  """`from_process_local` for a global batch that every process holds whole
  (e.g. evaluation batches): each process contributes only its rows."""
  n = int(np.shape(next(iter(batch.values())))[0])
  rows = process_slice(n, mesh)
  return from_process_local({k: np.asarray(v)[rows] for k, v in batch.items()},
                            mesh, n)


def _put_replicated(x, sharding: NamedSharding):
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key):
    data = _put_replicated(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)  # a global array: reshard
  # Process-local values (assumed equal in every process) go through the
  # host: device_put needs host data to build a multi-process array.
  return jax.device_put(np.asarray(x), sharding)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Every leaf of `tree` replicated over `mesh` (PRNG keys included).

  Leaves already replicated over the mesh are returned as they are (no
  copy), so calling this every step is cheap. In several processes each
  process must pass the same values (as every replicated input of a
  multi-host program).
  """
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _put_replicated(x, sharding), tree)
