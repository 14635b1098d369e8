"""Several processes: torchrun for real (2 ranks, gloo), hand-made shards, `k3eval runs merge`.

The result of a sharded run must equal a single-process run's: the same files (sha256) and the same seeds. All
processes use one thread each (torchrun's default), so float reductions run in the same order everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k3eval.errors import UserError
from k3eval.generate import generate_run, merge_run, parse_shard, shard_items, work_items
from k3eval.generators import get_entry
from k3eval.prompts.core import Prompt, PromptSet
from k3eval.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "peak_memory_mb", "text_seconds", "denoise_seconds", "decode_seconds"}
PROMPTS = PromptSet("dist", [Prompt(f"d{i}", f"a picture of thing number {i}", "c") for i in range(5)])


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _rows(run_dir: Path) -> list[dict]:
    df = RunFolder(run_dir).read_manifest()
    return [{k: v for k, v in r.items() if k not in TIMING} for r in df.to_dict("records")]


@pytest.fixture(scope="module")
def prompt_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "prompts.csv"
    path.write_text("id,prompt\n" + "".join(f"{p.id},{p.text}\n" for p in PROMPTS))
    return path


def test_parse_shard_and_share(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == (1, 3)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    items = work_items(PROMPTS, 2, 0)
    shares = [shard_items(items, r, 3, batch_size=2) for r in range(3)]
    assert sorted((i.prompt_id, i.sample) for s in shares for i in s) == sorted((i.prompt_id, i.sample) for i in items)
    assert [i.prompt_id for i in shares[0]] == ["d0", "d0", "d3", "d3"]  # whole batches: d0/0, d0/1 then d3/0, d3/1


def test_torchrun_two_processes_equal_one(tmp_path, prompt_csv):
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["generate", "tiny-sd", "--prompts", str(prompt_csv), "--samples", "2", "--batch-size", "2", "--quiet"]
    single = subprocess.run([sys.executable, "-m", "k3eval", *common, "--out", str(tmp_path / "one")], cwd=ROOT,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    # a folder an earlier job left before its first image (killed while loading, with other settings): the ranks of
    # the corrected job take it over instead of refusing it as another run
    from k3eval.generate import run_info
    from k3eval.prompts import load_prompt_set

    dead = RunFolder(tmp_path / "two")
    dead.write_info({**run_info(get_entry("tiny-sd").create({"steps": 3}), load_prompt_set(str(prompt_csv)), 2, 0),
                     "status": "running"})
    multi = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "k3eval", *common,
                            "--out", str(tmp_path / "two")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    two = RunFolder(tmp_path / "two")
    assert not two.journal_dir.exists() and two.read_info()["status"] == "complete"
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")
    for r in _rows(tmp_path / "one"):
        assert (tmp_path / "two" / r["path"]).read_bytes() == (tmp_path / "one" / r["path"]).read_bytes()


@pytest.fixture(scope="module")
def tiny_sd():
    gen = get_entry("tiny-sd").create()
    gen.ensure_loaded()
    return gen


def test_hand_made_shards_and_merge(tmp_path, tiny_sd):
    generate_run(tiny_sd, PROMPTS, tmp_path / "one", samples=2, batch_size=2, progress=False)
    out = tmp_path / "sharded"
    run = RunFolder(out)
    with pytest.raises(UserError, match="--force with --shard"):
        generate_run(tiny_sd, PROMPTS, out, samples=2, batch_size=2, shard=(0, 3), force=True, progress=False)

    generate_run(tiny_sd, PROMPTS, out, samples=2, batch_size=2, shard=(2, 3), progress=False)
    generate_run(tiny_sd, PROMPTS, out, samples=2, batch_size=2, shard=(0, 3), progress=False)
    assert not run.manifest_path.exists() and len(run.shards_done(3)) == 2  # waits for the third shard
    assert len(run.read_manifest()) == 6  # readers already see journaled rows

    # `runs merge` consolidates what is there and says what is missing; the last shard then completes the run.
    totals = merge_run(out)
    assert totals["missing"] == 4 and run.read_info()["status"] == "incomplete" and run.manifest_path.exists()
    summary = generate_run(tiny_sd, PROMPTS, out, samples=2, batch_size=2, shard=(1, 3), progress=False)
    assert summary.generated == 4 and summary.run_counts == {}  # shards 0 and 2 left no markers after the merge
    merge_run(out)
    assert run.read_info()["status"] == "complete" and not run.journal_dir.exists()
    assert _rows(out) == _rows(tmp_path / "one")


def test_all_shards_finishing_merges_without_a_command(tmp_path, tiny_sd):
    out = tmp_path / "auto"
    for rank in (1, 0):
        summary = generate_run(tiny_sd, PROMPTS.select(limit=2), out, batch_size=1, shard=(rank, 2), progress=False)
    assert summary.run_counts == {"ok": 2}
    run = RunFolder(out)
    assert run.manifest_path.exists() and not run.journal_dir.exists()
    assert run.read_info()["status"] == "complete"


def test_merge_cli(tmp_path, tiny_sd):
    out = tmp_path / "cli"
    generate_run(tiny_sd, PROMPTS.select(limit=2), out, shard=(0, 2), progress=False)
    merge = [sys.executable, "-m", "k3eval", "runs", "merge", str(out)]
    proc = subprocess.run(merge, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # an incomplete run is merged, said so, and exits 1 unless --allow-incomplete
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "1 of 2 images" in proc.stdout and "1 missing" in proc.stdout
    assert "is incomplete: 1 of 2 images are missing" in proc.stderr and "--allow-incomplete" in proc.stderr
    proc = subprocess.run(merge + ["--allow-incomplete"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 images" in proc.stdout and RunFolder(out).read_info()["status"] == "incomplete"
    shutil.rmtree(out / "images")
    (out / "run.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "k3eval", "runs", "merge", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "no run.json" in proc.stderr
