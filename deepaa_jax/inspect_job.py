"""The inspect job: what a policy does, before anyone trains with it.

`python -m deepaa_jax.main --config=configs/inspect.py --workdir=runs/inspect
--config.policy.path=PATH` where PATH is our JSON policy, an official npz,
an official name (cifar_1, cifar_2, imagenet_1, imagenet_2) or a baseline
name (none, standard, standard_cutout, trivialaugment, deepta). It prints the
per-layer summary and the expected-ops table and writes into the workdir:

  policy_summary.txt        the summary, the op-mass table, the ops table
  expected_ops.csv          the ops table (`expected_ops_table`)
  policy_op_mass.png        paper Fig. 3 (`plots.policy_op_mass`)
  policy_magnitudes.png     paper Fig. 5/6 (`plots.policy_magnitudes`)
  policy_preview.png        N images x S draws of the whole chain
  policy_preview_layers.png the first images again, one row per layer

Preview images (`preview_images`): the first test image of each class of
`config.input`, an npz file (the offline CIFAR-10 by default) or a TFDS
dataset (in memory or streamed, as the run reads it); when it cannot be read
(no file, a dataset not prepared) synthetic images (`synthetic_images`:
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

import csv
import io
import math
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from deepaa_jax import config as config_lib
from deepaa_jax import errors
from deepaa_jax import input_pipeline
from deepaa_jax import official
from deepaa_jax import plots
from deepaa_jax import policy as policy_lib
from deepaa_jax import space as space_lib
from deepaa_jax import streaming
from deepaa_jax import train as train_lib
from deepaa_jax import utils

OFFICIAL_NAMES = official.NAMES  # cifar_1, cifar_2, imagenet_1, imagenet_2
BASELINES = ("none", "standard", "standard_cutout", "trivialaugment", "deepta")
IMAGENET_PREVIEW_SIZE = 224  # S of the ImageNet space's ops (cutout 60 px).
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
# The expected-ops table.
# ---------------------------------------------------------------------------


def expected_ops_table(policy: policy_lib.Policy) -> List[Dict[str, Any]]:
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
    policy: the policy.

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


_COLUMNS = (("layer", "layer"), ("p_identity", "p(Identity)"),
            ("expected_ops", "E[non-Identity ops]"),
            ("random_ops", "of which random ops"),
            ("p_untouched", "P(untouched)"),
            ("p_untouched_flip", "P(untouched), unflipped RandFlip counted"))


def _cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
  return str(value)


def table_markdown(rows: List[Dict[str, Any]]) -> str:
  """The `expected_ops_table` rows as a markdown table with a legend."""
  lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |",
           "|" + "---|" * len(_COLUMNS)]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row[k]) for k, _ in _COLUMNS) + " |")
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


def table_csv(rows: List[Dict[str, Any]]) -> str:
  """The `expected_ops_table` rows as CSV (column names as in the rows)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow([k for k, _ in _COLUMNS])
  for row in rows:
    writer.writerow(["" if row[k] is None else
                     repr(row[k]) if isinstance(row[k], float) else row[k]
                     for k, _ in _COLUMNS])
  return buffer.getvalue()


# ---------------------------------------------------------------------------
# Preview images.
# ---------------------------------------------------------------------------


def synthetic_images(num: int, size: int = 32) -> np.ndarray:
  """uint8[num, size, size, 3]: deterministic stand-ins for real images.

  A colour gradient background, a filled disc off centre, a bar along the
  top-left edges and a dark square, with a hue that changes per image: every
  geometric op (shear, translate, rotate, flip, crop) moves something
  asymmetric, and every colour op has colours and edges to change.
  """
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
  out = []
  for i in range(num):
    phase = 2 * math.pi * i / max(num, 1)
    base = np.stack([0.5 + 0.4 * np.cos(phase + 3 * xx),
                     0.5 + 0.4 * np.cos(phase + 2 + 3 * yy),
                     0.5 + 0.4 * np.cos(phase + 4 + 2 * (xx + yy))], -1)
    disc = (xx - 0.62) ** 2 + (yy - 0.58) ** 2 < 0.05
    base[disc] = [0.95, 0.85 - 0.3 * (i % 2), 0.2 + 0.1 * (i % 3)]
    bar = (yy < 0.14) & (xx < 0.75) | (xx < 0.14) & (yy < 0.5)
    base[bar] = [0.1, 0.2, 0.7]
    square = (np.abs(xx - 0.3) < 0.1) & (np.abs(yy - 0.75) < 0.1)
    base[square] = 0.08
    out.append(base)
  return np.clip(np.rint(np.stack(out) * 255), 0, 255).astype(np.uint8)


def _npz_test_images(path, num: int) -> np.ndarray:
  """The first test image of classes 0, 1, ... (cycling) of an npz dataset;
  only the test members are read."""
  with np.load(path, allow_pickle=False) as data:
    images = np.asarray(data["test_images"])
    labels = (np.asarray(data["test_labels"]).reshape(-1)
              if "test_labels" in data.files else np.arange(len(images)))
  firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
  rest = np.setdiff1d(np.arange(len(images)), firsts)
  order = firsts + rest.tolist()
  picked = images[np.asarray(order[:num], np.int64)]
  if picked.dtype != np.uint8 or picked.ndim != 4 or picked.shape[-1] != 3:
    raise ValueError(f"test_images are {picked.dtype}{list(picked.shape)}, "
                     "not uint8[N, H, W, 3]")
  return picked


