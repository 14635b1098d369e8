"""Run-folder mechanics without a generator: classification, atomic writes, journals, torn lines."""

from __future__ import annotations

import numpy as np

from k3eval.runs import RunFolder, classify_image, to_uint8


def test_classify_image():
    rng = np.random.default_rng(0)
    ok = rng.random((8, 8, 3), dtype=np.float32)
    assert classify_image(ok) == "ok"
    nan = ok.copy()
    nan[2, 3, 1] = np.nan
    assert classify_image(nan) == "nan"
    assert classify_image(np.zeros((8, 8, 3), np.float32)) == "black"
    assert classify_image(np.full((8, 8, 3), 0.5, np.float32)) == "black"  # constant: fp16 overflow signature


def test_to_uint8_rounds():
    x = np.array([[[0.0, 0.5, 1.0]], [[0.999, 0.0019, 0.002]]], dtype=np.float32)
    assert to_uint8(x).tolist() == [[[0, 128, 255]], [[255, 0, 1]]]


def test_journal_ignores_torn_line_and_latest_row_wins(tmp_path):
    run = RunFolder(tmp_path)
    row = {"prompt_id": "a", "sample": 0, "status": "ok", "path": "images/a/0.png"}
    run.append_rows("w0", [row, {**row, "prompt_id": "b"}])
    run.append_rows("w1", [{**row, "status": "black"}])
    with open(run.journal_path("w1"), "a") as f:
        f.write('{"prompt_id": "c", "sam')  # a crash mid-line
    df = run.read_manifest()
    assert sorted(df["prompt_id"]) == ["a", "b"]
    assert df.set_index("prompt_id").loc["a", "status"] == "black"
    merged = run.consolidate([("b", 0), ("a", 0)])
    assert list(merged["prompt_id"]) == ["b", "a"]
    assert not run.journal_dir.exists() and run.manifest_path.exists()


def test_write_image_is_complete_and_checked(tmp_path):
    run = RunFolder(tmp_path)
    img = (np.arange(4 * 4 * 3).reshape(4, 4, 3) % 255).astype(np.uint8)
    rel, sha, nbytes = run.write_image("p", 0, img)
    row = {"path": rel, "bytes": nbytes, "status": "ok"}
    assert run.image_complete(row)
    assert not list((tmp_path / "images" / "p").glob(".*tmp"))  # no temporary file left
    path = tmp_path / rel
    path.write_bytes(path.read_bytes()[:-5])
    assert not run.image_complete(row)
    path.unlink()
    assert not run.image_complete(row)
