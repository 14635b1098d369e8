"""GenEval through the score stage with a tiny Mask2Former and a tiny CLIP (seeded, saved with save_pretrained and the
open_clip checkpoint format, loaded back through the real loaders): same verdicts as the official per-image loop,
caching, the official layout out and back in, mmdet's post-processing on hand-made outputs, and bad input."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
from geneval_reference import mmdet_detect, official_loop
from metrics_helpers import make_run, make_set_run

from k3eval.errors import UserError
from k3eval.metrics import geneval_rules as R
from k3eval.metrics import vision_models as V
from k3eval.metrics.geneval import Geneval, make_detector, shipped_metadata
from k3eval.metrics.score import ScoreOptions, score_run

TINY = {"detector": "synthetic", "clip_pretrained": "synthetic", "detector_scale": [96, 64]}


def pick_prompts(per_task: int = 3) -> list[str]:
    """GenEval prompts about the classes the synthetic detector finds, a few of every task."""
    chosen: dict[str, list[str]] = {t: [] for t in R.TASKS}
    for strict in (True, False):  # prompts only about those classes first, then prompts with one of them
        for pid, meta in shipped_metadata().items():
            classes = {c["class"] for c in meta["include"]}
            fits = classes <= set(V.FAVOURED) if strict else bool(classes & set(V.FAVOURED))
            if fits and pid not in chosen[meta["tag"]] and len(chosen[meta["tag"]]) < per_task:
                chosen[meta["tag"]].append(pid)
    return [pid for ids in chosen.values() for pid in ids]


@pytest.fixture(scope="module")
def geneval_run(tmp_path_factory):
    return make_set_run(tmp_path_factory.mktemp("ge") / "run", "geneval", pick_prompts(), samples=2, size=64)


def opts(tmp_path, **kw) -> ScoreOptions:
    settings = {"geneval": {**TINY, **kw.pop("settings", {})}}
    return ScoreOptions(metrics=kw.pop("metrics", ["geneval"]), cache=kw.pop("cache", str(tmp_path / "cache")),
                        bootstrap=200, clip_pretrained="synthetic", settings=settings, **kw)


def test_verdicts_equal_the_official_per_image_loop(geneval_run, tmp_path):
    summary = score_run(geneval_run, opts(tmp_path))
    ge = summary["metrics"]["geneval"]
    per = pd.read_parquet(geneval_run / "scores" / "per_image.parquet")
    manifest = pd.read_parquet(geneval_run / "manifest.parquet")
    assert set(ge["per_category"]) == set(R.TASKS) and ge["n"] == len(manifest)

    from k3eval.metrics.clip import load_clip

    s = Geneval(TINY).settings
    metas = [shipped_metadata()[p] for p in per["prompt_id"]]
    ref = official_loop([geneval_run / p for p in per["path"]], metas, make_detector(s, "cpu"),
                        load_clip("open_clip", "ViT-L-14", "synthetic"), s.rules(), workers=0)
    assert per["geneval"].tolist() == [float(c) for c, _ in ref]
    assert per["geneval_reason"].tolist() == [r for _, r in ref]
    # the synthetic detector finds objects, some prompts pass, and colour clauses were decided by colours
    assert 0 < per["geneval"].mean() < 1
    assert per["geneval_reason"].str.contains(r"found \d+ \w+; and").any()

    official = R.summary_scores([m["tag"] for m in metas], per["geneval"], per["prompt_id"])
    assert ge["value"] == pytest.approx(official["overall"])
    assert ge["tasks"] == pytest.approx(official["tasks"])
    assert ge["correct_images"]["value"] == pytest.approx(official["correct_images"])
    assert ge["correct_prompts"]["value"] == pytest.approx(official["correct_prompts"])
    assert ge["ci"][0] <= ge["value"] <= ge["ci"][1] and ge["correct_prompts"]["ci"] is not None
    assert ge["protocol"]["synthetic_weights"] and any("synthetic" in w for w in ge["warnings"])
    assert ge["protocol"]["rules"] == R.Rules().as_dict() and ge["protocol"]["floor"] == 0.3


def test_batched_detections_equal_mmdet_post_processing_of_every_query():
    """k3eval makes masks only for (query, class) pairs whose class probability is above the lowest threshold, for a
    batch of images at once; mmdet makes all 100 per image. Above the floor both give the same detections, on
    images whose resized, padded and original sizes all differ and on one whose resized size is its original size."""
    det = make_detector(Geneval(TINY).settings, "cpu")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (64, 96), (64, 96), (40, 40))]
    batched = det.detect([det.prepare(im) for im in images], 0.3)
    kept = 0
    for image, mine in zip(images, batched):
        ref = mmdet_detect(det, image)
        assert len(ref.scores) == min(det.max_per_image, 24 * 80)  # every pair comes back from mmdet
        order = np.argsort(-ref.scores, kind="stable")
        above = order[ref.scores[order] > 0.3]
        mine_order = np.argsort(-mine.scores, kind="stable")
        np.testing.assert_allclose(mine.scores[mine_order], ref.scores[above], rtol=1e-6)
        assert mine.labels[mine_order].tolist() == ref.labels[above].tolist()
        np.testing.assert_array_equal(mine.boxes[mine_order], ref.boxes[above])
        np.testing.assert_array_equal(mine.masks[mine_order], ref.masks[above])
        assert mine.masks.shape[1:] == image.shape[:2]
        kept += len(above)
    assert kept > 0 and (ref.scores <= 0.3).any()  # the comparison had detections on both sides of the floor


def test_rescoring_with_other_rules_runs_no_model(geneval_run, tmp_path, monkeypatch):
    first = score_run(geneval_run, opts(tmp_path))["metrics"]["geneval"]
    calls = []
    monkeypatch.setattr(V.Mask2FormerDetector, "detect", lambda *a, **k: calls.append(1))
    again = score_run(geneval_run, opts(tmp_path))["metrics"]["geneval"]
    assert calls == [] and again["value"] == first["value"]
    # a stricter threshold is applied to the cached detections: no image gains, and the protocol records it
    strict = score_run(geneval_run, opts(tmp_path, settings={"threshold": 0.45}))["metrics"]["geneval"]
    assert calls == [] and strict["value"] <= first["value"]
    assert strict["protocol"]["rules"]["threshold"] == 0.45 and any("non-default" in w for w in strict["warnings"])


def test_geneval_and_clip_score_load_one_clip(geneval_run, tmp_path, monkeypatch):
    from k3eval.metrics import extract

    loads = []
    real = extract.ClipImageExtractor.encoder

    def counting(self):
        if self._enc is None:
            loads.append(self.model)
        return real(self)

    monkeypatch.setattr(extract.ClipImageExtractor, "encoder", counting)
    summary = score_run(geneval_run, opts(tmp_path, metrics=["clip_score", "geneval"], cache=None))
    assert loads == ["k3eval-tiny-clip"]
    assert summary["metrics"]["geneval"]["protocol"]["colour"]["clip"]["model"] == "k3eval-tiny-clip"


def test_export_writes_the_official_layout_and_import_reads_it_back(geneval_run, tmp_path):
    from k3eval.metrics.geneval_layout import export_geneval, import_geneval

    out = tmp_path / "official"
    assert export_geneval(geneval_run, out) == {"prompts": len(pick_prompts()), "images": 2 * len(pick_prompts())}
    lines = [x for x in (pytest.importorskip("importlib.resources").files("k3eval.prompts") / "data" / "geneval"
                         / "evaluation_metadata.jsonl").read_text().splitlines() if x.strip()]
    index = {pid: i for i, pid in enumerate(shipped_metadata())}
    for pid in pick_prompts():
        folder = out / f"{index[pid]:05d}"
        assert (folder / "metadata.jsonl").read_text() == lines[index[pid]]  # the shipped line, byte for byte
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["00000.png", "00001.png"]
    (out / "notes").mkdir()  # like the official reader, folders that are not all digits are ignored
    (out / f"{index[pick_prompts()[0]]:05d}" / "samples" / "grid.png").write_bytes(b"x")  # and so are other names

    back = tmp_path / "back"
    report = import_geneval(out, back, name="elsewhere")
    assert report.imported == 2 * len(pick_prompts()) and not report.unreadable
    a = score_run(geneval_run, opts(tmp_path))["metrics"]["geneval"]
    b = score_run(back, opts(tmp_path))["metrics"]["geneval"]
    assert b["value"] == a["value"] and b["per_category"] == a["per_category"]
    info = json.loads((back / "run.json").read_text())
    assert info["imported"]["layout"] == "geneval" and (back / "geneval_layout_mapping.csv").exists()
    with pytest.raises(UserError, match="already exists"):
        export_geneval(geneval_run, out)


def test_bad_layouts_are_named(tmp_path):
    from k3eval.metrics.geneval_layout import read_layout

    with pytest.raises(UserError, match="not laid out the GenEval way"):
        read_layout(tmp_path)
    (tmp_path / "00003" / "samples").mkdir(parents=True)
    (tmp_path / "00003" / "metadata.jsonl").write_text('{"tag": "single_object", "include": [')
    with pytest.raises(UserError, match=r"00003/metadata.jsonl: not valid JSON \(.*line 1 column"):
        read_layout(tmp_path)
    (tmp_path / "00003" / "metadata.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": "a cat"}))
    with pytest.raises(UserError, match="'a cat' is not one of GenEval's 553 prompts"):
        read_layout(tmp_path)
    meta = dict(next(iter(shipped_metadata().values())))
    meta["include"] = [{"class": "zebra", "count": 1}]
    (tmp_path / "00003" / "metadata.jsonl").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="clauses differ from GenEval's metadata"):
        read_layout(tmp_path)


def test_runs_of_other_prompt_sets_say_which_metric_needs_which(tmp_path):
    run = make_run(tmp_path / "parti", n_prompts=2, samples=1)
    with pytest.raises(UserError, match="geneval scores runs of the 'geneval' prompt set, t2i_compbench runs of "
                                        "'t2i-compbench'"):
        score_run(run, opts(tmp_path))
    assert not (run / "scores").exists()


def test_missing_images_are_named(tmp_path):
    run = make_set_run(tmp_path / "run", "geneval", pick_prompts(1), samples=1)
    victim = next((run / "images").rglob("*.png"))
    victim.unlink()
    with pytest.raises(UserError, match="file not found"):
        score_run(run, opts(tmp_path))


def test_a_detector_that_misses_geneval_objects_is_named(tmp_path):
    import torch
    from transformers import Mask2FormerForUniversalSegmentation

    model = Mask2FormerForUniversalSegmentation.from_pretrained(str(V.build_synthetic("mask2former")))
    labels = [n for n in V.COCO_NAMES if n not in ("zebra", "toaster")]
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {n: i for i, n in enumerate(labels)}
    model.config.num_labels = len(labels)
    with torch.no_grad():
        model.class_predictor = torch.nn.Linear(32, len(labels) + 1)
    model.save_pretrained(tmp_path / "m2f78")
    run = make_set_run(tmp_path / "run", "geneval", pick_prompts(1), samples=1)
    with pytest.raises(UserError, match=r"do not cover 2 of GenEval's 80 objects: zebra, toaster"):
        score_run(run, opts(tmp_path, settings={"detector": str(tmp_path / "m2f78")}))


def test_an_unreachable_detector_names_the_hub_id_and_the_way_out(tmp_path):
    run = make_set_run(tmp_path / "run", "geneval", pick_prompts(1), samples=1)
    with pytest.raises(UserError, match=r"--set geneval.detector: cannot .*'nobody/no-such-mask2former'.*"
                                        r"--set geneval.detector=FOLDER"):
        score_run(run, opts(tmp_path, settings={"detector": "nobody/no-such-mask2former"}))


def test_mmdet_backend_only_when_installed(tmp_path, monkeypatch):
    s = Geneval({**TINY, "detector_backend": "mmdet"}).settings
    monkeypatch.setitem(sys.modules, "mmdet", None)
    with pytest.raises(UserError, match="mmdet is not installed"):
        make_detector(s, "cpu")

    ckpt = tmp_path / "m2f.pth"
    ckpt.write_bytes(b"weights")
    fake = types.ModuleType("mmdet")
    fake.__version__ = "2.28.2"
    apis = types.ModuleType("mmdet.apis")
    mask = np.zeros((8, 8), bool)
    mask[2:5, 1:4] = True
    classes = ("person", "bicycle") + tuple(n for n in V.COCO_NAMES[2:])

    class Model:
        CLASSES = classes

    apis.init_detector = lambda config, checkpoint, device: Model()
    bbox = [np.zeros((0, 5), np.float32) for _ in classes]
    segm = [[] for _ in classes]
    bbox[1] = np.array([[1, 2, 4, 5, 0.8], [0, 0, 2, 2, 0.2]], np.float32)  # bicycle: one above the floor
    segm[1] = [mask, mask]
    apis.inference_detector = lambda model, img: (bbox, segm)
    monkeypatch.setitem(sys.modules, "mmdet", fake)
    monkeypatch.setitem(sys.modules, "mmdet.apis", apis)
    monkeypatch.setattr(V.metadata, "version", lambda name: "2.28.2" if name == "mmdet" else "x")
    s = Geneval({**TINY, "detector_backend": "mmdet", "mmdet_config": "m2f.py", "mmdet_checkpoint": str(ckpt)}).settings
    det = make_detector(s, "cpu")
    assert det.fingerprint["detector"] == "mmdet" and det.fingerprint["weights"] == "m2f.pth"
    (found,) = det.detect([det.prepare(np.zeros((8, 8, 3), np.uint8))], 0.3)
    np.testing.assert_allclose(found.boxes, [[1, 2, 4, 5]])
    assert found.labels.tolist() == [1] and found.masks.shape == (1, 8, 8)
    assert R.label_mapping(det.id2label())[0][1] == R.geneval_objects().index("bicycle")


def test_mmdet_resize_and_mask_boxes():
    assert V.mmdet_resize_shape(512, 512) == (800, 800)
    assert V.mmdet_resize_shape(1024, 768) == (1067, 800)   # factor min(1333/1024, 800/768) = 1.0417
    assert V.mmdet_resize_shape(2000, 500) == (1333, 333)   # factor 1333/2000: 333.25 -> 333
    import torch

    masks = torch.zeros((2, 5, 6), dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    np.testing.assert_array_equal(V.mask_boxes(masks).numpy(), [[2, 1, 5, 3], [0, 0, 0, 0]])


def test_mask2former_post_processing_on_hand_made_outputs():
    """Two queries, two classes (+ no-object): top (query, class) pairs by class probability, masks upsampled to the
    padded input, cropped, upsampled to the original size, binarised at 0; score = probability x mean mask
    probability inside the mask."""
    import torch

    det = V.Mask2FormerDetector(V.ModelRef("mask2former", "x"), "x")
    cls = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]])  # query 0: class 0 (p = e^4 / (e^4 + 2)); query 1: none
    masks = torch.full((2, 2, 2), -5.0)
    masks[0, 0, 0] = 5.0
    (out,) = det._postprocess(cls[None], masks[None], padded=(4, 4), resized=(4, 4), original=(4, 4), floor=0.3)
    p = np.exp(4) / (np.exp(4) + 2)
    # bilinear 2 -> 4 (half-pixel): only the top-left 2 x 2 pixels stay above 0 (values 5, 2.5, 2.5, 0.625)
    expected_mask = np.zeros((4, 4), bool)
    expected_mask[:2, :2] = True
    sig = 1 / (1 + np.exp(-np.array([5, 2.5, 2.5, 0.625])))
    assert out.labels.tolist() == [0]
    np.testing.assert_array_equal(out.masks[0], expected_mask)
    np.testing.assert_allclose(out.boxes, [[0, 0, 2, 2]])
    np.testing.assert_allclose(out.scores, [p * sig.mean()], rtol=1e-5)
    assert len(det._postprocess(cls[None], masks[None], (4, 4), (4, 4), (4, 4), floor=0.99)[0].scores) == 0
    # two images at once, the second with its queries swapped: each gets the same detection as alone
    both = det._postprocess(torch.stack([cls, cls.flip(0)]), torch.stack([masks, masks.flip(0)]), (4, 4), (4, 4),
                            (4, 4), 0.3)
    for d in both:
        np.testing.assert_allclose(d.scores, out.scores)
        np.testing.assert_array_equal(d.masks, out.masks)
        assert d.boxes.tolist() == [[0, 0, 2, 2]] and d.labels.tolist() == [0]
