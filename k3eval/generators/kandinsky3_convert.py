"""Official Kandinsky 3 checkpoints (`kandinsky3.pt`, `kandinsky3_flash.pt` + `projection*.pt`, `movq.pt`) ->
diffusers' `Kandinsky3UNet` (keeping the learned null embedding) and `VQModel`.

The U-Net key renaming is diffusers' own (`diffusers.pipelines.kandinsky3.convert_kandinsky3_unet
.convert_state_dict`). What this module adds around it: reading the official torch pickles (that script expects
safetensors), taking the text projection from its own file (the official U-Net has none; diffusers keeps it inside
the U-Net as `encoder_hid_proj`), checking keys and shapes against the model before loading (naming what is wrong),
inferring the config from the shapes (and checking the GroupNorm group count and head size, which the shapes do not
hold, against them), and the inverse mapping used to write tiny checkpoints in the official layout.

The MoVQ renaming (official `kandinsky3/movq.py` layout -> diffusers `VQModel` with spatial norms) is k3eval's own,
written from the two modules' structure; the tests check it on every key of the official list and against a
functional decoder written from the official layout. The release's MoVQ has no codebook (it decodes continuous
latents); the converted `VQModel` gets an all-zero codebook, which decoding with `force_not_quantize=True` never reads.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from k3eval.errors import UserError

#: projection.pt keys -> the diffusers U-Net keys that hold them.
PROJECTION_KEYS = {"0.weight": "encoder_hid_proj.projection_linear.weight",
                   "1.weight": "encoder_hid_proj.projection_norm.weight",
                   "1.bias": "encoder_hid_proj.projection_norm.bias"}
NULL_EMBEDDING_FILE = "null_embedding.safetensors"
CONVERSION_INFO_FILE = "k3eval_conversion.json"
#: Official values that the shapes do not reveal (head size and GroupNorm groups).
OFFICIAL_HEAD_DIM = 64
OFFICIAL_GROUPS = 32
#: The official MoVQ's fixed GroupNorm settings (`Normalize` in kandinsky3/movq.py) and the codebook size of the
#: diffusers copy (kandinsky-community/kandinsky-3, movq/config.json), kept so the two configs are equal.
MOVQ_GROUPS = 32
MOVQ_CODEBOOK = 16384

# diffusers key -> official key, applied in order (the inverse of diffusers' renaming).
_INVERSE_RULES: list[tuple[str, str]] = [
    (r"^time_embedding\.linear_1\.", "to_time_embed.1."),
    (r"^time_embedding\.linear_2\.", "to_time_embed.3."),
    (r"^conv_in\.", "in_layer."),
    (r"^conv_norm_out\.", "out_layer.0."),
    (r"^conv_out\.", "out_layer.2."),
    (r"^add_time_condition\.", "feature_pooling."),
    (r"^down_blocks\.", "down_samples."),
    (r"^up_blocks\.", "up_samples."),
    (r"\.to_q\.", ".to_query."),
    (r"\.to_k\.", ".to_key."),
    (r"\.to_v\.", ".to_value."),
    (r"\.to_out\.0\.", ".output_layer."),
    (r"^((?:down|up)_samples\.\d+)\.attentions\.0\.", r"\1.self_attention_block."),
    (r"\.resnets_in\.(\d+)\.", r".resnet_attn_blocks.\1.0."),
    (r"\.resnets_out\.(\d+)\.", r".resnet_attn_blocks.\1.2."),
]
_ATTENTION_BLOCK = re.compile(r"\.attentions\.(\d+)\.")


def to_official_key(key: str) -> str | None:
    """The official name of a diffusers `Kandinsky3UNet` key; None for the projection (it lives in projection.pt)."""
    if key.startswith("encoder_hid_proj."):
        return None
    for pattern, repl in _INVERSE_RULES:
        key = re.sub(pattern, repl, key)
    # attentions.(i + 1) of a diffusers block is the attention of official resnet_attn_blocks.i
    return _ATTENTION_BLOCK.sub(lambda m: f".resnet_attn_blocks.{int(m.group(1)) - 1}.1.", key)


def to_official(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A diffusers Kandinsky3UNet state dict -> (official U-Net state dict, official projection state dict)."""
    unet, projection = {}, {}
    inverse_projection = {v: k for k, v in PROJECTION_KEYS.items()}
    for key, value in state_dict.items():
        official = to_official_key(key)
        if official is None:
            projection[inverse_projection[key]] = value
        else:
            unet[official] = value
    return unet, projection


