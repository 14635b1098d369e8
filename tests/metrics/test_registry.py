"""The score stage's registry: a metric is one class plus its registration; needs are extracted once, shared between
metrics, decoded once per image, in bounded batches; ragged values and image-text values go through the cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from metrics_helpers import make_run
from pydantic import BaseModel, ConfigDict

from k3eval.errors import UserError
from k3eval.metrics import registry
from k3eval.metrics.api import (
    ImageExtractor,
    ImageTextExtractor,
    MetricResult,
    Need,
    PerImageMetric,
    ScoreContext,
    ScoreData,
)
from k3eval.metrics.score import ScoreOptions, score_run

CALLS: dict[str, int] = {}


class MeanColour(ImageExtractor):
    """Mean of each channel (3 values); counts the images it runs on."""

    batch_size = 4

    @property
    def fingerprint(self):
        return {"extractor": "test mean colour", "version": 1}

    def prepare(self, image):
        return image.reshape(-1, 3).mean(0)

    def run(self, batch):
        CALLS["mean"] = CALLS.get("mean", 0) + len(batch)
        return np.stack(batch).astype(np.float32)


class BrightBlocks(ImageExtractor):
    """Ragged: one row (row, column, mean) per 16x16 block brighter than 128, so images give different counts."""

    batch_size = 3

    @property
    def fingerprint(self):
        return {"extractor": "test bright blocks", "version": 1}

    def run(self, batch):
        CALLS["blocks"] = CALLS.get("blocks", 0) + len(batch)
        out = []
        for img in batch:
            rows = [(r, c, img[r:r + 16, c:c + 16].mean()) for r in range(0, img.shape[0] - 15, 16)
                    for c in range(0, img.shape[1] - 15, 16) if img[r:r + 16, c:c + 16].mean() > 128]
            out.append(np.array(rows, np.float32).reshape(-1, 3))
        return out


class RedPerWord(ImageTextExtractor):
    """Image-text: mean red value times the number of words of the text."""

    batch_size = 5

    @property
    def fingerprint(self):
        return {"extractor": "test red per word", "version": 1}

    def prepare(self, image, text):
        return float(image[:, :, 0].mean()), len(text.split())

    def run(self, batch):
        CALLS["pair"] = CALLS.get("pair", 0) + len(batch)
        return np.array([[red * words] for red, words in batch], np.float32)


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = 1.0


class Toy(PerImageMetric):
    """Per image: scale * (mean colour sum + number of bright blocks + red x words of the prompt)."""

    name = "toy"
    display_name = "Toy"
    higher_is_better = True
    Settings = ToySettings

    def needs(self, ctx: ScoreContext):
        return {"mean": Need(ctx.shared(MeanColour)), "blocks": Need(ctx.shared(BrightBlocks)),
                "pair": Need(ctx.shared(RedPerWord), text="prompt")}

    def per_image_scores(self, data: ScoreData):
        blocks = [len(b) for b in data["blocks"]]
        scores = self.settings.scale * (data["mean"].sum(1) + np.array(blocks) + data["pair"][:, 0])
        return scores, MetricResult({"extractor": "toy", "n": data.n}, per_image={"toy_blocks": blocks})


class Toy2(Toy):
    """A second metric reading the same mean-colour extractor (built separately: shared by fingerprint)."""

    name = "toy2"
    display_name = "Toy 2"
    Settings = None

    def needs(self, ctx: ScoreContext):
        return {"mean": Need(MeanColour())}

    def per_image_scores(self, data: ScoreData):
        return data["mean"][:, 0], MetricResult({"extractor": "toy2"})


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "toy", Toy)
    monkeypatch.setitem(registry._REGISTRY, "toy2", Toy2)
    CALLS.clear()


def _expected(run_dir, scale=1.0) -> pd.Series:
    from PIL import Image

    man = pd.read_parquet(run_dir / "manifest.parquet")
    out = []
    for r in man.to_dict("records"):
        img = np.asarray(Image.open(run_dir / r["path"]).convert("RGB"))
        blocks = sum(img[y:y + 16, x:x + 16].mean() > 128 for y in range(0, img.shape[0] - 15, 16)
                     for x in range(0, img.shape[1] - 15, 16))
        red = np.float32(img[:, :, 0].mean()) * len(r["prompt"].split())
        out.append(scale * (img.reshape(-1, 3).mean(0).astype(np.float32).sum() + blocks + red))
    return pd.Series(out, index=man["prompt_id"] + "/" + man["sample"].astype(str))


def test_a_registered_metric_scores_through_the_stage(toys, tmp_path):
    run = make_run(tmp_path / "run", n_prompts=5, samples=2, size=48)
    opts = ScoreOptions(metrics=["toy", "toy2"], cache=str(tmp_path / "cache"), bootstrap=50,
                        settings={"toy": {"scale": 2.0}})
    summary = score_run(run, opts)
    toy = summary["metrics"]["toy"]
    assert toy["display_name"] == "Toy" and toy["n"] == 10 and toy["ci"] is not None
    assert set(toy["per_category"]) == {"Animals", "Food"} and toy["per_category"]["Food"]["n"] == 4
    assert toy["protocol"]["extractor"] == "toy" and "versions" in toy["protocol"]
    per = pd.read_parquet(run / "scores" / "per_image.parquet")
    got = pd.Series(per["toy"].to_numpy(), index=per["prompt_id"] + "/" + per["sample"].astype(str))
    want = _expected(run, scale=2.0)
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-5)
    assert toy["value"] == pytest.approx(want.mean(), rel=1e-5)
    assert per["toy_blocks"].sum() > 0 and per["toy_blocks"].nunique() > 1  # the ragged values really vary
    # toy2 builds its own MeanColour: same fingerprint, so the colours were computed once for both metrics
    assert CALLS == {"mean": 10, "blocks": 10, "pair": 10}

    CALLS.clear()
    again = score_run(run, opts)  # everything from the cache, ragged values included: nothing runs
    assert CALLS == {}
    assert again["metrics"]["toy"]["value"] == toy["value"]

    prompts = pd.read_parquet(run / "manifest.parquet")
    prompts["prompt"] = prompts["prompt"] + " and more"  # new texts: only the image-text values are recomputed
    prompts.to_parquet(run / "manifest.parquet")
    score_run(run, opts)
    assert CALLS == {"pair": 10}


def test_each_image_is_decoded_once_for_all_extractors(toys, tmp_path, monkeypatch):
    from k3eval.metrics import extract

    run = make_run(tmp_path / "run", n_prompts=4, samples=2)
    decoded = []
    real = extract.load_rgb8
    monkeypatch.setattr(extract, "load_rgb8", lambda p: decoded.append(p) or real(p))
    score_run(run, ScoreOptions(metrics=["toy"], cache=None, bootstrap=0))
    assert len(decoded) == 8 and len(set(decoded)) == 8


def test_prepared_inputs_in_flight_stay_bounded(tmp_path):
    """What accumulates is outputs: prepared inputs waiting for the network never exceed about two batches plus the
    batch being filled, whatever the number of images."""
    import threading

    from metrics_helpers import smooth_images, write_pngs

    from k3eval.metrics.cache import FeatureCache
    from k3eval.metrics.extract import ArraySink, Job, run_jobs

    paths = write_pngs(tmp_path / "imgs", smooth_images(60, 16, seed=3))
    live = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Counting(ImageExtractor):
        batch_size = 4
        fingerprint = {"extractor": "counting"}

        def prepare(self, image):
            with lock:
                live["now"] += 1
                live["max"] = max(live["max"], live["now"])
            return image.mean()

        def run(self, batch):
            with lock:
                live["now"] -= len(batch)
            return np.array(batch, np.float32)[:, None]

    sink = ArraySink(60)
    readable, bad = run_jobs([Job(Counting(), FeatureCache({"e": 1}, None), [str(i) for i in range(60)], sink=sink)],
                             paths, workers=2)
    assert readable.all() and not bad and sink.result().shape == (60, 1)
    assert live["max"] <= 3 * Counting.batch_size + 2


def test_settings_are_validated_and_named(toys, tmp_path):
    run = make_run(tmp_path / "run", n_prompts=2, samples=1)
    with pytest.raises(UserError, match=r"--set toy: scal: unknown key"):
        score_run(run, ScoreOptions(metrics=["toy"], settings={"toy": {"scal": 2}}))
    with pytest.raises(UserError, match=r"--set toy: scale: Input should be a valid number"):
        score_run(run, ScoreOptions(metrics=["toy"], settings={"toy": {"scale": "big"}}))
    with pytest.raises(UserError, match="'toy' is not among the metrics scored"):
        score_run(run, ScoreOptions(metrics=["toy2"], settings={"toy": {"scale": 2}}))
    with pytest.raises(UserError, match="toy2 takes no settings"):
        score_run(run, ScoreOptions(metrics=["toy2"], settings={"toy2": {"x": 1}}))
    assert not (run / "scores").exists()


def test_a_text_column_the_manifest_lacks_is_named(toys, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", n_prompts=2, samples=1)
    monkeypatch.setattr(Toy, "needs", lambda self, ctx: {"pair": Need(RedPerWord(), text="geneval_metadata")})
    with pytest.raises(UserError, match="needs the column 'geneval_metadata' of the run manifest"):
        score_run(run, ScoreOptions(metrics=["toy"], cache=None))


def test_registry_names_and_order():
    assert registry.metric_names()[:5] == ["clip_score", "fid", "kid", "is", "cmmd"]
    with pytest.raises(UserError, match="did you mean 'cmmd'"):
        registry.get_metric("cmd")
    from k3eval.metrics.score import parse_metrics

    assert parse_metrics(None, have_reference=False) == ["clip_score", "is"]
    assert parse_metrics(None, have_reference=True) == ["clip_score", "fid", "kid", "is", "cmmd"]
    assert parse_metrics(["is", "clip_score", "is"], have_reference=False) == ["clip_score", "is"]
    with pytest.raises(UserError, match="no metric named"):
        parse_metrics([], have_reference=True)


def test_clip_score_and_cmmd_share_one_clip_extraction(tmp_path, monkeypatch, inception_weights):
    """With the same CLIP for both (here the synthetic one), image embeddings are computed once per image."""
    from metrics_helpers import smooth_images, write_pngs

    from k3eval.metrics.extract import ClipImageExtractor

    run = make_run(tmp_path / "run", n_prompts=3, samples=2)
    write_pngs(tmp_path / "ref", smooth_images(5, 32, seed=8))
    counted = []
    real = ClipImageExtractor.run
    monkeypatch.setattr(ClipImageExtractor, "run", lambda self, batch: counted.append(len(batch)) or real(self, batch))
    summary = score_run(run, ScoreOptions(metrics=["clip_score", "cmmd"], reference=str(tmp_path / "ref"),
                                          clip_pretrained="synthetic", cmmd_pretrained="synthetic", cache=None,
                                          bootstrap=0))
    assert sum(counted) == 6 + 5  # the run's images once, the reference's once
    assert summary["metrics"]["cmmd"]["protocol"]["model"] == summary["metrics"]["clip_score"]["protocol"]["model"]
    stored = json.loads((run / "scores" / "summary.json").read_text())
    assert stored["skipped"] == []
