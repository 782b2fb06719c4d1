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

import csv
import dataclasses
import datetime
import importlib.metadata
import io
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from deepaa_jax import errors
from deepaa_jax import official
from deepaa_jax import policy_format
from deepaa_jax import space as space_lib
from deepaa_jax import utils
from deepaa_jax.errors import PolicyFileError

Array = jax.Array

FORMAT = policy_format.FORMAT
KINDS = ("none", "standard", "standard_cutout", "trivialaugment", "deepta",
         "official", "file")
# Baselines that can follow a policy (`followed_by`, config.policy.then):
# those made of fixed layers.
THEN_KINDS = ("standard", "standard_cutout", "trivialaugment")


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
    """The space with the official EVALUATION's level values (float64
    m / 12, spec §4.1; `space.level_fractions`): a policy is applied
    (`apply_policy`, training, previews, audits) as the official evaluation
    applies it. The search keeps the float32 search table
    (`space.get_space(name)`)."""
    return space_lib.get_space(self.space_name, phase="evaluation")

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
      # + 0.0: a one-hot layer has entropy 0.0, not -0.0 ("-0.00 nats").
      return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1) + 0.0

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
  """ValueError unless float64[K, T] `probs` are K distributions (the rule
  of `policy_format.row_problem`, shared with the file validator)."""
  problem = policy_format.row_problem(probs)
  if problem:
    raise ValueError(f"{what}: {problem}")


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

def _format_spaces() -> Dict[str, space_lib.SearchSpace]:
  """Space name -> space: the tables `policy_format` checks files against."""
  return {name: space_lib.get_space(name) for name in ("cifar", "imagenet")}


def load_official_npz(path, *, cutout60: bool = True,
                      min_layers: int = 0) -> Policy:
  """Reads one of the authors' `policy_DeepAA_*.npz` files (spec §3.1).

  Validated by `policy_format.from_npz` (the validator `pil.DeepAAPolicy`
  uses too): the keys, shapes, `ops`/`mags` tables and op names against our
  spaces; the space is picked from op 17's name. The shipped ImageNet files
  name op 16 "RandCutout" although the search code that produced them has
  "RandCutout60" (spec §3.1): with `cutout60=True` (default, the paper's and
  the search code's reading) op 16 is the 60 px cutout of the ImageNet space;
  the decision is logged either way. With `cutout60=False` the file is
  refused, since a 16 px cutout has no place in the ImageNet space.

  Probabilities are float32 in the files; they are renormalised in float64
  (rows are ~1e-7 off; nothing is truncated).

  Args:
    path: the file (local or a URI, `utils.as_path`).
    cutout60: see above.
    min_layers: the fewest layers accepted (`make_policy` asks 1).

  Raises:
    FileNotFoundError: no such file.
    PolicyFileError: the file is not an npz archive (text, JSON, a .npy
      array, a directory), is truncated or corrupt, lacks keys, has fields of
      the wrong shape or type, does not match a search space, or has fewer
      than `min_layers` layers; the message names the file.
  """
  path = utils.as_path(path)
  contents = policy_format.from_npz(
      policy_format.read_npz(path), str(path), _format_spaces(),
      name=policy_format.official_name(path.stem), cutout60=cutout60,
      min_layers=min_layers)
  meta = provenance(source=f"official npz: {path.name}")
  if contents.decision:
    logging.warning("%s: %s", path.name, contents.decision)
    meta["op16_decision"] = contents.decision
  return Policy(contents.probs, contents.space, contents.name, meta)


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


def load_policy(path, *, space_name: Optional[str] = None,
                min_layers: int = 0) -> Policy:
  """Reads a JSON policy written by `save_policy`.

  Validated by `policy_format.from_json` (the validator `pil.DeepAAPolicy`
  uses too). Layers are taken in the order of their "layer" fields.

  Args:
    path: the file (local or a URI, `utils.as_path`).
    space_name: the space the policy must be over; None accepts any.
    min_layers: the fewest layers accepted (`make_policy` asks 1: no
      augmentation is the baseline "none", not an empty file).

  Raises:
    FileNotFoundError: no such file.
    PolicyFileError: the file is not UTF-8 JSON (binary, an npz, truncated),
      lacks fields or has fields of the wrong type (probabilities that are
      strings or lists), names an unknown space, disagrees with the space's
      transform table, has a `num_layers` or "layer" fields that disagree
      with its layer list, has rows that are not probability distributions
      or fewer than `min_layers` layers; or it is over another space than
      `space_name` (when given). The message names the file and the entry.
  """
  path = utils.as_path(path)
  contents = policy_format.from_json(
      policy_format.read_json(path), str(path), _format_spaces(),
      space_name=space_name, min_layers=min_layers, default_name=path.stem)
  return Policy(contents.probs, contents.space, contents.name,
                contents.metadata)


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
    # An official name or file name not present here: fetched (and cached)
    # from the authors' repository, sha256-checked (`official.fetch`).
    path = utils.as_path(official.resolve(config.path))
    if not path.is_file():
      raise FileNotFoundError(f"config.policy.path: no policy file at {path}")
    # At least one layer: no augmentation is kind="none", not an empty file.
    policy = (load_official_npz(path, min_layers=1) if kind == "official"
              else load_policy(path, min_layers=1))
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
  return space_lib.apply_chain_batch_unchecked(
      k_apply, images, indices, policy.space, random_sign=random_sign,
      method=method, offset=offset)


