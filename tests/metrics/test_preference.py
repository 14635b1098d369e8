"""PickScore, HPS v2.1 and the LAION aesthetic predictor against their authors' scoring rules, on the same synthetic
weights and images.

The authors' packages do not install beside k3eval's pins (docs/metrics.md says why), so each reference here is the
authors' code path written out step by step, one image at a time, from their published code: PickScore's README
loop (AutoProcessor + AutoModel), HPS's `img_score.score` with its evaluation transform (ToTensor, ResizeMaxSize,
normalise) and open_clip model, the aesthetic predictor's `simple_inference.py` (CLIP image embedding, numpy L2
normalisation, the nn.Sequential head). k3eval's batched, cached scores must agree within 1e-4 relative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from metrics_helpers import make_run

from k3eval.errors import UserError
from k3eval.metrics.score import ScoreOptions, score_run

SYN = {"weights": "synthetic"}


def _opts(metrics, cache=None, **settings):
    return ScoreOptions(metrics=metrics, cache=cache, bootstrap=20, settings=settings, batch_size=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """5 prompts (one longer than 77 CLIP tokens and 35 BERT tokens), 2 samples, images of 80 x 56 (not square)."""
    root = tmp_path_factory.mktemp("pref")
    return make_run(root / "run", n_prompts=5, samples=2, size=56, long_prompt_every=4)


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("wide")
    path = make_run(root / "run", n_prompts=3, samples=2, size=64)
    man = pd.read_parquet(path / "manifest.parquet")
    for rel in man["path"]:  # 80 x 56 images: HPS resizes and pads, PickScore and ImageReward crop
        img = Image.open(path / rel).convert("RGB").resize((80, 56), Image.BICUBIC)
        img.save(path / rel)
    man["sha256"] = None
    man.to_parquet(path / "manifest.parquet")
    return path


def _per_image(run_dir) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "scores" / "per_image.parquet")


def _images_and_prompts(run_dir):
    from PIL import Image

    man = pd.read_parquet(run_dir / "manifest.parquet")
    per = _per_image(run_dir)
    man = per[["prompt_id", "sample"]].merge(man, on=["prompt_id", "sample"])
    return [Image.open(run_dir / p).convert("RGB") for p in man["path"]], man["prompt"].tolist()


def test_pickscore_equals_the_authors_readme_loop(wide_run, run):
    from transformers import AutoModel, AutoProcessor

    from k3eval.metrics.clip import synthetic_transformers_clip

    for r in (wide_run, run):
        summary = score_run(r, _opts(["pickscore"], pickscore=SYN))
        ours = _per_image(r)["pickscore"].to_numpy()
        folder = synthetic_transformers_clip()
        # the README: processor of the LAION CLIP-H (here the synthetic one, in the PIL backend of transformers 4.x)
        processor = AutoProcessor.from_pretrained(folder, backend="pil")
        model = AutoModel.from_pretrained(folder).eval()
        images, prompts = _images_and_prompts(r)
        theirs = []
        for image, prompt in zip(images, prompts):
            with torch.no_grad():
                im = processor(images=[image], padding=True, truncation=True, max_length=77, return_tensors="pt")
                tx = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
                ie = model.get_image_features(**im)
                te = model.get_text_features(**tx)
                ie = getattr(ie, "pooler_output", ie)
                te = getattr(te, "pooler_output", te)
                ie = ie / torch.norm(ie, dim=-1, keepdim=True)
                te = te / torch.norm(te, dim=-1, keepdim=True)
                theirs.append(float(model.logit_scale.exp() * (te @ ie.T)[0, 0]))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)
        assert np.ptp(ours) > 0.1  # the scores differ between images: the comparison is not of constants
        entry = summary["metrics"]["pickscore"]
        assert entry["protocol"]["logit_scale_exp"] == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
        assert entry["value"] == pytest.approx(np.mean(theirs), rel=1e-4)
        assert entry["protocol"]["synthetic_weights"]
    # the long prompt (one distinct text) is cut to 77 tokens with end-of-text kept, and counted once
    entry = summary["metrics"]["pickscore"]
    assert entry["n_truncated"] == 1 and any("truncated" in w for w in entry["warnings"])


def _authors_hps_transform(image, size):
    """hpsv2/src/open_clip/transform.py, image_transform(is_train=False, resize_longest_max=True), step by step."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode, Normalize, ToTensor

    x = ToTensor()(image)
    height, width = x.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        x = TF.resize(x, new_size, InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        x = TF.pad(x, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))(x)


