"""The comparison report: index.html (self-contained), report.md, tables/*.csv and figures/*.png from stored runs,
scores and votes. It reads what earlier stages stored and never recomputes a metric; preference statistics are
computed from the votes by `k3eval.sbs.analysis` (they are statistics of the stored votes, not metrics).

Every table is built once as a frame; the CSV holds its raw values, and the HTML and Markdown show the same cells
through the same formatter, so the three always agree. Parts that are missing (no scores, no study) become a note
in their section, never an error.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from k3eval.errors import UserError
from k3eval.utils import atomic_write_bytes, now_iso

SECTIONS = [("setup", "1. Setup"), ("metrics", "2. Automatic metrics"), ("speed", "3. Speed and cost"),
            ("preference", "4. Human preference"), ("examples", "5. Examples"), ("limitations", "6. Limitations")]
LOW_ALPHA = 0.4  # Krippendorff's alpha below this: agreement too low to read much into the preferences
THUMB = 192  # pixels, longest side of embedded example images


# ---- building blocks -----------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A table: `frame` holds raw values (written to tables/<name>.csv); `fmt` maps a column to its display."""

    name: str
    title: str
    frame: pd.DataFrame
    fmt: dict[str, Callable[[Any], str]] = field(default_factory=dict)
    note: str = ""
    collapsed: bool = False  # shown inside <details> in HTML (long tables)

    def cell(self, col: str, value: Any) -> str:
        if col in self.fmt:
            return self.fmt[col](value)
        return fmt_value(value)


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


@dataclass
class Example:
    kind: str
    comparison: str
    prompt: str
    category: str
    model_a: str
    model_b: str
    thumb_a: bytes | None
    thumb_b: bytes | None
    votes: str
    file_a: str = ""
    file_b: str = ""


@dataclass
class Section:
    id: str
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("list", lines))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))

    def figure(self, f: Figure) -> None:
        self.blocks.append(("figure", f))

    def examples(self, ex: list[Example]) -> None:
        self.blocks.append(("examples", ex))


def _nan(v: Any) -> bool:
    try:
        return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def fmt_value(v: Any) -> str:
    """Default display: integers as is, floats with 4 significant digits, missing as an en dash."""
    if _nan(v):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def pct(v: Any) -> str:
    return "–" if _nan(v) else f"{100 * float(v):.1f}%"


def pval(v: Any) -> str:
    return "–" if _nan(v) else f"{float(v):.2g}"


def fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: "–" if _nan(v) else f"{float(v):.{digits}f}"


# ---- inputs --------------------------------------------------------------------------------------------------------
@dataclass
class RunData:
    name: str
    path: Path
    info: dict[str, Any]
    manifest: pd.DataFrame
    scores: dict[str, Any] | None


def resolve_runs(runs: dict[str, str | Path] | list[str | Path]) -> dict[str, Path]:
    """{name: folder}: a dict as given; a list of folders or NAME=FOLDER strings, named by run.json's run_name or
    the folder name."""
    if isinstance(runs, dict):
        return {str(k): Path(v) for k, v in runs.items()}
    out: dict[str, Path] = {}
    for r in runs:
        text = str(r)
        if "=" in text and not Path(text).exists():
            name, _, p = text.partition("=")
            path = Path(p)
        else:
            path = Path(text)
            name = ""
            if (path / "run.json").exists():
                try:
                    name = json.loads((path / "run.json").read_text(encoding="utf-8")).get("run_name") or ""
                except (OSError, json.JSONDecodeError):
                    name = ""
            name = name or path.name
        if name in out:
            raise UserError(f"--runs: two runs are named {name!r}; name them with NAME=FOLDER")
        out[name] = path
    return out


