"""Display images of the annotation app (k3eval/sbs/images.py): resized, re-encoded without metadata, cached."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from k3eval.errors import UserError
from k3eval.sbs.images import DisplayCache, display_jpeg


def png(width: int, height: int, seed: int = 0, text: dict[str, str] | None = None, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_large_images_shrink_to_max_side_keeping_aspect():
    out = Image.open(io.BytesIO(display_jpeg(png(1024, 512), max_side=256)))
    assert out.format == "JPEG" and out.size == (256, 128) and out.mode == "RGB"


def test_small_images_are_never_enlarged_and_other_modes_become_rgb():
    out = Image.open(io.BytesIO(display_jpeg(png(40, 30, mode="RGBA"), max_side=1024)))
    assert out.size == (40, 30) and out.mode == "RGB"


def test_metadata_that_could_name_the_model_is_dropped():
    src = png(64, 64, text={"parameters": "Model: secret-model-xl, Steps: 30", "Software": "secret-ui"})
    assert b"secret-model-xl" in src
    out = display_jpeg(src)
    assert b"secret" not in out
    im = Image.open(io.BytesIO(out))
    assert not im.info.get("exif") and "parameters" not in im.info and not im.getexif()


def test_pixels_survive_the_reencode_closely():
    smooth = np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (128, 1, 3))
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="PNG")
    back = np.asarray(Image.open(io.BytesIO(display_jpeg(buf.getvalue()))), dtype=np.float64)
    assert np.abs(back - smooth).mean() < 2.0  # q95, no chroma subsampling: visually lossless


@pytest.mark.parametrize("kwargs", [{"max_side": 10}, {"max_side": 10_000}, {"quality": 0}, {"quality": 101}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(UserError, match="max_side|quality"):
        display_jpeg(png(8, 8), **kwargs)


def test_undecodable_bytes_give_a_user_error_without_a_path():
    with pytest.raises(UserError, match="cannot be decoded") as e:
        display_jpeg(b"\x89PNG\r\n\x1a\n truncated")
    assert "/" not in str(e.value)


def test_cache_hits_misses_and_byte_bound():
    cache = DisplayCache(max_bytes=1)
    calls = []

    def load(seed):
        calls.append(seed)
        return png(64, 64, seed)

    a = cache.get("a", lambda: load(1), 64)
    assert cache.get("a", lambda: load(1), 64) == a and calls == [1]
    assert (cache.hits, cache.misses) == (1, 1)
    cache.get("a", lambda: load(1), 128)  # another size is another entry
    cache.get("b", lambda: load(2), 64)
    # Over the byte bound the oldest entries go, but the newest always stays.
    assert len(cache) == 1 and cache.get("b", lambda: load(99), 64) and 99 not in calls
    big = DisplayCache(max_bytes=10 << 20)
    for k in range(5):
        big.get(str(k), lambda k=k: load(k), 64)
    assert len(big) == 5 and big.nbytes == sum(len(big.get(str(k), lambda: b"", 64)) for k in range(5))


def test_cache_is_safe_across_threads():
    cache = DisplayCache()
    sources = {str(k): png(48, 48, k) for k in range(8)}
    results: dict[tuple[int, str], bytes] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for key in sorted(sources, reverse=t % 2 == 1):
                results[(t, key)] = cache.get(key, lambda key=key: sources[key], 64)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) == 8
    for key in sources:
        assert len({results[(t, key)] for t in range(6)}) == 1  # every session saw the same bytes