def test_hps_equals_the_authors_score_function(wide_run, run):
    import open_clip

    from k3eval.metrics.clip import TINY_CLIP, register_tiny_config
    from k3eval.metrics.hps import synthetic_hps_checkpoint

    register_tiny_config()
    for r in (wide_run, run):
        summary = score_run(r, _opts(["hpsv21"], hpsv21=SYN))
        ours = _per_image(r)["hpsv21"].to_numpy()
        model = open_clip.create_model(TINY_CLIP, pretrained=None)
        checkpoint = torch.load(synthetic_hps_checkpoint(), map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
        model.eval()
        tokenizer = open_clip.get_tokenizer(TINY_CLIP)
        images, prompts = _images_and_prompts(r)
        theirs = []
        for image, prompt in zip(images, prompts):
            with torch.no_grad():
                x = _authors_hps_transform(image, model.visual.image_size[0]).unsqueeze(0)
                image_features, text_features, _ = model(x, tokenizer([prompt]))
                theirs.append(float(torch.diagonal(image_features @ text_features.T)[0]))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)
        assert np.ptp(ours) > 1e-3
        assert summary["metrics"]["hpsv21"]["value"] == pytest.approx(np.mean(theirs), rel=1e-4)
    assert summary["metrics"]["hpsv21"]["n_truncated"] == 1


def test_hps_transform_resizes_the_longest_side_and_pads_black():
    """A 80 x 56 image at size 64: scale 0.8, 45 x 64 after resizing (round(44.8)), 19 rows of padding: 9 above,
    10 below, black before normalisation."""
    from k3eval.metrics.hps import OPENAI_MEAN, OPENAI_STD, hps_transform

    img = np.full((56, 80, 3), 200, np.uint8)
    x = hps_transform(img, 64)
    assert tuple(x.shape) == (3, 64, 64)
    black = (0 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    np.testing.assert_allclose(x[:, :9, :].mean((1, 2)).numpy(), black, rtol=1e-6)
    np.testing.assert_allclose(x[:, 54:, :].mean((1, 2)).numpy(), black, rtol=1e-6)
    grey = (200 / 255 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    np.testing.assert_allclose(x[:, 20:40, 20:40].mean((1, 2)).numpy(), grey, rtol=1e-4)
    same = hps_transform(np.full((64, 64, 3), 7, np.uint8), 64)  # already at size: no resize, no padding
    np.testing.assert_allclose(same[0].numpy(), (7 / 255 - OPENAI_MEAN[0]) / OPENAI_STD[0], rtol=1e-6)


def test_aesthetic_equals_the_authors_simple_inference(run, tmp_path):
    import open_clip
    from torch import nn

    from k3eval.metrics.aesthetic import synthetic_head
    from k3eval.metrics.clip import TINY_CLIP, register_tiny_config, synthetic_open_clip_checkpoint

    summary = score_run(run, _opts(["aesthetic"], aesthetic=SYN))
    ours = _per_image(run)["aesthetic"].to_numpy()
    register_tiny_config()
    clip, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(
        synthetic_open_clip_checkpoint()))
    clip.eval()
    layers = [nn.Linear(32, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2), nn.Linear(128, 64),
              nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)]
    head = nn.Sequential(*layers)
    head.load_state_dict({k.removeprefix("layers."): v for k, v in
                          torch.load(synthetic_head(32), weights_only=True).items()})
    head.eval()
    images, _ = _images_and_prompts(run)
    theirs = []
    for image in images:
        with torch.no_grad():
            feats = clip.encode_image(preprocess(image).unsqueeze(0)).numpy()
        l2 = np.atleast_1d(np.linalg.norm(feats, 2, -1))
        l2[l2 == 0] = 1
        emb = feats / np.expand_dims(l2, -1)
        with torch.no_grad():
            theirs.append(float(head(torch.from_numpy(emb).float())[0, 0]))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert 3 < np.mean(ours) < 8 and np.ptp(ours) > 0.01
    entry = summary["metrics"]["aesthetic"]
    assert entry["protocol"]["synthetic_weights"] and entry["protocol"]["standard_head"] is False
    assert len(entry["per_category"]) == 2 and entry["ci"] is not None

    # a head file other than the published one (here the synthetic head given by path) is named in a warning
    other = tmp_path / "my_head.pth"
    other.write_bytes(synthetic_head(32).read_bytes())
    res = score_run(run, _opts(["aesthetic"], aesthetic={"weights": str(other), "clip_pretrained": "synthetic"}))
    assert any("other than the published" in w for w in res["metrics"]["aesthetic"]["warnings"])
    assert res["metrics"]["aesthetic"]["value"] == pytest.approx(entry["value"], rel=1e-9)


