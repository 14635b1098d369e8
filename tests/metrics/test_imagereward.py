"""ImageReward against the authors' scoring rule, computed by hand from the checkpoint's BLIP keys.

The `image-reward` package does not install beside k3eval's pins (it pins timm 0.6.13; docs/metrics.md), so the
reference is `ImageReward.score` written out in plain torch from the authors' modules: BLIP's `vit.py` forward
(patch conv, [CLS] + position embeddings, pre-norm blocks with fused qkv attention and GELU MLP, final LayerNorm,
eps 1e-6), `med.py`'s BERT encoder with cross-attention to every image token (masks as -10000 added to the scores),
the [CLS] hidden state through the nn.Sequential reward head, then (r - mean) / std with the authors' constants.
It reads the state dict by BLIP's names, so a wrong key mapping in k3eval would show as a different reward.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from metrics_helpers import make_run

from k3eval.errors import UserError
from k3eval.metrics.score import ScoreOptions, score_run


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _lin(x, sd, prefix):
    return F.linear(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def _heads(x, h):
    b, n, c = x.shape
    return x.view(b, n, h, c // h).transpose(1, 2)


def _vit(sd, x, heads):
    p = "blip.visual_encoder."
    x = F.conv2d(x, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[p + "pos_embed"][:, :x.shape[1] + 1]
    i = 0
    while f"{p}blocks.{i}.norm1.weight" in sd:
        b = f"{p}blocks.{i}."
        y = _ln(x, sd, b + "norm1", 1e-6)
        bsz, n, c = y.shape
        qkv = _lin(y, sd, b + "attn.qkv").reshape(bsz, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1)) * (c // heads) ** -0.5
        y = (att.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(bsz, n, c)
        x = x + _lin(y, sd, b + "attn.proj")
        y = _lin(F.gelu(_lin(_ln(x, sd, b + "norm2", 1e-6), sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
        x = x + y
        i += 1
    return _ln(x, sd, p + "norm", 1e-6)


def _attention(q_in, kv_in, sd, prefix, heads, mask):
    q = _heads(_lin(q_in, sd, prefix + ".self.query"), heads)
    k = _heads(_lin(kv_in, sd, prefix + ".self.key"), heads)
    v = _heads(_lin(kv_in, sd, prefix + ".self.value"), heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return ctx


def _bert(sd, cfg, ids, att, image):
    p = "blip.text_encoder."
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    x = sd[p + "embeddings.word_embeddings.weight"][ids] + sd[p + "embeddings.position_embeddings.weight"][
        torch.arange(ids.shape[1])]
    x = _ln(x, sd, p + "embeddings.LayerNorm", eps)
    self_mask = (1.0 - att[:, None, None, :].float()) * -10000.0
    cross_mask = torch.zeros(1, 1, 1, image.shape[1])
    for i in range(cfg["num_hidden_layers"]):
        b = f"{p}encoder.layer.{i}."
        a = _attention(x, x, sd, b + "attention", heads, self_mask)
        x = _ln(_lin(a, sd, b + "attention.output.dense") + x, sd, b + "attention.output.LayerNorm", eps)
        c = _attention(x, image, sd, b + "crossattention", heads, cross_mask)
        x = _ln(_lin(c, sd, b + "crossattention.output.dense") + x, sd, b + "crossattention.output.LayerNorm", eps)
        h = F.gelu(_lin(x, sd, b + "intermediate.dense"))
        x = _ln(_lin(h, sd, b + "output.dense") + x, sd, b + "output.LayerNorm", eps)
    return x


def _authors_reward(sd, cfg, tokenizer, image, prompt):
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    preprocess = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224),
                          lambda im: im.convert("RGB"), ToTensor(),
                          Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    text = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    width = sd["blip.visual_encoder.cls_token"].shape[-1]
    image_embeds = _vit(sd, preprocess(image).unsqueeze(0), heads=width // 64)
    hidden = _bert(sd, cfg, text.input_ids, text.attention_mask, image_embeds)
    x = hidden[:, 0, :]
    for i in (0, 2, 4, 6, 7):
        x = _lin(x, sd, f"mlp.layers.{i}")
    return float((x - 0.16717362830052426) / 1.0333394966054072)


def test_imagereward_equals_the_authors_score_by_hand(tmp_path):
    from PIL import Image

    from k3eval.metrics.imagereward import load_tokenizer, synthetic_imagereward

    run = make_run(tmp_path / "run", n_prompts=4, samples=2, size=56, long_prompt_every=3)
    man = pd.read_parquet(run / "manifest.parquet")
    for rel in man["path"][::2]:  # some landscape images: resized on the short side, then centre-cropped
        Image.open(run / rel).resize((90, 60), Image.BICUBIC).save(run / rel)
    man["sha256"] = None
    man.to_parquet(run / "manifest.parquet")
    summary = score_run(run, ScoreOptions(metrics=["imagereward"], cache=None, bootstrap=20, batch_size=3,
                                          settings={"imagereward": {"weights": "synthetic"}}))
    per = pd.read_parquet(run / "scores" / "per_image.parquet").merge(man, on=["prompt_id", "sample"])
    ckpt, med, tok_dir = synthetic_imagereward()
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = json.loads(med.read_text())
    tokenizer = load_tokenizer(tok_dir)
    with torch.no_grad():
        theirs = [_authors_reward(sd, cfg, tokenizer, Image.open(run / p), t)
                  for p, t in zip(per["path_x"], per["prompt"])]
    ours = per["imagereward"].to_numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert np.ptp(ours) > 1e-3  # rewards differ between images and prompts
    entry = summary["metrics"]["imagereward"]
    assert entry["protocol"]["mean"] == 0.16717362830052426 and entry["protocol"]["std"] == 1.0333394966054072
    assert entry["n_truncated"] == 1 and entry["protocol"]["synthetic_weights"]
    long_ids = tokenizer(max(per["prompt"], key=len), padding="max_length", truncation=True,
                         max_length=35)["input_ids"]
    assert long_ids[0] == tokenizer.cls_token_id and long_ids[-1] == tokenizer.sep_token_id


def test_imagereward_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    from k3eval.metrics.imagereward import synthetic_imagereward

    ckpt, med, _ = synthetic_imagereward()
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    del sd["blip.text_encoder.encoder.layer.1.output.dense.weight"]
    sd["blip.visual_encoder.extra_head.weight"] = torch.zeros(2)
    broken = tmp_path / "ImageReward.pt"
    torch.save(sd, broken)
    (tmp_path / "med_config.json").write_bytes(med.read_bytes())  # found next to the weights file
    run = make_run(tmp_path / "run", n_prompts=2, samples=1)
    opts = ScoreOptions(metrics=["imagereward"], cache=None,
                        settings={"imagereward": {"weights": str(broken), "tokenizer": str(_tok())}})
    with pytest.raises(UserError, match="does not fit the ImageReward architecture .*extra_head.*missing"):
        score_run(run, opts)
    torch.save({"state_dict": {}}, broken)
    with pytest.raises(UserError, match="is not an ImageReward checkpoint"):
        score_run(run, opts)


def _tok():
    from k3eval.metrics.imagereward import synthetic_imagereward

    return synthetic_imagereward()[2]
