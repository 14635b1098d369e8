"""`k3eval score` and `k3eval reference build` end to end on small run folders: format, cache, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from metrics_helpers import make_run, smooth_images, write_pngs

from k3eval.cli import main
from k3eval.errors import UserError
from k3eval.metrics.extract import ClipImageExtractor, InceptionExtractor


@pytest.fixture(scope="module")
def setup(tmp_path_factory, inception_weights, open_clip_checkpoint):
    root = tmp_path_factory.mktemp("score")
    run = make_run(root / "run", n_prompts=6, samples=2, long_prompt_every=3)
    refdir = root / "ref_images"
    write_pngs(refdir, smooth_images(10, 40, seed=9))
    ref = root / "ref.npz"
    assert main(["reference", "build", str(refdir), "--out", str(ref), "--inception-weights", str(inception_weights),
                 "--metrics", "fid,kid,cmmd", "--cmmd-pretrained", "synthetic", "--quiet"]) == 0
    return {"root": root, "run": run, "ref": ref, "w": str(inception_weights)}


def _score(setup, *extra, run=None):
    args = ["score", str(run or setup["run"]), "--reference", str(setup["ref"]), "--inception-weights", setup["w"],
            "--clip-pretrained", "synthetic", "--cmmd-pretrained", "synthetic", "--quiet", *extra]
    return main(args)


def test_score_writes_summary_and_per_image_in_the_documented_format(setup):
    assert _score(setup, "--metrics", "clip_score,fid,kid,is,cmmd", "--min-category", "6", "--bootstrap", "200",
                  "--kid-subsets", "10") == 0
    summary = json.loads((setup["run"] / "scores" / "summary.json").read_text())
    assert summary["k3eval_scores"] == 1 and summary["synthetic_weights"] is True
    assert summary["run"]["generator"] == "fake" and summary["run"]["prompt_set_hash"] == "abc"
    assert set(summary["metrics"]) == {"clip_score", "fid", "kid", "is", "cmmd"}
    for name, m in summary["metrics"].items():
        for key in ("display_name", "higher_is_better", "unit", "value", "ci", "ci_method", "n", "protocol",
                    "warnings", "per_category"):
            assert key in m, (name, key)
        assert m["n"] == 12 and isinstance(m["value"], float)
        assert any("synthetic" in w for w in m["warnings"]), name
        assert set(m["per_category"]) == {"Animals", "Food"}
    fid = summary["metrics"]["fid"]
    assert fid["higher_is_better"] is False and fid["protocol"]["protocol"] == "clean"
    assert fid["protocol"]["standard_weights"] is False and len(fid["protocol"]["sha256"]) == 64
    assert any("rank-deficient" in w for w in fid["warnings"])
    assert fid["per_category"]["Animals"]["flag"] is None and fid["per_category"]["Animals"]["n"] == 6
    clip = summary["metrics"]["clip_score"]
    lo, hi = clip["ci"]
    assert lo <= clip["value"] <= hi and clip["ci_method"].startswith("bootstrap over prompts")
    assert clip["n_truncated"] == 4  # prompts 0 and 3 are long, 2 samples each
    assert clip["protocol"]["truncation"] == "end-of-text token kept"
    per = pd.read_parquet(setup["run"] / "scores" / "per_image.parquet")
    assert list(per.columns[:5]) == ["prompt_id", "sample", "category", "path", "sha256"]
    assert len(per) == 12 and per["clip_score"].mean() == pytest.approx(clip["value"])
    assert per["clip_truncated"].sum() == 4


def test_small_categories_are_flagged(setup):
    assert _score(setup, "--metrics", "fid", "--min-category", "50") == 0
    summary = json.loads((setup["run"] / "scores" / "summary.json").read_text())
    cat = summary["metrics"]["fid"]["per_category"]["Food"]
    assert cat == {"value": None, "ci": None, "n": 6, "flag": "too_small"}
    # metrics not recomputed are kept, since the images are the same
    assert "clip_score" in summary["metrics"]


def test_rescoring_an_unchanged_run_recomputes_nothing(setup, monkeypatch):
    _score(setup, "--metrics", "clip_score,fid,is")
    before = json.loads((setup["run"] / "scores" / "summary.json").read_text())["metrics"]

    def boom(*a, **k):
        raise AssertionError("a network was loaded although every feature is cached")

    monkeypatch.setattr(InceptionExtractor, "_load", boom)
    monkeypatch.setattr(ClipImageExtractor, "encoder", boom)
    assert _score(setup, "--metrics", "clip_score,fid,is") == 0
    after = json.loads((setup["run"] / "scores" / "summary.json").read_text())["metrics"]
    for m in ("clip_score", "fid", "is"):
        assert after[m]["value"] == before[m]["value"]


def test_a_changed_image_recomputes_only_that_image(setup, tmp_path, monkeypatch):
    import shutil

    from k3eval.runs import RunFolder

    run_dir = tmp_path / "run"
    shutil.copytree(setup["run"], run_dir)
    shutil.rmtree(run_dir / "scores")
    run = RunFolder(run_dir)
    new = smooth_images(1, 48, seed=77)[0]
    rel, sha, nbytes = run.write_image("p001", 0, new)
    row = run.read_manifest().query("prompt_id == 'p001' and sample == 0").iloc[0].to_dict()
    row.update(sha256=sha, bytes=nbytes)
    run.append_rows("w1", [row])
    run.consolidate()
    counted = []
    original = InceptionExtractor.run

    def counting(self, batch):
        counted.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(InceptionExtractor, "run", counting)
    assert _score(setup, "--metrics", "fid", run=run_dir) == 0
    assert sum(counted) == 1


def test_corrupt_image_is_named_and_skipped_only_on_request(setup, tmp_path):
    from k3eval.runs import RunFolder
    from k3eval.utils import sha256_bytes

    run_dir = make_run(tmp_path / "run", n_prompts=3, samples=1, seed=5)
    run = RunFolder(run_dir)
    bad = run_dir / "images" / "p002" / "0.png"
    data = bad.read_bytes()[:200]  # a truncated PNG, recorded as such
    bad.write_bytes(data)
    row = run.read_manifest().query("prompt_id == 'p002'").iloc[0].to_dict()
    row.update(sha256=sha256_bytes(data), bytes=len(data))
    run.append_rows("w1", [row])
    run.consolidate()
    with pytest.raises(UserError, match="p002/0.png"):
        _call_score(run_dir, setup, metrics=["is"])
    assert _call_score(run_dir, setup, metrics=["is"], skip_bad=True) == 0
    summary = json.loads((run_dir / "scores" / "summary.json").read_text())
    assert summary["n_images"] == 2
    assert any("p002/0.png" in w for w in summary["metrics"]["is"]["warnings"])


def _call_score(run_dir, setup, **options):
    """score_run directly, so a UserError surfaces (the CLI turns it into exit code 2)."""
    from k3eval.metrics.score import ScoreOptions, score_run

    score_run(run_dir, ScoreOptions(inception_weights=setup["w"], **options))
    return 0


def test_fewer_than_two_images_is_an_error(tmp_path, setup):
    run = make_run(tmp_path / "one", n_prompts=1, samples=1)
    assert main(["score", str(run), "--metrics", "is", "--inception-weights", setup["w"], "--quiet"]) == 2
    with pytest.raises(UserError, match="at least 2"):
        _call_score(run, setup, metrics=["is"])


def test_reference_with_another_protocol_is_refused_unless_allowed(setup, tmp_path, capsys):
    assert _score(setup, "--metrics", "fid", "--protocol", "tf") == 2
    assert "another protocol" in capsys.readouterr().err
    assert _score(setup, "--metrics", "fid", "--protocol", "tf", "--allow-protocol-mismatch") == 0
    fid = json.loads((setup["run"] / "scores" / "summary.json").read_text())["metrics"]["fid"]
    assert fid["protocol"]["protocol"] == "tf"
    assert any("--allow-protocol-mismatch" in w for w in fid["warnings"])


def test_external_reference_needs_a_declared_protocol(setup, tmp_path, capsys):
    z = np.load(setup["ref"])
    ext = tmp_path / "external.npz"
    np.savez(ext, mu=z["mu"], sigma=z["sigma"])
    args = ["score", str(setup["run"]), "--reference", str(ext), "--metrics", "fid", "--inception-weights",
            setup["w"], "--quiet"]
    assert main(args) == 2
    assert "--reference-protocol" in capsys.readouterr().err
    # declared, it is taken as official weights: synthetic weights do not match it
    assert main([*args, "--reference-protocol", "clean"]) == 2
    assert main([*args, "--reference-protocol", "clean", "--allow-protocol-mismatch"]) == 0
    fid = json.loads((setup["run"] / "scores" / "summary.json").read_text())["metrics"]["fid"]
    assert fid["protocol"]["reference"]["external"] is True


def test_reference_npz_layout(setup):
    z = np.load(setup["ref"])
    assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and z["mu"].dtype == np.float64
    assert z["features"].shape == (10, 2048) and z["clip_features"].shape[0] == 10
    meta = json.loads(str(z["k3eval_reference"]))
    assert meta["protocol"]["protocol"] == "clean" and meta["n"] == 10
    assert meta["clip_protocol"]["synthetic_weights"] is True


def test_reference_build_of_a_run_folder(setup, tmp_path):
    out = tmp_path / "run_ref.npz"
    assert main(["reference", "build", str(setup["run"]), "--out", str(out), "--inception-weights", setup["w"],
                 "--quiet"]) == 0
    meta = json.loads(str(np.load(out)["k3eval_reference"]))
    assert meta["n"] == 12


def test_unknown_metric_and_missing_reference_are_user_errors(setup, capsys):
    assert main(["score", str(setup["run"]), "--metrics", "fidd", "--quiet"]) == 2
    assert "did you mean 'fid'" in capsys.readouterr().err
    assert main(["score", str(setup["run"]), "--metrics", "kid", "--quiet"]) == 2
    assert "--reference" in capsys.readouterr().err


@pytest.fixture
def scored_copy(setup, tmp_path):
    """A copy of the run, scored once (IS and CLIP score), so that rescoring finds every feature cached."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(setup["run"], run_dir)
    shutil.rmtree(run_dir / "scores", ignore_errors=True)
    assert _score(setup, "--metrics", "is,clip_score", "--is-splits", "2", run=run_dir) == 0
    return run_dir


