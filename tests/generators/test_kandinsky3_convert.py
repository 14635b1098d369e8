"""Official Kandinsky 3 checkpoints -> diffusers Kandinsky3UNet: full-size key coverage on the meta device, the
inverse mapping, tiny outputs before/after conversion, and bad checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
