"""Images as the annotation app shows them: re-encoded, resized for display and cached in memory.

Why re-encode every image: the page must not reveal which model made it. Streamlit serves bytes under a URL made
from a hash of their content (`/media/<hash>.jpg`), so no file name or run folder reaches the browser; re-encoding
drops every metadata chunk a generator may have written (PNG text chunks, EXIF, ICC names such as a tool's
"parameters"), and gives both sides the same format, so file size or format cannot tell the models apart either.

JPEG at quality 95 with 4:4:4 chroma (no colour subsampling) is visually lossless and ~5x smaller than PNG, which
keeps the next item under a second in the browser. Both sides of an item always get the same treatment.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable

from k3eval.errors import UserError

DEFAULT_MAX_SIDE = 1024
JPEG_QUALITY = 95
DEFAULT_CACHE_MB = 256


def display_jpeg(data: bytes, max_side: int = DEFAULT_MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """Decode an image (any format Pillow reads), convert to RGB, shrink so that its longer side is at most
    `max_side` pixels (Lanczos; never enlarged) and encode as baseline JPEG with no metadata.

    `max_side`: 64..8192 pixels. `quality`: 1..100 (Pillow's JPEG scale).
    """
    from PIL import Image, UnidentifiedImageError

    if not 64 <= int(max_side) <= 8192:
        raise UserError(f"max_side must be in 64..8192 pixels, got {max_side}")
    if not 1 <= int(quality) <= 100:
        raise UserError(f"quality must be in 1..100, got {quality}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB") if im.mode != "RGB" else im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"an image of this study cannot be decoded ({type(e).__name__}); it may be truncated") from None
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    # No exif/icc_profile arguments: Pillow then writes none, so nothing of the source file survives but pixels.
    rgb.save(out, format="JPEG", quality=int(quality), subsampling=0, optimize=False)
    return out.getvalue()


class DisplayCache:
    """A thread-safe LRU cache of display images, bounded by total bytes (Streamlit serves many sessions from
    threads of one process). Keys are opaque image ids; values are what `display_jpeg` returns."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_MB << 20):
        if max_bytes < 1:
            raise UserError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, load: Callable[[], bytes], max_side: int = DEFAULT_MAX_SIDE) -> bytes:
        """The display JPEG of image `key`; `load()` returns the original bytes and is called only on a miss.
        Two sessions missing the same key at once may both encode it; the result is the same, so no lock is held
        during the (slow) decode and encode."""
        k = (key, int(max_side))
        with self._lock:
            hit = self._data.get(k)
            if hit is not None:
                self._data.move_to_end(k)
                self.hits += 1
                return hit
            self.misses += 1
        out = display_jpeg(load(), max_side=max_side)
        with self._lock:
            if k not in self._data:
                self._data[k] = out
                self._size += len(out)
            while self._size > self.max_bytes and len(self._data) > 1:
                _, old = self._data.popitem(last=False)
                self._size -= len(old)
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._size
