"""Official Kandinsky 3 checkpoints -> diffusers Kandinsky3UNet: full-size key coverage on the meta device, the
inverse mapping, tiny outputs before/after conversion, and bad checkpoints."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from k3eval.cli import main
from k3eval.errors import UserError
from k3eval.generators import kandinsky3_convert as conv
from k3eval.generators.kandinsky3 import TINY_UNET_CONFIG, build_tiny_unet, write_official_checkpoint

DATA = Path(__file__).parent / "kandinsky3_data"


def _keys(name: str) -> dict[str, tuple[int, ...]]:
    rows = (DATA / name).read_text(encoding="utf-8").splitlines()[1:]
    return {k: tuple(int(x) for x in s.split("x")) for k, s in (r.split("\t") for r in rows)}


@pytest.fixture(scope="module")
def kandinsky3_full_shapes():
    return conv.expected_shapes({})  # Kandinsky3UNet() at its defaults = the official config, on the meta device


def test_every_official_key_maps_onto_the_full_size_unet(kandinsky3_full_shapes):
    official = _keys("unet_t2i_keys.tsv")
    assert len(official) == 1068
    converted = conv.from_official({k: torch.empty(s, device="meta") for k, s in official.items()},
                                   {k: torch.empty(s, device="meta") for k, s in _keys("projection_keys.tsv").items()})
    # every official key lands on a diffusers key with the same shape, and no diffusers key is left without a source
    assert set(converted) == set(kandinsky3_full_shapes)
    assert {k: tuple(v.shape) for k, v in converted.items()} == kandinsky3_full_shapes
    assert len(kandinsky3_full_shapes) == 1071
    conv.check_state_dict(converted, kandinsky3_full_shapes, "full-size")


def test_inverse_mapping_round_trips_every_official_key():
    from diffusers.pipelines.kandinsky3.convert_kandinsky3_unet import convert_state_dict

    official = list(_keys("unet_t2i_keys.tsv"))
    forward = convert_state_dict({k: k for k in official})
    assert {conv.to_official_key(d): o for d, o in forward.items()} == {o: o for o in official}


def test_config_inferred_from_official_shapes():
    official = {k: torch.empty(s, device="meta") for k, s in _keys("unet_t2i_keys.tsv").items()}
    proj = {k: torch.empty(s, device="meta") for k, s in _keys("projection_keys.tsv").items()}
    cfg = conv.infer_config(official, proj)
    assert cfg == {"in_channels": 4, "time_embedding_dim": 1536, "groups": 32, "attention_head_dim": 64,
                   "layers_per_block": 3, "block_out_channels": [384, 768, 1536, 3072], "cross_attention_dim": 4096,
                   "encoder_hid_dim": 4096}


def test_tiny_state_dict_round_trip():
    unet = build_tiny_unet(3)
    sd = unet.state_dict()
    official, proj = conv.to_official(sd)
    assert sorted(proj) == ["0.weight", "1.bias", "1.weight"] and len(official) == len(sd) - 3
    assert any(k.startswith("down_samples.1.resnet_attn_blocks.2.1.attention.to_query") for k in official)
    back = conv.from_official(official, proj)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.fixture(scope="module")
def kandinsky3_official_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("k3-official")
    unet = build_tiny_unet(4)
    null = torch.randn(TINY_UNET_CONFIG["cross_attention_dim"], generator=torch.Generator().manual_seed(0))
    write_official_checkpoint(unet, null, folder / "unet.pt", folder / "projection.pt")
    return unet, null, folder / "unet.pt", folder / "projection.pt"


def _outputs(unet):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        return unet(x, torch.tensor([999, 20]), encoder_hidden_states=ctx, encoder_attention_mask=mask).sample


def test_converted_tiny_unet_gives_the_same_outputs(kandinsky3_official_files, tmp_path):
    unet, null, unet_pt, proj_pt = kandinsky3_official_files
    ref = _outputs(unet)
    out = conv.convert_checkpoint(unet_pt, proj_pt, tmp_path / "conv", head_dim=8, groups=4)
    loaded, null2 = conv.load_converted(out)
    assert torch.equal(null2, null)
    assert torch.equal(_outputs(loaded), ref)
    info = conv.conversion_info(out)
    assert info["config"]["block_out_channels"] == [16, 32, 64, 64] and len(info["unet"]["sha256"]) == 64
    # the in-memory path used by the generators gives the same outputs as well
    sd, _ = conv.load_official_unet(unet_pt)
    mem = conv.build_unet(sd, conv.load_projection(proj_pt), conv.infer_config(sd, conv.load_projection(proj_pt),
                                                                                 head_dim=8, groups=4))
    assert torch.equal(_outputs(mem), ref)


def test_convert_command(kandinsky3_official_files, tmp_path, capsys):
    _, _, unet_pt, proj_pt = kandinsky3_official_files
    out = tmp_path / "cli"
    rc = main(["kandinsky3", "convert", str(unet_pt), "--projection", str(proj_pt), "--out", str(out),
               "--head-dim", "8", "--groups", "4", "--dtype", "bf16"])
    assert rc == 0 and (out / "config.json").exists() and (out / conv.NULL_EMBEDDING_FILE).exists()
    from safetensors import safe_open

    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert f.get_tensor("conv_in.weight").dtype == torch.bfloat16
    loaded, null = conv.load_converted(out, torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and null.dtype == torch.bfloat16
    assert str(out) in capsys.readouterr().out
    # a non-empty --out is refused
    assert main(["kandinsky3", "convert", str(unet_pt), "--projection", str(proj_pt), "--out", str(out)]) == 2


def _save(tmp_path: Path, name: str, obj) -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


def test_bad_checkpoints_name_what_is_wrong(kandinsky3_official_files, tmp_path):
    unet, null, unet_pt, proj_pt = kandinsky3_official_files
    sd, _ = conv.load_official_unet(unet_pt)
    sd = dict(sd)
    out = tmp_path / "o"

    missing = {k: v for k, v in sd.items() if k != "in_layer.bias"}
    p = _save(tmp_path, "missing.pt", {"unet": missing, "null_embedding": null})
    with pytest.raises(UserError, match=r"1 missing key\(s\): 'in_layer.bias'"):
        conv.convert_checkpoint(p, proj_pt, out, head_dim=8, groups=4)

    extra = {**sd, "down_samples.0.surprise.weight": torch.zeros(2)}
    p = _save(tmp_path, "extra.pt", {"unet": extra, "null_embedding": null})
    with pytest.raises(UserError, match=r"unexpected key\(s\): 'down_samples.0.surprise.weight'"):
        conv.convert_checkpoint(p, proj_pt, out, head_dim=8, groups=4)

    key = "up_samples.0.resnet_attn_blocks.1.1.attention.to_key.weight"
    wrong = {**sd, key: torch.zeros(3, 3)}
    p = _save(tmp_path, "wrong.pt", {"unet": wrong, "null_embedding": null})
    with pytest.raises(UserError, match=rf"wrong shape\(s\): '{key}' is \[3, 3\], expected"):
        conv.convert_checkpoint(p, proj_pt, out, head_dim=8, groups=4)

    # a projection of the wrong size (48 -> 48 instead of 32 -> 32)
    bad_proj = _save(tmp_path, "proj48.pt", {"0.weight": torch.zeros(48, 48), "1.weight": torch.ones(48),
                                              "1.bias": torch.zeros(48)})
    with pytest.raises(UserError, match=r"projection '0.weight' is \[48, 48\], expected \[32, 48\]"):
        conv.convert_checkpoint(unet_pt, bad_proj, out, head_dim=8, groups=4)
    with pytest.raises(UserError, match="missing keys"):
        conv.load_projection(_save(tmp_path, "proj_keys.pt", {"weight": torch.zeros(2, 2)}))

    # wrong formats: a bare state dict, a text file
    with pytest.raises(UserError, match="expected the official format.*'unet'.*'null_embedding'"):
        conv.load_official_unet(_save(tmp_path, "bare.pt", sd))
    txt = tmp_path / "notes.pt"
    txt.write_text("not a checkpoint")
    with pytest.raises(UserError, match="is not a torch checkpoint"):
        conv.load_official_unet(txt)
    with pytest.raises(UserError, match="file not found"):
        conv.load_official_unet(tmp_path / "absent.pt")

    short_null = _save(tmp_path, "null.pt", {"unet": sd, "null_embedding": torch.zeros(5)})
    with pytest.raises(UserError, match="null_embedding has 5 values, expected 32"):
        conv.convert_checkpoint(short_null, proj_pt, out, head_dim=8, groups=4)
    assert not out.exists() or not any(out.iterdir())


# ---- MoVQ (weights/movq.pt) ----------------------------------------------------------------------------------------
def test_every_official_movq_key_maps_onto_the_full_size_vqmodel():
    official = _keys("movq_keys.tsv")
    assert len(official) == 430 and sum(math.prod(s) for s in official.values()) == 270_603_567
    meta = {k: torch.empty(s, device="meta") for k, s in official.items()}
    config = conv.infer_movq_config(meta)
    # the config of the diffusers copy (kandinsky-community/kandinsky-3, movq/config.json)
    assert config["block_out_channels"] == [256, 512, 512, 1024] and config["layers_per_block"] == 2
    assert config["down_block_types"] == ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"]
    assert config["up_block_types"] == ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3
    assert (config["latent_channels"], config["vq_embed_dim"], config["norm_type"]) == (4, 4, "spatial")
    from diffusers import VQModel

    with torch.device("meta"):
        model = VQModel(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in conv.movq_from_official(meta).items()}
    # every official tensor lands on a VQModel tensor of the same size; only the (unused) codebook is left over
    assert set(expected) - set(converted) == {"quantize.embedding.weight"}
    assert all(converted[k] == expected[k] for k in converted)
    levels = len(config["block_out_channels"])
    assert {conv.movq_key_to_official(conv.movq_key_to_diffusers(k, levels), levels) for k in official} == set(official)


def _group_norm(x, sd, prefix):
    return F.group_norm(x, 32, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-6)


def _spatial_norm(x, zq, sd, prefix):
    """kandinsky3/movq.py's SpatialNorm with a zq input: GroupNorm(32), then scale and shift from zq resized."""
    zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
    scale = F.conv2d(zq, sd[f"{prefix}.conv_y.weight"], sd[f"{prefix}.conv_y.bias"])
    shift = F.conv2d(zq, sd[f"{prefix}.conv_b.weight"], sd[f"{prefix}.conv_b.bias"])
    return _group_norm(x, sd, f"{prefix}.norm_layer") * scale + shift


