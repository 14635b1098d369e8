"""Annotation app in a real browser: time from the answer key to the next pair shown.

One annotator (Chromium through Playwright) answers N pairs of 1024x1024 images with the keyboard, served by
`k3eval sbs serve`. For every pair the clock starts when the key that answers the last question is pressed and
stops when the next pair is what a person sees: its container shown (the app keeps a pair invisible until it is
whole), its "Pair k of N" marker drawn and both images decoded (`img.complete`, `naturalWidth > 0`). Every pair
shows two images never shown before, so each one goes through the whole path: access check, file read, decode,
resize, JPEG encode, transfer, decode in the browser.

Reference in the same run: a bare Streamlit page that swaps two pre-encoded JPEGs of the same size on a key press
(no database, no image processing): the floor that any Streamlit app pays per rerun. The ratio app/floor is what
the rules and the image pipeline add.

    .venv/bin/python benchmarks/perf/sbs_browser.py                 # 50 pairs, writes results/sbs_browser.json
    .venv/bin/python benchmarks/perf/sbs_browser.py --pairs 10 --out /tmp/x.json

Target (issue 5): median at most 1 s.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "sbs"))

TARGET_S = 1.0
VIEWPORT = {"width": 1440, "height": 900}


def _summary(times: list[float]) -> dict:
    s = sorted(times)
    return {"n": len(s), "median_s": round(statistics.median(s), 4), "mean_s": round(statistics.fmean(s), 4),
            "p90_s": round(s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))], 4), "min_s": round(s[0], 4),
            "max_s": round(s[-1], 4)}


def _study(work: Path, pairs: int, size: int) -> tuple[str, str, str]:
    from app_study import make_photo_run

    from k3eval.sbs import create_study

    prompts = [(f"p-{k:03d}", f"test prompt number {k}: a scene with {k % 7 + 1} objects", f"cat-{k % 5}")
               for k in range(pairs + 1)]
    runs = {"run-a": make_photo_run(work / "runs" / "a", "gen-a", prompts, size=size, seed=11),
            "run-b": make_photo_run(work / "runs" / "b", "gen-b", prompts, size=size, seed=12)}
    db = f"sqlite:///{work / 'votes.db'}"
    created = create_study("perf", runs, ["solo"], overlap=1, gold=0.0, repeats=0.0, seed=0, db_url=db)
    return db, created.tokens["solo"], "perf"


def measure_app(browser, work: Path, pairs: int, size: int) -> list[float]:
    from app_study import Server, start_voting, wait_app, wait_pair

    db, token, study = _study(work, pairs, size)
    server = Server(study, db, work / "serve.log").start()
    try:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{server.base}/?token={token}")
        wait_app(page)
        start_voting(page)
        total = pairs + 1
        times = []
        for pos in range(1, pairs + 1):
            wait_pair(page, pos, total, timeout_ms=60_000)
            page.keyboard.press("1")
            page.wait_for_selector(f".st-key-ans_{pos}_alignment_left button[kind='primary']")
            t0 = time.perf_counter()
            page.keyboard.press("s")
            wait_pair(page, pos + 1, total, timeout_ms=60_000)
            times.append(time.perf_counter() - t0)
        page.close()
        return times
    finally:
        server.stop()


FLOOR_APP = textwrap.dedent('''
    import pickle, streamlit as st
    st.set_page_config(layout="wide")
    @st.cache_resource
    def pairs():
        with open(PATH, "rb") as f:
            return pickle.load(f)
    k = st.session_state.setdefault("k", 0)
    def nxt():
        st.session_state.k += 1
    with st.container(key=f"pair_{k + 1}"):  # the same page structure the tests' wait_pair looks for
        a, b = st.columns(2)
        with a, st.container(key="left_image"):
            st.image(pairs()[k][0], width="stretch")
        with b, st.container(key="right_image"):
            st.image(pairs()[k][1], width="stretch")
        st.button("next", key="next", shortcut="S", on_click=nxt)
        with st.container(key="item_marker"):
            st.caption(f"Pair {k + 1} of {len(pairs())}")
''')


def measure_floor(browser, work: Path, pairs: int, size: int) -> list[float]:
    import pickle

    from app_study import free_port, photo, wait_app, wait_pair
    from PIL import Image

    def jpeg(arr) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95, subsampling=0)
        return buf.getvalue()

    data = [(jpeg(photo(size, 1000 + 2 * k)), jpeg(photo(size, 1001 + 2 * k))) for k in range(pairs + 2)]
    blob = work / "floor.pkl"
    blob.write_bytes(pickle.dumps(data))
    script = work / "floor_app.py"
    script.write_text(f"PATH = {str(blob)!r}\n" + FLOOR_APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import urllib.request

        for _ in range(300):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.2)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"http://127.0.0.1:{port}/")
        wait_app(page)
        total = pairs + 2
        # Untimed first step by mouse: a key pressed before the fresh page is fully wired up can be dropped.
        wait_pair(page, 1, total, timeout_ms=60_000)
        page.click(".st-key-next button")
        times = []
        for pos in range(2, pairs + 2):
            wait_pair(page, pos, total, timeout_ms=60_000)
            t0 = time.perf_counter()
            page.keyboard.press("s")
            wait_pair(page, pos + 1, total, timeout_ms=60_000)
            times.append(time.perf_counter() - t0)
        page.close()
        return times
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def chromium_version() -> str:
    from app_study import CHROMIUM

    try:
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.strip().splitlines()[-1] if out.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=50, help="pairs timed (default 50)")
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "perf" / "results" / "sbs_browser.json")
    args = ap.parse_args(argv)
    if args.pairs < 5 or args.size < 64:
        ap.error(f"--pairs must be >= 5 and --size >= 64, got {args.pairs} and {args.size}")

    from app_study import chromium_available, launch
    from playwright.sync_api import sync_playwright

    from k3eval.sbs import dispose_engines
    from k3eval.sbs.images import DEFAULT_MAX_SIDE, JPEG_QUALITY
    from k3eval.utils import atomic_write_json, hardware_info, now_iso, package_versions

    why = chromium_available()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="k3eval-sbs-browser-") as tmp, sync_playwright() as pw:
        browser = launch(pw)
        try:
            app_times = measure_app(browser, Path(tmp) / "app", args.pairs, args.size)
            dispose_engines()
            floor_times = measure_floor(browser, Path(tmp), args.pairs, args.size)
        finally:
            browser.close()
    app, floor = _summary(app_times), _summary(floor_times)
    result = {
        "benchmark": "sbs_browser",
        "date": now_iso(),
        "what": "seconds from the key that answers a pair's last question to the next pair drawn with both images "
                "decoded, in Chromium, one annotator, served by `k3eval sbs serve` (SQLite vote store)",
        "protocol": {"pairs": args.pairs, "image_size": [args.size, args.size], "display_max_side": DEFAULT_MAX_SIDE,
                     "display_format": f"JPEG q{JPEG_QUALITY} 4:4:4", "viewport": VIEWPORT, "questions": 2,
                     "images_new_every_pair": True, "server_and_browser_same_machine": True},
        "app": app,
        "reference_bare_streamlit": {**floor, "what": "a bare Streamlit page swapping two pre-encoded JPEGs of the "
                                                      "same size on a key press (no database, no image processing)"},
        "ratio_app_over_reference_median": round(app["median_s"] / floor["median_s"], 2),
        "target_median_s": TARGET_S,
        "meets_target": app["median_s"] <= TARGET_S,
        "times_s": {"app": [round(t, 4) for t in app_times], "reference": [round(t, 4) for t in floor_times]},
        "hardware": hardware_info(),
        # The machine is shared: the 1-minute load average before and after the run says how busy it was.
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "packages": package_versions(["streamlit", "playwright", "SQLAlchemy", "tornado"]),
        "chromium": chromium_version(),
    }
    atomic_write_json(args.out, result)
    print(f"app: median {app['median_s']:.3f} s, p90 {app['p90_s']:.3f} s, max {app['max_s']:.3f} s over "
          f"{app['n']} pairs; bare Streamlit: median {floor['median_s']:.3f} s; ratio "
          f"{result['ratio_app_over_reference_median']}; target <= {TARGET_S} s: "
          f"{'met' if result['meets_target'] else 'NOT met'} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