def from_official(unet_sd: dict[str, Any], projection_sd: dict[str, Any] | None = None) -> dict[str, Any]:
    """Official U-Net (+ projection) state dicts -> diffusers Kandinsky3UNet keys (diffusers' renaming)."""
    from diffusers.pipelines.kandinsky3.convert_kandinsky3_unet import convert_state_dict

    out = dict(convert_state_dict(unet_sd))
    for key, value in (projection_sd or {}).items():
        if key not in PROJECTION_KEYS:
            raise UserError(f"projection checkpoint: unexpected key '{key}'; expected {sorted(PROJECTION_KEYS)}")
        out[PROJECTION_KEYS[key]] = value
    return out


# ---- reading the official files -----------------------------------------------------------------------------------
def _torch_load(path: Path, what: str):
    import pickle
    import zipfile

    import torch

    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        # mmap needs the zip format; an old-format pickle is read without it
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError):
            raise UserError(f"{what}: {path} is not a torch checkpoint (.pt) or safetensors file: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def load_official_unet(path: str | Path) -> tuple[dict[str, Any], Any]:
    """Read `kandinsky3.pt` / `kandinsky3_flash.pt`: a dict {'unet': state_dict, 'null_embedding': tensor}.

    Returns (U-Net state dict in the official layout, null embedding as a 1-D tensor)."""
    import torch

    path = Path(path)
    obj = _torch_load(path, "U-Net checkpoint")
    if not isinstance(obj, dict) or "unet" not in obj or "null_embedding" not in obj:
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"U-Net checkpoint {path}: expected the official format, a dict with keys 'unet' (state "
                        f"dict) and 'null_embedding' (tensor); found {found}")
    unet, null = obj["unet"], obj["null_embedding"]
    if not isinstance(unet, dict) or not all(isinstance(v, torch.Tensor) for v in unet.values()):
        raise UserError(f"U-Net checkpoint {path}: 'unet' must be a state dict of tensors")
    if not isinstance(null, torch.Tensor):
        raise UserError(f"U-Net checkpoint {path}: 'null_embedding' must be a tensor, got {type(null).__name__}")
    return unet, null.reshape(-1)


def load_projection(path: str | Path) -> dict[str, Any]:
    """Read `projection.pt` / `projection_flash.pt` (keys 0.weight, 1.weight, 1.bias) and check its layout."""
    import torch

    path = Path(path)
    obj = _torch_load(path, "projection checkpoint")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"projection checkpoint {path}: expected a state dict of tensors with keys "
                        f"{sorted(PROJECTION_KEYS)}")
    missing, extra = sorted(set(PROJECTION_KEYS) - set(obj)), sorted(set(obj) - set(PROJECTION_KEYS))
    if missing or extra:
        raise UserError(f"projection checkpoint {path}: missing keys {missing}, unexpected keys {extra}; expected "
                        f"{sorted(PROJECTION_KEYS)} (Linear without bias, then LayerNorm)")
    w, nw, nb = obj["0.weight"], obj["1.weight"], obj["1.bias"]
    if w.ndim != 2 or nw.shape != (w.shape[0],) or nb.shape != (w.shape[0],):
        raise UserError(f"projection checkpoint {path}: inconsistent shapes 0.weight {tuple(w.shape)}, 1.weight "
                        f"{tuple(nw.shape)}, 1.bias {tuple(nb.shape)}")
    return dict(obj)


