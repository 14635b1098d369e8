"""Generator commands: `k3eval kandinsky3 convert`. Heavy imports stay inside the handlers (`k3eval --help` must not
import torch)."""

from __future__ import annotations

from k3eval.cli import positive_int


def cmd_kandinsky3_convert(args) -> int:
    from k3eval.generators.base import check_dtype
    from k3eval.generators.kandinsky3_convert import convert_checkpoint

    check_dtype(args.dtype)
    out = convert_checkpoint(args.unet, args.projection, args.out, head_dim=args.head_dim, groups=args.groups,
                             dtype=args.dtype, quiet=args.quiet)
    print(f"{out}: diffusers Kandinsky3UNet (+ null_embedding.safetensors); use it with "
          f"--set unet={out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("kandinsky3", help="Kandinsky 3 tools: convert official checkpoints")
    sub = p.add_subparsers(dest="kandinsky3_command", metavar="ACTION", required=True,
                           parser_class=type(p))
    # Defaults are written into each help text: ArgumentDefaultsHelpFormatter would print "(default: None)" on the
    # required options.
    c = sub.add_parser("convert", help="official U-Net .pt + projection .pt -> diffusers Kandinsky3UNet folder",
                       description="Convert an official Kandinsky 3 U-Net checkpoint and its text projection into a "
                       "diffusers Kandinsky3UNet folder (plus null_embedding.safetensors). Progress goes to stderr.")
    c.add_argument("unet", help="official U-Net checkpoint, e.g. weights/kandinsky3.pt or kandinsky3_flash.pt")
    c.add_argument("--projection", required=True,
                   help="required: its text projection, e.g. weights/flan_ul2_encoder/projection.pt "
                   "(projection_flash.pt for Flash)")
    c.add_argument("--out", required=True, help="required: a new (or empty) folder for the diffusers-format U-Net")
    c.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 for the saved weights (default: fp32)")
    c.add_argument("--head-dim", type=positive_int, default=64,
                   help="attention head size; not stored in the weights (default: 64, the official value)")
    c.add_argument("--groups", type=positive_int, default=32,
                   help="GroupNorm groups; not stored in the weights (default: 32, the official value)")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(func=cmd_kandinsky3_convert)
