"""Run identity: a run folder accepts only the same run, and a command that fails before its first image leaves
nothing behind.

The generator is the seeded-noise one of test_crash_safety (a user-added Generator subclass), at 16x16 pixels, so
every run takes milliseconds and the tests are about the folder, not the images.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from test_crash_safety import NoiseGenerator

from k3eval.errors import UserError
from k3eval.generate import generate_run, merge_run
from k3eval.prompts import load_prompt_set
from k3eval.runs import RunFolder, load_run


def noise(dtype: str | None = None, **params) -> NoiseGenerator:
    return NoiseGenerator("noise", {"height": 16, "width": 16, **params}, dtype=dtype)


class FailingGenerator(NoiseGenerator):
    """Raises `error` on batch number `fail_on` (0-based), like a pipeline whose input checks refuse a setting."""

    fail_on = 0
    error: BaseException = ValueError("`height` and `width` have to be divisible by 8 but are 63 and 64.")

    def load(self) -> None:
        super().load()
        self.batches = 0

    def generate(self, requests):
        if self.batches == self.fail_on:
            raise self.error
        self.batches += 1
        return super().generate(requests)


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.csv"
    path.write_text("id,prompt,category\np0,a red cube,x\np1,a blue ball,y\np2,a green cone,x\np3,a cat,y\n")
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_prompt_selection_is_refused_with_the_difference_named(tmp_path, prompt_file):
    out = tmp_path / "run"
    prompts = load_prompt_set(str(prompt_file))
    generate_run(noise(), prompts, out, progress=False)
    before = _snapshot(out)
    with pytest.raises(UserError, match=re.escape("prompts: the folder has 4, this run 2, 2 only in the folder "
                                                  "(p2, p3)")):
        generate_run(noise(), prompts.select(limit=2), out, progress=False)
    with pytest.raises(UserError, match=re.escape("prompts: the folder has 4, this run 2, 2 only in the folder "
                                                  "(p0, p2)")):
        generate_run(noise(), prompts.select(categories=["y"]), out, progress=False)
    assert _snapshot(out) == before  # nothing rewritten: not run.json, not prompts.parquet, not the manifest
    totals = merge_run(out)
    assert (totals["images"], totals["expected"], totals["missing"]) == (4, 4, 0)


def test_changed_prompt_file_under_the_same_path_is_another_run(tmp_path, prompt_file):
    out = tmp_path / "run"
    generate_run(noise(), load_prompt_set(str(prompt_file)), out, progress=False)
    prompt_file.write_text(prompt_file.read_text().replace("a blue ball", "a blue cube"))
    with pytest.raises(UserError, match=re.escape("1 with another text (e.g. p1: 'a blue ball' in the folder, "
                                                  "'a blue cube' now)")):
        generate_run(noise(), load_prompt_set(str(prompt_file)), out, progress=False)
    prompt_file.write_text(prompt_file.read_text().replace("p1,a blue cube,y", "p1,a blue ball,x"))
    with pytest.raises(UserError, match="the same ids and texts in another order or with other categories"):
        generate_run(noise(), load_prompt_set(str(prompt_file)), out, progress=False)


def test_the_same_file_by_another_path_is_the_same_run(tmp_path, prompt_file, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    first = generate_run(noise(), load_prompt_set("prompts.csv"), out, progress=False)
    assert first.generated == 4
    link = tmp_path / "sub" / "link.csv"
    link.parent.mkdir()
    link.symlink_to(prompt_file)
    copy = tmp_path / "copy.csv"
    copy.write_bytes(prompt_file.read_bytes())
    for spec in ("./prompts.csv", str(prompt_file), "sub/../prompts.csv", "file:prompts.csv", str(link), str(copy)):
        again = generate_run(noise(), load_prompt_set(spec), out, progress=False)
        assert (again.generated, again.done_before) == (0, 4), spec


@pytest.mark.parametrize("change,named", [
    ({"samples": 2}, "samples: folder has 1, this run has 2"),
    ({"seed": 3}, "seed: folder has 0, this run has 3"),
    ({"params": {"height": 32}}, "params.height: folder has 16, this run has 32"),
    ({"dtype": "fp16"}, "dtype: folder has 'fp32', this run has 'fp16'"),
])
def test_other_generator_settings_are_refused(tmp_path, prompt_file, change, named):
    out = tmp_path / "run"
    prompts = load_prompt_set(str(prompt_file))
    generate_run(noise(), prompts, out, progress=False)
    before = _snapshot(out)
    gen = noise(change.get("dtype"), **change.get("params", {}))
    with pytest.raises(UserError, match=re.escape(named)):
        generate_run(gen, prompts, out, samples=change.get("samples", 1), seed=change.get("seed", 0), progress=False)
    assert _snapshot(out) == before


def test_a_folder_from_an_older_k3eval_resumes_or_is_refused_by_what_it_records(tmp_path, prompt_file):
    out = tmp_path / "run"
    prompts = load_prompt_set(str(prompt_file))
    generate_run(noise(), prompts, out, progress=False)
    run = RunFolder(out)
    info = run.read_info()
    params = info["identity"]["params"]
    # what k3eval 0.1 recorded as identity; the selection hash, samples, dtype and seed rule sat elsewhere in run.json
    info["identity"] = {"generator": "noise", "params": params, "seed": 0, "prompt_set": str(prompt_file)}
    run.write_info(info)
    again = generate_run(noise(), prompts, out, progress=False)
    assert (again.generated, again.done_before) == (0, 4)
    run.write_info(info)
    with pytest.raises(UserError, match=re.escape("prompts: the folder has 4, this run 2")):
        generate_run(noise(), prompts.select(limit=2), out, progress=False)
    with pytest.raises(UserError, match=re.escape("samples: folder has 1, this run has 2")):
        generate_run(noise(), prompts, out, samples=2, progress=False)
    del info["prompt_set"], info["samples"]
    run.write_info(info)
    with pytest.raises(UserError, match="made by an older k3eval, the folder does not record prompts, samples"):
        generate_run(noise(), prompts, out, progress=False)


def test_merge_never_counts_images_of_another_run(tmp_path, prompt_file, capsys):
    """A folder an older k3eval let two selections write into: 4 images, prompts.parquet of the second (2)."""
    out = tmp_path / "run"
    prompts = load_prompt_set(str(prompt_file))
    generate_run(noise(), prompts, out, progress=False)
    run = RunFolder(out)
    run.write_prompts(prompts.select(limit=2).to_frame()[["prompt_id", "prompt", "category"]])
    manifest = run.manifest_path.read_bytes()
    with pytest.raises(UserError, match=r"the manifest holds 2 image\(s\) that are not part of this run's prompts "
                                        r"and samples \(e.g. p2 sample 0\): the folder mixes two runs"):
        merge_run(out)
    assert run.manifest_path.read_bytes() == manifest
    from k3eval.cli import main

    assert main(["runs", "merge", str(out)]) == 2
    err = capsys.readouterr()
    assert "not part of this run" in err.err and "of 2 images" not in err.out


def test_first_batch_value_error_is_a_clean_error_and_leaves_nothing(tmp_path, prompt_file):
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(UserError, match=r"generator 'noise' cannot make images with these settings: `height` and "
                                        r"`width` have to be divisible by 8 but are 63 and 64\."):
        generate_run(FailingGenerator("noise", {}), load_prompt_set(str(prompt_file)), out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.csv"]  # the folders it made are gone too


def test_an_empty_folder_given_as_out_is_left_empty(tmp_path, prompt_file):
    out = tmp_path / "run"
    out.mkdir()
    gen = FailingGenerator("noise", {})
    gen.error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        generate_run(gen, load_prompt_set(str(prompt_file)), out, progress=False)
    assert out.is_dir() and not list(out.iterdir())


def test_a_failure_after_the_first_image_keeps_a_resumable_run(tmp_path, prompt_file):
    out = tmp_path / "run"
    gen = FailingGenerator("noise", {"height": 16, "width": 16})
    gen.fail_on = 2
    prompts = load_prompt_set(str(prompt_file))
    with pytest.raises(ValueError):  # not the first batch: a real failure, not a refused setting
        generate_run(gen, prompts, out, progress=False)
    assert len(RunFolder(out).read_manifest()) == 2
    resumed = generate_run(noise(), prompts, out, progress=False)
    assert (resumed.generated, resumed.done_before) == (2, 2)


def test_a_folder_whose_command_died_before_its_first_image_is_taken_over(tmp_path, prompt_file):
    """A kill (no cleanup possible) after run.json was written: the corrected command is not refused."""
    out = tmp_path / "run"
    prompts = load_prompt_set(str(prompt_file))
    run = RunFolder(out)
    bad = noise(height=63)
    from k3eval.generate import run_info

    run.write_info({**run_info(bad, prompts, 1, 0), "status": "running"})
    run.write_prompts(prompts.to_frame()[["prompt_id", "prompt", "category"]])
    summary = generate_run(noise(), prompts, out, progress=False)
    assert summary.generated == 4 and run.read_info()["identity"]["params"]["height"] == 16


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_parquet", "other_parquet"])
def test_a_corrupt_manifest_is_a_clean_error(tmp_path, prompt_file, damage):
    out = tmp_path / "run"
    prompts = load_prompt_set(str(prompt_file))
    generate_run(noise(), prompts, out, progress=False)
    path = out / "manifest.parquet"
    data = path.read_bytes()
    if damage == "other_parquet":
        buf = io.BytesIO()
        pd.DataFrame({"x": [1]}).to_parquet(buf)
        data = buf.getvalue()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not_parquet": b"<html>oops</html>",
                      "other_parquet": data}[damage])
    message = "lacks the column" if damage == "other_parquet" else "is truncated or corrupt"
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*" + message):
        RunFolder(out).read_manifest()
    with pytest.raises(UserError, match=message):
        generate_run(noise(), prompts, out, progress=False)
    with pytest.raises(UserError, match=message):
        merge_run(out)


@pytest.mark.parametrize("info,missing", [
    ({}, "generator.name, prompt_set.name, prompt_set.hash"),
    ({"generator": {"name": "g"}, "prompt_set": {"name": "s"}}, "prompt_set.hash"),
    ({"generator": "g", "prompt_set": {"name": "s", "hash": "h"}}, "generator.name"),
])
def test_a_run_json_without_what_a_run_records_is_refused(tmp_path, prompt_file, info, missing):
    out = tmp_path / "run"
    generate_run(noise(), load_prompt_set(str(prompt_file)), out, progress=False)
    (out / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=re.escape(f"lacks what a run records ({missing})")):
        load_run(out)
    (out / "run.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object, got list"):
        load_run(out)


def test_files_follow_the_umask(tmp_path, prompt_file):
    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        generate_run(noise(), load_prompt_set(str(prompt_file)), out, progress=False)
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"run.json", "manifest.parquet", "prompts.parquet", "0.png"}
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o640, p
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        assert d.stat().st_mode & 0o777 == 0o750, d
