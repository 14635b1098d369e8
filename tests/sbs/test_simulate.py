"""Simulated annotators through the real store: votes marked simulated, seeded, resumable, driven by CLIP scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from k3eval.errors import UserError
from k3eval.sbs import create_study, study_info, votes_frame
from k3eval.sbs.simulate import SimulationRule, simulate_answers, simulate_study


def _write_clip(run_dir, value_of):
    man = pd.read_parquet(run_dir / "manifest.parquet")
    (run_dir / "scores").mkdir(exist_ok=True)
    pd.DataFrame({"prompt_id": man["prompt_id"], "sample": man["sample"], "category": man["category"],
                  "path": man["path"], "sha256": man["sha256"],
                  "clip_score": [value_of(p, s) for p, s in zip(man["prompt_id"], man["sample"])]}).to_parquet(
        run_dir / "scores" / "per_image.parquet")


@pytest.fixture
def sqlite_url(tmp_path):
    from k3eval.sbs import dispose_engines

    yield f"sqlite:///{tmp_path / 'votes.db'}"
    dispose_engines()


def test_simulated_votes_follow_clip_scores_and_are_marked(two_runs, sqlite_url):
    # alpha's images score clearly higher on every prompt: the simulated annotators must prefer it on alignment
    _write_clip(two_runs["model-alpha"], lambda p, s: 0.30 + 0.01 * s)
    _write_clip(two_runs["model-beta"], lambda p, s: 0.20 + 0.01 * s)
    created = create_study("sim", two_runs, annotators=4, overlap=3, gold=0.2, repeats=0.2, seed=1,
                           db_url=sqlite_url)
    out = simulate_study("sim", seed=7, db_url=sqlite_url)
    v = votes_frame("sim", sqlite_url)
    assert out["votes_recorded"] == len(v) == created.n_assignments * 2
    assert v["simulated"].all() and study_info("sim", sqlite_url)["simulated"]
    reg = v[~v["is_gold"] & ~v["is_repeat"] & (v["question"] == "alignment")]
    decided = reg[reg["winner"].isin(["model-alpha", "model-beta"])]
    assert (decided["winner"] == "model-alpha").mean() > 0.8
    gold = v[v["gold_answer"].notna()]
    assert len(gold) and (gold["answer"] == gold["gold_answer"]).mean() >= 0.5
    # a rerun records nothing new and changes nothing
    again = simulate_study("sim", seed=99, db_url=sqlite_url)
    assert again["votes_recorded"] == 0
    pd.testing.assert_series_equal(votes_frame("sim", sqlite_url)["answer"], v["answer"])


def test_same_seed_same_answers_and_partial_annotators(two_runs, tmp_path):
    from k3eval.sbs import dispose_engines

    answers = []
    for k in range(2):
        url = f"sqlite:///{tmp_path / f'v{k}.db'}"
        create_study("s", two_runs, annotators=3, overlap=2, seed=2, db_url=url)
        out = simulate_study("s", annotators=2, seed=11, db_url=url)
        v = votes_frame("s", url)
        assert out["annotators"] == 2 and v["annotator"].nunique() == 2
        answers.append(v[["annotator", "item_id", "question", "answer"]].sort_values(["annotator", "item_id",
                                                                                      "question"]).reset_index(drop=True))
        with pytest.raises(UserError, match="--annotators"):
            simulate_study("s", annotators=4, db_url=url)
        dispose_engines()
    pd.testing.assert_frame_equal(answers[0], answers[1])


def test_rule_position_bias_and_noise_are_what_they_say():
    n = 4000
    tasks = pd.DataFrame({"annotator": "a", "annotator_index": 0, "item_id": np.arange(n), "question": "quality",
                          "left_model": "X", "right_model": "Y", "prompt_id": "p", "sample": 0, "is_gold": False,
                          "gold_answer": None})
    # equal models: only the position bias moves the answers, towards the left
    biased = simulate_answers(tasks, SimulationRule(position_bias=0.5, both_bad=0.0), seed=0)
    neutral = simulate_answers(tasks, SimulationRule(position_bias=0.0, both_bad=0.0), seed=0)
    share = lambda d: (d["answer"] == "left").sum() / d["answer"].isin(["left", "right"]).sum()  # noqa: E731
    assert share(biased) > 0.6 and abs(share(neutral) - 0.5) < 0.04
    # strengths drive the answer when there is no score
    strong = simulate_answers(tasks, SimulationRule(position_bias=0.0, strengths={"Y": 2.0}), seed=0)
    assert share(strong) < 0.25
    with pytest.raises(UserError, match="simulation rule"):
        simulate_answers(tasks, SimulationRule(noise=0.0), seed=0)


def test_cli_simulate_then_stats(two_runs, sqlite_url, tmp_path, capsys):
    from k3eval.cli import main

    create_study("cli", two_runs, annotators=3, overlap=2, seed=0, db_url=sqlite_url)
    assert main(["sbs", "simulate", "cli", "--annotators", "3", "--seed", "1", "--db", sqlite_url, "--quiet"]) == 0
    assert "simulated votes recorded" in capsys.readouterr().out
    out_dir = tmp_path / "stats"
    assert main(["sbs", "stats", "cli", "--db", sqlite_url, "--out", str(out_dir), "--resamples", "50"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("NOTE: this study holds simulated votes")
    assert "model-alpha vs model-beta" in printed
    pref = pd.read_csv(out_dir / "preference.csv")
    assert set(pref["question"]) == {"alignment", "quality"} and (pref["category"] == "all").sum() == 2
    assert main(["sbs", "stats", "cli", "--db", sqlite_url, "--exclude-flagged", "--resamples", "50", "--out",
                 str(out_dir)]) == 0
    assert (out_dir / "preference_excluding_flagged.csv").exists() and (out_dir / "preference.csv").exists()
    assert "flagged annotators" in capsys.readouterr().out
    assert main(["sbs", "stats", "cli", "--db", sqlite_url, "--two-level", "--resamples", "50", "--out",
                 str(tmp_path / "two")]) == 0
    import json

    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["two_level"] and "annotators" in summary["bootstrap"] and "bootstrap test" in summary["test"]
    assert summary["comparisons"] == ["model-alpha vs model-beta"]
    assert main(["sbs", "simulate", "nope", "--db", sqlite_url]) == 2


def test_status_and_stats_flag_the_same_annotators_with_one_rule_set(two_runs, sqlite_url):
    """`sbs status` (admin_overview) and `sbs stats` (analyze_votes) call the same quality_control: the same flags and
    figures for every annotator, even for an annotator who always answers 'left'."""
    from k3eval.sbs import Annotator, admin_overview, authenticate, next_item, record_vote
    from k3eval.sbs.analysis import analyze_votes

    created = create_study("qc", two_runs, annotators=3, overlap=2, gold=0.2, repeats=0.3, seed=2, db_url=sqlite_url)
    lazy: Annotator = authenticate(created.tokens["annotator-01"], "qc", sqlite_url)
    while (view := next_item(lazy)) is not None:
        for q in view.questions:
            record_vote(lazy, view.item_id, q.key, "left", 1.0)
    simulate_study("qc", seed=3, db_url=sqlite_url)
    overview = {a.name: a for a in admin_overview("qc", sqlite_url).annotators}
    qc = analyze_votes(votes_frame("qc", sqlite_url), n_resamples=20).qc.set_index("annotator")
    assert "left_bias" in qc.loc["annotator-01", "flags"]
    for name, a in overview.items():
        assert [f for f in a.flags if f != "revoked"] == [f for f in qc.loc[name, "flags"].split(", ") if f]
        row = qc.loc[name]
        assert (a.repeat_total, a.repeat_agree, a.gold_total) == (row["repeat_n"], row["repeat_consistent"],
                                                                 row["gold_n"])
