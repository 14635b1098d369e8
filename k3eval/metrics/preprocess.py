"""Reading images and the resize protocols that feed the Inception network.

Protocols (the name is recorded with every number):
- `clean`: each channel resized to 299x299 as a float32 PIL image with bicubic filtering, clipped to [0, 255], no
  re-quantisation (clean-fid's "clean" mode). The default.
- `tf`: the uint8 image converted to float32 and resized with TensorFlow 1.x's bilinear rule (align_corners=False,
  no half-pixel offset, no antialias), what torch-fidelity, pytorch-fid and torchmetrics with `antialias=False` do.

Every image is first turned into 8-bit RGB by one rule, whatever its mode: grayscale is repeated over the three
channels, an alpha channel is dropped (as PIL's convert does), palette images are expanded, and 16-bit images are
scaled to 8 bits by rounding v / 257 (PIL's own conversion clips them instead).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from k3eval.errors import UserError
from k3eval.metrics.inception import INPUT_SIZE


class BadImageError(Exception):
    """An image file that cannot be decoded completely (truncated, corrupt, not an image)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def bad_images_error(bad: list[BadImageError]) -> UserError:
    """The error for images that cannot be scored, naming the first five."""
    names = "; ".join(f"{e.path} ({e.reason})" for e in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return UserError(f"{len(bad)} missing or unreadable image(s): {names}{more}. Fix or regenerate them, or pass "
                     "--skip-bad to leave them out (they are then listed in the summary)")


def load_rgb8(path: str | Path) -> np.ndarray:
    """Decode an image file completely into an H x W x 3 uint8 array (rules in the module docstring).

    Raises BadImageError for truncated or corrupt files: PIL's lazy decoding would otherwise fail later, or (with
    LOAD_TRUNCATED_IMAGES) silently fill the missing rows with grey.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                scale = 257.0 if mode.startswith("I;16") or a.max() > 255 else 1.0
                g = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
                return np.repeat(g[:, :, None], 3, axis=2)
            if mode == "F":
                g = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
                return np.repeat(g[:, :, None], 3, axis=2)
            rgb = im if mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise BadImageError(p, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(p, f"cannot decode ({type(e).__name__}: {e})") from None


def _tf1_weights(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # TF 1.x legacy rule: source coordinate = destination index * (n_in / n_out), no half-pixel shift, computed in
    # float32 as TF does (float64 coordinates move outputs by up to 0.006 grey levels).
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo.to(torch.float32)
    return lo, hi, frac


def resize_tf1_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of N x C x H x W floats to size x size by TensorFlow 1.x's rule (align_corners=False)."""
    _, _, h, w = x.shape
    lo, hi, fr = _tf1_weights(h, size)
    top, bottom = x[:, :, lo, :], x[:, :, hi, :]
    x = top + (bottom - top) * fr[None, None, :, None]
    lo, hi, fr = _tf1_weights(w, size)
    left, right = x[:, :, :, lo], x[:, :, :, hi]
    return left + (right - left) * fr[None, None, None, :]


def resize_clean(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's resize: each channel as a float32 PIL image, bicubic, clipped to [0, 255] (bicubic overshoots),
    float32 3 x size x size."""
    from PIL import Image

    chans = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize(
        (size, size), resample=Image.BICUBIC), dtype=np.float32) for c in range(3)]
    return np.clip(np.stack(chans, 0), 0.0, 255.0)


def inception_input(image: np.ndarray, protocol: str) -> torch.Tensor:
    """One H x W x 3 uint8 image -> 3 x 299 x 299 float32 in [0, 255] under `protocol`."""
    if protocol == "clean":
        return torch.from_numpy(resize_clean(image))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float32)
    if x.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return x[0]
    return resize_tf1_bilinear(x)[0]
