"""Simulated annotators: answer a study by a stated, seeded rule, so that the demo and tests have votes with a
known mechanism. Their votes are marked `simulated` in the store, and every report built on them says so first.

The rule (`SimulationRule`), for one shown pair and one question:
1. signal d = (m_left - m_right) / scale, where m is the image's automatic score (CLIP score stored by
   `k3eval score`; `scale` is the spread of that score over the study's images), or the model strength given in
   `strengths` when no score is stored; plus `position_bias` (positive favours the left image);
2. a latent judgement u = d + annotator noise (logistic, scale `noise` times the annotator's own factor, drawn once
   per annotator in [0.7, 1.5]);
3. answer 'both_bad' with probability `both_bad`; else 'equal' if |u| < `equal_band`; else the side with u's sign.
Gold items are answered correctly with probability `gold_accuracy` (else the wrong side). Answer times are
log-normal around `median_seconds`. Everything is drawn from one generator seeded by (seed, annotator position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from k3eval.errors import UserError


@dataclass(frozen=True)
class SimulationRule:
    """Parameters of the simulated annotators (see the module docstring)."""

    noise: float = 1.0  # logistic noise scale of the latent judgement (signal units)
    position_bias: float = 0.1  # added to the left image's signal
    equal_band: float = 0.35  # |latent| below this -> 'equal'
    both_bad: float = 0.03  # probability of 'both_bad'
    gold_accuracy: float = 0.92  # probability of the known answer on a gold item
    median_seconds: float = 6.0
    strengths: dict[str, float] = field(default_factory=dict)  # per model, used when an image has no score

    def describe(self) -> str:
        return (f"prefer the image with the higher CLIP score (difference / its spread across the study, or the given "
                f"model strengths without scores) plus logistic noise (scale {self.noise:g}, per-annotator factor "
                f"0.7-1.5), left-side bias {self.position_bias:+g}, 'equal' when the latent difference is within "
                f"+-{self.equal_band:g}, 'both bad' {self.both_bad:.0%}, gold answered correctly "
                f"{self.gold_accuracy:.0%}")


def _check_rule(rule: SimulationRule) -> None:
    if rule.noise <= 0 or rule.equal_band < 0 or not 0 <= rule.both_bad < 1 or not 0 <= rule.gold_accuracy <= 1:
        raise UserError(f"simulation rule: need noise > 0, equal_band >= 0, 0 <= both_bad < 1, "
                        f"0 <= gold_accuracy <= 1; got {rule}")


def simulate_answers(tasks: pd.DataFrame, rule: SimulationRule, seed: int,
                     metric: dict[tuple[str, str, int], float] | None = None) -> pd.DataFrame:
    """Answers for shown pairs, pure and seeded (no database).

    tasks: one row per (annotator, shown item, question) with columns annotator, annotator_index (int, for the
    seed), item_id, question, left_model, right_model, prompt_id, sample, is_gold, gold_answer ('left'/'right' or
    None). Returns tasks with `answer` and `seconds` added. `metric` maps (model, prompt_id, sample) to the image's
    automatic score.
    """
    _check_rule(rule)
    metric = metric or {}
    out = []
    vals = np.array(list(metric.values()), dtype=np.float64)
    scale = float(np.std(vals)) if vals.size > 1 and np.std(vals) > 0 else 1.0
    for (ann_idx, _), d in tasks.groupby(["annotator_index", "annotator"], sort=True):
        rng = np.random.default_rng([int(seed), int(ann_idx)])
        factor = rng.uniform(0.7, 1.5)
        n = len(d)

        def value(model: str, pid: str, sample: int) -> float:
            key = (model, pid, int(sample))
            if key in metric:
                return metric[key] / scale
            return float(rule.strengths.get(model, 0.0))

        m_left = np.array([value(m, p, s) for m, p, s in zip(d["left_model"], d["prompt_id"], d["sample"])])
        m_right = np.array([value(m, p, s) for m, p, s in zip(d["right_model"], d["prompt_id"], d["sample"])])
        latent = m_left - m_right + rule.position_bias + rng.logistic(0.0, rule.noise * factor, n)
        u_bad = rng.random(n)
        u_gold = rng.random(n)
        answer = _answers(latent, u_bad, rule)
        gold = d["gold_answer"].to_numpy(dtype=object)
        is_gold = d["is_gold"].to_numpy(dtype=bool) & pd.notna(gold)
        wrong = np.array([{"left": "right", "right": "left"}.get(g, g) for g in gold], dtype=object)
        answer = np.where(is_gold, np.where(u_gold < rule.gold_accuracy, gold, wrong), answer)
        seconds = rule.median_seconds * np.exp(rng.normal(0.0, 0.5, n))
        out.append(d.assign(answer=answer, seconds=seconds))
    return pd.concat(out) if out else tasks.assign(answer=pd.Series(dtype=object), seconds=pd.Series(dtype=float))


def _answers(latent: np.ndarray, u_bad: np.ndarray, rule: SimulationRule) -> np.ndarray:
    """Step 3 of the rule: 'both_bad' when u_bad < both_bad, else 'equal' within the band, else the latent's side."""
    answer = np.where(np.abs(latent) < rule.equal_band, "equal", np.where(latent > 0, "left", "right"))
    return np.where(u_bad < rule.both_bad, "both_bad", answer).astype(object)


