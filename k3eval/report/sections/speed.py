"""Speed and cost from run.json totals (or manifest means): seconds per image by stage, U-Net evaluations, peak
memory, load time, speed relative to the first run, and the Kandinsky 3.1 Flash vs 3.0 speed-up when both ran."""

from __future__ import annotations

import numpy as np
import pandas as pd

from k3eval.report.blocks import Column, Figure, Section, Table, is_missing
from k3eval.report.inputs import RunData
from k3eval.report.sections import BuildContext


def _family(r: RunData) -> str | None:
    """'flash' (Kandinsky 3.1 Flash) or 'k3' (Kandinsky 3.0, any implementation) from the generator name, else None.
    Catalog names: kandinsky3, kandinsky3-flash, kandinsky3-diffusers and their tiny-* test versions."""
    name = str((r.info.get("generator") or {}).get("name", r.name)).lower()
    if "kandinsky3" not in name.replace("-", "").replace("_", ""):
        return None
    return "flash" if "flash" in name else "k3"


def build(ctx: BuildContext) -> Section:
    from k3eval.report import figures as fig

    s = Section.named("speed")
    runs = ctx.inputs.runs
    rows = []
    for r in runs:
        t = r.info.get("totals") or {}
        m = r.manifest[r.manifest["status"] == "ok"] if len(r.manifest) else r.manifest

        def mean(key: str, _t=t, _m=m) -> float:
            if f"{key}_mean" in _t:
                return float(_t[f"{key}_mean"])
            return float(_m[key].mean()) if key in _m and len(_m) else float("nan")

        spi = float(t.get("seconds_per_image", m["seconds"].mean() if len(m) else float("nan")))
        row = {"run": r.name, "images": int(len(m)), "seconds_per_image": spi,
               "text_seconds": mean("text_seconds"), "denoise_seconds": mean("denoise_seconds"),
               "decode_seconds": mean("decode_seconds"), "unet_evals": mean("unet_evals"),
               "peak_memory_mb": mean("peak_memory_mb"), "load_seconds": t.get("load_seconds", float("nan")),
               "device": (r.info.get("generator") or {}).get("device"),
               "dtype": (r.info.get("generator") or {}).get("dtype")}
        known = np.nansum([row["text_seconds"], row["denoise_seconds"], row["decode_seconds"]])
        row["other_seconds"] = max(0.0, spi - known) if np.isfinite(spi) else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    base = df["seconds_per_image"].iloc[0] if len(df) else float("nan")
    df["relative_to_first"] = base / df["seconds_per_image"]
    times = "–" if not len(df) else df["run"].iloc[0]
    cols = [Column("run", ("run",)), Column("images", ("images",)), Column("s / image", ("seconds_per_image",)),
            Column("text s", ("text_seconds",)), Column("denoise s", ("denoise_seconds",)),
            Column("decode s", ("decode_seconds",)), Column("other s", ("other_seconds",)),
            Column("U-Net evals", ("unet_evals",)), Column("peak MB", ("peak_memory_mb",)),
            Column("load s", ("load_seconds",)),
            Column("device / dtype", ("device", "dtype"), lambda a, b: f"{a} / {b}"),
            Column(f"speed vs {times}", ("relative_to_first",), lambda v: "–" if is_missing(v) else f"{float(v):.2f}x",
                   "higher is faster")]
    s.table(Table("speed", "Seconds per image by stage, U-Net evaluations and peak memory (means over images)", df,
                  columns=cols))
    flash = [r for r in runs if _family(r) == "flash"]
    k3 = [r for r in runs if _family(r) == "k3"]
    if flash and k3:
        sp = []
        for f in flash:
            for b in k3:
                fs = df.loc[df["run"] == f.name, "seconds_per_image"].item()
                bs = df.loc[df["run"] == b.name, "seconds_per_image"].item()
                fu = df.loc[df["run"] == f.name, "unet_evals"].item()
                bu = df.loc[df["run"] == b.name, "unet_evals"].item()
                sp.append({"flash_run": f.name, "k3_run": b.name, "speedup_seconds": bs / fs,
                           "unet_evals_ratio": bu / fu if fu else float("nan")})
        s.table(Table("speedup_flash", "Kandinsky 3.1 Flash vs 3.0: speed-up per image", pd.DataFrame(sp),
                      fmt={"speedup_seconds": lambda v: f"{float(v):.2f}x", "unet_evals_ratio": lambda v: "–"
                           if is_missing(v) else f"{float(v):.2f}x"}))
    else:
        s.p("No Flash vs 3.0 speed-up: these runs do not include both a Kandinsky 3.1 Flash and a Kandinsky 3.0 run.")
    if len(df) and df["seconds_per_image"].notna().any():
        s.figure(ctx.add_figure(Figure("speed", "Generation time per image by stage", fig.speed_bars(df))))
    devices = set(df["device"].dropna()) if len(df) else set()
    if len(devices) > 1:
        s.note(f"Runs were made on different devices ({', '.join(sorted(devices))}): their times are not comparable.")
    return s


__all__ = ["build"]
