"""The authors' four searched policies: found locally, else fetched once.

`cifar_1`, `cifar_2`, `imagenet_1` and `imagenet_2` are the npz files of the
official repository (github.com/MSU-MLSys-Lab/DeepAA, `policy_port/`). That
repository carries no licence file, so this project does not ship them. A
policy is looked up, on first use, as torchvision looks up its weights:

1. `../shared/official_policies/policy_DeepAA_<name>.npz` (relative to the
   current directory, then to the repository root), when present;
2. the cache, `$DEEPAA_JAX_CACHE/policies` (default
   `~/.cache/deepaa_jax/policies`, under `$XDG_CACHE_HOME` when set), when
   its file has the pinned sha256;
3. a download from the authors' repository at the pinned commit
   (`BASE_URL`, overridden by `$DEEPAA_JAX_POLICY_URL`, e.g. for a mirror),
   checked against the pinned sha256 and only then written to the cache.

A download that cannot be made or that has another sha256 is one
`errors.PolicyFileError` line naming the URL and the fix
(`--config.policy.path=/path/to/policy_DeepAA_<name>.npz`); nothing is
cached then. The pinned hashes are those of the four files at commit
`COMMIT` (the repository's HEAD, 2022-06-10; the files date from its initial
commit and never changed since).

Imports neither JAX nor TensorFlow (`tests/test_reliability.py`).
"""

import hashlib
import os
import pathlib
import tempfile
from typing import Optional
import urllib.error
import urllib.request

from absl import logging

from deepaa_jax import errors

NAMES = ("cifar_1", "cifar_2", "imagenet_1", "imagenet_2")
REPOSITORY = "MSU-MLSys-Lab/DeepAA"
COMMIT = "2e929471fe8f03ec64e2a470cd5df7d05664e757"
BASE_URL = (f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/"
            "policy_port")
# sha256 of `policy_port/policy_DeepAA_<name>.npz` at COMMIT.
SHA256 = {
    "cifar_1":
        "66c53bfc064f88d18b5bdfe5b19ada834190f32d3a602434e60b04062508d500",
    "cifar_2":
        "88458bcb432c8319013ac6e5f76050fb6b79d34e8645a7626c7a43f10827e68e",
    "imagenet_1":
        "c2817ca498c5fe2b987a9cec009a00f9acc09be3c9bec37a513219cdba840ab1",
    "imagenet_2":
        "697a402a3ccb99c62d6af1a97bb3a476ee0d5fe89fcab3fc4764652efa7f3de7",
}
URL_ENV = "DEEPAA_JAX_POLICY_URL"  # replaces BASE_URL (a mirror, the tests)
CACHE_ENV = "DEEPAA_JAX_CACHE"  # the cache root; policies in <root>/policies
SHARED_DIR = os.path.join("..", "shared", "official_policies")
TIMEOUT_S = 30.0
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_MAX_BYTES = 1 << 20  # the files are 7.7 KB; anything this large is wrong


def file_name(name: str) -> str:
  """"cifar_1" -> "policy_DeepAA_cifar_1.npz" (the authors' file name)."""
  return f"policy_DeepAA_{name}.npz"


def url(name: str) -> str:
  """Where `name` is downloaded from: `$DEEPAA_JAX_POLICY_URL` or
  `BASE_URL`, then "/policy_DeepAA_<name>.npz"."""
  base = os.environ.get(URL_ENV) or BASE_URL
  return f"{base.rstrip('/')}/{file_name(name)}"


def cache_dir() -> pathlib.Path:
  """The cache folder (it may not exist yet): `$DEEPAA_JAX_CACHE/policies`,
  else `$XDG_CACHE_HOME/deepaa_jax/policies`, else
  `~/.cache/deepaa_jax/policies`."""
  root = os.environ.get(CACHE_ENV)
  if not root:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    root = os.path.join(xdg, "deepaa_jax")
  return pathlib.Path(os.path.expanduser(root)) / "policies"


def name_of(path) -> Optional[str]:
  """The official name that `path` stands for, else None: an official name
  itself ("cifar_1") or any path whose file name is the authors' one
  (".../policy_DeepAA_cifar_1.npz", e.g. the `../shared` path of a config
  in a clone without `../shared`)."""
  text = os.fspath(path).strip()
  if text in NAMES:
    return text
  base = text.replace("\\", "/").rsplit("/", 1)[-1]
  for name in NAMES:
    if base == file_name(name):
      return name
  return None


