"""The generate stage on the real tiny pipelines: paired seeds, batch invariance, resume, --force, bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from k3eval.errors import UserError
from k3eval.generate import generate_run
from k3eval.generators import get_entry
from k3eval.prompts.core import Prompt, PromptSet
from k3eval.runs import MANIFEST_COLUMNS, RunFolder
from k3eval.seeds import image_seed

PROMPTS = PromptSet("test", [Prompt(f"p{i}", text, cat) for i, (text, cat) in enumerate([
    ("a red cube on a table", "objects"), ("a portrait of an old man", "people"),
    ("a lighthouse at night", "scenes"), ("two cats playing", "animals"), ("a bowl of soup", "food")])])


@pytest.fixture(scope="module")
def tiny_sd():
    gen = get_entry("tiny-sd").create()
    gen.ensure_loaded()
    return gen


def _pixels(run: RunFolder) -> dict[tuple[str, int], np.ndarray]:
    df = run.read_manifest()
    return {(r["prompt_id"], int(r["sample"])): np.asarray(Image.open(run.image_path(r)).convert("RGB"), dtype=np.int16)
            for r in df.to_dict("records")}


def test_seed_rule_is_the_documented_hash():
    digest = hashlib.sha256(b"7:parti-abc:2").digest()
    assert image_seed(7, "parti-abc", 2) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert image_seed(7, "parti-abc", 2) != image_seed(7, "parti-abc", 1) != image_seed(8, "parti-abc", 1)


def test_run_folder_layout(tmp_path, tiny_sd):
    summary = generate_run(tiny_sd, PROMPTS, tmp_path / "run", samples=2, seed=5, batch_size=3, progress=False)
    assert summary.generated == 10 and summary.status_counts == {"ok": 10}
    run = RunFolder(tmp_path / "run")
    df = run.read_manifest()
    assert list(df.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert len(df) == 10 and not df.duplicated(["prompt_id", "sample"]).any()
    assert not (run.path / ".journal").exists()  # merged into manifest.parquet
    for r in df.to_dict("records"):
        assert r["path"] == f"images/{r['prompt_id']}/{r['sample']}.png"
        assert r["seed"] == image_seed(5, r["prompt_id"], r["sample"])
        data = run.image_path(r).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        assert (r["width"], r["height"], r["steps"], r["status"]) == (64, 64, 2, "ok")
    info = json.loads(run.run_json.read_text())
    assert info["status"] == "complete" and info["totals"]["images"] == 10
    assert info["prompt_set"]["hash"] == PROMPTS.content_hash()
    assert info["generator"]["params"]["steps"] == 2 and "torch" in info["packages"]
    assert info["seed"]["benchmark_seed"] == 5


def test_batch_size_does_not_change_images(tmp_path, tiny_sd):
    generate_run(tiny_sd, PROMPTS, tmp_path / "b1", batch_size=1, progress=False)
    generate_run(tiny_sd, PROMPTS, tmp_path / "b4", batch_size=4, progress=False)
    a, b = _pixels(RunFolder(tmp_path / "b1")), _pixels(RunFolder(tmp_path / "b4"))
    assert a.keys() == b.keys()
    for key in a:
        # float32 batched convolutions may differ in the last bits; after rounding to 8 bits at most a stray level
        diff = np.abs(a[key] - b[key])
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_same_seeds_across_generators(tmp_path, tiny_sd):
    generate_run(tiny_sd, PROMPTS, tmp_path / "sd", samples=2, seed=11, progress=False)
    k3 = get_entry("tiny-kandinsky3").create()
    generate_run(k3, PROMPTS, tmp_path / "k3", samples=2, seed=11, batch_size=2, progress=False)
    cols = ["prompt_id", "sample", "seed"]
    sd = RunFolder(tmp_path / "sd").read_manifest()[cols].sort_values(cols[:2]).reset_index(drop=True)
    kk = RunFolder(tmp_path / "k3").read_manifest()[cols].sort_values(cols[:2]).reset_index(drop=True)
    assert sd.equals(kk)
    assert set(RunFolder(tmp_path / "k3").read_manifest()["status"]) == {"ok"}


def test_resume_regenerates_only_missing_and_broken(tmp_path, tiny_sd):
    out = tmp_path / "run"
    generate_run(tiny_sd, PROMPTS, out, progress=False)
    run = RunFolder(out)
    before = run.read_manifest().set_index("prompt_id")
    deleted, truncated = before.index[1], before.index[3]
    (out / before.loc[deleted, "path"]).unlink()
    t_path = out / before.loc[truncated, "path"]
    t_path.write_bytes(t_path.read_bytes()[:100])
    untouched = out / before.loc[before.index[0], "path"]
    mtime = untouched.stat().st_mtime_ns
    summary = generate_run(tiny_sd, PROMPTS, out, progress=False)
    assert summary.generated == 2 and summary.done_before == 3
    after = run.read_manifest().set_index("prompt_id")
    assert len(after) == 5
    assert after.loc[deleted, "sha256"] == before.loc[deleted, "sha256"]  # same seed, same image
    assert after.loc[truncated, "sha256"] == before.loc[truncated, "sha256"]
    assert untouched.stat().st_mtime_ns == mtime
    again = generate_run(tiny_sd, PROMPTS, out, progress=False)
    assert again.generated == 0


def test_force_regenerates_everything(tmp_path, tiny_sd):
    out = tmp_path / "run"
    generate_run(tiny_sd, PROMPTS, out, progress=False)
    (out / "stray.txt").write_text("x")
    summary = generate_run(tiny_sd, PROMPTS, out, force=True, progress=False)
    assert summary.generated == 5 and summary.done_before == 0


def test_refuses_folder_of_another_generator_or_seed(tmp_path, tiny_sd):
    out = tmp_path / "run"
    generate_run(tiny_sd, PROMPTS.select(limit=1), out, progress=False)
    manifest = (out / "manifest.parquet").read_bytes()
    other = get_entry("tiny-sd").create({"steps": 3})
    with pytest.raises(UserError, match="holds a different run.*steps"):
        generate_run(other, PROMPTS, out, progress=False)
    with pytest.raises(UserError, match="seed: folder has 0, this run has 1"):
        generate_run(tiny_sd, PROMPTS, out, seed=1, progress=False)
    k3 = get_entry("tiny-kandinsky3").create()
    with pytest.raises(UserError, match="generator: folder has 'tiny-sd', this run has 'tiny-kandinsky3'"):
        generate_run(k3, PROMPTS, out, progress=False)
    assert (out / "manifest.parquet").read_bytes() == manifest  # nothing changed


def test_refuses_non_run_folder(tmp_path, tiny_sd):
    out = tmp_path / "not_a_run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and is not a run folder"):
        generate_run(tiny_sd, PROMPTS, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_parameter_errors():
    with pytest.raises(UserError, match="has no parameter 'step'; did you mean 'steps'"):
        get_entry("tiny-sd").create({"step": 3})
    with pytest.raises(UserError, match="'steps' of 'tiny-sd' must be an integer, got 'many'"):
        get_entry("tiny-sd").create({"steps": "many"})
    with pytest.raises(UserError, match="'height' of 'tiny-sd' must be between 1 and 4096"):
        get_entry("tiny-sd").create({"height": 0})
    with pytest.raises(UserError, match="unknown generator 'tiny-sdd'; did you mean 'tiny-sd'"):
        get_entry("tiny-sdd")
