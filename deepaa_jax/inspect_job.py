"""The inspect job: what a policy does, before anyone trains with it.

`python -m deepaa_jax.main --config=configs/inspect.py --workdir=runs/inspect
--config.policy.path=PATH` where PATH is our JSON policy, an official npz,
an official name (cifar_1, cifar_2, imagenet_1, imagenet_2) or a baseline
name (none, standard, standard_cutout, trivialaugment, deepta). It prints the
per-layer summary and the expected-ops table and writes into the workdir:

  policy_summary.txt        the summary, the op-mass table, the ops table
  expected_ops.csv          the ops table (`policy.expected_ops_table`)
  policy_op_mass.png        paper Fig. 3 (`plots.policy_op_mass`)
  policy_magnitudes.png     paper Fig. 5/6 (`plots.policy_magnitudes`)
  policy_preview.png        N images x S draws of the whole chain
  policy_preview_layers.png the first images again, one row per layer

Preview images (`plots.preview_images`): the first test image of each class of
`config.input`, an npz file (the offline CIFAR-10 by default) or a TFDS
dataset (in memory or streamed, as the run reads it); when it cannot be read
(no file, a dataset not prepared) synthetic images
(`plots.synthetic_images`:
gradients and shapes that show geometry and colour changes), with a note on
the console. A policy over the ImageNet space
works on S x S images (its RandCutout60 and RandResizeCrop are sized for
224): the images are resized bilinearly to `config.inspect.image_size`
(0: 224 for ImageNet, the data's own size for CIFAR), so CIFAR images look
blurred there.

Bad or mismatched inputs (no such file, not a policy, a policy over another
space than `config.policy.space`, an unknown baseline name) raise
`errors.PolicyFileError` / `errors.ConfigError`, which `main` prints as one
`ERROR:` line.
"""

from typing import Any, Dict, List, Optional

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import official
from deepaa_jax import plots
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
from deepaa_jax import train as train_lib
from deepaa_jax import utils

OFFICIAL_NAMES = official.NAMES  # cifar_1, cifar_2, imagenet_1, imagenet_2
BASELINES = ("none", "standard", "standard_cutout", "trivialaugment", "deepta")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


# ---------------------------------------------------------------------------
# Which policy.
# ---------------------------------------------------------------------------


def load_any_policy(config) -> policy_lib.Policy:
  """The policy a `config.policy` section of the inspect job names.

  `kind="auto"` (the inspect default) decides from `path`: a baseline name,
  an official name, or a file (an npz archive is read as an official policy,
  anything else as our JSON). Other kinds are those of `policy.make_policy`.
  `space="auto"` accepts the policy's own space (baselines: "cifar").

  Args:
    config: ConfigDict with kind, path, space and num_layers (for deepta).

  Returns:
    The policy.

  Raises:
    errors.ConfigError: an unknown kind or space.
    errors.PolicyFileError: no such file and no such name, a file that is
      not a policy, or a policy over another space than `config.space`.
  """
  kind, path = str(config.kind), str(config.get("path") or "").strip()
  space_name = str(config.get("space") or "auto")
  if space_name not in ("auto",) + config_lib.POLICY_SPACES:
    raise errors.ConfigError(
        f"config.policy.space must be one of "
        f"{('auto',) + config_lib.POLICY_SPACES}, got {space_name!r}")
  if kind == "auto":
    if path in BASELINES:
      kind = path
    elif path in OFFICIAL_NAMES:  # ../shared, the cache, or a download
      kind, path = "official", str(official.fetch(path))
    else:
      kind = "file"  # an npz or JSON file: decided by its first bytes
  elif kind not in policy_lib.KINDS:
    raise errors.ConfigError(
        f"config.policy.kind must be 'auto' or one of {policy_lib.KINDS}, got "
        f"{kind!r}")
  if kind in BASELINES:
    space = space_lib.get_space("cifar" if space_name == "auto" else
                                space_name)
    try:
      return policy_lib.baseline(kind, space,
                                 num_layers=int(config.get("num_layers", 6)))
    except ValueError as e:
      raise errors.ConfigError(f"config.policy: {e}") from e
  policy = _load_file(path, kind)
  if space_name != "auto" and policy.space_name != space_name:
    raise errors.PolicyFileError(
        f"{path}: the policy is over the {policy.space_name!r} space but "
        f"config.policy.space={space_name!r} (set "
        f"--config.policy.space={policy.space_name} or auto)")
  return policy


def _load_file(path: str, kind: str) -> policy_lib.Policy:
  """An official npz (kind "official", or "file" holding a zip) or our JSON."""
  if not path:
    raise errors.ConfigError(
        "config.policy.path is empty; give a JSON policy, an official npz, an "
        f"official name {OFFICIAL_NAMES} or a baseline name {BASELINES}")
  if not utils.resolve_path(path).exists():
    path = official.resolve(path)  # an official file name: fetched
  resolved = utils.resolve_path(path)
  if not resolved.exists():
    names = BASELINES + OFFICIAL_NAMES
    hint = errors.did_you_mean(path, names)
    raise errors.PolicyFileError(
        f"config.policy.path={path!r}: no such file, and not an official name "
        f"{OFFICIAL_NAMES} or a baseline name {BASELINES}{hint}")
  if kind == "file" and not resolved.is_dir():
    with resolved.open("rb") as f:
      if f.read(4) in _ZIP_MAGIC:
        kind = "official"
  try:
    if kind == "official":
      return policy_lib.load_official_npz(resolved)
    return policy_lib.load_policy(resolved)
  except FileNotFoundError as e:  # vanished between the checks
    raise errors.PolicyFileError(f"{resolved}: no such file") from e


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------