def shared_path(name: str) -> Optional[pathlib.Path]:
  """The `../shared` copy (current directory, then repository root), if
  present."""
  relative = pathlib.Path(SHARED_DIR) / file_name(name)
  for base in (pathlib.Path.cwd(), _REPO_ROOT):
    if (base / relative).is_file():
      return (base / relative).resolve()
  return None


def local_path(name: str) -> pathlib.Path:
  """Where `name` is read from without a download: the `../shared` copy if
  present, else its cache file (which may not exist yet: `fetch` makes
  it). Configs put this path into `config.policy.path`."""
  _check_name(name)
  return shared_path(name) or cache_dir() / file_name(name)


def sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def fetch(name: str, *, timeout: float = TIMEOUT_S) -> pathlib.Path:
  """The file of official policy `name`: shared, cached, or downloaded.

  Args:
    name: one of `NAMES`.
    timeout: seconds to wait for the server (one attempt, no retries).

  Returns:
    A local path of the authors' npz (`../shared` or the cache).

  Raises:
    errors.PolicyFileError: (one line) the download failed, or its sha256
      is not the pinned one; the message gives the URL and the fix.
  """
  _check_name(name)
  shared = shared_path(name)
  if shared is not None:
    return shared
  cached = cache_dir() / file_name(name)
  if cached.is_file():
    if sha256(cached) == SHA256[name]:
      return cached
    logging.warning("Cached official policy %s has another sha256 than the "
                    "pinned one; downloading it again.", cached)
  return _download(name, cached, timeout)


def resolve(path) -> str:
  """`path` itself, unless it names an official policy (`name_of`) that is
  not a file at `path`: then the `fetch`ed file. Remote paths (gs://) are
  returned as they are."""
  text = os.fspath(path)
  name = name_of(text)
  if name is None or "://" in text:
    return text
  if text.strip() not in NAMES and os.path.isfile(os.path.expanduser(text)):
    return text
  return str(fetch(name))


def _check_name(name: str) -> None:
  if name not in NAMES:
    raise errors.ConfigError(
        f"{name!r} is not an official DeepAA policy name; one of {NAMES}")


def _fix(name: str) -> str:
  return (f"Fix: download it by hand (sha256 {SHA256[name]}) and pass "
          f"--config.policy.path=/path/to/{file_name(name)}, or put it in "
          f"{cache_dir()}")


def _download(name: str, target: pathlib.Path,
              timeout: float) -> pathlib.Path:
  """Downloads `name` from `url(name)`, checks its sha256, writes it to
  `target` atomically (a temporary file renamed)."""
  where = url(name)
  try:
    # A fresh opener: it reads the proxy settings of now (urlopen's global
    # one keeps those of its first use).
    with urllib.request.build_opener().open(where,
                                            timeout=timeout) as response:
      data = response.read(_MAX_BYTES + 1)
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    raise errors.PolicyFileError(
        f"official policy {name!r} is not in {SHARED_DIR} nor cached, and "
        f"it could not be downloaded from {where} ({type(e).__name__}: "
        f"{' '.join(str(reason).split())}). {_fix(name)}") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != SHA256[name]:
    raise errors.PolicyFileError(
        f"the file downloaded from {where} ({len(data)} bytes) has sha256 "
        f"{digest}, not the pinned {SHA256[name]}: refused, nothing cached. "
        f"{_fix(name)}")
  tmp = None
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, target)
  except OSError as e:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)
    raise errors.PolicyFileError(
        f"official policy {name!r} was downloaded from {where} but cannot be "
        f"cached in {target.parent} ({type(e).__name__}: {e}); set "
        f"${CACHE_ENV} to a writable folder, or pass "
        f"--config.policy.path=/path/to/{file_name(name)}") from None
  logging.info("Official policy %s downloaded from %s (sha256 checked) into "
               "%s", name, where, target)
  return target


__all__ = ["BASE_URL", "CACHE_ENV", "COMMIT", "NAMES", "SHA256", "URL_ENV",
           "cache_dir", "fetch", "file_name", "local_path", "name_of",
           "resolve", "url"]