# ---- config and checks --------------------------------------------------------------------------------------------
def infer_config(unet_sd: dict[str, Any], projection_sd: dict[str, Any], head_dim: int = OFFICIAL_HEAD_DIM,
                 groups: int = OFFICIAL_GROUPS) -> dict[str, Any]:
    """Kandinsky3UNet config from official tensor shapes; head size and groups are not in the shapes (official
    values by default)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in unet_sd:
            raise UserError(f"U-Net checkpoint: missing key '{key}' (is this an official Kandinsky 3 U-Net?)")
        return tuple(unet_sd[key].shape)

    levels = sorted({int(m.group(1)) for k in unet_sd if (m := re.match(r"down_samples\.(\d+)\.", k))})
    if not levels:
        raise UserError("U-Net checkpoint: no 'down_samples.*' keys; this is not an official Kandinsky 3 U-Net")
    block_out = [shape(f"down_samples.{lvl}.resnet_attn_blocks.0.0.resnet_blocks.3.projection.weight")[0]
                 for lvl in levels]
    blocks = sorted({int(m.group(1)) for k in unet_sd if (m := re.match(r"down_samples\.0\.resnet_attn_blocks\.(\d+)"
                                                                      r"\.", k))})
    in_w = shape("in_layer.weight")
    return {"in_channels": in_w[1], "time_embedding_dim": shape("to_time_embed.1.weight")[0], "groups": groups,
            "attention_head_dim": head_dim, "layers_per_block": len(blocks), "block_out_channels": block_out,
            "cross_attention_dim": shape("feature_pooling.attention.to_key.weight")[1],
            "encoder_hid_dim": tuple(projection_sd["0.weight"].shape)[1]}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _fits(name: str, value: int, sizes: list[int], what: str, official: int, source: str) -> None:
    """Refuse `value` (a group count or head size) unless it divides every size in `sizes`; the message lists what
    would fit, says when the shapes leave one choice, and when the official value fits."""
    if value >= 1 and all(c % value == 0 for c in sizes):
        return
    valid = _divisors(math.gcd(*sizes))
    if len(valid) == 1:
        hint = f"this checkpoint needs {name} {valid[0]}"
    elif official in valid:
        hint = f"likely {name} {official} (the official value; any of {', '.join(map(str, valid))} fits)"
    else:
        hint = f"use one of {', '.join(map(str, valid))} (the official {official} does not fit this checkpoint)"
    shown = ", ".join(map(str, sizes[:8])) + (", ..." if len(sizes) > 8 else "")
    raise UserError(f"{source}: {name} {value} does not fit: its {what} have {shown} channels and {name} must divide "
                    f"each (the value is not stored in the weights); {hint}")


def check_groups_and_heads(unet_sd: dict[str, Any], groups: int, head_dim: int, source: str,
                           names: tuple[str, str] = ("--groups", "--head-dim")) -> None:
    """Check the GroupNorm group count and attention head size against an official U-Net state dict: neither is in
    the shapes, but each must divide the channels of every GroupNorm / attention layer (a wrong one would fail deep in
    the model's constructor)."""
    norms = sorted({int(v.shape[0]) // 2 for k, v in unet_sd.items() if k.endswith("context_mlp.1.weight")}
                   | {int(v.shape[0]) for k, v in unet_sd.items() if k == "out_layer.0.weight"})
    heads = sorted({int(v.shape[0]) for k, v in unet_sd.items() if k.endswith("to_query.weight")})
    if norms:
        _fits(names[0], groups, norms, "GroupNorm layers", OFFICIAL_GROUPS, source)
    if heads:
        _fits(names[1], head_dim, heads, "attention layers", OFFICIAL_HEAD_DIM, source)


def _unet_name(key: str) -> str:
    official = to_official_key(key)
    if official is None:
        return f"projection '{ {v: k for k, v in PROJECTION_KEYS.items()}[key] }'"
    return f"'{official}'"


def check_state_dict(converted: dict[str, Any], expected: dict[str, tuple[int, ...]], source: str,
                     name=_unet_name, model: str = "Kandinsky3UNet") -> None:
    """Refuse missing or unexpected keys and wrong shapes, naming them in the official layout (`name` maps a
    diffusers key back to it)."""

    missing = [k for k in expected if k not in converted]
    extra = [k for k in converted if k not in expected]
    wrong = [(k, tuple(converted[k].shape), expected[k]) for k in expected
             if k in converted and tuple(converted[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(name(k) for k in missing[:10]))
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): " + ", ".join(name(k) for k in extra[:10]))
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): " + ", ".join(f"{name(k)} is {list(s)}, expected {list(e)}"
                                                                     for k, s, e in wrong[:10]))
    if problems:
        raise UserError(f"{source} does not match the {model} config: {'; '.join(problems)}")


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of Kandinsky3UNet(**config), built on the meta device (no memory, no weights)."""
    import torch
    from diffusers import Kandinsky3UNet

    with torch.device("meta"):
        model = Kandinsky3UNet(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_unet(unet_sd: dict[str, Any], projection_sd: dict[str, Any], config: dict[str, Any] | None = None,
               source: str = "U-Net checkpoint", dtype=None):
    """A Kandinsky3UNet holding the official weights (renamed, checked, cast to `dtype` if given, then assigned
    without a second copy)."""
    import torch
    from diffusers import Kandinsky3UNet

    config = config or infer_config(unet_sd, projection_sd)
    converted = from_official(unet_sd, projection_sd)
    check_state_dict(converted, expected_shapes(config), source)
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    with torch.device("meta"):
        model = Kandinsky3UNet(**config)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


class _Stages:
    """One line on stderr as each stage of a long conversion starts, with the time so far (a full U-Net is 12 GB)."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.done, self.quiet = total, 0, quiet
        self.t0 = time.perf_counter()

    def __call__(self, text: str) -> None:
        self.done += 1
        if not self.quiet:
            print(f"k3eval: [{self.done}/{self.total}] {text} ({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr,
                  flush=True)


