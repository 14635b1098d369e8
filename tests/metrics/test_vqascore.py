"""VQAScore against the authors' rule (t2v-metrics' transformers chat-model path), on a small seeded Qwen2.5-VL.

`t2v-metrics` does not install beside k3eval's pins (docs/metrics.md), so the reference is its `Qwen2VLModel.forward`
written out: one image at a time, the question (the paper's template) through the chat template with the generation
prompt, `generate(max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True)`, the softmax
of the first step's scores at the answer's token. Those scores include the generation config's repetition penalty
(the synthetic model has Qwen2.5-VL-Instruct's 1.05), which k3eval applies itself to its batched, left-padded,
teacher-forced forward pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from metrics_helpers import make_run

from k3eval.errors import UserError
from k3eval.metrics.score import ScoreOptions, score_run
from k3eval.metrics.vqascore import QUESTION


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from PIL import Image

    path = make_run(tmp_path_factory.mktemp("vqa") / "run", n_prompts=4, samples=2, size=64)
    man = pd.read_parquet(path / "manifest.parquet")
    for rel in man["path"][::3]:  # other sizes: other image-token counts, so rows are padded differently
        Image.open(path / rel).resize((96, 64)).save(path / rel)
    man["sha256"] = None
    man.to_parquet(path / "manifest.parquet")
    return path


def _score(run, **settings):
    s = score_run(run, ScoreOptions(metrics=["vqascore"], cache=None, bootstrap=20, batch_size=3,
                                    settings={"vqascore": {"model": "synthetic", **settings}}))
    per = pd.read_parquet(run / "scores" / "per_image.parquet")
    man = pd.read_parquet(run / "manifest.parquet")
    return s, per.merge(man[["prompt_id", "sample", "prompt"]], on=["prompt_id", "sample"])


def _model():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from k3eval.metrics.vqascore import synthetic_vlm

    folder = synthetic_vlm()
    return AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder).eval()


def _inputs(proc, run, path, prompt, question=QUESTION):
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.format(prompt)}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return proc(text=[text], images=[Image.open(run / path).convert("RGB")], padding=True, return_tensors="pt")


def test_vqascore_equals_t2v_metrics_generate_rule(run):
    summary, per = _score(run)
    proc, model = _model()
    yes = proc.tokenizer.encode("Yes", add_special_tokens=False)
    assert len(yes) == 1
    theirs, raw = [], []
    for path, prompt in zip(per["path"], per["prompt"]):
        inputs = _inputs(proc, run, path, prompt)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, temperature=1.0, output_scores=True,
                                 output_logits=True, return_dict_in_generate=True)
        theirs.append(float(torch.softmax(out.scores[0][0], -1)[yes[0]]))
        raw.append(float(torch.softmax(out.logits[0][0], -1)[yes[0]]))
    ours = per["vqascore"].to_numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert np.ptp(ours) > 0.05 and 0 < ours.min() and ours.max() < 1
    assert not np.allclose(theirs, raw, rtol=1e-3)  # the penalty matters: the comparison checks it
    entry = summary["metrics"]["vqascore"]
    assert entry["protocol"]["repetition_penalty"] == 1.05 and entry["protocol"]["synthetic_weights"]
    _, plain = _score(run, repetition_penalty=1.0)
    np.testing.assert_allclose(plain["vqascore"].to_numpy(), raw, rtol=1e-4)


def test_a_multi_token_answer_is_the_geometric_mean_teacher_forced(run):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    question = 'Is "{}" shown here? Answer with one word.'
    summary, per = _score(run, question=question, answer="Yes indeed")
    proc, model = _model()
    answer = proc.tokenizer.encode("Yes indeed", add_special_tokens=False)
    assert len(answer) > 1
    penalty = RepetitionPenaltyLogitsProcessor(1.05)
    theirs = []
    for path, prompt in zip(per["path"], per["prompt"]):
        inputs = _inputs(proc, run, path, prompt, question)
        ids = inputs["input_ids"]
        logp = 0.0
        for tok in answer:  # one token at a time, the answer so far appended, as generation would see it
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
            n = ids.shape[1]
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                               mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"],
                                                            torch.zeros(1, n - inputs["input_ids"].shape[1],
                                                                        dtype=torch.long)], 1),
                               **extra).logits[:, -1]
            logp += float(torch.log_softmax(penalty(ids, logits.clone()).double(), -1)[0, tok])
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
        theirs.append(np.exp(logp / len(answer)))
    np.testing.assert_allclose(per["vqascore"].to_numpy(), theirs, rtol=1e-4)
    assert summary["metrics"]["vqascore"]["protocol"]["question"] == question


def test_a_model_that_is_not_image_text_to_text_is_refused(run, hf_clip_folder):
    with pytest.raises(UserError, match=r"is a clip model \(CLIPModel\), not an image-text-to-text model"):
        _score(run, model=str(hf_clip_folder))


def test_bad_vqascore_settings_are_named(run):
    with pytest.raises(UserError, match=r"--set vqascore: question: .*'\{\}' exactly once"):
        _score(run, question="Is this a good image?")
    with pytest.raises(UserError, match=r"--set vqascore: dtype: .*auto, float32, bfloat16, float16"):
        _score(run, dtype="int8")
    with pytest.raises(UserError, match=r"--set vqascore.model: 'not a repo' is neither a folder nor"):
        _score(run, model="not a repo")


def test_repetition_penalty_equals_transformers_on_each_rows_own_tokens():
    """Left-padded rows: the penalty reaches exactly the tokens of the row itself (padding ids are not penalised),
    as transformers' processor does for that row alone."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from k3eval.metrics.vqascore import repetition_penalty

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    context = torch.tensor([[0, 0, 7, 8, 8, 49], [0, 5, 6, 7, 9, 10], [1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    ours = repetition_penalty(logits, context, mask, 1.3)
    for r in range(3):
        own = context[r][mask[r].bool()][None]
        theirs = RepetitionPenaltyLogitsProcessor(1.3)(own, logits[r:r + 1].clone())
        torch.testing.assert_close(ours[r:r + 1], theirs)
    assert ours[0, 0] == logits[0, 0] and ours[1, 0] == logits[1, 0]  # 0 is padding there
