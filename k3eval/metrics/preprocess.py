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


def _tf1_grid(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # TF 1.x legacy rule: source coordinate = destination index * (n_in / n_out), no half-pixel shift, computed in
    # float32 as TF does (float64 coordinates move outputs by up to 0.006 grey levels).
    src = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
    lo = src.astype(np.int64)  # truncation: the coordinates are never negative
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo.astype(np.float32)


def resize_tf1_bilinear(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Bilinear resize of an H x W x C image to size x size x C float32 by TensorFlow 1.x's rule
    (align_corners=False): interpolated along the width first, then the height, each step in float32, which is
    torch-fidelity's order of operations, so the result equals its `interpolate_bilinear_2d_like_tensorflow1x`
    exactly (tested)."""
    x = np.asarray(image, dtype=np.float32)
    ylo, yhi, dy = _tf1_grid(x.shape[0], size)
    xlo, xhi, dx = _tf1_grid(x.shape[1], size)
    top, bottom = x[ylo], x[yhi]
    dx = dx[None, :, None]
    upper = top[:, xlo] + (top[:, xhi] - top[:, xlo]) * dx
    lower = bottom[:, xlo] + (bottom[:, xhi] - bottom[:, xlo]) * dx
    return upper + (lower - upper) * dy[:, None, None]


def resize_clean(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's resize: each channel as a float32 PIL image, bicubic, clipped to [0, 255] (bicubic overshoots);
    float32 size x size x 3."""
    from PIL import Image

    chans = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize(
        (size, size), resample=Image.BICUBIC), dtype=np.float32) for c in range(3)]
    return np.clip(np.stack(chans, -1), 0.0, 255.0)


def inception_input_hwc(image: np.ndarray, protocol: str) -> np.ndarray:
    """One H x W x 3 uint8 image -> 299 x 299 x 3 float32 in [0, 255] under `protocol`. Channels last: a batch of
    these is already the channels-last layout the network runs in, so no copy is made to get there."""
    if protocol == "clean":
        return resize_clean(image)
    if image.shape[:2] == (INPUT_SIZE, INPUT_SIZE):
        return image.astype(np.float32)
    return resize_tf1_bilinear(image)


def inception_input(image: np.ndarray, protocol: str) -> torch.Tensor:
    """One H x W x 3 uint8 image -> 3 x 299 x 299 float32 in [0, 255] under `protocol` (a channels-last view)."""
    return torch.from_numpy(inception_input_hwc(image, protocol)).permute(2, 0, 1)