def load_runs(runs: dict[str, Path]) -> list[RunData]:
    from k3eval.runs import load_run

    out = []
    for name, path in runs.items():
        run = load_run(path)
        summary = None
        sp = run.scores_dir / "summary.json"
        if sp.exists():
            try:
                summary = json.loads(sp.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{sp} is not valid JSON: {e}") from None
        out.append(RunData(name, Path(path), run.read_info(), run.read_manifest(), summary))
    return out


# ---- sections ------------------------------------------------------------------------------------------------------
def _params_text(params: dict[str, Any]) -> str:
    keep = {k: v for k, v in params.items() if v is not None and k not in ("tiny",)}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


def section_setup(runs: list[RunData], extra: dict[str, Any]) -> Section:
    s = Section(*SECTIONS[0])
    rows = []
    for r in runs:
        g = r.info.get("generator", {})
        ps = r.info.get("prompt_set", {})
        totals = r.info.get("totals", {})
        weights = g.get("weights", {}) or {}
        rows.append({"run": r.name, "generator": g.get("name"), "class": g.get("class"),
                     "parameters": _params_text(g.get("params", {})), "device": g.get("device"),
                     "dtype": g.get("dtype"), "weights": "random (offline test weights)" if weights.get(
                         "random_weights") else str(weights.get("model") or weights or "–"),
                     "prompt_set": ps.get("name"), "prompt_set_hash": str(ps.get("hash", ""))[:16],
                     "n_prompts": ps.get("n_prompts"), "samples": r.info.get("samples"),
                     "benchmark_seed": (r.info.get("seed") or {}).get("benchmark_seed"),
                     "images_ok": int((r.manifest["status"] == "ok").sum()) if len(r.manifest) else 0,
                     "images_expected": totals.get("expected"),
                     "imported": "yes" if r.info.get("imported") else "no", "status": r.info.get("status")})
    s.table(Table("setup_runs", "Runs and their resolved generator parameters", pd.DataFrame(rows)))
    seed = next((r.info.get("seed") for r in runs if r.info.get("seed")), None)
    if seed:
        s.p(f"Image seeds: {seed.get('rule', '')}; {seed.get('noise', '')}. Every run uses the same seed for the "
            "same (prompt, sample), so comparisons are paired.")
    imported = [r.name for r in runs if r.info.get("imported")]
    if imported:
        s.note("Imported from elsewhere (settings as declared at import, not verified): " + ", ".join(imported) + ".")
    pkgs: dict[str, dict[str, str]] = {}
    for r in runs:
        for k, v in (r.info.get("packages") or {}).items():
            pkgs.setdefault(k, {})[r.name] = v
    if pkgs:
        prow = [{"package": k, "version": ", ".join(sorted(set(v.values()))),
                 "runs": "all" if len(v) == len(runs) else ", ".join(v)} for k, v in sorted(pkgs.items())]
        s.table(Table("setup_packages", "Package versions recorded in run.json", pd.DataFrame(prow)))
    hw = []
    for r in runs:
        h = r.info.get("hardware") or {}
        hw.append({"run": r.name, "platform": h.get("platform"), "python": h.get("python"),
                   "cpus": h.get("cpu_count"), "gpus": ", ".join(h.get("gpus", [])) or "none",
                   "git_revision": r.info.get("git_revision") or "–", "finished": r.info.get("finished")})
    s.table(Table("setup_hardware", "Hardware and code revision of each run", pd.DataFrame(hw)))
    if extra.get("study"):
        st = extra["study"]
        s.p(f"Study {st.get('name')!r}: {st.get('n_annotators')} annotators, overlap {st.get('overlap')}, "
            f"{st.get('n_items')} items ({st.get('n_gold')} gold) and {st.get('n_repeats')} swapped repeats, "
            f"questions {', '.join(st.get('questions', []))}, design seed {st.get('seed')}, "
            f"created {st.get('created')}.")
    return s


def _fingerprint(protocol: dict[str, Any] | None) -> str:
    if not protocol:
        return "–"
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:10]
    keys = [f"{k}={protocol[k]}" for k in ("extractor", "model", "pretrained", "resize", "dtype", "n")
            if k in protocol]
    return f"{digest} ({', '.join(keys)})" if keys else digest


