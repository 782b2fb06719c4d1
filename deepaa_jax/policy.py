"""Augmentation policies as values: K layers of probabilities over a space.

A `Policy` holds `probs: float64[K, T]`, row k the categorical distribution
of layer k over the T = 139 transforms of a named `SearchSpace`, plus
provenance metadata. Applying it (`apply_policy`) draws, for every image and
every layer in order k = 1..K, one transform index from row k and applies it
(spec §4.1): exactly one transform per layer, Identity being one of them.

Every baseline of the paper's comparisons is a policy too, so all of them run
through the same training loop:

  none              K = 0: no augmentation.
  standard          pad-4 crop, then horizontal flip (the paper's baseline).
  standard_cutout   standard, then Cutout-16.
  trivialaugment    one TrivialAugment layer over the same space (uniform op
                    among the 15 image operations, then uniform magnitude
                    level), then TrivialAugment's CIFAR defaults: crop, flip,
                    Cutout-16.
  deepta            K layers uniform over all 139 transforms, no defaults
                    (DeepTA, paper §4.4).
  official          the authors' searched policies (`load_official_npz`).
  file              a policy saved by this project (`save_policy`, JSON).

Files: our JSON format is human-readable (per layer: entropy, the top
transforms with op, level, value and probability) and carries the full
probability table in float64, so `load_policy(save_policy(p)) == p` exactly.
The authors' npz format (spec §3.1) is read by `load_official_npz` and
written by `save_official_npz`.
"""

import dataclasses
import datetime
import importlib.metadata
import io
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
import zipfile
import zlib

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepaa_jax import errors
from deepaa_jax import space as space_lib
from deepaa_jax import utils
from deepaa_jax.errors import PolicyFileError

Array = jax.Array

FORMAT = "deepaa-jax-policy/1"
KINDS = ("none", "standard", "standard_cutout", "trivialaugment", "deepta",
         "official", "file")
# Baselines that can follow a policy (`followed_by`, config.policy.then):
# those made of fixed layers.
THEN_KINDS = ("standard", "standard_cutout", "trivialaugment")
# Rows must sum to one within this tolerance; the official float32 files are
# within ~1.2e-7.
_SUM_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
  """K layers of transform probabilities over a search space.

  Attributes:
    probs: float64[K, T]; row k is layer k+1's distribution (layer 1 is
      applied first). Rows are non-negative and sum to 1.
    space_name: the `SearchSpace` name ("cifar" or "imagenet").
    name: a short label ("standard", "deepaa_cifar_1", ...).
    metadata: provenance (source, config, seed, versions, date, ...).
  """
  probs: np.ndarray
  space_name: str
  name: str = "policy"
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    probs = np.asarray(self.probs, np.float64)
    if probs.ndim != 2:
      raise ValueError(f"policy probs must be [K, T], got shape {probs.shape}")
    space = space_lib.get_space(self.space_name)
    if probs.shape[1] != space.size:
      raise ValueError(f"policy has {probs.shape[1]} transforms per layer; the "
                       f"{self.space_name!r} space has {space.size}")
    _check_rows(probs, what=f"policy {self.name!r}")
    object.__setattr__(self, "probs", probs)
    object.__setattr__(self, "metadata", dict(self.metadata))

  @property
  def num_layers(self) -> int:
    return self.probs.shape[0]

  @property
  def space(self) -> space_lib.SearchSpace:
    return space_lib.get_space(self.space_name)

  def __eq__(self, other):
    return (isinstance(other, Policy) and self.space_name == other.space_name
            and self.name == other.name
            and np.array_equal(self.probs, other.probs)
            and dict(self.metadata) == dict(other.metadata))

  def op_mass(self) -> np.ndarray:
    """float64[K, 18]: probability of each operation, summed over levels
    (paper Fig. 3; spec §3.3)."""
    mass = np.zeros((self.num_layers, len(self.space.op_names)))
    for op in range(mass.shape[1]):
      mass[:, op] = self.probs[:, self.space.op_array == op].sum(axis=1)
    return mass

  def entropy(self) -> np.ndarray:
    """float64[K]: entropy of each layer in nats (uniform over 139: 4.934)."""
    p = self.probs
    with np.errstate(divide="ignore", invalid="ignore"):
      return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)

  def top(self, layer: int, k: int = 5):
    """The k most probable transforms of layer `layer` (0-based):
    list of (index, name, probability)."""
    order = np.argsort(-self.probs[layer], kind="stable")[:k]
    return [(int(i), self.space.transform_name(int(i)),
             float(self.probs[layer, i])) for i in order]

  def summary(self, k: int = 5) -> str:
    """A text summary: per layer, entropy and the top-k transforms."""
    lines = [f"Policy {self.name!r} over the {self.space_name} space, "
             f"{self.num_layers} layer(s)"]
    for layer, h in enumerate(self.entropy()):
      tops = ", ".join(f"{name} {p:.3f}" for _, name, p in self.top(layer, k))
      lines.append(f"  layer {layer + 1} (entropy {h:.2f} nats): {tops}")
    return "\n".join(lines)

  def op_mass_markdown(self) -> str:
    """The per-operation mass table (spec §3.3 layout) in markdown."""
    mass = self.op_mass()
    header = "| op | " + " | ".join(f"L{k + 1}" for k in range(
        self.num_layers)) + " |"
    rule = "|---|" + "---|" * self.num_layers
    rows = [f"| {name} | " + " | ".join(f"{m:.4f}" for m in mass[:, op]) + " |"
            for op, name in enumerate(self.space.op_names)]
    return "\n".join([header, rule] + rows)


