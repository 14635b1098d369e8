"""Image decoding rules, resize protocols and weights files: every odd input gives the documented result or a
UserError that names it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from k3eval.errors import UserError
from k3eval.metrics.options import check_protocol
from k3eval.metrics.preprocess import BadImageError, inception_input, load_rgb8
from k3eval.metrics.weights import load_inception_state, resolve_inception_weights


def test_modes_become_8bit_rgb(tmp_path):
    g = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    Image.fromarray(g, "L").save(tmp_path / "gray.png")
    out = load_rgb8(tmp_path / "gray.png")
    assert out.shape == (64, 64, 3) and (out[:, :, 0] == g).all() and (out[:, :, 2] == g).all()

    rgba = np.dstack([np.full((8, 8, 3), 100, np.uint8), np.zeros((8, 8), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert (load_rgb8(tmp_path / "rgba.png") == 100).all()  # alpha dropped, colour kept

    g16 = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # PIL picks mode I;16
    out16 = load_rgb8(tmp_path / "g16.png")
    assert out16[0, :, 0].tolist() == [0, 1, 255, 128]  # scaled by 1/257, not clipped

    pal = Image.fromarray(np.full((4, 4, 3), 30, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "pal.png")
    assert (load_rgb8(tmp_path / "pal.png") == 30).all()


def test_truncated_and_non_images_raise_bad_image(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 9).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.png", "text.png", "missing.png"):
        with pytest.raises(BadImageError) as e:
            load_rgb8(tmp_path / name)
        assert name in str(e.value)


def test_images_of_any_size_give_299_inputs():
    for shape in ((64, 64, 3), (31, 97, 3), (512, 300, 3)):
        img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        for protocol in ("clean", "tf"):
            x = inception_input(img, protocol)
            assert x.shape == (3, 299, 299) and x.dtype == torch.float32
            assert float(x.min()) >= 0 and float(x.max()) <= 255


def test_unknown_protocol_names_the_choices():
    with pytest.raises(UserError, match="clean, tf"):
        check_protocol("bilinear")


def test_weights_with_wrong_keys_are_refused(tmp_path, inception_weights):
    state = torch.load(inception_weights, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(UserError, match=r"1 missing \(e\.g\. fc\.bias\).*1 unexpected"):
        load_inception_state(resolve_inception_weights(str(bad)))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        load_inception_state(resolve_inception_weights(str(tmp_path / "junk.pth")))


def test_weights_hash_is_recorded_and_non_official_marked(inception_weights):
    info = resolve_inception_weights(str(inception_weights))
    assert len(info.sha256) == 64 and info.standard is False and info.synthetic is True
    assert info.fingerprint()["standard_weights"] is False


def test_missing_weights_offline_name_the_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("K3EVAL_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        resolve_inception_weights(None)
    msg = str(e.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    with pytest.raises(UserError, match="file not found"):
        resolve_inception_weights(str(tmp_path / "nope.pth"))


def test_open_clip_unknown_tag_is_a_user_error():
    from k3eval.metrics.clip import load_clip

    with pytest.raises(UserError, match="neither a file nor a pretrained tag"):
        load_clip("open_clip", "ViT-B-32", "no-such-tag")
    with pytest.raises(UserError, match="--clip-backend"):
        load_clip("keras", "x", "y")