def convert_checkpoint(unet_path: str | Path, projection_path: str | Path, out_dir: str | Path, *,
                       head_dim: int = OFFICIAL_HEAD_DIM, groups: int = OFFICIAL_GROUPS,
                       dtype: str | None = None, quiet: bool = False) -> Path:
    """Write a diffusers-format Kandinsky3UNet folder (config.json + safetensors) with the null embedding beside it
    in `null_embedding.safetensors`, and `k3eval_conversion.json` naming the sources and their sha256. Everything is
    checked before the folder is made, so a failed conversion leaves nothing behind; progress goes to stderr."""
    from safetensors.torch import save_file

    from k3eval.generators.base import torch_dtype
    from k3eval.utils import atomic_write_json, now_iso, sha256_file

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    stage = _Stages(5, quiet)
    unet_path = Path(unet_path)
    size = unet_path.stat().st_size / 2**30 if unet_path.is_file() else 0.0
    stage(f"reading {unet_path} ({size:.2f} GB) and {projection_path}")
    unet_sd, null = load_official_unet(unet_path)
    projection_sd = load_projection(projection_path)
    check_groups_and_heads(unet_sd, groups, head_dim, f"U-Net checkpoint {unet_path}")
    config = infer_config(unet_sd, projection_sd, head_dim=head_dim, groups=groups)
    if null.numel() != config["cross_attention_dim"]:
        raise UserError(f"U-Net checkpoint {unet_path}: null_embedding has {null.numel()} values, expected "
                        f"{config['cross_attention_dim']} (the context size)")
    target = torch_dtype(dtype)
    stage(f"checking {len(unet_sd)} tensors against Kandinsky3UNet and building it ({dtype or 'fp32'})")
    model = build_unet(unet_sd, projection_sd, config, source=f"U-Net checkpoint {unet_path}", dtype=target)
    tmp = out.with_name(f".{out.name}.converting")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    stage(f"writing {sum(p.numel() for p in model.parameters()):,} parameters as safetensors")
    model.save_pretrained(str(tmp), safe_serialization=True)
    stage("writing the null embedding and the sources' sha256")
    save_file({"null_embedding": null.to(target).contiguous()}, str(tmp / NULL_EMBEDDING_FILE))
    atomic_write_json(tmp / CONVERSION_INFO_FILE, {
        "k3eval_conversion": 1, "created": now_iso(), "config": config, "dtype": dtype or "fp32",
        "unet": {"path": str(unet_path), "sha256": sha256_file(unet_path)},
        "projection": {"path": str(projection_path), "sha256": sha256_file(projection_path)}})
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    stage(f"done: {out}")
    return out


def load_converted(folder: str | Path, dtype=None):
    """(Kandinsky3UNet, null embedding) from a folder written by `convert_checkpoint`."""
    from diffusers import Kandinsky3UNet
    from safetensors.torch import load_file

    from k3eval.generators.diffusers_pipeline import dtype_kwarg

    folder = Path(folder)
    null_path = folder / NULL_EMBEDDING_FILE
    if not (folder / "config.json").exists() or not null_path.exists():
        raise UserError(f"{folder} is not a converted Kandinsky 3 U-Net folder (it needs config.json and "
                        f"{NULL_EMBEDDING_FILE}); write one with `k3eval kandinsky3 convert`")
    kwargs = {dtype_kwarg(): dtype} if dtype is not None else {}
    model = Kandinsky3UNet.from_pretrained(str(folder), **kwargs)
    return model.eval(), load_file(str(null_path))["null_embedding"].reshape(-1)