def _summary(run_dir):
    return json.loads((run_dir / "scores" / "summary.json").read_text())


def test_a_deleted_image_is_an_error_naming_it_unless_skipped(setup, scored_copy, capsys):
    before = _summary(scored_copy)
    gone = scored_copy / "images" / "p003" / "1.png"
    gone.unlink()
    capsys.readouterr()
    assert _score(setup, "--metrics", "is,clip_score", "--is-splits", "2", run=scored_copy) == 2
    err = capsys.readouterr().err
    assert "p003/1.png (file not found)" in err and "--skip-bad" in err
    assert _summary(scored_copy) == before  # nothing rewritten
    assert _score(setup, "--metrics", "is,clip_score", "--is-splits", "2", "--skip-bad", run=scored_copy) == 0
    after = _summary(scored_copy)
    assert after["n_images"] == 11 and after["metrics"]["is"]["n"] == 11
    assert after["skipped"] == [{"path": str(gone), "reason": "file not found"}]
    assert any("p003/1.png" in w for w in after["metrics"]["clip_score"]["warnings"])
    assert after["metrics"]["clip_score"]["value"] != before["metrics"]["clip_score"]["value"]
    per = pd.read_parquet(scored_copy / "scores" / "per_image.parquet")
    assert len(per) == 11 and not ((per["prompt_id"] == "p003") & (per["sample"] == 1)).any()


