"""Helpers for the annotation-app tests and the browser benchmark: photo-like run folders, a served study, Chromium.

Photo-like images (smooth gradients and shapes) rather than noise: they compress like real generations, so the
page weight and decode times are realistic.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from k3eval.runs import RunFolder

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]


def photo(size: int, seed: int) -> np.ndarray:
    """A size x size RGB uint8 image: a two-colour gradient with a few soft shapes, all drawn from `seed`."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    base = (c0 * (1 - t) + c1 * t).astype(np.uint8).repeat(size, axis=1)
    im = Image.fromarray(base)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 8, size // 3, 2)
        draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(radius=max(1, size // 256))))


def make_photo_run(path: Path, generator: str, prompts: list[tuple[str, str, str]], size: int = 512,
                   seed: int = 0) -> Path:
    """A run folder (one sample per prompt) written through RunFolder's API, with photo-like PNGs."""
    run = RunFolder(path)
    run.write_info({"k3eval_run": 1, "identity": {"generator": generator}, "generator": {"name": generator},
                    "prompt_set": {"name": "test-set", "hash": "photo-test-set"}, "samples": 1, "status": "complete"})
    rows = []
    for k, (pid, text, cat) in enumerate(prompts):
        rel, sha, nbytes = run.write_image(pid, 0, photo(size, seed * 100_003 + k))
        rows.append({"prompt_set": "test-set", "prompt_id": pid, "prompt": text, "category": cat, "sample": 0,
                     "seed": k, "path": rel, "width": size, "height": size, "steps": 1, "guidance": 1.0,
                     "seconds": 0.0, "status": "ok", "sha256": sha, "bytes": nbytes, "generator": generator})
    run.append_rows("test", rows)
    run.consolidate()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`k3eval sbs serve NAME` on a free localhost port, as a child process (its own process group)."""

    def __init__(self, study: str, db_url: str, log: Path, cwd: Path | None = None):
        self.study, self.db_url, self.log_path = study, db_url, log
        self.cwd = cwd or REPO
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> Server:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "k3eval", "sbs", "serve", self.study, "--port", str(self.port),
             "--address", "127.0.0.1", "--db", self.db_url],
            cwd=self.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"k3eval sbs serve exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the app did not answer /_stcore/health within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


def in_ci() -> bool:
    """tests/conftest.py:in_ci(), loaded by path (several conftest modules share the module name `conftest`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("k3eval_tests_root_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.in_ci()


def chromium_available() -> str | None:
    """None when Playwright and Debian's Chromium are usable, else why not."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def wait_app(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=timeout_ms)


# What a person sees (for the tests, independent of the app's own bookkeeping): the one pair container
# (.st-key-pair_N) that is not fully transparent, with its prompt, the position its "Pair k of N" line shows (null
# while that line is not drawn yet), and whether both of its images are decoded.
DISPLAYED_JS = """() => {
    const opacity = (el) => { let o = 1; for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
        o *= parseFloat(getComputedStyle(e).opacity); } return o; };
    const boxes = [...document.querySelectorAll("[class*='st-key-pair_']")]
        .filter((b) => /(^|\\s)st-key-pair_\\d+(\\s|$)/.test(b.className) && opacity(b) > 0);
    if (boxes.length !== 1) return {n: boxes.length, marker: null, prompt: null, images: false};
    const b = boxes[0];
    const m = /Pair (\\d+) of/.exec((b.querySelector(".st-key-item_marker") || {}).textContent || "");
    const prompt = b.querySelector(".st-key-prompt [data-testid='stText']");
    const imgs = [...b.querySelectorAll(".st-key-left_image img, .st-key-right_image img")];
    return {n: 1, marker: m ? Number(m[1]) : null, prompt: prompt ? prompt.textContent : null,
            images: imgs.length === 2 && imgs.every((i) => i.complete && i.naturalWidth > 0)};
}"""


def wait_pair(page, position: int, total: int, timeout_ms: int = 45_000) -> None:
    """Wait until pair `position` is what a person sees (DISPLAYED_JS): opaque, both images decoded. On a timeout,
    the page is saved to tests/artifacts/sbs_wait_failure.png and its text is put into the error."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"""([want, total]) => {{
                const d = ({DISPLAYED_JS})();
                const m = document.querySelector('.st-key-item_marker');
                return d.marker === want && d.images && m.textContent.includes(`of ${{total}}`);
            }}""", arg=[position, total], timeout=timeout_ms)
    except PlaywrightTimeout:
        shot = REPO / "tests" / "artifacts" / "sbs_wait_failure.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        text = page.inner_text("body")[:1500]
        raise AssertionError(f"pair {position} of {total} not shown within {timeout_ms} ms; page ({shot}):\n{text}") \
            from None


def wait_shown(page, selector: str, timeout_ms: int = 45_000) -> None:
    """Wait until the element is in the page and opaque: the app shows its buttons with a key (Start, Continue,
    Previous, Guideline) only once its key handling runs, so a key pressed before that has nothing to act on."""
    page.wait_for_function("""(sel) => { const e = document.querySelector(sel);
        return !!e && getComputedStyle(e).opacity === "1"; }""", arg=selector, timeout=timeout_ms, polling="raf")


def start_voting(page) -> None:
    """On the guideline page: Enter, once Start is shown."""
    wait_shown(page, ".st-key-start")
    page.keyboard.press("Enter")


def current_images(page) -> tuple[str, str]:
    srcs = page.eval_on_selector_all(".st-key-left_image img, .st-key-right_image img", "els => els.map(e => e.src)")
    return tuple(srcs)