def conversion_info(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / CONVERSION_INFO_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


# ---- MoVQ ---------------------------------------------------------------------------------------------------------
# Official key -> diffusers key, applied in order, for all but the decoder's up levels (renumbered in code: official
# `up.i` is diffusers `up_blocks.(levels - 1 - i)`, lowest resolution first).
_MOVQ_RULES: list[tuple[str, str]] = [
    (r"^(encoder\.down\.\d+)\.block\.", r"\1.resnets."),
    (r"^(encoder\.down\.\d+)\.attn\.", r"\1.attentions."),
    (r"^(encoder\.down\.\d+)\.downsample\.", r"\1.downsamplers.0."),
    (r"^encoder\.down\.", "encoder.down_blocks."),
    (r"^(decoder\.up_blocks\.\d+)\.block\.", r"\1.resnets."),
    (r"^(decoder\.up_blocks\.\d+)\.attn\.", r"\1.attentions."),
    (r"^(decoder\.up_blocks\.\d+)\.upsample\.", r"\1.upsamplers.0."),
    (r"^(en|de)coder\.mid\.block_1\.", r"\1coder.mid_block.resnets.0."),
    (r"^(en|de)coder\.mid\.block_2\.", r"\1coder.mid_block.resnets.1."),
    (r"^(en|de)coder\.mid\.attn_1\.", r"\1coder.mid_block.attentions.0."),
    (r"^encoder\.norm_out\.norm_layer\.", "encoder.conv_norm_out."),
    (r"^decoder\.norm_out\.", "decoder.conv_norm_out."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    # the encoder's norms are plain GroupNorms in diffusers; the decoder's keep their spatial-norm parts
    (r"^(encoder\..*\.attentions\.\d+)\.norm\.norm_layer\.", r"\1.group_norm."),
    (r"^(encoder\..*\.norm[12])\.norm_layer\.", r"\1."),
    (r"^(decoder\..*\.attentions\.\d+)\.norm\.", r"\1.spatial_norm."),
    (r"(\.attentions\.\d+)\.q\.", r"\1.to_q."),
    (r"(\.attentions\.\d+)\.k\.", r"\1.to_k."),
    (r"(\.attentions\.\d+)\.v\.", r"\1.to_v."),
    (r"(\.attentions\.\d+)\.proj_out\.", r"\1.to_out.0."),
]
_MOVQ_INVERSE: list[tuple[str, str]] = [
    (r"(\.attentions\.\d+)\.to_out\.0\.", r"\1.proj_out."),
    (r"(\.attentions\.\d+)\.to_([qkv])\.", r"\1.\2."),
    (r"^(decoder\..*\.attentions\.\d+)\.spatial_norm\.", r"\1.norm."),
    (r"^(encoder\..*\.resnets\.\d+\.norm[12])\.", r"\1.norm_layer."),
    (r"^(encoder\..*\.attentions\.\d+)\.group_norm\.", r"\1.norm.norm_layer."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"^decoder\.conv_norm_out\.", "decoder.norm_out."),
    (r"^encoder\.conv_norm_out\.", "encoder.norm_out.norm_layer."),
    (r"^(en|de)coder\.mid_block\.attentions\.0\.", r"\1coder.mid.attn_1."),
    (r"^(en|de)coder\.mid_block\.resnets\.1\.", r"\1coder.mid.block_2."),
    (r"^(en|de)coder\.mid_block\.resnets\.0\.", r"\1coder.mid.block_1."),
    (r"^encoder\.down_blocks\.", "encoder.down."),
    (r"^((?:en|de)coder\.(?:down|up_blocks)\.\d+)\.resnets\.", r"\1.block."),
    (r"^((?:en|de)coder\.(?:down|up_blocks)\.\d+)\.attentions\.", r"\1.attn."),
    (r"^(encoder\.down\.\d+)\.downsamplers\.0\.", r"\1.downsample."),
    (r"^(decoder\.up_blocks\.\d+)\.upsamplers\.0\.", r"\1.upsample."),
]
_UP = re.compile(r"^decoder\.(up|up_blocks)\.(\d+)\.")


def _flip_up(key: str, levels: int, to: str) -> str:
    return _UP.sub(lambda m: f"decoder.{to}.{levels - 1 - int(m.group(2))}.", key)


def movq_key_to_diffusers(key: str, levels: int) -> str:
    """The diffusers `VQModel` key of an official MoVQ key (`levels` resolution levels)."""
    key = _flip_up(key, levels, "up_blocks")
    for pattern, repl in _MOVQ_RULES:
        key = re.sub(pattern, repl, key)
    return key


def movq_key_to_official(key: str, levels: int) -> str | None:
    """The official MoVQ key of a diffusers `VQModel` key; None for the codebook, which the release has not."""
    if key.startswith("quantize."):
        return None
    for pattern, repl in _MOVQ_INVERSE:
        key = re.sub(pattern, repl, key)
    return _flip_up(key, levels, "up")


def _is_attention_projection(key: str) -> bool:
    return bool(re.search(r"\.attentions\.\d+\.(to_[qkv]|to_out\.0)\.weight$", key))


def movq_from_official(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Official MoVQ state dict -> diffusers VQModel keys; attention projections are 1x1 convolutions there and
    linear layers here (the same numbers, reshaped)."""
    levels = _movq_levels(state_dict)
    out = {}
    for key, value in state_dict.items():
        new = movq_key_to_diffusers(key, levels)
        out[new] = value.reshape(value.shape[:2]) if _is_attention_projection(new) and value.ndim == 4 else value
    return out


def movq_to_official(state_dict: dict[str, Any], levels: int) -> dict[str, Any]:
    """A diffusers VQModel state dict -> the official layout (for tiny test checkpoints); the codebook is dropped."""
    out = {}
    for key, value in state_dict.items():
        official = movq_key_to_official(key, levels)
        if official is not None:
            out[official] = value[:, :, None, None] if _is_attention_projection(key) else value
    return out


def _movq_levels(state_dict: dict[str, Any]) -> int:
    levels = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.down\.(\d+)\.", k))}
    if not levels:
        raise UserError("MoVQ checkpoint: no 'encoder.down.*' keys; this is not an official Kandinsky 3 MoVQ "
                        "(weights/movq.pt)")
    return max(levels) + 1


def infer_movq_config(state_dict: dict[str, Any]) -> dict[str, Any]:
    """VQModel config (spatial-norm decoder) from the shapes of an official MoVQ state dict."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise UserError(f"MoVQ checkpoint: missing key '{key}' (is this an official Kandinsky 3 MoVQ?)")
        return tuple(state_dict[key].shape)

    levels = _movq_levels(state_dict)
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}

    def has_attention(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state_dict)

    return {"in_channels": shape("encoder.conv_in.weight")[1], "out_channels": shape("decoder.conv_out.weight")[0],
            "block_out_channels": [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(levels)],
            "layers_per_block": len(blocks), "latent_channels": shape("encoder.conv_out.weight")[0],
            "vq_embed_dim": shape("quant_conv.weight")[0], "norm_num_groups": MOVQ_GROUPS, "norm_type": "spatial",
            "num_vq_embeddings": MOVQ_CODEBOOK,
            "down_block_types": ["AttnDownEncoderBlock2D" if has_attention(f"encoder.down.{i}.attn.")
                                 else "DownEncoderBlock2D" for i in range(levels)],
            "up_block_types": ["AttnUpDecoderBlock2D" if has_attention(f"decoder.up.{levels - 1 - j}.attn.")
                               else "UpDecoderBlock2D" for j in range(levels)],
            "mid_block_add_attention": has_attention("encoder.mid.attn_1.")}


def load_official_movq(path: str | Path) -> dict[str, Any]:
    """Read `movq.pt`: a plain state dict of the official MoVQ."""
    import torch

    path = Path(path)
    obj = _torch_load(path, "MoVQ checkpoint")
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"MoVQ checkpoint {path}: expected a state dict of tensors (the official weights/movq.pt)")
    return dict(obj)


def build_movq(state_dict: dict[str, Any], source: str = "MoVQ checkpoint", dtype=None):
    """A diffusers VQModel holding the official MoVQ weights (renamed, checked, cast to `dtype` if given)."""
    import torch
    from diffusers import VQModel

    config = infer_movq_config(state_dict)
    converted = movq_from_official(state_dict)
    with torch.device("meta"):
        model = VQModel(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    levels = len(config["block_out_channels"])
    codebook = "quantize.embedding.weight"
    check_state_dict({**converted, codebook: torch.empty(expected[codebook], device="meta")}, expected, source,
                     name=lambda k: f"'{movq_key_to_official(k, levels)}'", model="VQModel (MoVQ)")
    converted[codebook] = torch.zeros(expected[codebook])
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()
