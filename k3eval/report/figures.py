"""Report figures (matplotlib, Agg): titled, labelled with units, and readable in grey (shades plus hatches).

Every function returns PNG bytes; `build.py` writes them to figures/ and embeds the same bytes in index.html.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pandas as pd

# Result segments of the preference bars, in drawing order: grey shade and hatch, so print and colour-blind
# readers can tell them apart without colour.
SEGMENTS = [("win", "A better", "#3a3a3a", ""), ("equal", "equal", "#bdbdbd", "/"),
            ("both_bad", "both bad", "#f0f0f0", "x"), ("loss", "B better", "#7a7a7a", ".")]
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


def preference_bars(rows: pd.DataFrame, model_a: str, model_b: str, question: str, level: float = 0.95) -> bytes:
    """Horizontal stacked bars of win / equal / both bad / loss (% of votes) per category, overall first, with the
    tie-as-half score of model A and its bootstrap interval drawn over each bar."""
    plt = _plt()
    labels = [f"{c} (n={n})" for c, n in zip(rows["category"], rows["n"])]
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.32 * len(rows)))
    left = np.zeros(len(rows))
    for key, name, shade, hatch in SEGMENTS:
        share = rows[f"{key}_share"].to_numpy(dtype=float) * 100
        name = name.replace("A", model_a).replace("B", model_b) if key in ("win", "loss") else name
        ax.barh(y, share, left=left, color=shade, hatch=hatch, edgecolor="#222222", linewidth=0.5, label=name)
        left += share
    score = rows["score"].to_numpy(dtype=float) * 100
    err = np.vstack([score - rows["score_lo"].to_numpy(dtype=float) * 100,
                     rows["score_hi"].to_numpy(dtype=float) * 100 - score])
    ax.errorbar(score, y, xerr=np.nan_to_num(err), fmt="D", color="white", markeredgecolor="black", ecolor="black",
                elinewidth=1.2, capsize=3, markersize=5,
                label=f"score of {model_a}\n(ties as half), {level:.0%} CI")
    ax.axvline(50, color="black", linestyle=":", linewidth=0.8)
    if len(rows) > 1:  # the overall row comes first: set it apart from the categories
        ax.axhline(y[0] - 0.5, color="black", linewidth=1.2)
    ax.set_yticks(y, labels)
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of votes (%)")
    ax.set_title(textwrap.shorten(f"{question}: {model_a} vs {model_b}", 90))
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
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


__all__ = ["bradley_terry_plot", "metric_bars", "preference_bars", "speed_bars"]
