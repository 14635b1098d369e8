"""Setup: the runs (generator, device, weights, prompts, seeds, images), their resolved parameters (collapsed),
package versions, hardware and code revision, and the study's design."""

from __future__ import annotations

from typing import Any

import pandas as pd

from k3eval.report.blocks import Column, Section, Table
from k3eval.report.sections import BuildContext


def params_text(params: dict[str, Any]) -> str:
    keep = {k: v for k, v in params.items() if v is not None and k not in ("tiny",)}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


def _pair(sep: str = " / "):
    return lambda a, b: sep.join("–" if v is None or v != v else str(v) for v in (a, b))


def build(ctx: BuildContext) -> Section:
    s = Section.named("setup")
    runs = ctx.inputs.runs
    rows, params = [], []
    for r in runs:
        g = r.info.get("generator", {})
        ps = r.info.get("prompt_set", {})
        totals = r.info.get("totals", {})
        weights = g.get("weights", {}) or {}
        rows.append({"run": r.name, "generator": g.get("name"), "class": g.get("class"),
                     "parameters": params_text(g.get("params", {})), "device": g.get("device"),
                     "dtype": g.get("dtype"), "weights": "random (offline test weights)" if weights.get(
                         "random_weights") else str(weights.get("model") or weights or "–"),
                     "prompt_set": ps.get("name"), "prompt_set_hash": str(ps.get("hash", ""))[:16],
                     "n_prompts": ps.get("n_prompts"), "samples": r.info.get("samples"),
                     "benchmark_seed": (r.info.get("seed") or {}).get("benchmark_seed"),
                     "images_ok": int((r.manifest["status"] == "ok").sum()) if len(r.manifest) else 0,
                     "images_expected": totals.get("expected"),
                     "imported": "yes" if r.info.get("imported") else "no", "status": r.info.get("status")})
    df = pd.DataFrame(rows)
    cols = [Column("run", ("run",)), Column("generator", ("generator",)),
            Column("device / dtype", ("device", "dtype"), _pair()), Column("weights", ("weights",)),
            Column("prompts (set, n, hash)", ("prompt_set", "n_prompts", "prompt_set_hash"),
                   lambda a, b, c: f"{a}, {b}, {c}"),
            Column("samples", ("samples",)), Column("seed", ("benchmark_seed",)),
            Column("images ok / expected", ("images_ok", "images_expected"), _pair()),
            Column("imported", ("imported",)), Column("status", ("status",))]
    s.table(Table("setup_runs", "Runs (resolved parameters below, collapsed)", df, columns=cols))
    for r in rows:
        params.append({"run": r["run"], "class": r["class"], "parameters": r["parameters"]})
    s.table(Table("setup_parameters", "Resolved generator parameters of each run", pd.DataFrame(params),
                  collapsed=True))
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
        s.table(Table("setup_packages", "Package versions recorded in run.json", pd.DataFrame(prow),
                      collapsed=len(prow) > 12))
    hw = []
    for r in runs:
        h = r.info.get("hardware") or {}
        hw.append({"run": r.name, "platform": h.get("platform"), "python": h.get("python"),
                   "cpus": h.get("cpu_count"), "gpus": ", ".join(h.get("gpus", [])) or "none",
                   "git_revision": r.info.get("git_revision") or "–", "finished": r.info.get("finished")})
    s.table(Table("setup_hardware", "Hardware and code revision of each run", pd.DataFrame(hw), collapsed=True))
    st = ctx.inputs.info
    if st.get("name"):
        s.p(f"Study {st.get('name')!r}: {st.get('n_annotators')} annotators, overlap {st.get('overlap')}, "
            f"{st.get('n_items')} items ({st.get('n_gold')} gold) and {st.get('n_repeats')} swapped repeats, "
            f"questions {', '.join(st.get('questions', []))}, design seed {st.get('seed')}, "
            f"created {st.get('created')}.")
    return s


__all__ = ["build", "params_text"]