def section_metrics(runs: list[RunData], figures: list[Figure], limits: list[str]) -> Section:
    from k3eval.report import figures as fig

    s = Section(*SECTIONS[1])
    scored = [r for r in runs if r.scores and r.scores.get("metrics")]
    missing = [r.name for r in runs if r not in scored]
    if not scored:
        s.note("No stored scores: none of the runs has scores/summary.json. Run `k3eval score RUN_DIR` (or the "
               "benchmark's score stage) and rebuild the report.")
        limits.append("No automatic metrics: the runs have not been scored.")
        return s
    if missing:
        s.note(f"Not scored (no scores/summary.json): {', '.join(missing)}.")
    names: list[str] = []
    for r in scored:
        names += [m for m in r.scores["metrics"] if m not in names]
    for metric in names:
        rows = []
        cat_rows: dict[str, dict[str, Any]] = {}
        meta: dict[str, Any] = {}
        for r in scored:
            m = r.scores["metrics"].get(metric)
            if m is None:
                continue
            meta = meta or m
            ci = m.get("ci") or [None, None]
            rows.append({"run": r.name, "value": m.get("value"), "ci_lo": ci[0], "ci_hi": ci[1],
                         "ci_method": m.get("ci_method") or "–", "n": m.get("n"),
                         "protocol": _fingerprint(m.get("protocol")),
                         "warnings": "; ".join(m.get("warnings") or []) or "–"})
            for cat, c in (m.get("per_category") or {}).items():
                row = cat_rows.setdefault(cat, {"category": cat})
                row[f"{r.name}"] = c.get("value")
                row[f"{r.name} n"] = c.get("n")
                row[f"{r.name} flag"] = c.get("flag") or ""
        if not rows:
            continue
        df = pd.DataFrame(rows)
        display = meta.get("display_name", metric)
        unit = meta.get("unit", "")
        better = "higher" if meta.get("higher_is_better", True) else "lower"
        t = Table(f"metric_{metric}", f"{display} ({better} is better{', ' + unit if unit else ''})", df)
        s.h3(display)
        s.table(t)
        if df["protocol"].nunique() > 1:
            s.note(f"{display}: the runs were scored with different protocols (fingerprints differ), so their values "
                   "are not directly comparable.")
            limits.append(f"{display} was computed with different protocols across runs.")
        # one note per distinct warning, naming the runs it applies to (a warning often holds for every run)
        by_warning: dict[str, list[str]] = {}
        for r in scored:
            for w in (r.scores["metrics"].get(metric) or {}).get("warnings") or []:
                by_warning.setdefault(w, []).append(r.name)
        for w, names_w in by_warning.items():
            who = "all runs" if len(names_w) == len(rows) else ", ".join(names_w)
            s.note(f"{display} ({who}): {w}")
            limits.append(f"{display} ({who}): {w}")
        if df["value"].notna().any():
            f = Figure(f"metric_{metric}", f"{display} per run",
                       fig.metric_bars(df, display, unit, meta.get("higher_is_better", True)))
            figures.append(f)
            s.figure(f)
        if cat_rows:
            cdf = pd.DataFrame(list(cat_rows.values()))
            flagged = (cdf[[c for c in cdf.columns if c.endswith(" flag")]] != "").to_numpy().any(axis=1)
            s.table(Table(f"metric_{metric}_by_category", f"{display} per category", cdf,
                          note="flag too_small: the category has too few images for a stable value." if
                          flagged.any() else ""))
            if flagged.any():
                limits.append(f"{display}: {int(flagged.sum())} categories are too small for a stable value.")
    return s


def _family(r: RunData) -> str | None:
    """'flash' (Kandinsky 3.1 Flash) or 'k3' (Kandinsky 3.0, any implementation) from the generator name, else None.
    Catalog names: kandinsky3, kandinsky3-flash, kandinsky3-diffusers and their tiny-* test versions."""
    name = str((r.info.get("generator") or {}).get("name", r.name)).lower()
    if "kandinsky3" not in name.replace("-", "").replace("_", ""):
        return None
    return "flash" if "flash" in name else "k3"


def section_speed(runs: list[RunData], figures: list[Figure]) -> Section:
    from k3eval.report import figures as fig

    s = Section(*SECTIONS[2])
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
    s.table(Table("speed", "Seconds per image by stage, U-Net evaluations and peak memory (means over images)", df,
                  fmt={"relative_to_first": lambda v: "–" if _nan(v) else f"{float(v):.2f}x"},
                  note=f"relative_to_first: speed of each run relative to {df['run'].iloc[0]} (higher is faster)."
                  if len(df) else ""))
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
                           if _nan(v) else f"{float(v):.2f}x"}))
    else:
        s.p("No Flash vs 3.0 speed-up: these runs do not include both a Kandinsky 3.1 Flash and a Kandinsky 3.0 run.")
    if len(df) and df["seconds_per_image"].notna().any():
        f = Figure("speed", "Generation time per image by stage", fig.speed_bars(df))
        figures.append(f)
        s.figure(f)
    devices = set(df["device"].dropna()) if len(df) else set()
    if len(devices) > 1:
        s.note(f"Runs were made on different devices ({', '.join(sorted(devices))}): their times are not comparable.")
    return s


PREF_FMT: dict[str, Callable[[Any], str]] = {
    **{f"{r}_share": pct for r in ("win", "equal", "both_bad", "loss")},
    "win_rate": pct, "win_rate_lo": pct, "win_rate_hi": pct, "score": pct, "score_lo": pct, "score_hi": pct,
    "sign_p": pval, "p_holm": pval, "p_bh": pval}