def clustered_scores(n_categories: int, prompts_per_category: int, k: int, rng: np.random.Generator,
                     difference: float = 0.0, item_spread: float = 2.4, n_annotators: int = 12,
                     annotator_spread: float = 0.0, rule: SimulationRule | None = None) -> dict[str, np.ndarray]:
    """One comparison of one question with known truth, as arrays (fast enough for calibration by simulation).

    Each prompt is one item judged by `k` distinct annotators drawn from `n_annotators`. The item's signal for model
    A is `difference` + a shared per-item effect ~ Normal(0, item_spread) (prompt difficulty: what makes annotators
    agree) + the annotator's own lean ~ Normal(0, annotator_spread) (drawn once per annotator); the side, the
    position bias, the per-annotator noise factor in [0.7, 1.5] and the answer follow `rule` (the module docstring).
    Returns prompt, category (of the prompt), annotator, item and score (A's outcome: 1, 0.5, 0) per vote, and
    `truth`: the expected score of A over prompts, sides and noise given the study's annotators (`expected_score`);
    with difference 0 and no annotator lean it is exactly 1/2.
    """
    rule = rule or SimulationRule()
    _check_rule(rule)
    n_prompts = n_categories * prompts_per_category
    if not 1 <= k <= n_annotators:
        raise UserError(f"need 1 <= k <= n_annotators, got k={k}, n_annotators={n_annotators}")
    factor = rng.uniform(0.7, 1.5, n_annotators)
    lean = rng.normal(0.0, annotator_spread, n_annotators) if annotator_spread > 0 else np.zeros(n_annotators)
    effect = difference + rng.normal(0.0, item_spread, n_prompts)
    # k distinct annotators per item: the first k of a random permutation
    who = np.argsort(rng.random((n_prompts, n_annotators)), axis=1)[:, :k].ravel()
    prompt = np.repeat(np.arange(n_prompts), k)
    signal = effect[prompt] + lean[who]
    a_left = rng.random(prompt.size) < 0.5
    latent = np.where(a_left, signal, -signal) + rule.position_bias + rng.logistic(0.0, rule.noise * factor[who])
    answer = _answers(latent, rng.random(prompt.size), rule)
    a_won = np.where(a_left, answer == "left", answer == "right")
    b_won = np.where(a_left, answer == "right", answer == "left")
    score = np.where(a_won, 1.0, np.where(b_won, 0.0, 0.5))
    votes_of = np.bincount(who, minlength=n_annotators)
    truth = float(np.dot(votes_of, expected_score(difference + lean, item_spread, rule.noise * factor, rule))
                  / votes_of.sum())
    return {"prompt": prompt, "category": prompt // prompts_per_category, "annotator": who, "item": prompt,
            "score": score, "truth": np.float64(truth)}