def _conv(x, sd, prefix, padding=1):
    return F.conv2d(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], padding=padding)


def _resnet(x, zq, sd, prefix):
    h = _conv(F.silu(_spatial_norm(x, zq, sd, f"{prefix}.norm1")), sd, f"{prefix}.conv1")
    h = _conv(F.silu(_spatial_norm(h, zq, sd, f"{prefix}.norm2")), sd, f"{prefix}.conv2")
    if f"{prefix}.nin_shortcut.weight" in sd:
        x = _conv(x, sd, f"{prefix}.nin_shortcut", padding=0)
    return x + h


def _attention(x, zq, sd, prefix):
    b, c, hh, ww = x.shape
    h = _spatial_norm(x, zq, sd, f"{prefix}.norm")
    q, k, v = (_conv(h, sd, f"{prefix}.{n}", padding=0).reshape(b, c, hh * ww) for n in "qkv")
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=2)
    out = torch.einsum("bcj,bij->bci", v, w).reshape(b, c, hh, ww)
    return x + _conv(out, sd, f"{prefix}.proj_out", padding=0)


def _official_decode(sd, z):
    """The official MoVQ decode written from its layout (post_quant_conv, decoder with spatial norms fed by z)."""
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up."))
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("decoder.up.0.block."))
    h = _conv(_conv(z, sd, "post_quant_conv", padding=0), sd, "decoder.conv_in")
    h = _resnet(h, z, sd, "decoder.mid.block_1")
    h = _attention(h, z, sd, "decoder.mid.attn_1")
    h = _resnet(h, z, sd, "decoder.mid.block_2")
    for level in reversed(range(levels)):
        for j in range(blocks):
            h = _resnet(h, z, sd, f"decoder.up.{level}.block.{j}")
            if f"decoder.up.{level}.attn.{j}.q.weight" in sd:
                h = _attention(h, z, sd, f"decoder.up.{level}.attn.{j}")
        if level:
            h = _conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), sd, f"decoder.up.{level}.upsample.conv")
    return _conv(F.silu(_spatial_norm(h, z, sd, "decoder.norm_out")), sd, "decoder.conv_out")