def test_aesthetic_shares_clip_score_embeddings(run, monkeypatch):
    from k3eval.metrics.extract import ClipImageExtractor

    calls = []
    real = ClipImageExtractor.run
    monkeypatch.setattr(ClipImageExtractor, "run", lambda self, batch: calls.append(len(batch)) or real(self, batch))
    opts = _opts(["clip_score", "aesthetic"], aesthetic=SYN)
    opts.clip_pretrained = "synthetic"
    summary = score_run(run, opts)
    assert sum(calls) == 10  # 10 images, embedded once for both metrics
    assert summary["metrics"]["aesthetic"]["protocol"]["model"] == summary["metrics"]["clip_score"]["protocol"]["model"]


def test_a_head_for_another_clip_is_refused(run, tmp_path):
    from k3eval.metrics.aesthetic import synthetic_head

    head768 = tmp_path / "head.pth"
    head768.write_bytes(synthetic_head(768).read_bytes())
    with pytest.raises(UserError, match="takes 768-dimensional CLIP embeddings, but the CLIP it reads gives 32"):
        score_run(run, _opts(["aesthetic"], aesthetic={"weights": str(head768), "clip_pretrained": "synthetic"}))
    with pytest.raises(UserError, match="is not an aesthetic predictor head"):
        score_run(run, _opts(["aesthetic"], aesthetic={"weights": str(_hps_file()), "clip_pretrained": "synthetic"}))


def _hps_file():
    from k3eval.metrics.hps import synthetic_hps_checkpoint

    return synthetic_hps_checkpoint()


def test_rescoring_from_the_cache_loads_no_model(run, tmp_path, monkeypatch):
    """The second scoring of unchanged images reads every value from the feature cache: no network is built."""
    from k3eval.metrics import hps, pickscore

    metrics = ["pickscore", "hpsv21", "aesthetic"]
    opts = _opts(metrics, cache=str(tmp_path / "cache"), pickscore=SYN, hpsv21=SYN, aesthetic=SYN)
    first = score_run(run, opts)

    def boom(*a, **k):
        raise AssertionError("a model was loaded for a fully cached rescoring")

    monkeypatch.setattr(pickscore.PickScoreImages, "model", boom)
    monkeypatch.setattr(hps.HpsImages, "model", boom)
    monkeypatch.setattr("k3eval.metrics.clip.load_clip", boom)
    again = score_run(run, opts)
    for m in metrics:
        assert again["metrics"][m]["value"] == first["metrics"][m]["value"]