def run(config, workdir) -> Dict[str, Any]:
  """The inspect job (`job="inspect"`): summary, tables and plots of a policy.

  Args:
    config: ConfigDict with `seed`, `policy` (see `load_any_policy`), `input`
      (the preview images) and `inspect` (num_images, samples, image_size,
      random_sign, layer_images, top_k).
    workdir: output folder.

  Returns:
    {"policy": Policy, "table": `expected_ops_table` rows, "paths": {name:
    path written}}.
  """
  config_lib.validate(config)
  policy = load_any_policy(config.policy)
  workdir = utils.prepare_workdir(workdir)
  c = config.inspect
  summary = policy.summary(int(c.top_k))
  table = policy_lib.expected_ops_table(policy)
  markdown = policy_lib.expected_ops_markdown(table)
  print(summary)
  print()
  print(markdown)
  paths = {}
  utils.write_bytes(workdir / "policy_summary.txt",
                    summary + "\n\n" + policy.op_mass_markdown() + "\n\n" +
                    markdown + "\n", make_parents=True)
  paths["summary"] = str(workdir / "policy_summary.txt")
  utils.write_bytes(workdir / "expected_ops.csv",
                    policy_lib.expected_ops_csv(table), make_parents=True)
  paths["table_csv"] = str(workdir / "expected_ops.csv")
  paths["op_mass_png"] = str(plots.policy_op_mass(
      workdir / "policy_op_mass.png", policy))
  paths["magnitudes_png"] = str(plots.policy_magnitudes(
      workdir / "policy_magnitudes.png", policy))
  previews, source = plots.write_previews(
      workdir, policy, config.input, seed=int(config.seed),
      num_images=int(c.num_images), samples=int(c.samples),
      image_size=int(c.image_size), random_sign=bool(c.random_sign),
      layer_images=int(c.layer_images))
  print(f"Preview images: {source}")
  paths.update(previews)
  audit = None
  if int(c.audit_step) >= 0:
    audit = audit_rows(policy, seed=int(c.audit_seed),
                       step=int(c.audit_step), examples=int(c.audit_examples),
                       image_size=int(c.audit_image_size),
                       random_sign=bool(c.random_sign))
    print(f"\nTransforms applied by training step {c.audit_step} of a run "
          f"with seed {c.audit_seed}:")
    for row in audit:
      print(f"  example {row['example']}: " + " -> ".join(
          _audit_label(layer) for layer in row["layers"]))
    utils.write_json(workdir / "audit.json", audit)
    paths["audit_json"] = str(workdir / "audit.json")
  for path in paths.values():
    print(f"Wrote {path}")
  return {"policy": policy, "table": table, "paths": paths, "audit": audit}


def audit_rows(policy: policy_lib.Policy, *, seed: int, step: int,
               examples: int, image_size: int = 0,
               random_sign: bool = True) -> List[Dict[str, Any]]:
  """`train.audit_example` for rows 0..examples-1 of training step `step`
  (a run with `config.train.seed=seed`), as JSON-ready records: {"example",
  "layers": [{layer, index, name, sign, draws}]}. `image_size` 0 is 32 for
  the CIFAR space and 224 for the ImageNet space (the random ops' draws
  depend on the image size)."""
  size = image_size or (plots.IMAGENET_PREVIEW_SIZE if policy.space.name ==
                        "imagenet" else 32)
  rows = []
  for example in range(examples):
    layers = train_lib.audit_example(policy, seed=seed, step=step,
                                     example=example,
                                     image_shape=(size, size, 3),
                                     random_sign=random_sign)
    rows.append({"example": example, "layers": [
        {k: v for k, v in layer.items() if k != "randomness"}
        for layer in layers]})
  return rows


def _audit_label(layer: Dict[str, Any]) -> str:
  """'ShearX(m=2, -0.2) x-1', 'RandCrop[top 3, left 5]', ... for one layer."""
  name, draws = layer["name"], layer["draws"]
  op = name.split("(")[0]
  if op == "RandFlip":
    return f"RandFlip[{'flip' if draws['flip'] else 'no flip'}]"
  if op.startswith("RandCutout"):
    cx, cy = draws["cutout_center"]
    return f"{op}[centre {cx:.1f}, {cy:.1f}]"
  if op == "RandCrop":
    return "RandCrop[top {}, left {}]".format(*draws["crop_offsets"])
  if op.startswith("RandResizeCrop"):
    return "{}[box {} {} {} {}]".format(op, *draws["resized_crop_box"])
  return name + (" x-1" if layer["sign"] < 0 else "")


def default_inspect_config():
  """The `config.inspect` section (see `run`)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.num_images = 8  # N preview images (the first test image of each class).
  c.samples = 8  # S draws of the whole chain per image.
  c.image_size = 0  # S x S previews; 0: the data's own (CIFAR), 224 (ImageNet).
  c.random_sign = True  # shear/translate/rotate sign flip, as training does.
  c.layer_images = 2  # images also drawn with one row per layer (0: none).
  c.top_k = 5  # transforms listed per layer in the summary.
  c.audit_step = -1  # audit this training step (-1: no audit): see audit_rows.
  c.audit_seed = 0  # config.train.seed of the audited training run.
  c.audit_examples = 8  # rows 0..N-1 of that step's augmented batch.
  c.audit_image_size = 0  # the run's image side; 0: 32 (CIFAR space), 224 (ImageNet).
  c.lock()
  return c


def inspect_policy_config(path: Optional[str] = None):
  """The `config.policy` section of the inspect job: kind "auto" (the path
  decides), space "auto" (the policy's own)."""
  c = config_lib.policy_config()
  c.kind = "auto"
  c.space = "auto"
  if path is not None:
    c.path = path
  return c
