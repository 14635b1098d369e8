"""benchmarks/perf/gpu_suite.py at its smallest setting on the CPU, so the prepared GPU script cannot rot: every
section runs, in one process, offline, and writes figures that are internally consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_runs_whole_at_its_tiny_setting(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "K3EVAL_CACHE": os.environ["K3EVAL_CACHE"], "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf" / "gpu_suite.py"), "--tiny", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    res = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert res["mode"] == "tiny" and res["device"] == "cpu" and "No GPU was lent" in res["note"]
    rows = res["unet"]["rows"]
    assert {(r["unet"], r["attention"]) for r in rows} == {("kandinsky3", "sdpa"), ("kandinsky3", "classic"),
                                                         ("kandinsky3-flash", "sdpa")}
    assert all(r["seconds_per_eval"] > 0 and r["flops"] > 0 for r in rows)
    # the same network at the same batch: nearly the same FLOPs whatever the attention implementation (the counter
    # books SDPA and the classic processor's bmm + softmax a little differently)
    flops = [r["flops"] for r in rows if r["unet"] == "kandinsky3"]
    assert max(flops) / min(flops) < 1.05
    assert res["unet"]["compile"].startswith("not run") and res["targets"]["met"] is None
    e2e = res["end_to_end"]
    assert (e2e["kandinsky3"]["unet_evals"], e2e["kandinsky3-flash"]["unet_evals"]) == (100, 4)
    assert e2e["flash_speedup"] == pytest.approx(e2e["kandinsky3"]["seconds_per_image"]
                                                 / e2e["kandinsky3-flash"]["seconds_per_image"])
    assert e2e["flash_speedup"] > 1.0  # 25 times fewer U-Net passes
    fid = res["fid_extraction"]
    # the three tools read the same PNGs with the same Inception file: the same features, image by image
    assert fid["max_feature_difference_vs_torch_fidelity"] < 1e-3
    assert fid["max_feature_difference_vs_torchmetrics"] < 1e-3
    assert fid["images"] == 6 and all(fid[t]["images_per_s"] > 0 for t in ("k3eval", "torch_fidelity", "torchmetrics"))
    over = res["generate_overhead"]
    assert len(over["bare_seconds"]) == len(over["k3eval_seconds"]) == 2
    md = (tmp_path / "gpu_suite.md").read_text()
    for heading in ("## U-Net", "## End to end", "## FID feature extraction", "## generate overhead"):
        assert heading in md
    assert set(res["seconds"]) >= {"build", "unet", "end_to_end", "fid", "overhead", "total", "process_cpu"}
