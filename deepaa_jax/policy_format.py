"""Policy files, read and checked with JSON and NumPy only (no JAX).

The one validator of policy files. `policy.load_policy` and
`policy.load_official_npz` (training, search, the inspect job) and
`pil.DeepAAPolicy` (PyTorch loaders) all call it, so a file is accepted or
refused alike everywhere, always with `errors.PolicyFileError` and a one-line
message that names the file and the entry.

Two formats:
  * our JSON (`FORMAT`, written by `policy.save_policy`): per layer an object
    with "layer" (1-based) and "probs" (T numbers); top-level "space",
    "num_transforms", "num_layers", "transforms" (the table, checked entry by
    entry), "name" and "metadata". Layers are read in the order of their
    "layer" fields (list order when no entry has one).
  * the authors' npz (spec §3.1): policy_probs float32[K, T], l_ops, l_mags,
    ops, mags, op_names.

A search space is described to the validator by a table: any object with
`name`, `op_names` (the 18 op names), `ops` (op index of each transform) and
`levels` (raw level of each transform). A `space.SearchSpace` is one;
`pil.py` builds one from its own copy of the table. `spaces` maps the space
names ("cifar", "imagenet") to such tables.

This module imports only NumPy and `deepaa_jax.errors`, so
`import deepaa_jax.pil` stays free of JAX.
"""

import io
import json
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple
import zipfile
import zlib

import numpy as np

from deepaa_jax.errors import PolicyFileError

FORMAT = "deepaa-jax-policy/1"
NUM_OPS = 18  # `l_ops` of the official files.
NUM_LEVELS = 13  # `l_mags`: levels 0..12.
# Rows must sum to one within this tolerance; the official float32 files are
# within ~1.2e-7.
SUM_TOLERANCE = 1e-5
NO_LAYERS_HINT = ("a training policy needs at least one layer; for no "
                  "augmentation use the baseline 'none' "
                  "(config.policy.kind='none')")

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip (npz) archive, or empty
_NPY_MAGIC = b"\x93NUMPY"


class Contents(NamedTuple):
  """A validated policy file.

  probs: float64[K, T]; row k is layer k+1's distribution (rows non-negative,
    summing to 1 within `SUM_TOLERANCE`; npz rows renormalised in float64).
  space: the space name ("cifar" or "imagenet").
  name: the policy's name.
  metadata: the file's metadata (JSON) or {} (npz).
  decision: a reading decision to report (the ImageNet op-16 name), or None.
  """
  probs: np.ndarray
  space: str
  name: str
  metadata: Dict[str, Any]
  decision: Optional[str] = None


