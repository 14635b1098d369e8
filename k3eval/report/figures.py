"""Report figures (matplotlib, Agg): titled, labelled with units, and readable in grey (shades plus hatches).

Preference charts give each system its colour (the second system's segments also hatched); interval whiskers are
drawn black on a white halo so they stay visible on every segment. Every function returns PNG bytes; the build
writes them to figures/ and embeds the same bytes in index.html.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pandas as pd

# Neither-system segments of the preference bars: grey shades plus hatches, readable in print and in grey.
EQUAL = ("#d0d0d0", "")
BOTH_BAD = ("#8a8a8a", "xx")
B_HATCH = "//"  # the second system's segment is hatched, so the two systems differ in grey too
DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "hatch.color": "#222222", "hatch.linewidth": 0.6})
    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    # one layout pass instead of bbox_inches="tight" (which draws the figure twice)
    fig.set_layout_engine("constrained")
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _n_label(prompts: int, votes: int) -> str:
    return f"n = {int(prompts)} prompts, {int(votes)} votes"


def _stacked(ax, y: np.ndarray, rows: pd.DataFrame, colour_a: list[str], colour_b: list[str]) -> None:
    """Win / equal / both bad / loss segments (in % of votes), the first system in its colour, the second in its
    colour with a hatch; percentages written inside segments wide enough to hold them."""
    left = np.zeros(len(rows))
    segments = [("win_share", colour_a, ""), ("equal_share", [EQUAL[0]] * len(rows), EQUAL[1]),
                ("both_bad_share", [BOTH_BAD[0]] * len(rows), BOTH_BAD[1]), ("loss_share", colour_b, B_HATCH)]
    for key, colours, hatch in segments:
        share = rows[key].to_numpy(dtype=float) * 100
        ax.barh(y, share, left=left, color=colours, hatch=hatch, edgecolor="#222222", linewidth=0.5)
        for yy, x0, w in zip(y, left, share):
            if w >= 9:
                ax.text(x0 + w / 2, yy, f"{w:.0f}%", ha="center", va="center", fontsize=7.5, color="black",
                        bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})
        left += share


def _whiskers(ax, y: np.ndarray, rows: pd.DataFrame) -> None:
    """The tie-as-half score as a diamond with its interval: black on a white halo, so it stays visible on every
    segment colour; rows without an interval get the diamond alone."""
    import matplotlib.patheffects as pe

    score = rows["score"].to_numpy(dtype=float) * 100
    lo = rows["score_lo"].to_numpy(dtype=float) * 100
    hi = rows["score_hi"].to_numpy(dtype=float) * 100
    has = np.isfinite(lo) & np.isfinite(hi)
    halo = [pe.withStroke(linewidth=3.5, foreground="white")]
    if has.any():
        _, caps, bars = ax.errorbar(score[has], y[has], xerr=np.vstack([score[has] - lo[has], hi[has] - score[has]]),
                                    fmt="none", ecolor="black", elinewidth=1.4, capsize=4, capthick=1.4, zorder=4)
        for artist in (*caps, *bars):
            artist.set_path_effects(halo)
    ax.plot(score, y, "D", color="white", markeredgecolor="black", markersize=6, zorder=5)


def summary_bars(rows: pd.DataFrame, colours: dict[str, str], level: float = 0.95) -> bytes:
    """The summary chart, after the Kandinsky 3 report's side-by-side charts: one horizontal stacked bar per
    comparison and question (first system's wins in its colour, equal, both bad, second system's wins in its colour),
    the 50 % line, the tie-as-half score with its interval, and n = prompts, votes under each label."""
    plt = _plt()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(9.0, 1.5 + 0.5 * n))
    y = np.arange(n)[::-1].astype(float)
    ca = [colours.get(m, "#555555") for m in rows["model_a"]]
    cb = [colours.get(m, "#bbbbbb") for m in rows["model_b"]]
    _stacked(ax, y, rows, ca, cb)
    _whiskers(ax, y, rows)
    ax.axvline(50, color="black", linestyle="--", linewidth=1.0, zorder=3)
    labels = [f"{a} vs {b} · {q}\n{_n_label(p, v)}" for a, b, q, p, v in
              zip(rows["model_a"], rows["model_b"], rows["question"], rows["n_prompts"], rows["n"])]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"share of votes (%)\n◆ score of the first system (ties as half) with its {level:.0%} interval; "
                  "dashed line: 50 %")
    ax.set_title("Which system do people prefer?")
    from matplotlib.patches import Patch

    seen = list(dict.fromkeys([*rows["model_a"], *rows["model_b"]]))
    handles = [Patch(facecolor=colours.get(m, "#888888"), edgecolor="#222222",
                     hatch="" if m in set(rows["model_a"]) else B_HATCH, label=f"{m} better") for m in seen]
    handles += [Patch(facecolor=EQUAL[0], edgecolor="#222222", label="equal"),
                Patch(facecolor=BOTH_BAD[0], edgecolor="#222222", hatch=BOTH_BAD[1], label="both bad")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16 - 0.3 / max(n, 1)),
              ncol=min(len(handles), 3), fontsize=8, frameon=False)
    return _png(fig)


def preference_bars(rows: pd.DataFrame, model_a: str, model_b: str, question: str, level: float = 0.95,
                    colours: dict[str, str] | None = None) -> bytes:
    """Horizontal stacked bars of win / equal / both bad / loss (% of votes) per category, overall first, in the two
    systems' colours, with the tie-as-half score of model A and its interval (where one is given) over each bar."""
    plt = _plt()
    colours = colours or {}
    labels = [f"{c} ({_n_label(p, n)})" for c, p, n in zip(rows["category"], rows["n_prompts"], rows["n"])]
    y = np.arange(len(rows))[::-1].astype(float)
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.32 * len(rows)))
    _stacked(ax, y, rows, [colours.get(model_a, "#555555")] * len(rows), [colours.get(model_b, "#bbbbbb")] * len(rows))
    _whiskers(ax, y, rows)
    ax.axvline(50, color="black", linestyle="--", linewidth=0.9, zorder=3)
    if len(rows) > 1:  # the overall row comes first: set it apart from the categories
        ax.axhline(y[0] - 0.5, color="black", linewidth=1.2)
    ax.set_yticks(y, labels, fontsize=8)
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"share of votes (%); ◆ score of {model_a} (ties as half), {level:.0%} interval where given")
    ax.set_title(textwrap.shorten(f"{question}: {model_a} (solid) vs {model_b} (hatched)", 90))
    return _png(fig)


