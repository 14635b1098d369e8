"""Official Kandinsky 3 checkpoints (`kandinsky3.pt`, `kandinsky3_flash.pt` + `projection*.pt`) -> diffusers'
`Kandinsky3UNet`, keeping the learned null embedding.

The key renaming is diffusers' own (`diffusers.pipelines.kandinsky3.convert_kandinsky3_unet.convert_state_dict`).
What this module adds around it: reading the official torch pickles (that script expects safetensors), taking the
text projection from its own file (the official U-Net has none; diffusers keeps it inside the U-Net as
`encoder_hid_proj`), checking keys and shapes against the model before loading (naming what is wrong), inferring
the config from the shapes, and the inverse mapping used to write tiny checkpoints in the official layout.
"""

from __future__ import annotations

import json
import re
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


def check_state_dict(converted: dict[str, Any], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse missing or unexpected keys and wrong shapes, naming them in the official layout where possible."""
    def name(key: str) -> str:
        official = to_official_key(key)
        if official is None:
            return f"projection '{ {v: k for k, v in PROJECTION_KEYS.items()}[key] }'"
        return f"'{official}'"

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
        raise UserError(f"{source} does not match the Kandinsky3UNet config: {'; '.join(problems)}")


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


def convert_checkpoint(unet_path: str | Path, projection_path: str | Path, out_dir: str | Path, *,
                       head_dim: int = OFFICIAL_HEAD_DIM, groups: int = OFFICIAL_GROUPS,
                       dtype: str | None = None) -> Path:
    """Write a diffusers-format Kandinsky3UNet folder (config.json + safetensors) with the null embedding beside it
    in `null_embedding.safetensors`, and `k3eval_conversion.json` naming the sources and their sha256."""
    from safetensors.torch import save_file

    from k3eval.generators.base import torch_dtype
    from k3eval.utils import atomic_write_json, now_iso, sha256_file

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder")
    unet_sd, null = load_official_unet(unet_path)
    projection_sd = load_projection(projection_path)
    config = infer_config(unet_sd, projection_sd, head_dim=head_dim, groups=groups)
    if null.numel() != config["cross_attention_dim"]:
        raise UserError(f"U-Net checkpoint {unet_path}: null_embedding has {null.numel()} values, expected "
                        f"{config['cross_attention_dim']} (the context size)")
    target = torch_dtype(dtype)
    model = build_unet(unet_sd, projection_sd, config, source=f"U-Net checkpoint {unet_path}", dtype=target)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_file({"null_embedding": null.to(target).contiguous()}, str(out / NULL_EMBEDDING_FILE))
    atomic_write_json(out / CONVERSION_INFO_FILE, {
        "k3eval_conversion": 1, "created": now_iso(), "config": config, "dtype": dtype or "fp32",
        "unet": {"path": str(unet_path), "sha256": sha256_file(unet_path)},
        "projection": {"path": str(projection_path), "sha256": sha256_file(projection_path)}})
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
