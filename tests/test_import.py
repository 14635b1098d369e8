"""`k3eval import`: images made elsewhere become a run folder that later stages read like a generated one."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from k3eval.errors import UserError
from k3eval.importer import import_images
from k3eval.prompts.core import Prompt, PromptSet
from k3eval.runs import MANIFEST_COLUMNS, RunFolder, load_run

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = PromptSet("imp", [Prompt(f"i{k}", text, cat) for k, (text, cat) in enumerate([
    ("a red bicycle", "objects"), ("a fox in the snow", "animals"), ("a city at dusk", "scenes"),
    ("an astronaut riding a horse", "people")])])


def _noise(seed: int, size: tuple[int, int] = (96, 96), channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)


@pytest.fixture
def exported(tmp_path) -> tuple[Path, Path]:
    """A folder as a closed system's export looks: mixed formats, an alpha channel, one odd size, one stray file,
    a prompt with no image and a prompt with one of its two samples."""
    d = tmp_path / "export"
    d.mkdir()
    Image.fromarray(_noise(0)).save(d / "a.png")
    Image.fromarray(_noise(1)).save(d / "b.jpg", quality=95)
    Image.fromarray(_noise(2, channels=4), mode="RGBA").save(d / "c.png")
    Image.fromarray(_noise(3, size=(80, 96))).save(d / "d_wide.webp")
    Image.fromarray(_noise(4)).save(d / "extra.png")  # in the folder, not in the mapping
    mapping = tmp_path / "mapping.csv"
    mapping.write_text("file,prompt_id,prompt,sample\n"
                       "a.png,i0,,0\n"
                       "b.jpg,,a fox in the snow,0\n"  # by exact text
                       "c.png,i0,,1\n"
                       "d_wide.webp,i2,,\n")  # sample defaults to 0
    return d, mapping


@pytest.fixture
def complete(tmp_path) -> tuple[Path, Path]:
    """An export with one image of the usual size for every prompt: what a strict import accepts as is."""
    d = tmp_path / "complete"
    (d / "sub").mkdir(parents=True)
    rows = []
    for k, p in enumerate(PROMPTS):
        name = f"sub/{p.id}.png" if k % 2 else f"{p.id}.png"
        Image.fromarray(_noise(10 + k)).save(d / name)
        rows.append(f"{name},{p.id}\n")
    mapping = tmp_path / "complete.csv"
    mapping.write_text("file,prompt_id\n" + "".join(rows))
    return d, mapping


def test_import_builds_a_run_folder(tmp_path, exported):
    images, mapping = exported
    out = tmp_path / "runs" / "dalle3"
    report = import_images(images, mapping, PROMPTS, out, name="dall-e-3", version="API 2024-02", date="2024-02-15",
                           allow_missing=True, allow_odd_sizes=True)
    assert report.imported == 4 and report.status == {"ok": 4}
    assert report.prompts_without_image == ["i3"]
    assert report.missing_samples == [{"prompt_id": "i1", "sample": 1}, {"prompt_id": "i2", "sample": 1}]
    assert report.unmapped_files == ["extra.png"] and not report.images_without_prompt
    assert report.usual_size == [96, 96] and [e["file"] for e in report.odd_sizes] == ["d_wide.webp"]
    assert not report.unreadable and not report.duplicates and not report.black_images
    lines = "\n".join(report.lines())
    assert "prompts with no image: 1" in lines and "missing samples: 2" in lines and "extra.png" in lines

    run = load_run(out)
    df = run.read_manifest()
    assert list(df.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert [(r["prompt_id"], r["sample"]) for r in df.to_dict("records")] == [("i0", 0), ("i0", 1), ("i1", 0),
                                                                              ("i2", 0)]
    for r in df.to_dict("records"):
        data = run.image_path(r).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        with Image.open(run.image_path(r)) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (r["width"], r["height"])
    # Lossless sources keep their pixels exactly; the alpha image is composited on white.
    a = np.asarray(Image.open(out / "images/i0/0.png"))
    assert np.array_equal(a, _noise(0))
    c = np.asarray(Image.open(out / "images/i0/1.png")).astype(int)
    src = _noise(2, channels=4).astype(int)
    expected = np.rint((src[..., :3] * src[..., 3:] + 255 * (255 - src[..., 3:])) / 255)
    assert np.abs(c - expected).max() <= 1
    assert len(run.ok_rows()) == 4

    info = run.read_info()
    assert info["imported"]["system"] == "dall-e-3" and info["imported"]["version"] == "API 2024-02"
    assert info["imported"]["date"] == "2024-02-15" and info["generator"]["name"] == "dall-e-3"
    assert info["prompt_set"]["hash"] == PROMPTS.content_hash() and info["samples"] == 2
    assert info["totals"] == {"images": 4, "expected": 8, "missing": 4, "status": {"ok": 4}}
    assert info["status"] == "incomplete" and info["imported"]["missing_samples"] == 2
    assert info["identity"]["prompts"] == PROMPTS.content_hash()
    assert (out / "import_report.json").exists() and (out / "prompts.parquet").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_complete_export_imports_by_default(tmp_path, complete):
    images, mapping = complete
    out = tmp_path / "runs" / "mj"
    report = import_images(images, mapping, PROMPTS, out, name="mj")
    assert report.imported == 4 and not report.problems()
    info = load_run(out).read_info()
    assert info["status"] == "complete" and info["totals"]["missing"] == 0


def _black(path: Path) -> None:
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(path)


@pytest.mark.parametrize("problem,message,allowed_by", [
    ("no_image", "1 prompts have no image (--allow-missing imports the rest)", "allow_missing"),
    ("missing_sample", "1 samples are missing for prompts that have other samples", "allow_missing"),
    ("black", "1 images are all black or constant (--allow-missing keeps them", "allow_missing"),
    ("odd_size", "1 images have an odd size (--allow-odd-sizes accepts them)", "allow_odd_sizes"),
    ("tiny", "4 images have an odd size", "allow_odd_sizes"),
    ("unknown_id", "1 mapping rows name no prompt of the set", None),
    ("unknown_text", "1 mapping rows name no prompt of the set", None),
    ("identical", "1 groups of identical files", None),
])
def test_strict_by_default(tmp_path, complete, problem, message, allowed_by):
    images, mapping = complete
    text = mapping.read_text()
    if problem == "no_image":
        mapping.write_text("\n".join(text.splitlines()[:-1]) + "\n")
    elif problem == "missing_sample":
        Image.fromarray(_noise(50)).save(images / "i0-s1.png")
        Image.fromarray(_noise(51)).save(images / "i1-s1.png")
        Image.fromarray(_noise(52)).save(images / "i2-s1.png")
        mapping.write_text("file,prompt_id,sample\n" + "".join(f"{ln},0\n" for ln in text.splitlines()[1:])
                           + "i0-s1.png,i0,1\ni1-s1.png,i1,1\ni2-s1.png,i2,1\n")
    elif problem == "black":
        _black(images / "i0.png")
    elif problem == "odd_size":
        Image.fromarray(_noise(60, size=(96, 80))).save(images / "i0.png")
    elif problem == "tiny":
        for k, p in enumerate(PROMPTS):  # all the same size, but too small to be a real export
            Image.fromarray(_noise(70 + k, size=(32, 32))).save(images / ("sub/" if k % 2 else "") / f"{p.id}.png")
    elif problem == "unknown_id":
        mapping.write_text(text.replace("i0.png,i0", "i0.png,i9"))
    elif problem == "unknown_text":
        mapping.write_text("file,prompt\n" + "".join(f"{ln.split(',')[0]},{p.text}\n"
                                                      for ln, p in zip(text.splitlines()[1:], PROMPTS))
                           .replace("a red bicycle", "a red bicycle!"))
    else:
        (images / "i0.png").write_bytes((images / "sub" / "i1.png").read_bytes())
    out = tmp_path / "out"
    with pytest.raises(UserError, match=re.escape(message)):
        import_images(images, mapping, PROMPTS, out, name="x")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    if allowed_by is None:
        with pytest.raises(UserError, match=re.escape(message)):
            import_images(images, mapping, PROMPTS, out, name="x", allow_missing=True, allow_odd_sizes=True)
        return
    report = import_images(images, mapping, PROMPTS, out, name="x", **{allowed_by: True})
    assert report.imported >= 3
    if problem == "black":
        assert report.status == {"ok": 3, "black": 1} and len(load_run(out).ok_rows()) == 3


@pytest.mark.parametrize("file", ["/etc/hostname", "../outside.png", "sub/../../outside.png", "link.png"])
def test_mapping_paths_stay_inside_images_dir(tmp_path, complete, file):
    images, mapping = complete
    Image.fromarray(_noise(90)).save(tmp_path / "outside.png")
    (images / "link.png").symlink_to(tmp_path / "outside.png")
    mapping.write_text(mapping.read_text().replace("i0.png,i0", f"{file},i0"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=f"line 2: file '{re.escape(file)}' is outside IMAGES_DIR"):
        import_images(images, mapping, PROMPTS, out, name="x", allow_missing=True)
    assert not out.exists()


def test_imported_and_generated_manifests_concatenate(tmp_path, exported):
    """Later stages read imported and generated runs with the same code: same columns, compatible types."""
    import pandas as pd

    images, mapping = exported
    imported = import_images(images, mapping, PROMPTS, tmp_path / "imp", name="mj", allow_missing=True,
                             allow_odd_sizes=True)
    assert imported.imported == 4
    run = RunFolder(tmp_path / "gen")
    rel, sha, nbytes = run.write_image("i0", 0, _noise(9))
    run.append_rows("w", [{"prompt_set": "imp", "prompt_id": "i0", "prompt": "a red bicycle", "category": "objects",
                           "sample": 0, "seed": 123, "path": rel, "width": 96, "height": 96, "steps": 2,
                           "guidance": 3.0, "seconds": 0.1, "status": "ok", "sha256": sha, "bytes": nbytes,
                           "generator": "g"}])
    run.consolidate()
    run.write_info({"k3eval_run": 1, "identity": {"generator": "g"}, "generator": {"name": "g"},
                    "prompt_set": {"name": "imp", "hash": PROMPTS.content_hash()}})
    both = pd.concat([RunFolder(tmp_path / "imp").read_manifest(), run.read_manifest()], ignore_index=True)
    assert len(both) == 5 and both["seed"].isna().sum() == 4
    from k3eval.report.gallery import build_gallery

    index = build_gallery({"mj": tmp_path / "imp", "gen": tmp_path / "gen"}, tmp_path / "gallery")
    html = index.read_text()
    assert html.count("mj (ok)") == 3 and html.count("gen (ok)") == 1  # sample 0 of i0, i1, i2; i0 only


@pytest.mark.parametrize("problem", ["truncated", "not_an_image", "missing_file", "duplicate"])
def test_nothing_imported_half_way(tmp_path, exported, problem):
    images, mapping = exported
    text = mapping.read_text()
    if problem == "truncated":
        data = (images / "a.png").read_bytes()
        (images / "a.png").write_bytes(data[: len(data) // 2])
    elif problem == "not_an_image":
        (images / "b.jpg").write_text("<html>rate limited</html>")
    elif problem == "missing_file":
        mapping.write_text(text + "gone.png,i3,,0\n")
    else:
        mapping.write_text(text + "extra.png,i1,,0\n")  # a second image for i1 sample 0
    out = tmp_path / "out"
    expected = {"truncated": "unreadable files: 1", "not_an_image": "unreadable files: 1",
                "missing_file": "file not found", "duplicate": "duplicates: 1"}[problem]
    with pytest.raises(UserError, match=expected):
        import_images(images, mapping, PROMPTS, out, name="x", allow_missing=True, allow_odd_sizes=True)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_force_and_argument_errors(tmp_path, complete):
    images, mapping = complete
    out = tmp_path / "out"
    with pytest.raises(UserError, match="--date must be YYYY-MM-DD, got '15/02/2024'"):
        import_images(images, mapping, PROMPTS, out, name="x", date="15/02/2024")
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,prompt_id\ni0.png,i0\n")
    with pytest.raises(UserError, match="needs the columns 'file' and 'prompt_id' or 'prompt'"):
        import_images(images, bad, PROMPTS, out, name="x")
    bad.write_text("file,prompt_id,sample\ni0.png,i0,first\n")
    with pytest.raises(UserError, match="line 2: 'sample' must be an integer >= 0, got 'first'"):
        import_images(images, bad, PROMPTS, out, name="x")
    import_images(images, mapping, PROMPTS, out, name="x")
    with pytest.raises(UserError, match="already exists"):
        import_images(images, mapping, PROMPTS, out, name="x")
    report = import_images(images, mapping, PROMPTS, out, name="y", force=True)
    assert report.imported == 4 and RunFolder(out).read_info()["imported"]["system"] == "y"
    (tmp_path / "a-file").write_text("x")
    for where, message in [(tmp_path / "a-file", "this is a file, not a folder"),
                           (tmp_path / "a-file" / "run", "is a file, so no folder can be made under it")]:
        with pytest.raises(UserError, match=message):
            import_images(images, mapping, PROMPTS, where, name="x")


def test_import_cli(tmp_path, exported):
    images, mapping = exported
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt,category\n" + "".join(f"{p.id},{p.text},{p.category}\n" for p in PROMPTS))
    cmd = [sys.executable, "-m", "k3eval", "import", str(images), "--mapping", str(mapping), "--prompts",
           str(prompts), "--name", "midjourney-5.2", "--version", "5.2", "--date", "2023-11-01",
           "--out", str(tmp_path / "mj")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not (tmp_path / "mj").exists()
    assert "\nk3eval: error: nothing imported: 1 prompts have no image (--allow-missing" in proc.stderr
    assert "1 images have an odd size (--allow-odd-sizes" in proc.stderr and "    i3" in proc.stderr
    proc = subprocess.run(cmd + ["--allow-missing", "--allow-odd-sizes"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4 images imported" in proc.stdout and "prompts with no image: 1" in proc.stdout
    assert "odd sizes (usual [96, 96]): 1" in proc.stdout and "missing samples: 2" in proc.stdout