def bradley_terry_plot(bt: pd.DataFrame, level: float = 0.95) -> bytes:
    """Elo-scaled Bradley-Terry strengths with bootstrap intervals, one panel per question, best model on top."""
    plt = _plt()
    questions = list(dict.fromkeys(bt["question"]))
    n_models = bt.groupby("question").size().max()
    fig, axes = plt.subplots(1, len(questions), figsize=(4.2 * len(questions), 0.9 + 0.35 * n_models), squeeze=False)
    for ax, q in zip(axes[0], questions):
        d = bt[bt["question"] == q].sort_values("elo")
        y = np.arange(len(d))
        ax.errorbar(d["elo"], y, xerr=[d["elo"] - d["elo_lo"], d["elo_hi"] - d["elo"]], fmt="o", color="black",
                    capsize=3)
        ax.set_yticks(y, [f"#{r} {m}" for r, m in zip(d["rank"], d["model"])])
        ax.axvline(1000, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel(f"Elo rating (points; mean 1000), {level:.0%} bootstrap CI")
        ax.set_title(f"Bradley-Terry ranking: {q}")
    return _png(fig)


def metric_bars(rows: pd.DataFrame, display_name: str, unit: str, higher_is_better: bool) -> bytes:
    """One bar per run with its interval (where stored)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.4 * len(rows)))
    y = np.arange(len(rows))[::-1]
    vals = rows["value"].to_numpy(dtype=float)
    lo = rows["ci_lo"].to_numpy(dtype=float)
    hi = rows["ci_hi"].to_numpy(dtype=float)
    err = np.vstack([np.nan_to_num(vals - lo), np.nan_to_num(hi - vals)])
    hatches = ["", "//", "..", "xx", "\\\\", "++"]
    for k, (yy, v) in enumerate(zip(y, vals)):
        ax.barh(yy, v, color="#9e9e9e", hatch=hatches[k % len(hatches)], edgecolor="black", linewidth=0.5)
    ax.errorbar(vals, y, xerr=err, fmt="none", ecolor="black", capsize=3)
    ax.set_yticks(y, list(rows["run"]))
    unit_txt = f" ({unit})" if unit else ""
    ax.set_xlabel(f"{display_name}{unit_txt}; {'higher' if higher_is_better else 'lower'} is better")
    ax.set_title(f"{display_name} per run")
    return _png(fig)


def speed_bars(rows: pd.DataFrame) -> bytes:
    """Seconds per image by stage (text encoding, denoising, decoding; 'other' when only the total is known)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.4 * len(rows)))
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    parts = [("text_seconds", "text encoder", "#e0e0e0", "//"), ("denoise_seconds", "denoising", "#555555", ""),
             ("decode_seconds", "decoder", "#a0a0a0", ".."), ("other_seconds", "other / total only", "#ffffff", "xx")]
    for col, name, shade, hatch in parts:
        v = np.nan_to_num(rows[col].to_numpy(dtype=float)) if col in rows else np.zeros(len(rows))
        if not v.any():
            continue
        ax.barh(y, v, left=left, color=shade, hatch=hatch, edgecolor="black", linewidth=0.5, label=name)
        left += v
    ax.set_yticks(y, list(rows["run"]))
    ax.set_xlabel("seconds per image (wall clock, as recorded at generation)")
    ax.set_title("Generation time per image by stage")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


__all__ = ["bradley_terry_plot", "metric_bars", "preference_bars", "speed_bars", "summary_bars"]