def test_a_truncated_image_is_never_scored_with_its_old_features(setup, scored_copy, capsys):
    cut = scored_copy / "images" / "p002" / "0.png"
    cut.write_bytes(cut.read_bytes()[:300])  # the manifest still records the old sha256
    capsys.readouterr()
    assert _score(setup, "--metrics", "is,clip_score", "--is-splits", "2", run=scored_copy) == 2
    assert "p002/0.png (cannot decode" in capsys.readouterr().err
    assert _score(setup, "--metrics", "is,clip_score", "--is-splits", "2", "--skip-bad", run=scored_copy) == 0
    after = _summary(scored_copy)
    assert after["n_images"] == 11 and after["skipped"][0]["path"] == str(cut)


def test_a_replaced_image_is_re_extracted(setup, scored_copy, monkeypatch):
    from PIL import Image

    from k3eval.utils import sha256_file

    before = _summary(scored_copy)
    swapped = scored_copy / "images" / "p004" / "0.png"
    Image.fromarray(smooth_images(1, 48, seed=123)[0]).save(swapped)  # a valid PNG, manifest not updated
    counted = []
    real = InceptionExtractor.run
    monkeypatch.setattr(InceptionExtractor, "run", lambda self, batch: counted.append(len(batch)) or real(self, batch))
    assert _score(setup, "--metrics", "is,clip_score", "--is-splits", "2", run=scored_copy) == 0
    assert sum(counted) == 1  # that image only
    after = _summary(scored_copy)
    assert after["n_images"] == 12 and after["images_digest"] != before["images_digest"]
    assert after["metrics"]["clip_score"]["value"] != before["metrics"]["clip_score"]["value"]
    assert any("1 image(s) changed on disk" in w and "p004/0.png" in w for w in after["metrics"]["is"]["warnings"])
    per = pd.read_parquet(scored_copy / "scores" / "per_image.parquet").set_index(["prompt_id", "sample"])
    assert per.loc[("p004", 0), "sha256"] == sha256_file(swapped)


def test_unchanged_images_are_not_hashed_again(setup, scored_copy, monkeypatch):
    import os

    from k3eval.metrics import verify

    hashed = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert _score(setup, "--metrics", "is", "--is-splits", "2", run=scored_copy) == 0
    assert hashed == []  # size and mtime as recorded at the first score
    touched = scored_copy / "images" / "p000" / "0.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _score(setup, "--metrics", "is", "--is-splits", "2", run=scored_copy) == 0
    assert hashed == [touched]


def test_reference_synthetic_on_the_command_line(setup, tmp_path):
    run = make_run(tmp_path / "run", n_prompts=3, samples=1, seed=12)
    assert main(["score", str(run), "--metrics", "fid,is", "--reference", "synthetic:5", "--inception-weights",
                 setup["w"], "--is-splits", "2", "--quiet"]) == 0
    fid = _summary(run)["metrics"]["fid"]
    assert fid["protocol"]["reference"]["n"] == 5
    assert any("synthetic seeded images" in w for w in fid["warnings"])
    assert not any("synthetic seeded images" in w for w in _summary(run)["metrics"]["is"]["warnings"])