def short(value, limit: int = 60) -> str:
  """repr(value), cut to `limit` characters for a one-line message."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def row_problem(probs: np.ndarray) -> Optional[str]:
  """What makes float[K, T] `probs` not K probability distributions (not
  finite, negative, a row not summing to 1), or None."""
  if not np.all(np.isfinite(probs)):
    return "probabilities must be finite"
  if np.any(probs < 0):
    return "probabilities must be non-negative"
  sums = probs.sum(axis=1)
  bad = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
  if bad.size:
    return (f"layer(s) {[int(b) + 1 for b in bad]} sum to "
            f"{[float(sums[b]) for b in bad]}, not 1")
  return None


def _check_layer_count(probs: np.ndarray, where: str, min_layers: int):
  if probs.shape[0] < min_layers:
    raise PolicyFileError(f"{where}: the policy has {probs.shape[0]} layers; "
                          f"{NO_LAYERS_HINT}")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# Our JSON format.
# --------------------------------------------------------------------------


def read_json(path) -> Any:
  """The JSON document at `path` (a `pathlib.Path`, or an `epath.Path` for a
  URI: anything with `is_dir` and `read_bytes`).

  Raises:
    FileNotFoundError: no such file.
    PolicyFileError: a directory, not UTF-8 text (binary, or an npz), or not
      valid JSON; the message names the file.
  """
  if path.is_dir():
    raise PolicyFileError(f"{path}: not a JSON policy file: it is a directory")
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    what = ("it is a zip/npz archive (read an official npz with "
            "load_official_npz, config.policy.kind='official')"
            if raw.startswith(ZIP_MAGIC) else "binary data")
    raise PolicyFileError(f"{path}: not a JSON policy file: not UTF-8 text "
                          f"(byte {e.start} is {raw[e.start]:#04x}); {what}"
                          ) from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise PolicyFileError(f"{path}: not valid JSON (truncated or corrupt?): "
                          f"{e}") from e


def _json_row(layer, where: str, k: int, size: int) -> np.ndarray:
  """float64[T] of one layer entry (the k-th, 1-based) after type checks."""
  if not isinstance(layer, dict) or not isinstance(layer.get("probs"), list):
    raise PolicyFileError(f"{where}: layer {k} is {short(layer)}, expected "
                          "an object with a 'probs' list")
  values = layer["probs"]
  for j, value in enumerate(values):
    if not _is_number(value):
      raise PolicyFileError(
          f"{where}: layer {k}: probability {j} is {short(value)} "
          f"({type(value).__name__}), expected a number")
  if len(values) != size:
    raise PolicyFileError(f"{where}: layer {k} has {len(values)} "
                          f"probabilities, expected {size}")
  return np.asarray(values, np.float64)


def _layer_order(layers, where: str) -> Tuple[int, ...]:
  """Positions of the layer entries in layer order (1..K), from their
  "layer" fields; list order when no entry has one."""
  numbers = [layer.get("layer") if isinstance(layer, dict) else None
             for layer in layers]
  if all(n is None for n in numbers):
    return tuple(range(len(layers)))
  for position, n in enumerate(numbers):
    if not _is_integer(n):
      raise PolicyFileError(
          f"{where}: layer entry {position + 1} has 'layer': {short(n)}; "
          "every entry needs an integer 'layer' (1-based) when one has it")
  if sorted(numbers) != list(range(1, len(layers) + 1)):
    raise PolicyFileError(
        f"{where}: the 'layer' fields are {numbers}; expected each of 1.."
        f"{len(layers)} once")
  return tuple(sorted(range(len(layers)), key=lambda p: numbers[p]))


def from_json(doc, where: str, spaces: Mapping[str, Any], *,
              space_name: Optional[str] = None, min_layers: int = 0,
              default_name: str = "policy") -> Contents:
  """Validates a JSON policy document (see the module docstring).

  Args:
    doc: the parsed JSON (`read_json`).
    where: the file, for messages.
    spaces: space name -> table (module docstring).
    space_name: the space the policy must be over; None accepts any.
    min_layers: the fewest layers accepted (1 for a policy to train with).
    default_name: the name when the file has none (its stem).

  Returns:
    `Contents` with the rows in layer order, exactly as written (float64).

  Raises:
    PolicyFileError: another format, missing fields or fields of the wrong
      type (strings or lists for probabilities, a float `num_transforms`), an
      unknown space, a transform table that is not the space's, `num_layers`
      or the "layer" fields disagreeing with the list, rows that are not
      probability distributions, fewer than `min_layers` layers, or another
      space than `space_name`.
  """
  if not isinstance(doc, dict) or doc.get("format") != FORMAT:
    found = doc.get("format") if isinstance(doc, dict) else None
    raise PolicyFileError(f"{where}: not a {FORMAT} policy file (format="
                          f"{found!r})")
  for field in ("space", "num_transforms", "layers", "transforms"):
    if field not in doc:
      raise PolicyFileError(f"{where}: missing field {field!r}")
  if not isinstance(doc["space"], str):
    raise PolicyFileError(f"{where}: 'space' must be a space name (a string), "
                          f"got {short(doc['space'])}")
  if doc["space"] not in spaces:
    raise PolicyFileError(f"{where}: unknown search space {doc['space']!r}; "
                          f"valid: {sorted(spaces)}")
  space = spaces[doc["space"]]
  if space_name is not None and doc["space"] != space_name:
    raise PolicyFileError(f"{where}: policy is over the {doc['space']!r} "
                          f"space, expected {space_name!r}")
  transforms, layers = doc["transforms"], doc["layers"]
  for field, value in (("transforms", transforms), ("layers", layers)):
    if not isinstance(value, list):
      raise PolicyFileError(f"{where}: {field!r} must be a list, got "
                            f"{type(value).__name__} {short(value)}")
  size = len(space.ops)
  num_transforms = doc["num_transforms"]
  if not _is_integer(num_transforms):
    raise PolicyFileError(f"{where}: 'num_transforms' must be an integer, got "
                          f"{short(num_transforms)}")
  if num_transforms != size:
    raise PolicyFileError(f"{where}: the file declares {num_transforms} "
                          f"transforms (num_transforms); the {space.name} "
                          f"space has {size}")
  if len(transforms) != size:
    raise PolicyFileError(f"{where}: 'transforms' lists {len(transforms)} "
                          f"transforms; the {space.name} space has {size}")
  for i, t in enumerate(transforms):
    op, level = space.op_names[space.ops[i]], space.levels[i]
    if (not isinstance(t, dict) or t.get("op") != op or
        t.get("level") != level):
      raise PolicyFileError(
          f"{where}: transform {i} is {short(t)}, expected an object with "
          f"op={op!r}, level={level}")
  if "num_layers" in doc:
    declared = doc["num_layers"]
    if not _is_integer(declared) or declared != len(layers):
      raise PolicyFileError(
          f"{where}: 'num_layers' is {short(declared)} but 'layers' lists "
          f"{len(layers)} layer(s)")
  rows = [_json_row(layer, where, k + 1, size)
          for k, layer in enumerate(layers)]
  order = _layer_order(layers, where)
  probs = (np.stack([rows[p] for p in order]) if rows else
           np.zeros((0, size)))
  name = doc.get("name", default_name)
  metadata = doc.get("metadata", {})
  if not isinstance(name, str):
    raise PolicyFileError(f"{where}: 'name' must be a string, got "
                          f"{short(name)}")
  if not isinstance(metadata, dict):
    raise PolicyFileError(f"{where}: 'metadata' must be an object, got "
                          f"{type(metadata).__name__} {short(metadata)}")
  problem = row_problem(probs)
  if problem:
    raise PolicyFileError(f"{where}: {problem}")
  _check_layer_count(probs, where, min_layers)
  return Contents(probs, space.name, name, metadata)


# --------------------------------------------------------------------------
# The authors' npz files.
# --------------------------------------------------------------------------


def read_npz(path) -> Dict[str, np.ndarray]:
  """Every array of the npz archive at `path` (as `read_json`), read without
  pickles.

  Raises:
    FileNotFoundError: no such file.
    PolicyFileError: the file is not an npz archive (a text or JSON file, a
      single .npy array, a directory), or is truncated or corrupt; the
      message names the file and what it is instead.
  """
  prefix = f"{path}: not a readable npz policy file"
  if path.is_dir():
    raise PolicyFileError(f"{prefix}: it is a directory")
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise
  except OSError as e:
    raise PolicyFileError(f"{prefix}: {e}") from e
  head = raw[:64]
  if head.startswith(_NPY_MAGIC):
    raise PolicyFileError(f"{prefix}: it is a .npy file (one array); a policy "
                          "npz holds several named arrays (np.savez)")
  if not head.startswith(ZIP_MAGIC):
    if not head:
      what = "the file is empty"
    elif head.lstrip().startswith(b"{"):
      what = ("it looks like a JSON policy (read it with load_policy, "
              "config.policy.kind='file')")
    else:
      what = f"it starts with {head[:16]!r}, not a zip header"
    raise PolicyFileError(f"{prefix}: not an npz archive; {what}")
  try:
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  except (zipfile.BadZipFile, EOFError, zlib.error) as e:
    raise PolicyFileError(f"{prefix}: the archive is truncated or corrupt "
                          f"({type(e).__name__}: {e})") from e
  except ValueError as e:  # object (pickled) arrays, malformed .npy headers
    raise PolicyFileError(f"{prefix}: a member is not a plain array ({e})"
                          ) from e
  except Exception as e:  # anything else a damaged archive raises
    raise PolicyFileError(f"{prefix}: {type(e).__name__}: {e}") from e


def _scalar_int(value: np.ndarray) -> Optional[int]:
  """The integer in a one-element numeric array (18, 18.0), else None."""
  if value.size != 1 or value.dtype.kind not in "iuf":
    return None
  number = value.reshape(()).item()
  return int(number) if float(number).is_integer() else None


def from_npz(contents: Mapping[str, np.ndarray], where: str,
             spaces: Mapping[str, Any], *, name: str, cutout60: bool = True,
             min_layers: int = 0) -> Contents:
  """Validates the arrays of one of the authors' npz files (spec §3.1).

  The space is picked from op 17's name. The shipped ImageNet files name op
  16 "RandCutout" although the search code has "RandCutout60": with
  `cutout60=True` it is read as the 60 px cutout (`Contents.decision` says
  so); with False the file is refused. Probabilities are renormalised in
  float64 (the files' float32 rows are ~1e-7 off).

  Args:
    contents: the arrays (`read_npz`).
    where: the file, for messages.
    spaces: space name -> table (module docstring); needs "cifar" and
      "imagenet".
    name: the policy's name.
    cutout60: see above.
    min_layers: the fewest layers accepted.

  Raises:
    PolicyFileError: missing keys, fields of the wrong shape or type,
      ops/mags/op_names not a space's table, rows that are not probability
      distributions, or fewer than `min_layers` layers.
  """
  required = ("policy_probs", "l_ops", "l_mags", "ops", "mags", "op_names")
  missing = [k for k in required if k not in contents]
  if missing:
    raise PolicyFileError(f"{where}: missing keys {missing}; an official "
                          f"policy file has {list(required)}")
  op_names = contents["op_names"]
  if op_names.shape != (NUM_OPS,) or op_names.dtype.kind not in "US":
    raise PolicyFileError(f"{where}: op_names is {op_names.dtype}"
                          f"{list(op_names.shape)}; expected the {NUM_OPS} op "
                          "names (strings)")
  names = [str(n).split(":")[0] for n in op_names]
  space = spaces["imagenet" if names[-1] == "RandResizeCrop_imagenet" else
                 "cifar"]
  size = len(space.ops)
  probs = contents["policy_probs"]
  if probs.ndim != 2 or probs.shape[1] != size:
    raise PolicyFileError(f"{where}: policy_probs has shape {probs.shape}; "
                          f"expected [K, {size}]")
  if probs.dtype.kind not in "fiu":
    raise PolicyFileError(f"{where}: policy_probs has dtype {probs.dtype}; "
                          "expected floating-point probabilities")
  l_ops, l_mags = (_scalar_int(contents[k]) for k in ("l_ops", "l_mags"))
  if l_ops != len(space.op_names) or l_mags != NUM_LEVELS:
    found = ", ".join(
        f"{k}={v}" if v is not None else
        f"{k} is {contents[k].dtype}{list(contents[k].shape)}"
        for k, v in (("l_ops", l_ops), ("l_mags", l_mags)))
    raise PolicyFileError(f"{where}: {found}; expected integers "
                          f"{len(space.op_names)} and {NUM_LEVELS}")
  if (contents["ops"].reshape(-1).tolist() != list(space.ops) or
      contents["mags"].reshape(-1).tolist() != list(space.levels)):
    raise PolicyFileError(f"{where}: the ops/mags tables do not match the "
                          "canonical 139-transform order (spec §1.2)")
  decision = None
  if space.name == "imagenet" and names[16] == "RandCutout":
    if not cutout60:
      raise PolicyFileError(
          f"{where}: op 16 is named 'RandCutout' (16 px) in an ImageNet file; "
          "pass cutout60=True to read it as the 60 px cutout of the search "
          "code and the paper")
    decision = ("op 16 named 'RandCutout' in an ImageNet file is read as "
                "RandCutout60 (60 px), per the paper and the search code "
                "(spec §3.1)")
    names[16] = "RandCutout60"
  if names != list(space.op_names):
    raise PolicyFileError(f"{where}: op names {names} do not match the "
                          f"{space.name} space {list(space.op_names)}")
  probs = probs.astype(np.float64)
  problem = row_problem(probs)
  if problem:
    raise PolicyFileError(f"{where}: {problem}")
  _check_layer_count(probs, where, min_layers)
  probs = probs / probs.sum(axis=1, keepdims=True)
  return Contents(probs, space.name, name, {}, decision)


def official_name(stem: str) -> str:
  """The policy name of an official file: "policy_DeepAA_cifar_1" ->
  "deepaa_cifar_1"."""
  return "deepaa_" + stem.replace("policy_DeepAA_", "")


def is_npz(path) -> bool:
  """Whether the file at `path` starts as a zip (npz) archive does."""
  with path.open("rb") as f:
    return f.read(4) in ZIP_MAGIC


def read(path, spaces: Mapping[str, Any], *,
         space_name: Optional[str] = None, min_layers: int = 0) -> Contents:
  """A policy file of either format, told apart by its first bytes.

  Raises:
    FileNotFoundError: no such file.
    PolicyFileError: as `read_json`/`from_json` or `read_npz`/`from_npz`.
  """
  if not path.is_dir() and is_npz(path):
    contents = from_npz(read_npz(path), str(path), spaces,
                        name=official_name(path.stem), min_layers=min_layers)
    if space_name is not None and contents.space != space_name:
      raise PolicyFileError(f"{path}: policy is over the {contents.space!r} "
                            f"space, expected {space_name!r}")
    return contents
  return from_json(read_json(path), str(path), spaces, space_name=space_name,
                   min_layers=min_layers, default_name=path.stem)