def _pref_table(name: str, title: str, df: pd.DataFrame, collapsed: bool = False, note: str = "") -> Table:
    cols = ["comparison", "question", "category", "n", "win", "equal", "both_bad", "loss", "win_share", "equal_share",
            "both_bad_share", "loss_share", "win_rate", "win_rate_lo", "win_rate_hi", "score", "score_lo", "score_hi",
            "sign_p", "p_holm", "p_bh", "verdict", "small_sample"]
    return Table(name, title, df[cols].reset_index(drop=True), PREF_FMT, note=note, collapsed=collapsed)


def section_preference(stats_all, stats_excl, info: dict[str, Any] | None, figures: list[Figure],
                       limits: list[str], why_missing: str) -> Section:
    from k3eval.report import figures as fig
    from k3eval.sbs.analysis import ALL

    s = Section(*SECTIONS[3])
    if stats_all is None:
        s.note(why_missing)
        limits.append("No human preference data: " + why_missing)
        return s
    summ = stats_all.summary
    if summ.get("simulated"):
        s.note("SIMULATED VOTES: the votes below come from simulated annotators (k3eval sbs simulate), not from "
               "people. They show how the report reads; they say nothing about human preference.")
    pref = stats_all.preference
    if pref.empty:
        s.note("The study has no votes on regular items yet.")
        limits.append("The study has no votes yet.")
        return s
    level = summ["level"]
    s.p(f"{summ['n_votes']} votes by {summ['n_annotators']} annotators ({summ['n_gold_votes']} on gold items, "
        f"{summ['n_repeat_votes']} on swapped repeats; both feed quality control only). Win rate leaves ties out and "
        f"has a Wilson {level:.0%} interval; score counts ties (equal, both bad) as half a win with a bootstrap "
        f"interval over prompts ({summ['n_resamples']} resamples within categories, seed {summ['seed']}); "
        "P-values: exact sign test, corrected across the categories of a comparison by Holm (and BH) before a "
        "category is called a win.")
    overall = pref[pref["category"] == ALL]
    s.table(_pref_table("preference_overall", "Overall preference per comparison and question", overall))
    for (ma, mb, q), rows in pref.groupby(["model_a", "model_b", "question"], sort=False):
        f = Figure(f"preference_{_slug(ma)}_vs_{_slug(mb)}_{q}", f"{q}: {ma} vs {mb}",
                   fig.preference_bars(rows, ma, mb, q, level))
        figures.append(f)
        s.figure(f)
    s.table(_pref_table("preference", "Preference per category (overall row first)", pref, collapsed=True))
    small = pref[(pref["category"] != ALL) & pref["small_sample"]]
    if len(small):
        limits.append(f"{len(small)} category rows have fewer than 30 non-tie votes; their intervals are wide and "
                      "their verdicts unreliable.")
    if not stats_all.bradley_terry.empty:
        s.h3("Bradley-Terry ranking")
        s.p("Strengths by maximum likelihood with ties as half a win, on the Elo scale (400 points = 10:1 odds, mean "
            "1000), with bootstrap intervals over prompts. Ranks separate only models whose intervals do not "
            "overlap.")
        s.table(Table("bradley_terry", "Bradley-Terry ranking", stats_all.bradley_terry,
                      {"strength": fixed(3), "elo": fixed(0), "elo_lo": fixed(0), "elo_hi": fixed(0)}))
        f = Figure("bradley_terry", "Bradley-Terry ranking", fig.bradley_terry_plot(stats_all.bradley_terry, level))
        figures.append(f)
        s.figure(f)
    s.h3("Agreement")
    agree = stats_all.agreement
    s.table(Table("agreement", "Inter-annotator agreement (regular items with 2+ ratings)", agree,
                  {"raw_agreement": pct, "majority_agreement": pct, "krippendorff_alpha": fixed(3),
                   "fleiss_kappa": fixed(3)},
                  note="Raw agreement: agreeing pairs of ratings; majority: ratings equal to the majority of the "
                       "item's other ratings; Krippendorff's alpha: ordinal (B better < equal/both bad < A better); "
                       "Fleiss' kappa: the four answers, on items with the most common number of ratings."))
    low = agree[(agree["comparison"] == ALL) & (agree["krippendorff_alpha"] < LOW_ALPHA)]
    for r in low.itertuples(index=False):
        limits.append(f"Low agreement on {r.question}: Krippendorff's alpha {r.krippendorff_alpha:.2f} (below "
                      f"{LOW_ALPHA}); annotators often disagree, so preferences are noisy.")
    s.h3("Quality control")
    qc = stats_all.qc
    s.table(Table("qc", "Quality control per annotator", qc,
                  {"gold_accuracy": pct, "self_consistency": pct, "left_share": pct, "position_p": pval,
                   "position_p_holm": pval, "median_seconds": fixed(1)}, collapsed=len(qc) > 15))
    flagged = summ.get("flagged_annotators") or []
    if flagged:
        limits.append(f"{len(flagged)} annotators flagged by quality control: {', '.join(flagged)} (results are shown "
                      "with and without them).")
        if stats_excl is not None and not stats_excl.preference.empty:
            ex = stats_excl.preference
            s.table(_pref_table("preference_overall_excluding_flagged",
                                f"Overall preference without the {len(flagged)} flagged annotators",
                                ex[ex["category"] == ALL]))
            if not stats_excl.bradley_terry.empty:
                s.table(Table("bradley_terry_excluding_flagged", "Bradley-Terry ranking without flagged annotators",
                              stats_excl.bradley_terry,
                              {"strength": fixed(3), "elo": fixed(0), "elo_lo": fixed(0), "elo_hi": fixed(0)}))
    else:
        s.p("No annotator was flagged by quality control.")
    s.h3("Automatic metric vs people")
    ma = stats_all.metric_agreement
    if ma.empty:
        s.note("No per-image CLIP scores stored (scores/per_image.parquet) for the study's runs: agreement between "
               "the metric and people cannot be shown.")
    else:
        s.table(Table("metric_agreement", "How often the image with the higher CLIP score won (votes with a winner)",
                      ma, {"share": pct, "share_lo": pct, "share_hi": pct}))
    return s


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))[:40]