# ---------------------------------------------------------------------------
# The expected-ops table.
# ---------------------------------------------------------------------------


def expected_ops_table(policy: Policy) -> List[Dict[str, Any]]:
  """Per layer: how much a policy does to an image, in expectation.

  Every layer applies exactly one transform, so with p_k = p_k(Identity):
    expected_ops      E[non-Identity transforms drawn in layer k] = 1 - p_k;
                      the "total" row sums them (linearity of expectation).
    random_ops        the part of it that is RandFlip, RandCutout or RandCrop
                      (RandCutout60, RandResizeCrop for ImageNet): the
                      baseline-like random ops.
    p_untouched       P(layers 1..k all drew Identity) = prod_{j<=k} p_j; the
                      "total" row is the whole chain's.
    p_untouched_flip  the same when a RandFlip whose coin did not flip (half
                      of them) also counts as untouched:
                      prod_{j<=k} (p_j + p_j(RandFlip) / 2).
  A drawn transform is counted as an op even when it happens to leave an
  image as it was (Equalize of an equalized image, RandCrop at offset (4, 4),
  a resized crop of the whole image): the table counts draws, not pixels.

  Args:
    policy: the policy (K layers over T transforms).

  Returns:
    K rows {"layer": k (1-based), "p_identity", "expected_ops", "random_ops",
    "p_untouched", "p_untouched_flip"} and a last row {"layer": "total",
    "p_identity": None, ...} with the sums and the whole-chain probabilities.
  """
  mass = policy.op_mass()
  rows, untouched, untouched_flip = [], 1.0, 1.0
  for k in range(policy.num_layers):
    p_id = float(mass[k, space_lib.IDENTITY])
    untouched *= p_id
    untouched_flip *= p_id + 0.5 * float(mass[k, space_lib.FLIP])
    rows.append({"layer": k + 1, "p_identity": p_id,
                 "expected_ops": 1.0 - p_id,
                 "random_ops": float(mass[k, list(space_lib.RANDOM_OPS)].sum()),
                 "p_untouched": untouched,
                 "p_untouched_flip": untouched_flip})
  rows.append({"layer": "total", "p_identity": None,
               "expected_ops": float(sum(r["expected_ops"] for r in rows)),
               "random_ops": float(sum(r["random_ops"] for r in rows)),
               "p_untouched": untouched, "p_untouched_flip": untouched_flip})
  return rows


_OPS_COLUMNS = (("layer", "layer"), ("p_identity", "p(Identity)"),
                ("expected_ops", "E[non-Identity ops]"),
                ("random_ops", "of which random ops"),
                ("p_untouched", "P(untouched)"),
                ("p_untouched_flip",
                 "P(untouched), unflipped RandFlip counted"))


def _ops_cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
  return str(value)


def expected_ops_markdown(rows: List[Dict[str, Any]]) -> str:
  """The `expected_ops_table` rows as a markdown table with a legend."""
  lines = ["| " + " | ".join(title for _, title in _OPS_COLUMNS) + " |",
           "|" + "---|" * len(_OPS_COLUMNS)]
  for row in rows:
    cells = (_ops_cell(row[k]) for k, _ in _OPS_COLUMNS)
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(
      "Per layer k: E[non-Identity ops] = 1 - p_k(Identity) (one transform "
      "per layer; random ops = RandFlip/RandCutout/RandCrop count as ops, "
      "the table counts draws, not changed pixels); P(untouched) = "
      "prod_{j<=k} p_j(Identity) (layers 1..k all drew Identity); the last "
      "column also counts a RandFlip whose coin did not flip (half of them) "
      "as untouched. The total row: sums over layers, whole-chain "
      "probabilities.")
  return "\n".join(lines)


def expected_ops_csv(rows: List[Dict[str, Any]]) -> str:
  """The `expected_ops_table` rows as CSV (column names as in the rows)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow([k for k, _ in _OPS_COLUMNS])
  for row in rows:
    writer.writerow(["" if row[k] is None else
                     repr(row[k]) if isinstance(row[k], float) else row[k]
                     for k, _ in _OPS_COLUMNS])
  return buffer.getvalue()
