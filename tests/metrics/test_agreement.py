"""Agreement with torch-fidelity, torchmetrics and clean-fid on the same synthetic weights file and the same images.

The synthetic Inception file has exactly the keys torch-fidelity loads; torch-fidelity and torchmetrics load it
through their own loaders (`feature_extractor_weights_path`), k3eval through its own, and the FIDs must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from k3eval.metrics import functional as F
from k3eval.metrics.cache import FeatureCache
from k3eval.metrics.extract import InceptionExtractor, extract_images
from k3eval.metrics.inception import POOL_DIM
from k3eval.metrics.preprocess import load_rgb8
from k3eval.metrics.reference import image_items
from k3eval.metrics.weights import resolve_inception_weights


def _ours(folder, weights, protocol):
    ext = InceptionExtractor(resolve_inception_weights(str(weights)), protocol, batch_size=16)
    items, bad = image_items(folder)
    assert not bad
    return extract_images(ext, items, FeatureCache(ext.fingerprint, None)).feats


@pytest.fixture(scope="module")
def tf_features(image_sets, inception_weights):
    a, b = image_sets
    return _ours(a, inception_weights, "tf"), _ours(b, inception_weights, "tf")


def test_tf_fid_equals_torch_fidelity(image_sets, inception_weights, tf_features):
    import torch_fidelity

    a, b = image_sets
    theirs = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), fid=True, cuda=False, verbose=False,
                                              cache=False, feature_extractor_weights_path=str(inception_weights),
                                              batch_size=6, num_workers=0)["frechet_inception_distance"]
    fa, fb = tf_features
    m1, s1 = F.gaussian_stats(fa[:, :POOL_DIM])
    ours = F.frechet_distance_to_features(m1, s1, fb[:, :POOL_DIM])
    assert ours > 1.0  # the two sets differ: the comparison is not of two zeros
    assert abs(ours - theirs) / theirs < 1e-4, (ours, theirs)


def test_tf_fid_equals_torchmetrics_without_antialias(image_sets, inception_weights, tf_features):
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = image_sets
    fid = FrechetInceptionDistance(feature=2048, antialias=False,
                                   feature_extractor_weights_path=str(inception_weights))
    for folder, real in ((a, True), (b, False)):
        imgs = np.stack([load_rgb8(p) for p in sorted(folder.glob("*.png"))])
        fid.update(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), real=real)
    theirs = float(fid.compute())
    fa, fb = tf_features
    m1, s1 = F.gaussian_stats(fa[:, :POOL_DIM])
    ours = F.frechet_distance_to_features(m1, s1, fb[:, :POOL_DIM])
    assert abs(ours - theirs) / theirs < 1e-4, (ours, theirs)


def test_features_equal_torch_fidelity_extractor(image_sets, inception_weights, tf_features):
    """Per-image features (not only the FID) agree with torch-fidelity's network on the same file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    a, _ = image_sets
    fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(inception_weights))
    imgs = np.stack([load_rgb8(p) for p in sorted(a.glob("*.png"))])
    with torch.no_grad():
        pool, logits = fe(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous())
    ours = tf_features[0]
    np.testing.assert_allclose(ours[:, :POOL_DIM], pool.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ours[:, POOL_DIM:], logits.numpy(), rtol=1e-4, atol=1e-3)


def test_clean_resize_equals_clean_fid():
    from cleanfid.resize import make_resizer

    from k3eval.metrics.preprocess import resize_clean

    img = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
    theirs = make_resizer("PIL", False, "bicubic", (299, 299))(img)  # H x W x C
    np.testing.assert_array_equal(resize_clean(img), theirs)


@pytest.mark.parametrize("shape", [(64, 64, 3), (31, 97, 3), (512, 300, 3), (299, 299, 3), (600, 800, 3)])
def test_tf_resize_equals_torch_fidelity_exactly(shape):
    """The `tf` resize is computed in the order torch-fidelity computes it (width first, then height, float32), so
    every value is the same to the last bit, down- and upscaling alike."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from k3eval.metrics.preprocess import inception_input

    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    theirs = interpolate_bilinear_2d_like_tensorflow1x(torch.from_numpy(img).permute(2, 0, 1)[None].float(),
                                                       size=(299, 299), align_corners=False)[0]
    assert torch.equal(inception_input(img, "tf"), theirs)


def test_clean_and_tf_protocols_differ(image_sets, inception_weights, tf_features):
    a, _ = image_sets
    clean = _ours(a, inception_weights, "clean")
    assert not np.allclose(clean[:, :POOL_DIM], tf_features[0][:, :POOL_DIM], rtol=1e-3)


class _TensorFeatures(torch.nn.Module):
    """transformers >= 5 returns model outputs from get_*_features, which torchmetrics 1.9 CLIPScore cannot take;
    this wrapper hands it the projected tensor (pooler_output) and changes nothing else."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


def _torchmetrics_clip(folder):
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    return CLIPScore(model_name_or_path=lambda: (_TensorFeatures(CLIPModel.from_pretrained(folder)),
                                                 CLIPProcessor.from_pretrained(folder)))


def test_transformers_clip_score_equals_torchmetrics_on_short_prompts(hf_clip_folder):
    from metrics_helpers import smooth_images

    from k3eval.metrics.clip import load_clip

    imgs = smooth_images(4, 64, seed=5)
    texts = ["a red cat", "a blue dog on a sofa", "two apples", "a city at night"]
    enc = load_clip("transformers", "synthetic", "synthetic")
    cos = F.clip_cosine(enc.encode_images(imgs), enc.encode_texts(texts))
    assert (cos > 0).all()  # no clamping involved: the per-pair and the mean clamp agree
    tm = _torchmetrics_clip(str(hf_clip_folder))
    tm.update([torch.from_numpy(a).permute(2, 0, 1) for a in imgs], texts)
    theirs = float(tm.compute())
    ours = float(F.clip_score(enc.encode_images(imgs), enc.encode_texts(texts)).mean())
    assert abs(ours - theirs) / theirs < 1e-4, (ours, theirs)


def test_long_prompts_keep_end_of_text_and_differ_from_torchmetrics(hf_clip_folder):
    from metrics_helpers import smooth_images

    from k3eval.metrics.clip import load_clip

    imgs = smooth_images(1, 64, seed=6)
    long = " ".join(["a detailed painting of a lighthouse on a rocky shore at sunset"] * 10)
    enc = load_clip("transformers", "synthetic", "synthetic")
    assert enc.truncated([long, "short"]) == [True, False]
    tok = enc._tokenizer([long], truncation=True, max_length=77)["input_ids"][0]
    assert len(tok) == 77 and tok[-1] == enc._tokenizer.eos_token_id
    ours = float(F.clip_score(enc.encode_images(imgs), enc.encode_texts([long]))[0])
    tm = _torchmetrics_clip(str(hf_clip_folder))
    with pytest.warns(UserWarning, match="truncate"):
        tm.update([torch.from_numpy(imgs[0]).permute(2, 0, 1)], [long])
    theirs = float(tm.compute())
    # torchmetrics slices the ids to 77, dropping end-of-text: its text embedding is read at another token.
    assert abs(ours - theirs) > 1e-3


def test_open_clip_checkpoint_loads_through_create_model_and_transforms(open_clip_checkpoint):
    import open_clip

    from k3eval.metrics.clip import TINY_CLIP, register_tiny_config

    register_tiny_config()
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(open_clip_checkpoint))
    state = torch.load(open_clip_checkpoint, map_location="cpu", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert preprocess is not None