def thumbnail(path: Path, size: int = THUMB) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
            return buf.getvalue()
    except OSError:
        return None


def section_examples(stats_all, votes: pd.DataFrame | None, image_paths: dict[str, dict[tuple[str, int], Path]],
                     prompts: dict[str, str], n_each: int) -> tuple[Section, Table | None]:
    from k3eval.sbs.analysis import regular_votes

    s = Section(*SECTIONS[4])
    if votes is None or stats_all is None or stats_all.preference.empty:
        s.note("No votes, so no disputed or clear examples; the first prompts of the runs are shown side by side.")
        ex = []
        models = list(image_paths)
        if len(models) >= 2:
            keys = sorted(image_paths[models[0]])[:n_each]
            for pid, sample in keys:
                ex.append(Example("first prompts", f"{models[0]} vs {models[1]}", prompts.get(pid, pid), "",
                                  models[0], models[1], _thumb(image_paths, models[0], pid, sample),
                                  _thumb(image_paths, models[1], pid, sample), "no votes"))
        s.examples(ex)
        return s, None
    v = regular_votes(votes)
    q = "alignment" if "alignment" in set(v["question"]) else v["question"].iloc[0]
    d = v[v["question"] == q]
    # counts per item with vectorised group sums (a lambda per group is far too slow for 30,000 votes)
    first = d.drop_duplicates("item_id").set_index("item_id")[["prompt_id", "sample", "category", "model_a",
                                                                "model_b", "comparison"]]
    counts = pd.get_dummies(d["result"]).reindex(columns=["win", "loss", "equal", "both_bad"], fill_value=False)
    counts = counts.astype(int).groupby(d["item_id"].to_numpy()).sum()
    g = first.join(counts.rename(columns={"win": "a", "loss": "b"})).reset_index()
    g["n"] = g[["a", "b", "equal", "both_bad"]].sum(axis=1)
    g["margin"] = g["a"] - g["b"]
    multi = g[g["n"] >= 2]
    pool = multi if len(multi) else g
    disputed = pool[(pool["a"] > 0) & (pool["b"] > 0)].assign(gap=lambda x: (x["a"] - x["b"]).abs()).sort_values(
        ["gap", "n", "item_id"], ascending=[True, False, True]).head(n_each)
    clear_a = pool[pool["b"] == 0].sort_values(["a", "item_id"], ascending=[False, True]).head(n_each)
    clear_b = pool[pool["a"] == 0].sort_values(["b", "item_id"], ascending=[False, True]).head(n_each)
    chosen = pd.concat([disputed.assign(kind="most disputed"), clear_a[clear_a["a"] > 0].assign(kind="clear win for A"),
                        clear_b[clear_b["b"] > 0].assign(kind="clear win for B")], ignore_index=True)
    s.p(f"Items judged on the {q} question, chosen from the votes: the most disputed (votes split between the two "
        f"images), and the clearest wins each way (no vote for the other image). Up to {n_each} of each.")
    ex = []
    rows = []
    for r in chosen.itertuples(index=False):
        kind = r.kind.replace("A", r.model_a).replace("B", r.model_b) if r.kind != "most disputed" else r.kind
        votes_txt = f"{r.model_a}: {r.a}, {r.model_b}: {r.b}, equal: {r.equal}, both bad: {r.both_bad}"
        ex.append(Example(kind, r.comparison, prompts.get(r.prompt_id, r.prompt_id), r.category, r.model_a,
                          r.model_b, _thumb(image_paths, r.model_a, r.prompt_id, int(r.sample)),
                          _thumb(image_paths, r.model_b, r.prompt_id, int(r.sample)), votes_txt))
        rows.append({"kind": kind, "item_id": int(r.item_id), "comparison": r.comparison, "question": q,
                     "prompt_id": r.prompt_id, "sample": int(r.sample), "category": r.category,
                     "prompt": prompts.get(r.prompt_id, ""), "votes_a": int(r.a), "votes_b": int(r.b),
                     "equal": int(r.equal), "both_bad": int(r.both_bad)})
    if not ex:
        s.note("No item has votes for both images or a clear winner yet.")
    s.examples(ex)
    t = Table("examples", "Examples shown above, with their votes", pd.DataFrame(rows)) if rows else None
    if t is not None:
        s.table(t)
    return s, t


