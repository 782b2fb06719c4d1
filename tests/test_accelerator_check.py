"""benchmarks/accelerator_check.py --tiny: every section runs on the CPU and
its cross-checks hold (the timings of a tiny run are not asserted)."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_accelerator_check_tiny_runs_every_section(tmp_path):
  out = tmp_path / "check.json"
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "accelerator_check.py"),
       "--tiny", "--deadline_s=900", f"--json_out={out}"],
      capture_output=True, text=True, timeout=900, cwd=REPO)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["tiny"]
  # (a) both reward paths, both stages, and the projection.
  search = result["search"]
  steps = [r for r in search if "s_per_step" in r]
  assert {(r["reward"], r["stage"]) for r in steps} == {
      (m, s) for m in ("jvp", "jacobian") for s in ("stage 1", "stage k")}
  assert all(r["s_per_step"] > 0 and r["compiled_bytes"] > 0 for r in steps)
  assert len([r for r in search if "projected_hours" in r]) == 2
  # (b) 1 model x {1, BA} copies x {f32, bf16}, none skipped.
  train = result["train"]
  assert len(train) == 4 and all(r["images_per_s"] > 0 for r in train)
  assert {(r["copies"], r["bf16"]) for r in train} == {
      (1, False), (1, True), (2, False), (2, True)}
  # (c) the two chain methods give the same pixels.
  assert result["chain"]["pixels_identical"] is True
  # (d) JVP and vmap(grad) rewards agree to float32 rounding.
  assert result["rewards"]["max_relative_difference"] < 1e-4
  assert "(d) rewards" in proc.stdout and "| jacobian | stage k |" in (
      proc.stdout)