def test_converted_movq_decodes_as_the_official_layout_does(tmp_path):
    from k3eval.generators.kandinsky3 import build_tiny_movq, write_official_movq

    write_official_movq(build_tiny_movq(5), tmp_path / "movq.pt")
    sd = conv.load_official_movq(tmp_path / "movq.pt")
    assert not any(k.startswith("quantize") for k in sd) and "decoder.up.3.attn.0.q.weight" in sd
    assert sd["decoder.up.3.attn.0.q.weight"].ndim == 4  # 1x1 convolutions in the official layout
    movq = conv.build_movq(sd)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = movq.decode(z, force_not_quantize=True).sample
        ref = _official_decode(sd, z)
    assert ours.shape == (2, 3, 64, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ours.abs().mean() > 0.05  # not a degenerate all-zero decoder


def test_bad_movq_checkpoints_name_what_is_wrong(tmp_path):
    from k3eval.generators.kandinsky3 import build_tiny_movq, write_official_movq

    write_official_movq(build_tiny_movq(5), tmp_path / "movq.pt")
    sd = conv.load_official_movq(tmp_path / "movq.pt")
    key = "decoder.up.1.block.0.conv1.weight"
    with pytest.raises(UserError, match=rf"does not match the VQModel \(MoVQ\) config: 1 wrong shape\(s\): '{key}'"):
        conv.build_movq({**sd, key: torch.zeros(3, 3, 3, 3)})
    with pytest.raises(UserError, match="1 missing key"):
        conv.build_movq({k: v for k, v in sd.items() if k != "decoder.conv_out.bias"})
    with pytest.raises(UserError, match="not an official Kandinsky 3 MoVQ"):
        conv.build_movq({"weight": torch.zeros(2)})
    with pytest.raises(UserError, match="expected a state dict of tensors"):
        conv.load_official_movq(_save(tmp_path, "nested.pt", {"state": {"a": torch.zeros(1)}}))


# ---- group count and head size, which the weights do not store ----------------------------------------------------
def test_group_count_and_head_size_are_checked_against_the_shapes(kandinsky3_official_files, tmp_path):
    _, _, unet_pt, proj_pt = kandinsky3_official_files
    sd, _ = conv.load_official_unet(unet_pt)
    conv.check_groups_and_heads(sd, 4, 8, "tiny")  # what it was built with
    with pytest.raises(UserError, match=r"--groups 32 does not fit: its GroupNorm layers have 8, 16, .* use one of "
                                        r"1, 2, 4, 8 \(the official 32 does not fit"):
        conv.check_groups_and_heads(sd, 32, 8, "tiny")
    with pytest.raises(UserError, match=r"--head-dim 64 does not fit: its attention layers have 16, 32, 64, 128 "
                                        r"channels .* use one of 1, 2, 4, 8, 16 \(the official 64 does not fit"):
        conv.check_groups_and_heads(sd, 4, 64, "tiny")
    # the official shapes: 32 groups fit and are named as the likely value
    official = {k: torch.empty(s, device="meta") for k, s in _keys("unet_t2i_keys.tsv").items()}
    conv.check_groups_and_heads(official, 32, 64, "official")
    with pytest.raises(UserError, match=r"--groups 128 .* likely --groups 32 \(the official value"):
        conv.check_groups_and_heads(official, 128, 64, "official")
    # one divisor left: the shapes determine the value
    odd = {"out_layer.0.weight": torch.empty(3, device="meta"), "a.context_mlp.1.weight": torch.empty(10, 4)}
    with pytest.raises(UserError, match="this checkpoint needs --groups 1"):
        conv.check_groups_and_heads(odd, 32, 64, "odd")
    out = tmp_path / "never"
    with pytest.raises(UserError, match="--groups 32 does not fit"):
        conv.convert_checkpoint(unet_pt, proj_pt, out, quiet=True)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def _k3eval(*args: str, env=None) -> subprocess.CompletedProcess:
    import os
    import sys

    return subprocess.run([sys.executable, "-m", "k3eval", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_convert_command_errors_are_one_line_and_leave_nothing(kandinsky3_official_files, tmp_path):
    _, _, unet_pt, proj_pt = kandinsky3_official_files
    out = tmp_path / "out"
    bad = {"wrong group count": [str(unet_pt), "--projection", str(proj_pt), "--out", str(out)],
           "zero groups": [str(unet_pt), "--projection", str(proj_pt), "--out", str(out), "--groups", "0"],
           "projection is the U-Net": [str(unet_pt), "--projection", str(unet_pt), "--out", str(out), "--groups", "4",
                                       "--head-dim", "8"],
           "missing checkpoint": [str(tmp_path / "nope.pt"), "--projection", str(proj_pt), "--out", str(out)]}
    errors = {}
    for why, args in bad.items():
        before = sorted(p.name for p in tmp_path.iterdir())
        proc = _k3eval("kandinsky3", "convert", *args)
        errors[why] = text = proc.stdout + proc.stderr
        assert proc.returncode == 2, (why, text)
        assert "Traceback" not in text and "error:" in text, (why, text)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, why
    assert "--groups 32 does not fit" in errors["wrong group count"]
    helptext = " ".join(_k3eval("kandinsky3", "convert", "--help").stdout.split())
    assert "(default: None)" not in helptext and "default: 32, the official value" in helptext
    # a good conversion shows its stages on stderr
    proc = _k3eval("kandinsky3", "convert", str(unet_pt), "--projection", str(proj_pt), "--out", str(out),
                   "--groups", "4", "--head-dim", "8")
    assert proc.returncode == 0 and "[1/5] reading" in proc.stderr and "[5/5] done" in proc.stderr
    assert (out / "config.json").exists() and not list(tmp_path.glob(".out*"))