def _thumb(paths: dict[str, dict[tuple[str, int], Path]], model: str, pid: str, sample: int) -> bytes | None:
    p = paths.get(model, {}).get((pid, sample))
    return thumbnail(p) if p is not None else None


def section_limitations(runs: list[RunData], limits: list[str], simulated: bool) -> Section:
    s = Section(*SECTIONS[5])
    out = []
    if simulated:
        out.append("The votes are simulated (k3eval sbs simulate): human preference sections illustrate the method "
                   "only.")
    rand = [r.name for r in runs if ((r.info.get("generator") or {}).get("weights") or {}).get("random_weights")]
    if rand:
        out.append(f"Runs with random (untrained) offline weights: {', '.join(rand)}. Their images and numbers test "
                   "the pipeline; they say nothing about the real models.")
    imported = [r.name for r in runs if r.info.get("imported")]
    if imported:
        out.append(f"Imported images of unknown or unverified generation settings: {', '.join(imported)}.")
    hashes = {str((r.info.get("prompt_set") or {}).get("hash")) for r in runs}
    if len(hashes) > 1:
        out.append("The runs used different prompt selections (prompt-set hashes differ): per-prompt comparisons "
                   "cover only the shared prompts.")
    for r in runs:
        t = r.info.get("totals") or {}
        bad = {k: v for k, v in (t.get("status") or {}).items() if k != "ok"}
        if t.get("missing") or bad:
            out.append(f"{r.name}: {t.get('missing', 0)} images missing, non-ok outputs {bad or 'none'}; they are "
                       "left out of metrics and studies.")
    n_prompts = {(r.info.get("prompt_set") or {}).get("n_prompts") for r in runs}
    small = [n for n in n_prompts if isinstance(n, int) and n < 100]
    if small:
        out.append(f"Small prompt sample ({min(small)} prompts): distribution metrics such as FID are biased and "
                   "unstable at this size; intervals are wide.")
    out += limits
    s.items(list(dict.fromkeys(out)) or ["None found in the stored data."])
    return s


