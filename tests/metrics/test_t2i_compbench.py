"""T2I-CompBench through the score stage with tiny BLIP VQA, Grounding DINO, Depth Anything and CLIP models (seeded,
saved with save_pretrained, loaded back with from_pretrained): every category's image score equals the official rule
applied to the models' outputs computed one image at a time; each model runs only on its categories; the parser used
and its disagreements with spaCy are recorded; caching; bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from metrics_helpers import make_set_run
from test_phrases import fake_spacy

from k3eval.errors import UserError
from k3eval.metrics import compbench_rules as C
from k3eval.metrics import phrases
from k3eval.metrics import vision_models as V
from k3eval.metrics.score import ScoreOptions, score_run
from k3eval.metrics.t2i_compbench import T2ICompBench, _models, shipped_prompts

TINY = {"vqa_model": "synthetic", "detector": "synthetic", "depth_model": "synthetic", "clip_pretrained": "synthetic",
        "vqa_image_size": 96}


@pytest.fixture(scope="module")
def compbench_run(tmp_path_factory):
    ids = []
    for cat in C.CATEGORIES:
        ids += [pid for pid, (_, c) in shipped_prompts().items() if c == cat][:2]
    return make_set_run(tmp_path_factory.mktemp("cb") / "run", "t2i-compbench", ids, samples=2, size=64, seed=3)


def opts(tmp_path, **settings) -> ScoreOptions:
    return ScoreOptions(metrics=["t2i_compbench"], cache=str(tmp_path / "cache"), bootstrap=200,
                        settings={"t2i_compbench": {**TINY, **settings}})


def reference_scores(run, rows: pd.DataFrame) -> list[float]:
    """Each image scored on its own: the models called for that image alone, then the official rule."""
    from k3eval.metrics.clip import load_clip
    from k3eval.metrics.preprocess import load_rgb8

    metric = T2ICompBench(TINY)
    blip, det, depth = _models(metric.settings, "cpu")
    clip = load_clip("open_clip", "ViT-B-32", "synthetic")
    parser = phrases.RuleParser()
    out = []
    for r in rows.to_dict("records"):
        img, (prompt, cat) = load_rgb8(run / r["path"]), shipped_prompts()[r["prompt_id"]]
        tokens = parser.tokens(prompt)
        h, w = img.shape[:2]
        fw, fh = C.detection_frame(w, h)

        scale = np.array([fw / w, fh / h, fw / w, fh / h, 1, 1], np.float32)

        def detect(phrase_list, img=img, scale=scale):
            (d,) = det.detect([det.prepare(img, list(phrase_list))])
            return d * scale

        attribute = C.blip_image_score(blip.yes_probability(
            [blip.prepare(img)], [C.blip_questions(prompt, parser.noun_chunks(prompt))])[0]) \
            if cat in C.ATTRIBUTE + ("complex",) else None
        text = C.clip_complex_text(tokens) if cat == "complex" else prompt
        a, t = clip.encode_images([img])[0], clip.encode_texts([text])[0]
        cosine = float(a @ t / np.linalg.norm(a) / np.linalg.norm(t))
        if cat in C.ATTRIBUTE:
            out.append(attribute)
        elif cat == "non_spatial":
            out.append(cosine)
        elif cat == "numeracy":
            objs, counts = C.numeracy_targets(tokens)
            d = detect(dict.fromkeys(objs))
            labels = [C.numeracy_label(list(dict.fromkeys(objs))[int(i)]) for i in d[:, 5]]
            out.append(C.numeracy_score(objs, counts, labels, d))
        else:
            o1, o2 = C.complex_objects(tokens) if cat == "complex" else C.first_last_nouns(tokens)
            phrases_ = list(dict.fromkeys((o1, o2))) if o1 else []
            d = detect(phrases_) if phrases_ else np.zeros((0, 6))
            labels = [C.person(phrases_[int(i)]) for i in d[:, 5]]
            if cat == "3d_spatial":
                dmap = C.depth_in_frame(depth.predict([depth.prepare(img)])[0], (w, h), (fw, fh))
                depths = [C.box_depth(dmap, row[:4]) for row in d]
                out.append(C.spatial_3d_score(C.locality(prompt, C.SPATIAL_3D), C.person(o1), C.person(o2), labels,
                                              d, depths))
                continue
            spatial = C.spatial_2d_score(C.locality(prompt, C.SPATIAL_2D), C.person(o1), C.person(o2), labels, d)
            out.append(spatial if cat == "spatial" else
                       C.three_in_one(C.complex_kind(prompt), attribute, spatial, cosine))
    return out


def test_every_category_scores_as_its_official_rule(compbench_run, tmp_path, monkeypatch):
    answered = []
    real = V.BlipVqa.yes_probability
    monkeypatch.setattr(V.BlipVqa, "yes_probability",
                        lambda self, images, questions: answered.append(len(images)) or real(self, images, questions))
    summary = score_run(compbench_run, opts(tmp_path))
    m = summary["metrics"]["t2i_compbench"]
    per = pd.read_parquet(compbench_run / "scores" / "per_image.parquet")
    assert set(m["per_category"]) == set(C.CATEGORIES) and m["n"] == 32
    assert sum(answered) == 16  # BLIP ran on the colour, shape, texture and complex images only
    np.testing.assert_allclose(per["t2i_compbench"], reference_scores(compbench_run, per), rtol=1e-5, atol=1e-6)
    cats = [shipped_prompts()[p][1] for p in per["prompt_id"]]
    means = per.groupby(pd.Series(cats, index=per.index))["t2i_compbench"].mean()
    assert m["value"] == pytest.approx(means.mean())
    assert m["categories"] == pytest.approx(means.to_dict())
    assert all(e["ci"] is not None and e["n"] == 4 for e in m["per_category"].values())
    assert per["t2i_compbench_method"].tolist() == [C.METHODS[c] for c in cats]
    assert m["parser"] == "rule-based v1" and m["parser_differences"] is None
    assert any("rule-based" in w for w in m["warnings"]) and m["protocol"]["synthetic_weights"]
    assert set(m["protocol"]["models"]) == {"vqa", "objects", "depth", "clip"}


def test_a_cached_rescoring_runs_no_model(compbench_run, tmp_path, monkeypatch):
    first = score_run(compbench_run, opts(tmp_path))["metrics"]["t2i_compbench"]
    for cls, fn in ((V.BlipVqa, "yes_probability"), (V.GroundingDetector, "detect"), (V.DepthModel, "predict")):
        monkeypatch.setattr(cls, fn, lambda *a, **k: pytest.fail("a model ran on a cached rescoring"))
    again = score_run(compbench_run, opts(tmp_path))["metrics"]["t2i_compbench"]
    assert again["value"] == first["value"]


def test_parser_disagreements_with_spacy_are_counted(compbench_run, tmp_path, monkeypatch):
    prompt = next(text for pid, (text, cat) in shipped_prompts().items() if cat == "color")
    monkeypatch.setattr(phrases, "load_spacy", fake_spacy({prompt: ["a thing"]}))
    rules = score_run(compbench_run, opts(tmp_path, parser="rules"))["metrics"]["t2i_compbench"]
    assert rules["parser"] == "rule-based v1" and rules["parser_differences"] == 1
    used = score_run(compbench_run, opts(tmp_path))["metrics"]["t2i_compbench"]
    assert used["parser"] == "spacy core_web_sm 3.8.0" and used["parser_differences"] == 1
    assert not any("rule-based" in w for w in used["warnings"])


def test_runs_of_other_prompt_sets_are_refused(tmp_path):
    run = make_set_run(tmp_path / "run", "geneval", ["geneval-f64075aa9d"], samples=2)
    with pytest.raises(UserError, match="is not a T2I-CompBench prompt.*t2i_compbench runs of 't2i-compbench'"):
        score_run(run, opts(tmp_path))


def test_settings_are_checked(tmp_path, compbench_run):
    with pytest.raises(UserError, match=r"--set t2i_compbench: parser: Input should be 'auto', 'spacy' or 'rules'"):
        score_run(compbench_run, opts(tmp_path, parser="nltk"))
    with pytest.raises(UserError, match=r"t2i_compbench.vqa_model: cannot load .*'nobody/blip'.*vqa_model=FOLDER"):
        score_run(compbench_run, opts(tmp_path, vqa_model="nobody/blip"))


def test_blip_answers_do_not_depend_on_the_other_questions_of_a_batch():
    """transformers' BLIP text decoder ignores its cross-attention mask, so padding a short question to a long one
    would change its answer; BLIP's own code masks the padding. Answers must not depend on batch company."""
    from metrics_helpers import smooth_images

    blip = V.BlipVqa(V.resolve_model("blip_vqa", "synthetic", "x"), "x", image_size=64)
    a, b = (blip.prepare(x) for x in smooth_images(2, 64, 5))
    alone = blip.yes_probability([a], [["a blue bench?"]])[0]
    mixed = blip.yes_probability([a, b], [["a blue bench?", "a green bench with a long tail?"], ["a cup?"]])
    assert mixed[0][0] == pytest.approx(alone[0], abs=1e-6) and len(mixed[0]) == 2 and len(mixed[1]) == 1


def test_questions_start_with_blips_enc_token_when_the_tokenizer_has_it(tmp_path):
    from transformers import BertTokenizer

    blip = V.BlipVqa(V.resolve_model("blip_vqa", "synthetic", "x"), "x")
    assert blip.start_token() == "[ENC]"
    (tmp_path / "vocab.txt").write_text("\n".join(V._vocab()) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    plain = V.BlipVqa(V.ModelRef("blip_vqa", str(tmp_path)), "x")
    assert plain.start_token() == "[CLS]"
