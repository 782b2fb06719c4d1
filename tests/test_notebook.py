"""Executes experiments/search_layer_colab.ipynb end to end with a tiny config."""

import os

import pytest

from tests.conftest import CIFAR10_NPZ, REPO


@pytest.mark.skipif(not CIFAR10_NPZ.is_file(),
                    reason=f"CIFAR-10 npz not found at {CIFAR10_NPZ}")
def test_search_layer_notebook_runs(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("DEEPAA_NOTEBOOK_TINY", "1")
  # The kernel inherits the environment: fast compiles for a tiny run.
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
  monkeypatch.setenv("DEEPAA_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.setenv("DEEPAA_REPO", str(REPO))
  path = REPO / "experiments" / "search_layer_colab.ipynb"
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(REPO / "experiments")}})
  client.execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells
                    for o in cell.get("outputs", []))
  assert "Policy 'layer_1' over the cifar space, 1 layer(s)" in outputs
  assert (tmp_path / "op_mass.png").is_file()
  assert (tmp_path / "magnitudes.png").is_file()
  assert os.path.getsize(tmp_path / "magnitudes.png") > 10_000