def test_weights_are_hashed_into_the_fingerprint(tmp_path):
    """The same checkpoint by path has the synthetic file's sha256; a different file changes the fingerprint."""
    import shutil

    from k3eval.metrics.hps import HpsImages, synthetic_hps_checkpoint

    syn = HpsImages("synthetic")
    copy = tmp_path / "hps.pt"
    shutil.copy(synthetic_hps_checkpoint(), copy)
    by_path = HpsImages(str(copy), model="k3eval-tiny-clip")
    assert by_path.fingerprint["sha256"] == syn.fingerprint["sha256"]
    other = tmp_path / "other.pt"
    shutil.copy(synthetic_hps_checkpoint(seed=2), other)
    assert HpsImages(str(other), model="k3eval-tiny-clip").fingerprint["sha256"] != syn.fingerprint["sha256"]


@pytest.mark.parametrize("metric, names", [
    ("pickscore", ["yuvalkirstain/PickScore_v1", "--set pickscore.weights=PATH"]),
    ("hpsv21", ["HPS_v2.1_compressed.pt", "xswu/HPSv2", "--set hpsv21.weights=PATH"]),
    ("imagereward", ["ImageReward.pt", "THUDM/ImageReward", "--set imagereward.weights=PATH"]),
    ("vqascore", ["Qwen/Qwen2.5-VL-7B-Instruct", "--set vqascore.model=PATH"]),
    ("aesthetic", ["sac+logos+ava1-l14-linearMSE.pth", "improved-aesthetic-predictor", "--set aesthetic.weights=PATH"]),
])
def test_offline_without_weights_names_the_file_and_the_setting(run, tmp_path, monkeypatch, metric, names):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("K3EVAL_OFFLINE", "1")
    opts = _opts([metric])
    if metric == "aesthetic":  # its CLIP is cached (synthetic); the head file is what is missing
        opts.settings = {"aesthetic": {"clip_pretrained": "synthetic"}}
    with pytest.raises(UserError) as err:
        score_run(run, opts)
    for n in names:
        assert n in str(err.value)


def test_bad_settings_and_paths_are_named(run, tmp_path):
    with pytest.raises(UserError, match=r"--set hpsv21.weights: file not found: .*nope.pt"):
        score_run(run, _opts(["hpsv21"], hpsv21={"weights": str(tmp_path / "nope.pt")}))
    with pytest.raises(UserError, match=r"--set pickscore: weigths: unknown key"):
        score_run(run, _opts(["pickscore"], pickscore={"weigths": "synthetic"}))
    with pytest.raises(UserError, match="unknown open_clip architecture 'ViT-Q-99'"):
        score_run(run, _opts(["hpsv21"], hpsv21={"weights": str(_hps_file()), "model": "ViT-Q-99"}))
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, wrong)
    with pytest.raises(UserError, match="does not fit open_clip k3eval-tiny-clip"):
        score_run(run, _opts(["hpsv21"], hpsv21={"weights": str(wrong), "model": "k3eval-tiny-clip"}))


def test_images_without_prompts_are_refused(tmp_path):
    path = make_run(tmp_path / "run", n_prompts=3, samples=1)
    man = pd.read_parquet(path / "manifest.parquet")
    man.loc[1, "prompt"] = "  "
    man.to_parquet(path / "manifest.parquet")
    for metric in ("pickscore", "hpsv21", "imagereward", "vqascore"):
        key = "model" if metric == "vqascore" else "weights"
        with pytest.raises(UserError, match=r"prompt_id 'p001'\) has no prompt text: .* score an image against"):
            score_run(path, _opts([metric], **{metric: {key: "synthetic"}}))
    assert not (path / "scores").exists()
    ok = score_run(path, _opts(["aesthetic"], aesthetic=SYN))  # needs no prompt
    assert ok["metrics"]["aesthetic"]["n"] == 3