def _check_rows(probs: np.ndarray, what: str) -> None:
  if not np.all(np.isfinite(probs)):
    raise ValueError(f"{what}: probabilities must be finite")
  if np.any(probs < 0):
    raise ValueError(f"{what}: probabilities must be non-negative")
  sums = probs.sum(axis=1)
  bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
  if bad.size:
    raise ValueError(f"{what}: layer(s) {[int(b) + 1 for b in bad]} sum to "
                     f"{[float(sums[b]) for b in bad]}, not 1")


def provenance(**extra) -> Dict[str, Any]:
  """Metadata common to every policy this project writes."""
  try:  # the installed distribution's version (setup.py is its one source)
    version = importlib.metadata.version("deepaa-jax")
  except importlib.metadata.PackageNotFoundError:  # run from a bare checkout
    version = "unknown"
  meta = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "versions": {"deepaa_jax": version,
                   "jax": jax.__version__, "flax": flax.__version__,
                   "numpy": np.__version__},
      "jax_threefry_partitionable": bool(
          jax.config.jax_threefry_partitionable),
  }
  meta.update(extra)
  return meta


def from_logits(logits, space_name: str, *, name: str = "policy",
                metadata: Optional[Mapping[str, Any]] = None) -> Policy:
  """Policy with probs = softmax(logits) (float64), logits float[K, T]."""
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(axis=-1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
  return Policy(probs, space_name, name, metadata or {})


# --------------------------------------------------------------------------
# Baselines.
# --------------------------------------------------------------------------


def _one_hot_layers(space: space_lib.SearchSpace, op_names: Sequence[str]):
  probs = np.zeros((len(op_names), space.size))
  for k, op_name in enumerate(op_names):
    probs[k, space.index_of(op_name)] = 1.0
  return probs


def _random_op_names(space: space_lib.SearchSpace):
  flip, cutout, crop = (space.op_names[o] for o in space_lib.RANDOM_OPS)
  return flip, cutout, crop


def baseline(kind: str, space: space_lib.SearchSpace, *,
             num_layers: int = 6) -> Policy:
  """A baseline augmentation as a policy (see module docstring).

  Args:
    kind: "none", "standard", "standard_cutout", "trivialaugment" or "deepta".
    space: the search space.
    num_layers: K, for "deepta" only.
  """
  flip, cutout, crop = _random_op_names(space)
  meta = provenance(source=f"baseline:{kind}")
  if kind == "none":
    probs = np.zeros((0, space.size))
  elif kind == "standard":
    probs = _one_hot_layers(space, [crop, flip])
  elif kind == "standard_cutout":
    probs = _one_hot_layers(space, [crop, flip, cutout])
  elif kind == "trivialaugment":
    # TrivialAugment: an operation uniformly among the 15 image operations
    # (Identity..Sharpness), then a magnitude level uniformly among its levels.
    ta = np.zeros(space.size)
    image_ops = [o for o in range(len(space.op_names))
                 if o not in space_lib.RANDOM_OPS]
    for op in image_ops:
      members = space.op_array == op
      ta[members] = 1.0 / len(image_ops) / members.sum()
    probs = np.concatenate([ta[None], _one_hot_layers(space,
                                                      [crop, flip, cutout])])
  elif kind == "deepta":
    if num_layers < 1:
      raise ValueError(f"deepta needs num_layers >= 1, got {num_layers}")
    probs = np.full((num_layers, space.size), 1.0 / space.size)
    meta["num_layers"] = num_layers
  else:
    raise ValueError(f"unknown baseline {kind!r}; valid: none, standard, "
                     "standard_cutout, trivialaugment, deepta")
  return Policy(probs, space.name, kind, meta)


# --------------------------------------------------------------------------
# The authors' npz files.
# --------------------------------------------------------------------------

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip (npz) archive, or empty
_NPY_MAGIC = b"\x93NUMPY"


def _read_npz(path) -> Dict[str, np.ndarray]:
  """Every array of the npz archive at `path` (`utils.as_path`: local or a
  URI), read without pickles.

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
  if not head.startswith(_ZIP_MAGIC):
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


def load_official_npz(path, *, cutout60: bool = True) -> Policy:
  """Reads one of the authors' `policy_DeepAA_*.npz` files (spec §3.1).

  Validates the keys, shapes, `ops`/`mags` tables and op names against our
  spaces and picks the space from op 17's name. The shipped ImageNet files
  name op 16 "RandCutout" although the search code that produced them has
  "RandCutout60" (spec §3.1): with `cutout60=True` (default, the paper's and
  the search code's reading) op 16 is the 60 px cutout of the ImageNet space;
  the decision is logged either way. With `cutout60=False` the file is
  refused, since a 16 px cutout has no place in the ImageNet space.

  Probabilities are float32 in the files; they are renormalised in float64
  (rows are ~1e-7 off; nothing is truncated).

  Raises:
    FileNotFoundError: no such file.
    PolicyFileError: the file is not an npz archive (text, JSON, a .npy
      array, a directory), is truncated or corrupt, lacks keys, has fields of
      the wrong shape or type, or does not match a search space; the message
      names the file.
  """
  path = utils.as_path(path)
  contents = _read_npz(path)
  required = ("policy_probs", "l_ops", "l_mags", "ops", "mags", "op_names")
  missing = [k for k in required if k not in contents]
  if missing:
    raise PolicyFileError(f"{path}: missing keys {missing}; an official policy "
                          f"file has {list(required)}")
  op_names = contents["op_names"]
  if (op_names.shape != (space_lib.NUM_OPS,) or
      op_names.dtype.kind not in "US"):
    raise PolicyFileError(f"{path}: op_names is {op_names.dtype}"
                          f"{list(op_names.shape)}; expected the "
                          f"{space_lib.NUM_OPS} op names (strings)")
  names = [str(n).split(":")[0] for n in op_names]
  space = (space_lib.imagenet_space() if names[-1] == "RandResizeCrop_imagenet"
           else space_lib.cifar_space())
  probs = contents["policy_probs"]
  if probs.ndim != 2 or probs.shape[1] != space.size:
    raise PolicyFileError(f"{path}: policy_probs has shape {probs.shape}; "
                          f"expected [K, {space.size}]")
  if probs.dtype.kind not in "fiu":
    raise PolicyFileError(f"{path}: policy_probs has dtype {probs.dtype}; "
                          "expected floating-point probabilities")
  l_ops, l_mags = (_scalar_int(contents[k]) for k in ("l_ops", "l_mags"))
  if l_ops != len(space.op_names) or l_mags != space_lib.NUM_LEVELS:
    found = ", ".join(
        f"{k}={v}" if v is not None else
        f"{k} is {contents[k].dtype}{list(contents[k].shape)}"
        for k, v in (("l_ops", l_ops), ("l_mags", l_mags)))
    raise PolicyFileError(f"{path}: {found}; expected integers "
                          f"{len(space.op_names)} and {space_lib.NUM_LEVELS}")
  if (contents["ops"].reshape(-1).tolist() != list(space.ops) or
      contents["mags"].reshape(-1).tolist() != list(space.levels)):
    raise PolicyFileError(f"{path}: the ops/mags tables do not match the "
                          f"canonical 139-transform order (spec §1.2)")
  expected = list(space.op_names)
  decision = None
  if space.name == "imagenet" and names[16] == "RandCutout":
    if not cutout60:
      raise PolicyFileError(
          f"{path}: op 16 is named 'RandCutout' (16 px) in an ImageNet file; "
          "pass cutout60=True to read it as the 60 px cutout of the search "
          "code and the paper")
    decision = ("op 16 named 'RandCutout' in an ImageNet file is read as "
                "RandCutout60 (60 px), per the paper and the search code "
                "(spec §3.1)")
    logging.warning("%s: %s", path.name, decision)
    names[16] = "RandCutout60"
  if names != expected:
    raise PolicyFileError(f"{path}: op names {names} do not match the "
                          f"{space.name} space {expected}")
  probs = probs.astype(np.float64)
  try:
    _check_rows(probs, what=str(path))
  except ValueError as e:
    raise PolicyFileError(str(e)) from e
  probs = probs / probs.sum(axis=1, keepdims=True)
  meta = provenance(source=f"official npz: {path.name}")
  if decision:
    meta["op16_decision"] = decision
  return Policy(probs, space.name, "deepaa_" + path.stem.replace(
      "policy_DeepAA_", ""), meta)


def save_official_npz(path, policy: Policy):
  """Writes the authors' npz layout (spec §3.1), e.g. for their eval code.

  `path` may be local (parent folders are created) or a URI (`gs://...`);
  returns it as `utils.as_path` does.
  """
  space = policy.space
  ranges = [f"{n}:({lo},,{hi})" for n, (lo, hi) in zip(space.op_names,
                                                        space.op_ranges)]
  buffer = io.BytesIO()
  np.savez(buffer, policy_probs=policy.probs.astype(np.float32),
           l_ops=np.int64(len(space.op_names)),
           l_mags=np.int64(space_lib.NUM_LEVELS),
           ops=space.op_array[:, None], mags=space.level_array[:, None],
           op_names=np.asarray(ranges))
  return utils.write_bytes(path, buffer.getvalue(), make_parents=True)


# --------------------------------------------------------------------------
# Our JSON format.
# --------------------------------------------------------------------------


def _jsonable(value):
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def to_json(policy: Policy, *, top_k: int = 10) -> str:
  """The policy as a JSON document (see `save_policy`)."""
  space = policy.space
  transforms = [{"index": i, "op": space.op_names[space.ops[i]],
                 "level": space.levels[i], "value": space.values[i]}
                for i in range(space.size)]
  layers = []
  for k in range(policy.num_layers):
    layers.append({
        "layer": k + 1,
        "entropy_nats": float(policy.entropy()[k]),
        "top": [dict(transforms[i], probability=p)
                for i, _, p in policy.top(k, top_k)],
        "probs": [float(p) for p in policy.probs[k]],
    })
  doc = {
      "format": FORMAT,
      "name": policy.name,
      "space": policy.space_name,
      "num_transforms": space.size,
      "num_layers": policy.num_layers,
      "op_mass": {name: [float(m) for m in policy.op_mass()[:, op]]
                  for op, name in enumerate(space.op_names)},
      "layers": layers,
      "transforms": transforms,
      "metadata": _jsonable(policy.metadata),
  }
  return json.dumps(doc, indent=1)


def save_policy(path, policy: Policy):
  """Writes the policy as JSON; `load_policy` reads it back exactly.

  Python's `json` writes floats with `repr`, which round-trips float64.
  `path` may be local (parent folders are created; written to a temporary
  file and renamed, so a reader never sees half a file) or a URI
  (`gs://...`, one object upload); returns it as `utils.as_path` does.
  """
  return utils.write_bytes(path, to_json(policy), make_parents=True)


def _short(value, limit: int = 60) -> str:
  """repr(value), cut to `limit` characters for a one-line message."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_json(path):
  """The JSON document at `path` (`utils.as_path`: local or a URI).

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
            if raw.startswith(_ZIP_MAGIC) else "binary data")
    raise PolicyFileError(f"{path}: not a JSON policy file: not UTF-8 text "
                          f"(byte {e.start} is {raw[e.start]:#04x}); {what}"
                          ) from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise PolicyFileError(f"{path}: not valid JSON (truncated or corrupt?): "
                          f"{e}") from e


def load_policy(path, *, space_name: Optional[str] = None) -> Policy:
  """Reads a JSON policy written by `save_policy`.

  Raises:
    FileNotFoundError: no such file.
    PolicyFileError: the file is not UTF-8 JSON (binary, an npz, truncated),
      lacks fields or has fields of the wrong type, names an unknown space,
      disagrees with the space's transform table, or has rows that are not
      probability distributions; or it is over another space than
      `space_name` (when given). The message names the file and the entry.
  """
  path = utils.as_path(path)
  doc = _read_json(path)
  if not isinstance(doc, dict) or doc.get("format") != FORMAT:
    raise PolicyFileError(f"{path}: not a {FORMAT} policy file (format="
                          f"{doc.get('format') if isinstance(doc, dict) else None!r})")
  for field in ("space", "num_transforms", "layers", "transforms"):
    if field not in doc:
      raise PolicyFileError(f"{path}: missing field {field!r}")
  if not isinstance(doc["space"], str):
    raise PolicyFileError(f"{path}: 'space' must be a space name (a string), "
                          f"got {_short(doc['space'])}")
  try:
    space = space_lib.get_space(doc["space"])
  except ValueError as e:
    raise PolicyFileError(f"{path}: {e}") from e
  if space_name is not None and doc["space"] != space_name:
    raise PolicyFileError(f"{path}: policy is over the {doc['space']!r} space, "
                          f"expected {space_name!r}")
  transforms, layers = doc["transforms"], doc["layers"]
  for field, value in (("transforms", transforms), ("layers", layers)):
    if not isinstance(value, list):
      raise PolicyFileError(f"{path}: {field!r} must be a list, got "
                            f"{type(value).__name__} {_short(value)}")
  num_transforms = doc["num_transforms"]
  if not isinstance(num_transforms, int) or isinstance(num_transforms, bool):
    raise PolicyFileError(f"{path}: 'num_transforms' must be an integer, got "
                          f"{_short(num_transforms)}")
  if num_transforms != space.size:
    raise PolicyFileError(f"{path}: the file declares {num_transforms} "
                          f"transforms (num_transforms); the {space.name} "
                          f"space has {space.size}")
  if len(transforms) != space.size:
    raise PolicyFileError(f"{path}: 'transforms' lists {len(transforms)} "
                          f"transforms; the {space.name} space has "
                          f"{space.size}")
  for i, t in enumerate(transforms):
    op, level = space.op_names[space.ops[i]], space.levels[i]
    if (not isinstance(t, dict) or t.get("op") != op or
        t.get("level") != level):
      raise PolicyFileError(
          f"{path}: transform {i} is {_short(t)}, expected an object with "
          f"op={op!r}, level={level} ({space.transform_name(i)})")
  rows = []
  for k, layer in enumerate(layers):
    if not isinstance(layer, dict) or not isinstance(layer.get("probs"), list):
      raise PolicyFileError(f"{path}: layer {k + 1} is {_short(layer)}, "
                            "expected an object with a 'probs' list")
    try:
      row = np.asarray(layer["probs"], np.float64)
    except (TypeError, ValueError) as e:
      raise PolicyFileError(f"{path}: layer {k + 1}: 'probs' is not a list of "
                            f"numbers ({e})") from e
    if row.shape != (space.size,):
      raise PolicyFileError(f"{path}: layer {k + 1} has {row.size} "
                            f"probabilities, expected {space.size}")
    rows.append(row)
  probs = np.stack(rows) if rows else np.zeros((0, space.size))
  name, metadata = doc.get("name", path.stem), doc.get("metadata", {})
  if not isinstance(name, str):
    raise PolicyFileError(f"{path}: 'name' must be a string, got "
                          f"{_short(name)}")
  if not isinstance(metadata, dict):
    raise PolicyFileError(f"{path}: 'metadata' must be an object, got "
                          f"{type(metadata).__name__} {_short(metadata)}")
  try:
    return Policy(probs, space.name, name, metadata)
  except ValueError as e:
    raise PolicyFileError(f"{path}: {e}") from e


# --------------------------------------------------------------------------
# From a config, and applying.
# --------------------------------------------------------------------------


def make_policy(config, space: space_lib.SearchSpace) -> Policy:
  """The policy a `config.policy` section asks for.

  Fields: kind (one of `KINDS`), path (for "official" and "file"),
  num_layers (for "deepta"); optional first_layers (k > 0: keep the first k
  layers, `truncate`) and then (a `THEN_KINDS` baseline appended after them,
  `followed_by`). Errors name the field and the valid values.

  Raises:
    ConfigError: an unknown kind or `then`, a missing path, a policy over
      another space than the data's, or first_layers above its layer count.
    FileNotFoundError: `config.policy.path` is not a file.
    PolicyFileError: the file cannot be read as the kind's format (see
      `load_official_npz`, `load_policy`); the message names the file.
  """
  kind = config.kind
  if kind not in KINDS:
    raise errors.ConfigError(f"config.policy.kind must be one of {KINDS}, got "
                             f"{kind!r}")
  if kind in ("official", "file"):
    if not config.get("path"):
      raise errors.ConfigError(f"config.policy.path is required for "
                               f"kind={kind!r}")
    path = utils.as_path(config.path)
    if not path.is_file():
      raise FileNotFoundError(f"config.policy.path: no policy file at {path}")
    policy = (load_official_npz(path) if kind == "official" else
              load_policy(path))
  else:
    policy = baseline(kind, space, num_layers=config.get("num_layers", 6))
  if policy.space_name != space.name:
    raise errors.ConfigError(f"policy {policy.name!r} is over the "
                             f"{policy.space_name!r} space but the data uses "
                             f"the {space.name!r} space")
  return variant(policy, config)


def variant(policy: Policy, config) -> Policy:
  """The policy as `config.policy.first_layers` and `.then` ask (absent
  fields: unchanged): its first k layers (`truncate`), then a baseline's
  layers (`followed_by`).

  Raises:
    ConfigError: first_layers above the policy's layer count, or `then` not
      one of `THEN_KINDS`; one line naming the field and both numbers.
  """
  first_layers = config.get("first_layers", 0)
  if first_layers:
    if not 0 < first_layers <= policy.num_layers:
      raise errors.ConfigError(
          f"config.policy.first_layers={first_layers} but policy "
          f"{policy.name!r} has {policy.num_layers} layer(s): keep 1.."
          f"{policy.num_layers} (0 = all)")
    policy = truncate(policy, first_layers)
  then_kind = config.get("then", "")
  if then_kind:
    if then_kind not in THEN_KINDS:
      raise errors.ConfigError(f"config.policy.then must be one of "
                               f"{('',) + THEN_KINDS}, got {then_kind!r}")
    policy = followed_by(policy, then_kind)
  return policy


def truncate(policy: Policy, num_layers: int) -> Policy:
  """The policy's first `num_layers` layers (paper §4.4, Table 5: the depth
  ablation; layers 1..k of a layer-by-layer search are what a k-layer
  search finds).

  Args:
    policy: K layers.
    num_layers: k, 1 <= k <= K.

  Returns:
    A policy with probs = policy.probs[:k] (float64[k, T]), named
    "<name>[:k]", its metadata plus "first_layers": k and "source_layers": K.

  Raises:
    ValueError: k outside [1, K].
  """
  if not 1 <= num_layers <= policy.num_layers:
    raise ValueError(f"cannot keep the first {num_layers} layer(s) of policy "
                     f"{policy.name!r}: it has {policy.num_layers}")
  meta = dict(policy.metadata, first_layers=int(num_layers),
              source_layers=policy.num_layers)
  return Policy(policy.probs[:num_layers], policy.space_name,
                f"{policy.name}[:{num_layers}]", meta)


def followed_by(policy: Policy, kind: str) -> Policy:
  """The policy, then the baseline `kind`'s layers (paper §4.4, Fig. 2:
  DeepAA-simple is one searched layer followed by the default augmentation).

  The baseline's one-hot layers are appended, so `apply_policy` applies them
  per example after the policy's layers exactly as the baseline alone would.

  Args:
    policy: K layers.
    kind: one of `THEN_KINDS` (a baseline made of fixed layers).

  Returns:
    A policy of K + L layers (float64[K + L, T]; L = 2 for "standard", 3 for
    "standard_cutout", 4 for "trivialaugment"), named "<name>+<kind>", its
    metadata plus "then": kind.

  Raises:
    ValueError: `kind` is not one of `THEN_KINDS`.
  """
  if kind not in THEN_KINDS:
    raise ValueError(f"a policy can be followed by one of {THEN_KINDS}, "
                     f"got {kind!r}")
  extra = baseline(kind, policy.space)
  return Policy(np.concatenate([policy.probs, extra.probs]),
                policy.space_name, f"{policy.name}+{kind}",
                dict(policy.metadata, then=kind))


def sample_indices(key: Array, probs: Array, num: int, *,
                   offset: Array = 0) -> Array:
  """Transform indices of `num` examples, one per layer: int32[num, K].

  Example i, layer k draws from row k with key fold_in(fold_in(key, offset +
  i), k), so draws do not depend on the batch size or on how a batch is
  split.
  """
  logp = jnp.log(jnp.asarray(probs, jnp.float32))
  keys = space_lib.example_keys(key, num, offset=offset)

  def per_example(k):
    return jax.vmap(lambda layer: jax.random.categorical(
        jax.random.fold_in(k, layer), logp[layer]))(jnp.arange(logp.shape[0]))

  return jax.vmap(per_example)(keys).astype(jnp.int32)


def _policy_keys(key: Array) -> Tuple[Array, Array]:
  """(key of the transform choices, key of their randomness): the one
  derivation of `apply_policy` and `applied_transforms`."""
  k_index, k_apply = jax.random.split(key)
  return k_index, k_apply


def applied_transforms(key: Array, policy: Policy, example: int,
                       image_shape: Sequence[int], *,
                       random_sign: bool = False) -> List[Dict[str, Any]]:
  """What `apply_policy(key, images, policy, ...)` did to example `example`.

  A pure function of (key, example index): the keys of `apply_policy` come
  from the global example index, so one example's transforms are recomputed
  without the batch.

  Args:
    key: the key `apply_policy` was called with.
    policy: the policy.
    example: global example index (row + `offset`).
    image_shape: (H, W, 3) of the images (the random ops' draws depend on it).
    random_sign: as passed to `apply_policy`.

  Returns:
    One dict per layer: "layer" (1-based), "index" (transform index), "name"
    (`SearchSpace.transform_name`), "sign" (-1 when the random sign mirrored
    the op's value, else 1), "draws" (the random ops' realisation: "flip"
    bool, "cutout_center" [cx, cy], "crop_offsets" [top, left],
    "resized_crop_box" [left, top, w, h]; for every transform, though only
    a random op uses them), and "randomness": the `space.LayerRandomness`
    that replays the layer exactly with `space.replay_transform`.
  """
  if policy.num_layers == 0:
    return []
  h, w = int(image_shape[0]), int(image_shape[1])
  k_index, k_apply = _policy_keys(key)
  indices = np.asarray(sample_indices(k_index, policy.probs, 1,
                                      offset=example))[0]
  example_key = space_lib.example_keys(k_apply, 1, offset=example)[0]
  out = []
  for layer, index in enumerate(indices):
    rnd = space_lib.layer_randomness(jax.random.fold_in(example_key, layer),
                                     h, w, policy.space,
                                     random_sign=random_sign)
    draws = jax.device_get(rnd.draws)
    affine = policy.space.ops[int(index)] in space_lib.AFFINE_OPS
    out.append({
        "layer": layer + 1,
        "index": int(index),
        "name": policy.space.transform_name(int(index)),
        "sign": -1 if (affine and bool(rnd.flip_sign)) else 1,
        "draws": {"flip": bool(draws.flip),
                  "cutout_center": [float(v) for v in draws.cutout_center],
                  "crop_offsets": [int(v) for v in draws.crop_offsets],
                  "resized_crop_box": [int(v) for v in
                                       draws.resized_crop_box]},
        "randomness": rnd,
    })
  return out


def apply_policy(key: Array, images: Array, policy: Policy, *,
                 random_sign: bool = False, method: str = "auto",
                 offset: Array = 0) -> Array:
  """Augments a batch with a policy, per example and per layer.

  Args:
    key: PRNG key.
    images: uint8 or float32[B, H, W, 3] in [0, 255], integer-valued (see
      `space.check_images`).
    policy: the policy (its probabilities become constants of the jitted
      computation).
    random_sign: the official evaluation's 50% sign flip of shear, translate
      and rotate magnitudes (spec §4.2); off by default (search semantics).
    method: see `space.apply_chain_batch` ("auto": sequential on CPU).
    offset: global index of the first example, for per-example keys that do
      not depend on the batch size.

  Returns:
    float32[B, H, W, 3] with integer values in [0, 255].

  Raises:
    ImageContractError: `images` breaks the contract: not rank 4, not 3
      channels, neither uint8 nor floating point; for concrete (not traced)
      values also NaN or infinite, outside [0, 255], or [0, 1]-scaled.
  """
  space_lib.check_images(images, rank=4, where="apply_policy")
  images = jnp.asarray(images).astype(jnp.float32)
  if policy.num_layers == 0:
    return images
  k_index, k_apply = _policy_keys(key)
  indices = sample_indices(k_index, policy.probs, images.shape[0],
                           offset=offset)
  # The images are checked: skip `apply_chain_batch`'s check (a uint8 image
  # of 0s and 1s is valid, its float32 copy would look [0, 1]-scaled).
  return space_lib._apply_chain_batch(  # pylint: disable=protected-access
      k_apply, images, indices, policy.space, random_sign=random_sign,
      method=method, offset=offset)