def _as_dict(config) -> Dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def preview_images(input_config, space: space_lib.SearchSpace, *,
                   num: int = 8, image_size: int = 0
                   ) -> Tuple[np.ndarray, str]:
  """Images to preview a policy on, and where they come from.

  Args:
    input_config: a `config.input` section (`input_pipeline`): an npz
      source that can be read, or a TFDS one (in memory or streamed;
      `input_pipeline.tfds_test_images`, at S x S when the run reads them
      so), gives its first test image of each class; the default CIFAR-10
      npz, when absent, its TFDS cifar10 if prepared; anything else (a
      missing or unreadable file or dataset) gives `synthetic_images`.
    space: the policy's space; the ImageNet space's images are brought to
      `IMAGENET_PREVIEW_SIZE` (224) unless `image_size` says otherwise.
    num: number of images.
    image_size: S > 0 resizes to S x S (bilinear); 0 = the data's own size
      (CIFAR space, 32 for the synthetic images) or 224 (ImageNet space).

  Returns:
    (uint8[num, S, S, 3], a one-line description of their source).
  """
  source = None
  images = None
  tfds_config = None  # read the dataset's own images from TFDS
  if str(input_config.get("source", "npz")) == "npz":
    path = utils.resolve_path(input_config.get("npz_path") or "")
    if path.is_file():
      try:
        images = _npz_test_images(path, num)
        source = f"the first test image of each class of {path}"
      except Exception as e:  # pylint: disable=broad-except
        source = (f"synthetic images ({path} could not be read: "
                  f"{type(e).__name__}: {str(e)[:120]})")
    else:
      source = f"synthetic images (no npz file at {path})"
      if (str(input_config.get("name")) == "cifar10"
          and input_pipeline.is_default_npz_path(path)):
        # A clone without ../shared trains on TFDS cifar10 (if prepared).
        import ml_collections  # pylint: disable=g-import-not-at-top
        tfds_config = ml_collections.ConfigDict(dict(
            _as_dict(input_config), source="tfds", pipeline="memory"))
  else:
    tfds_config = input_config
  if tfds_config is not None:
    try:
      images, source = input_pipeline.tfds_test_images(
          tfds_config, num, streams=streaming.wants_streaming(tfds_config))
    except Exception as e:  # pylint: disable=broad-except
      why = (f"TFDS {str(input_config.get('name'))!r} could not be read: "
             f"{type(e).__name__}: {' '.join(str(e).split())[:120]}")
      source = (f"{source[:-1]}; {why})" if source else
                f"synthetic images ({why})")
  size = image_size or (IMAGENET_PREVIEW_SIZE if space.name == "imagenet"
                        else 0)
  if images is None:
    images = synthetic_images(num, size or 32)
    source += f" at {images.shape[1]}x{images.shape[2]}"
  if size and images.shape[1:3] != (size, size):
    resized = jax.image.resize(images.astype(np.float32),
                               (len(images), size, size, 3), "bilinear")
    images = np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)
    source += f", resized to {size}x{size}"
  return images, source


def write_previews(workdir, policy: policy_lib.Policy, input_config, *,
                   seed: int = 0, num_images: int = 8, samples: int = 8,
                   image_size: int = 0, random_sign: bool = True,
                   layer_images: int = 0) -> Tuple[Dict[str, str], str]:
  """Writes `policy_preview.png` (and, with `layer_images` > 0,
  `policy_preview_layers.png` for that many of the images) into `workdir`.

  Args:
    workdir: output folder (local or `gs://`).
    policy: the policy.
    input_config: the `config.input` section the images come from
      (`preview_images`).
    seed: PRNG seed of the draws.
    num_images, samples: N images x S draws.
    image_size: see `preview_images`.
    random_sign: as training applies a policy (`config.train.random_sign`,
      default True); captions give the value each op received.
    layer_images: images shown with one row per layer.

  Returns:
    ({"preview_png": path[, "preview_layers_png": path]}, a one-line
    description of the images' source).
  """
  workdir = utils.as_path(workdir)
  images, source = preview_images(input_config, policy.space, num=num_images,
                                  image_size=image_size)
  preview = plots.sample_preview(jax.random.key(seed), policy, images,
                                 samples=samples, random_sign=random_sign)
  sign = ", random sign" if random_sign else ""
  out = {"preview_png": str(plots.draw_preview(
      workdir / "policy_preview.png", preview, name=policy.name,
      title=(f"{policy.name}: {policy.num_layers} layer(s); {len(images)} "
             f"image(s) x {samples} draws of the chain{sign}")))}
  if layer_images > 0 and policy.num_layers > 0:
    part = plots.PolicyPreview(preview.stages[:layer_images],
                               preview.indices[:layer_images],
                               preview.labels[:layer_images])
    out["preview_layers_png"] = str(plots.draw_preview(
        workdir / "policy_preview_layers.png", part, name=policy.name,
        layers=True))
  return out, source


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
  table = expected_ops_table(policy)
  markdown = table_markdown(table)
  print(summary)
  print()
  print(markdown)
  paths = {}
  utils.write_bytes(workdir / "policy_summary.txt",
                    summary + "\n\n" + policy.op_mass_markdown() + "\n\n" +
                    markdown + "\n", make_parents=True)
  paths["summary"] = str(workdir / "policy_summary.txt")
  utils.write_bytes(workdir / "expected_ops.csv", table_csv(table),
                    make_parents=True)
  paths["table_csv"] = str(workdir / "expected_ops.csv")
  paths["op_mass_png"] = str(plots.policy_op_mass(
      workdir / "policy_op_mass.png", policy))
  paths["magnitudes_png"] = str(plots.policy_magnitudes(
      workdir / "policy_magnitudes.png", policy))
  previews, source = write_previews(
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
  size = image_size or (IMAGENET_PREVIEW_SIZE if policy.space.name ==
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