# ---- rendering -----------------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111;background:#fff;
line-height:1.45}
header,main{max-width:1100px;margin:0 auto;padding:0 1.2em}
header{padding-top:1.2em}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid #222;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}
nav ul{columns:2;margin:.4em 0 1em;list-style:none;padding-left:0}
.banner{border:3px solid #000;background:#eee;padding:.6em 1em;font-weight:600;margin:.8em 0}
.note{border-left:4px solid #666;background:#f4f4f4;padding:.4em .8em;margin:.6em 0}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0 1em;display:block;overflow-x:auto}
th,td{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#e8e8e8}td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:.3em 0}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#333}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1em}
.ex{border:1px solid #bbb;padding:.5em}.ex .pair{display:flex;gap:.5em}.ex .pair div{text-align:center;flex:1}
.ex img{width:100%;max-width:192px;height:auto}.ex .kind{font-weight:600}.ex .prompt{font-style:italic}
small{color:#444}
"""


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _raw(v: Any) -> str:
    if _nan(v):
        return ""
    if isinstance(v, (np.integer,)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.frame.columns)
    body = []
    for row in t.frame.itertuples(index=False):
        cells = []
        for col, v in zip(t.frame.columns, row):
            cls = ' class="num"' if _is_num(v) else ""
            cells.append(f'<td{cls} data-v="{html.escape(_raw(v), quote=True)}">{html.escape(t.cell(col, v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = (f'<table id="t-{t.name}" data-csv="tables/{t.name}.csv"><caption>{html.escape(t.title)}</caption>'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    if t.collapsed:
        return (f"<details><summary>{html.escape(t.title)} ({len(t.frame)} rows; also tables/{t.name}.csv)</summary>"
                f"{table}</details>{note}")
    return table + note


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    cols = list(t.frame.columns)
    lines = [f"**{t.title}** (`tables/{t.name}.csv`)", "", "| " + " | ".join(_md_cell(str(c)) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for row in t.frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(t.cell(c, v)) for c, v in zip(cols, row)) + " |")
    if t.note:
        lines += ["", f"> {t.note}"]
    return "\n".join(lines)


def _publish(path: Path, data: bytes) -> None:
    """Write atomically, readable by others (a report is meant to be shared; temporary files start as 0600)."""
    import os

    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


def _b64(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def render_html(title: str, subtitle: str, banner: str | None, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
             f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append(f'<p class="banner" id="simulated-banner">{html.escape(banner)}</p>')
    parts.append(f"<p><small>{html.escape(subtitle)}</small></p><nav><ul>")
    parts += [f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections]
    parts.append("</ul></nav></header><main>")
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        for kind, b in s.blocks:
            if kind == "p":
                parts.append(f"<p>{html.escape(b)}</p>")
            elif kind == "note":
                parts.append(f'<p class="note">{html.escape(b)}</p>')
            elif kind == "h3":
                parts.append(f"<h3>{html.escape(b)}</h3>")
            elif kind == "list":
                parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                parts.append(_html_table(b))
            elif kind == "figure":
                parts.append(f'<figure id="f-{b.name}"><img src="{_b64(b.png, "image/png")}" '
                             f'alt="{html.escape(b.title, quote=True)}"><figcaption>{html.escape(b.title)} '
                             f"(figures/{b.name}.png)</figcaption></figure>")
            elif kind == "examples":
                parts.append('<div class="examples">')
                for e in b:
                    imgs = []
                    for model, data in ((e.model_a, e.thumb_a), (e.model_b, e.thumb_b)):
                        img = (f'<img src="{_b64(data, "image/jpeg")}" alt="{html.escape(model, quote=True)} image">'
                               if data else "<p>(image not found)</p>")
                        imgs.append(f"<div>{img}<br><small>{html.escape(model)}</small></div>")
                    cat = f" · {html.escape(e.category)}" if e.category else ""
                    parts.append(f'<div class="ex"><div class="kind">{html.escape(e.kind)}{cat}</div>'
                                 f'<div class="prompt">“{html.escape(e.prompt)}”</div><div class="pair">'
                                 f"{''.join(imgs)}</div><small>votes: {html.escape(e.votes)}</small></div>")
                parts.append("</div>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "".join(parts)


def render_markdown(title: str, subtitle: str, banner: str | None, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    if banner:
        out += [f"> **{banner}**", ""]
    out += [f"_{subtitle}_", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for kind, b in s.blocks:
            if kind == "p":
                out += [b, ""]
            elif kind == "note":
                out += [f"> {b}", ""]
            elif kind == "h3":
                out += [f"### {b}", ""]
            elif kind == "list":
                out += [f"- {x}" for x in b] + [""]
            elif kind == "table":
                out += [_md_table(b), ""]
            elif kind == "figure":
                out += [f"![{b.title}](figures/{b.name}.png)", ""]
            elif kind == "examples":
                for e in b:
                    cat = f" ({e.category})" if e.category else ""
                    imgs = " ".join(f"![{m}]({f})" for m, f in ((e.model_a, e.file_a), (e.model_b, e.file_b)) if f)
                    out += [f"- **{e.kind}**{cat}: “{e.prompt}” — {e.model_a} vs {e.model_b}; votes: {e.votes}",
                            *([f"  {imgs}"] if imgs else [])]
                out.append("")
    return "\n".join(out).rstrip() + "\n"


# ---- the whole report ----------------------------------------------------------------------------------------------
def build_report(runs: dict[str, str | Path] | list[str | Path], out_dir: str | Path, *, study: str | None = None,
                 db_url: str | None = None, votes: pd.DataFrame | None = None, info: dict[str, Any] | None = None,
                 n_resamples: int = 1000, seed: int = 0, examples: int = 4, title: str | None = None) -> Path:
    """Write the report into out_dir (index.html, report.md, tables/*.csv, figures/*.png); returns index.html.

    runs: {name: folder} or folders. study/db_url: read votes and facts from the vote store; or pass a votes frame
    (`votes`, with optional `info` like `k3eval.sbs.study_info`). n_resamples, seed: of every bootstrap. examples:
    how many examples of each kind.
    """
    from k3eval.sbs.analysis import analyze_votes, load_metric_scores

    if examples < 0:
        raise UserError(f"examples: expected 0 or more, got {examples}")
    named = resolve_runs(runs)
    if not named:
        raise UserError("--runs: give at least one run folder")
    run_data = load_runs(named)
    why_missing = "No study given (--study NAME): the report has no human preference section."
    if votes is None and study is not None:
        from k3eval.sbs import study_info, votes_frame

        info = study_info(study, db_url)
        votes = votes_frame(study, db_url)
    info = dict(info or {})
    study_runs = {k: Path(v) for k, v in (info.get("runs") or {}).items()}
    all_runs = {**study_runs, **named}
    stats_all = stats_excl = None
    if votes is not None:
        scores = load_metric_scores(all_runs)
        stats_all = analyze_votes(votes, scores, n_resamples=n_resamples, seed=seed)
        if stats_all.summary["flagged_annotators"]:
            stats_excl = analyze_votes(votes, scores, n_resamples=n_resamples, seed=seed, exclude_flagged=True)
        unknown = sorted(set(stats_all.summary["models"]) - set(all_runs))
        if unknown:
            limits_pre = [f"Study models without a run folder here (no images for examples): {', '.join(unknown)}."]
        else:
            limits_pre = []
    else:
        limits_pre = []
    simulated = bool(info.get("simulated")) or bool(stats_all is not None and stats_all.summary.get("simulated"))
    figures: list[Figure] = []
    limits: list[str] = list(limits_pre)
    prompts: dict[str, str] = {}
    image_paths: dict[str, dict[tuple[str, int], Path]] = {}
    for r in run_data:
        ok = r.manifest[r.manifest["status"] == "ok"] if len(r.manifest) else r.manifest
        prompts.update(dict(zip(ok["prompt_id"].astype(str), ok["prompt"].astype(str))))
        image_paths[r.name] = {(str(p), int(s)): r.path / str(f) for p, s, f in
                               zip(ok["prompt_id"], ok["sample"], ok["path"])}
    for name, path in study_runs.items():
        if name not in image_paths and (path / "manifest.parquet").exists():
            m = pd.read_parquet(path / "manifest.parquet")
            m = m[m["status"] == "ok"]
            prompts.update(dict(zip(m["prompt_id"].astype(str), m["prompt"].astype(str))))
            image_paths[name] = {(str(p), int(s)): path / str(f) for p, s, f in
                                 zip(m["prompt_id"], m["sample"], m["path"])}
    sections = [section_setup(run_data, {"study": info if info.get("name") else None}),
                section_metrics(run_data, figures, limits), section_speed(run_data, figures),
                section_preference(stats_all, stats_excl, info, figures, limits, why_missing)]
    ex_section, _ = section_examples(stats_all, votes, image_paths, prompts, examples)
    sections.append(ex_section)
    sections.append(section_limitations(run_data, limits, simulated))

    out = Path(out_dir)
    bench = next((r.info.get("benchmark") for r in run_data if r.info.get("benchmark")), None)
    title = title or f"k3eval report: {bench or ', '.join(named)}"
    subtitle = (f"Built {now_iso()} by k3eval from {len(run_data)} runs"
                + (f" and study {info.get('name')!r}" if info.get("name") else "")
                + ". Numbers are read from the stored runs, scores and votes; no metric is recomputed.")
    banner = None
    if simulated:
        banner = ("SIMULATED VOTES: every human-preference number in this report comes from simulated annotators "
                  "(k3eval sbs simulate), not from people.")
    # examples' images for the Markdown version
    for s in sections:
        for kind, b in s.blocks:
            if kind != "examples":
                continue
            for k, e in enumerate(b):
                for side, data in (("a", e.thumb_a), ("b", e.thumb_b)):
                    if data:
                        rel = f"examples/{k:03d}_{side}.jpg"
                        _publish(out / rel, data)
                        setattr(e, f"file_{side}", rel)
    for s in sections:
        for kind, b in s.blocks:
            if kind == "table":
                _publish(out / "tables" / f"{b.name}.csv", b.frame.to_csv(index=False).encode())
    for f in figures:
        _publish(out / "figures" / f"{f.name}.png", f.png)
    _publish(out / "report.md", render_markdown(title, subtitle, banner, sections).encode())
    index = out / "index.html"
    _publish(index, render_html(title, subtitle, banner, sections).encode())
    return index


__all__ = ["SECTIONS", "Table", "build_report", "fmt_value", "render_html", "render_markdown", "resolve_runs"]
