"""Generator commands: `k3eval kandinsky3 convert`. Heavy imports stay inside the handlers (`k3eval --help` must not
import torch)."""

from __future__ import annotations

import argparse


def cmd_kandinsky3_convert(args) -> int:
    from k3eval.generators.base import check_dtype
    from k3eval.generators.kandinsky3_convert import convert_checkpoint

    check_dtype(args.dtype)
    out = convert_checkpoint(args.unet, args.projection, args.out, head_dim=args.head_dim, groups=args.groups,
                             dtype=args.dtype)
    print(f"{out}: diffusers Kandinsky3UNet (+ null_embedding.safetensors); use it with "
          f"--set unet={out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("kandinsky3", help="Kandinsky 3 tools: convert official checkpoints")
    sub = p.add_subparsers(dest="kandinsky3_command", metavar="ACTION", required=True,
                           parser_class=type(p))
    c = sub.add_parser("convert", help="official U-Net .pt + projection .pt -> diffusers Kandinsky3UNet folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("unet", help="official U-Net checkpoint, e.g. weights/kandinsky3.pt or kandinsky3_flash.pt")
    c.add_argument("--projection", required=True,
                   help="its text projection, e.g. weights/flan_ul2_encoder/projection.pt (projection_flash.pt for "
                   "Flash)")
    c.add_argument("--out", required=True, help="new folder for the diffusers-format U-Net")
    c.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 for the saved weights (default fp32)")
    c.add_argument("--head-dim", type=int, default=64, help="attention head size (not in the shapes; official 64)")
    c.add_argument("--groups", type=int, default=32, help="GroupNorm groups (not in the shapes; official 32)")
    c.set_defaults(func=cmd_kandinsky3_convert)
