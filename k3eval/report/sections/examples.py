"""Examples from every comparison: per comparison, on the alignment question, the most disputed items (votes for
both images, smallest margin) and the clearest wins each way, with prompt, both thumbnails and the vote counts;
without votes, the first prompts side by side."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from k3eval.report.blocks import Example, Section, Table
from k3eval.report.sections import BuildContext

THUMB = 192  # pixels, longest side of embedded example images


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


def _thumb(paths: dict[str, dict[tuple[str, int], Path]], model: str, pid: str, sample: int) -> bytes | None:
    p = paths.get(model, {}).get((pid, sample))
    return thumbnail(p) if p is not None else None


def _item_counts(d: pd.DataFrame) -> pd.DataFrame:
    """Votes per item: a (first system), b, equal, both_bad, n, with the item's prompt, sample and comparison."""
    first = d.drop_duplicates("item_id").set_index("item_id")[["prompt_id", "sample", "category", "model_a",
                                                                "model_b", "comparison"]]
    # vectorised group sums (a lambda per group is far too slow for 30,000 votes)
    counts = pd.get_dummies(d["result"]).reindex(columns=["win", "loss", "equal", "both_bad"], fill_value=False)
    counts = counts.astype(int).groupby(d["item_id"].to_numpy()).sum()
    g = first.join(counts.rename(columns={"win": "a", "loss": "b"})).reset_index()
    g["n"] = g[["a", "b", "equal", "both_bad"]].sum(axis=1)
    return g


def _choose(g: pd.DataFrame, n_each: int) -> pd.DataFrame:
    multi = g[g["n"] >= 2]
    pool = multi if len(multi) else g
    disputed = pool[(pool["a"] > 0) & (pool["b"] > 0)].assign(gap=lambda x: (x["a"] - x["b"]).abs()).sort_values(
        ["gap", "n", "item_id"], ascending=[True, False, True]).head(n_each)
    clear_a = pool[(pool["b"] == 0) & (pool["a"] > 0)].sort_values(["a", "item_id"], ascending=[False, True])
    clear_b = pool[(pool["a"] == 0) & (pool["b"] > 0)].sort_values(["b", "item_id"], ascending=[False, True])
    return pd.concat([disputed.assign(kind="most disputed"), clear_a.head(n_each).assign(kind="clear win for A"),
                      clear_b.head(n_each).assign(kind="clear win for B")], ignore_index=True)


def build(ctx: BuildContext) -> Section:
    from k3eval.sbs.analysis import regular_votes

    s = Section.named("examples")
    inp = ctx.inputs
    n_each = ctx.n_examples
    st = inp.stats_all
    if inp.votes is None or st is None or st.preference.empty:
        s.note("No votes, so no disputed or clear examples; the first prompts of the runs are shown side by side.")
        ex = []
        models = list(inp.image_paths)
        if len(models) >= 2:
            for pid, sample in sorted(inp.image_paths[models[0]])[:n_each]:
                ex.append(Example("first prompts", f"{models[0]} vs {models[1]}", inp.prompts.get(pid, pid), "",
                                  models[0], models[1], _thumb(inp.image_paths, models[0], pid, sample),
                                  _thumb(inp.image_paths, models[1], pid, sample), "no votes"))
        s.examples(ex)
        return s
    v = regular_votes(inp.votes)
    questions = st.summary["questions"]
    q = "alignment" if "alignment" in questions else questions[0]
    d = v[v["question"] == q]
    s.p(f"Items judged on the {q} question, chosen from the votes of every comparison: the most disputed (votes split "
        f"between the two images) and the clearest wins each way (no vote for the other image); up to {n_each} of "
        "each kind per comparison.")
    counts = _item_counts(d) if len(d) else pd.DataFrame()
    rows = []
    for comp in st.summary["comparisons"]:
        g = counts[counts["comparison"] == comp] if len(counts) else counts
        chosen = _choose(g, n_each) if len(g) else g
        if not len(chosen):
            s.note(f"{comp}: no item has votes on the {q} question yet.")
            continue
        s.h3(comp)
        batch = []
        for r in chosen.itertuples(index=False):
            kind = r.kind.replace("A", r.model_a).replace("B", r.model_b) if r.kind != "most disputed" else r.kind
            votes_txt = f"{r.model_a}: {r.a}, {r.model_b}: {r.b}, equal: {r.equal}, both bad: {r.both_bad}"
            batch.append(Example(kind, r.comparison, inp.prompts.get(r.prompt_id, r.prompt_id), r.category,
                                 r.model_a, r.model_b, _thumb(inp.image_paths, r.model_a, r.prompt_id, int(r.sample)),
                                 _thumb(inp.image_paths, r.model_b, r.prompt_id, int(r.sample)), votes_txt))
            rows.append({"kind": kind, "item_id": int(r.item_id), "comparison": r.comparison, "question": q,
                         "prompt_id": r.prompt_id, "sample": int(r.sample), "category": r.category,
                         "prompt": inp.prompts.get(r.prompt_id, ""), "votes_a": int(r.a), "votes_b": int(r.b),
                         "equal": int(r.equal), "both_bad": int(r.both_bad)})
        s.examples(batch)
    if rows:
        s.table(Table("examples", "Examples shown above, with their votes", pd.DataFrame(rows), collapsed=True))
    else:
        s.note("No item has votes yet.")
    return s


__all__ = ["THUMB", "build", "thumbnail"]