def expected_score(shift: np.ndarray, item_spread: float, noise: np.ndarray, rule: SimulationRule) -> np.ndarray:
    """Expected tie-as-half score of A for an annotator whose signal is shift + Normal(0, item_spread) with logistic
    noise of scale `noise`, sides at random (Gauss-Hermite quadrature over the item effect).

    A on the left: latent x + L with x = signal + bias; E = P(x + L > band) + P(|x + L| < band) / 2, which is
    (F((x - band) / s) + F((x + band) / s)) / 2 for the logistic CDF F; on the right x = signal - bias; both bad
    (probability `both_bad`) scores 1/2.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(64)
    weights = weights / weights.sum()
    signal = np.asarray(shift, dtype=np.float64)[:, None] + item_spread * nodes[None, :]
    s = np.asarray(noise, dtype=np.float64)[:, None]

    def side(x):
        return 0.5 * (_logistic_cdf((x - rule.equal_band) / s) + _logistic_cdf((x + rule.equal_band) / s))

    decided = 0.5 * (side(signal + rule.position_bias) + side(signal - rule.position_bias))
    return (rule.both_bad * 0.5 + (1.0 - rule.both_bad) * decided) @ weights


def _logistic_cdf(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _study_tasks(study: str, db_url: str | None) -> tuple[pd.DataFrame, list[tuple[int, str]], dict[str, Any]]:
    """Every (annotator, assigned item, question) of the study, with the models on each side (read only).

    The simulator is organiser-side code: it reads the design tables through the store's session, but every vote
    goes through `record_vote`, the same rule-checked path as a person's vote.
    """
    from sqlalchemy import select

    from k3eval.sbs.store import AnnotatorRow, Assignment, Item, Study, find_study, get_engine, session

    engine = get_engine(db_url)
    with session(engine) as s:
        st = find_study(s, study)
        people = s.execute(select(AnnotatorRow.id, AnnotatorRow.name).where(
            AnnotatorRow.study_id == st.id, AnnotatorRow.role == "annotator",
            AnnotatorRow.revoked_at.is_(None)).order_by(AnnotatorRow.name)).all()
        rows = s.execute(select(AnnotatorRow.name, Assignment.item_id, Assignment.position, Assignment.left_is_a,
                                Item.kind, Item.prompt_id, Item.sample, Item.model_a, Item.model_b,
                                Item.gold_question, Item.gold_answer)
                         .join(Assignment, Assignment.annotator_id == AnnotatorRow.id)
                         .join(Item, Item.id == Assignment.item_id)
                         .where(Assignment.study_id == st.id)).all()
        questions = list(s.get(Study, st.id).questions)
        info = {"id": st.id, "name": st.name, "questions": questions}
    records = []
    for name, item_id, pos, left_is_a, kind, pid, sample, ma, mb, gq, ga in rows:
        left, right = (ma, mb) if left_is_a else (mb, ma)
        for q in questions:
            gold = None
            if kind == "gold" and gq == q:
                gold = "left" if (ga == "a") == bool(left_is_a) else "right"
            records.append({"annotator": name, "item_id": int(item_id), "position": int(pos), "question": q,
                            "left_model": left, "right_model": right, "prompt_id": pid, "sample": int(sample),
                            "is_gold": kind == "gold", "gold_answer": gold})
    return pd.DataFrame(records), [(int(i), n) for i, n in people], info


def simulate_study(study: str, annotators: int | None = None, seed: int = 0, db_url: str | None = None,
                   rule: SimulationRule | None = None, metric_name: str = "clip_score",
                   progress: bool = False) -> dict[str, Any]:
    """Answer the queues of the first `annotators` annotators of `study` (all when None) with `rule`.

    Votes go through `k3eval.sbs.record_vote(..., simulated=True)`; questions already answered by that annotator
    are left as they are, so a rerun only completes what is missing. Image scores come from the study's run folders
    (RUN/scores/per_image.parquet). Returns counts and the rule's description.
    """
    from k3eval.sbs import Annotator, record_vote, study_info
    from k3eval.sbs.analysis import load_metric_scores
    from k3eval.sbs.store import Vote, get_engine, normalize_url, session

    rule = rule or SimulationRule()
    url = normalize_url(db_url)
    tasks, people, st = _study_tasks(study, url)
    if annotators is not None and not 1 <= annotators <= len(people):
        raise UserError(f"--annotators: study {study!r} has {len(people)} annotators; expected 1..{len(people)}, "
                        f"got {annotators}")
    chosen = people if annotators is None else people[:annotators]
    names = {n for _, n in chosen}
    tasks = tasks[tasks["annotator"].isin(names)].sort_values(["annotator", "position", "question"])
    index = {n: k for k, (_, n) in enumerate(people)}
    tasks = tasks.assign(annotator_index=tasks["annotator"].map(index))
    info = study_info(study, url)
    scores = load_metric_scores(info["runs"], metric_name)
    metric = {(m, p, int(s)): float(x) for m, p, s, x in
              zip(scores["model"], scores["prompt_id"], scores["sample"], scores[metric_name]) if np.isfinite(x)}
    answered = simulate_answers(tasks, rule, seed, metric)
    from sqlalchemy import select

    with session(get_engine(url)) as s:
        done = set(s.execute(select(Vote.annotator_id, Vote.item_id, Vote.question)
                             .where(Vote.study_id == st["id"])).all())
    handles = {n: Annotator(i, n, study, st["id"], url) for i, n in chosen}
    recorded = 0
    rows = answered.itertuples(index=False)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=len(answered), desc=f"simulating {study}", unit="vote")
    for r in rows:
        who = handles[r.annotator]
        if (who.id, r.item_id, r.question) in done:
            continue
        record_vote(who, r.item_id, r.question, r.answer, float(r.seconds), simulated=True)
        recorded += 1
    return {"study": study, "annotators": len(chosen), "votes_recorded": recorded,
            "votes_kept": len(answered) - recorded, "seed": seed, "rule": rule.describe(),
            "metric": metric_name if metric else None, "images_with_metric": len(metric)}


def synthetic_votes(models: list[str], strengths: list[float], n_prompts: int, categories: list[str],
                    n_annotators: int, votes_per_prompt: int, seed: int = 0, questions=("alignment", "quality"),
                    rule: SimulationRule | None = None) -> pd.DataFrame:
    """A votes frame (docs/FORMATS.md columns) drawn from known model strengths, without a database: for tests and
    speed benchmarks. Each prompt gets `votes_per_prompt` (comparison, annotator) votes per question; comparisons
    are all pairs of `models` in order; the models' strengths drive `rule` (metric scores are not used)."""
    if len(models) != len(strengths) or len(models) < 2:
        raise UserError(f"need 2+ models with one strength each, got {len(models)} models, {len(strengths)} strengths")
    rule = rule or SimulationRule()
    rule = SimulationRule(**{**rule.__dict__, "strengths": dict(zip(models, strengths))})
    rng = np.random.default_rng(seed)
    pairs = [(a, b) for k, a in enumerate(models) for b in models[k + 1:]]
    n = n_prompts * votes_per_prompt
    prompt = np.repeat(np.arange(n_prompts), votes_per_prompt)
    pair = rng.integers(0, len(pairs), n)
    ann = rng.integers(0, n_annotators, n)
    left_is_a = rng.random(n) < 0.5
    # items: one per (prompt, comparison); several annotators on one item give the agreement statistics material
    item = prompt * len(pairs) + pair
    frames = []
    for q in questions:
        model_a = np.array([pairs[p][0] for p in pair], dtype=object)
        model_b = np.array([pairs[p][1] for p in pair], dtype=object)
        tasks = pd.DataFrame({
            "annotator": [f"sim-{a:03d}" for a in ann], "annotator_index": ann, "item_id": item, "question": q,
            "left_model": np.where(left_is_a, model_a, model_b), "right_model": np.where(left_is_a, model_b, model_a),
            "prompt_id": [f"p{p:05d}" for p in prompt], "sample": 0, "is_gold": False, "gold_answer": None,
            "model_a": model_a, "model_b": model_b, "category": [categories[p % len(categories)] for p in prompt],
            "order": np.arange(n)})
        frames.append(simulate_answers(tasks, rule, seed + 7919 * (1 + len(frames))))
    v = pd.concat(frames, ignore_index=True).sort_values(["order", "question"], kind="stable")
    v = v.drop_duplicates(["annotator", "item_id", "question"])
    winner = np.where(v["answer"] == "left", v["left_model"], np.where(v["answer"] == "right", v["right_model"],
                      np.where(v["answer"] == "equal", "tie", "both_bad")))
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    return pd.DataFrame({
        "study": "synthetic", "item_id": v["item_id"].astype("int64"), "prompt_id": v["prompt_id"],
        "category": v["category"], "sample": 0, "model_a": v["model_a"], "model_b": v["model_b"],
        "left_model": v["left_model"], "right_model": v["right_model"], "question": v["question"],
        "answer": v["answer"], "winner": winner, "annotator": v["annotator"], "seconds": v["seconds"],
        "created_at": t0 + pd.to_timedelta(v["order"].to_numpy() * 7.0, unit="s"), "is_gold": False,
        "gold_answer": None, "is_repeat": False, "repeat_of": pd.array([pd.NA] * len(v), dtype="Int64"),
        "simulated": True}).reset_index(drop=True)


__all__ = ["SimulationRule", "clustered_scores", "expected_score", "simulate_answers", "simulate_study",
           "synthetic_votes"]
