"""Study design without a database: overlap, balance, queues, sides, gold items, swapped repeats."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from helpers import PROMPTS, make_run
from PIL import Image

from k3eval.errors import UserError
from k3eval.sbs.design import annotator_names, degrade_image, load_run_images, plan_study


@pytest.fixture
def three_runs(tmp_path):
    return {n: make_run(tmp_path / n, f"gen-{n}", samples=2, seed=i) for i, n in enumerate(["r1", "r2", "r3"])}


def test_every_item_gets_exactly_k_distinct_annotators_with_balanced_load(three_runs):
    runs = load_run_images(three_runs)
    plan = plan_study(runs, annotator_names(7), overlap=3, gold=0.1, repeats=0.0, seed=3)
    regular = [i for i, it in enumerate(plan.items) if it.kind == "regular"]
    assert len(regular) == 3 * len(PROMPTS) * 2  # 3 pairs x 6 prompts x 2 samples
    per_item: dict[int, list[int]] = {}
    for a in plan.assignments:
        per_item.setdefault(a.item, []).append(a.annotator)
    for k, it in enumerate(plan.items):
        assert len(per_item[k]) == 3 and len(set(per_item[k])) == 3, it
    load = Counter(a.annotator for a in plan.assignments)
    assert max(load.values()) - min(load.values()) <= 1
    pairs = Counter(frozenset(v[:2]) for v in per_item.values())
    assert len(pairs) > 7  # annotators are mixed, not always the same neighbours


def test_queue_never_repeats_an_item_and_positions_are_contiguous(three_runs):
    plan = plan_study(load_run_images(three_runs), annotator_names(4), overlap=2, repeats=0.2, seed=0)
    for ann in range(4):
        q = plan.queue(ann)
        assert [a.position for a in q] == list(range(len(q)))
        assert len({a.item for a in q}) == len(q)
        originals = [plan.items[a.item].repeat_of for a in q if plan.items[a.item].kind == "repeat"]
        shown = [a.item for a in q]
        assert all(o in shown for o in originals)


def test_queue_mixes_categories_and_comparisons(three_runs):
    plan = plan_study(load_run_images(three_runs), annotator_names(1), overlap=1, gold=0.0, repeats=0.0, seed=1)
    q = [plan.items[a.item] for a in plan.queue(0)]
    comps = [(it.model_a, it.model_b) for it in q]
    # every third of the queue holds every comparison and at least three categories
    third = len(q) // 3
    for part in (q[:third], q[third:2 * third], q[2 * third:]):
        assert len({(it.model_a, it.model_b) for it in part}) == 3
        assert len({it.category for it in part}) >= 3
    longest = max(len(list(g)) for _, g in __import__("itertools").groupby(comps))
    assert longest <= 4


def test_sides_are_random_and_repeats_are_swapped_and_later(two_runs):
    plan = plan_study(load_run_images(two_runs), annotator_names(3), overlap=2, gold=0.0, repeats=0.3, seed=5)
    lefts = [a.left_is_a for a in plan.assignments]
    assert 0.25 < np.mean(lefts) < 0.75
    reps = [a for a in plan.assignments if plan.items[a.item].kind == "repeat"]
    assert reps
    for r in reps:
        orig = next(a for a in plan.assignments
                    if a.annotator == r.annotator and a.item == plan.items[r.item].repeat_of)
        assert r.left_is_a != orig.left_is_a
        assert r.position > orig.position
        rep, src = plan.items[r.item], plan.items[orig.item]
        assert (rep.image_a, rep.image_b, rep.model_a, rep.model_b) == (src.image_a, src.image_b, src.model_a,
                                                                       src.model_b)
    # a repeat is assigned to its one annotator only: it never adds a vote to the original's K
    assert Counter(a.item for a in reps).most_common(1)[0][1] == 1


def test_gold_items_are_known_answers_and_never_name_a_real_model_as_loser(two_runs):
    plan = plan_study(load_run_images(two_runs), annotator_names(2), overlap=1, gold=0.25, seed=2)
    gold = [it for it in plan.items if it.kind == "gold"]
    assert len(gold) == round(0.25 * 12)  # 6 prompts x 2 samples, one comparison
    kinds = Counter(it.gold_question for it in gold)
    assert kinds["alignment"] >= 1 and kinds["quality"] >= 1
    for it in gold:
        assert it.gold_answer == "a" and it.model_b.startswith("<gold:")
        if it.gold_question == "alignment":
            assert it.image_b.prompt_id != it.prompt_id and it.image_b.run == it.image_a.run
        else:
            assert it.image_b.degraded and (it.image_b.prompt_id, it.image_b.sample) == (it.prompt_id, it.sample)


def test_only_gold_for_asked_questions(two_runs):
    plan = plan_study(load_run_images(two_runs), annotator_names(2), overlap=1, gold=0.2, questions=("quality",))
    assert {it.gold_question for it in plan.items if it.kind == "gold"} == {"quality"}


def test_design_is_deterministic_in_the_seed(two_runs):
    runs = load_run_images(two_runs)

    def fingerprint(seed):
        p = plan_study(runs, annotator_names(3), overlap=2, seed=seed)
        return [(a.annotator, a.item, a.position, a.left_is_a) for a in p.assignments]

    assert fingerprint(4) == fingerprint(4)
    assert fingerprint(4) != fingerprint(5)


def test_reference_compares_each_run_against_it(three_runs):
    plan = plan_study(load_run_images(three_runs), annotator_names(2), overlap=1, reference="r2", gold=0.0)
    assert sorted({(it.model_a, it.model_b) for it in plan.items}) == [("r2", "r1"), ("r2", "r3")]
    with pytest.raises(UserError, match="reference: 'nope' is not one of the runs"):
        plan_study(load_run_images(three_runs), annotator_names(2), overlap=1, reference="nope")


def test_only_ok_rows_present_in_both_runs_become_items(tmp_path):
    runs = {"a": make_run(tmp_path / "a", "ga", bad=("p-cat",)), "b": make_run(tmp_path / "b", "gb", seed=3)}
    plan = plan_study(load_run_images(runs), annotator_names(1), overlap=1, gold=0.0, repeats=0.0)
    assert sorted(it.prompt_id for it in plan.items) == sorted(p for p, _, _ in PROMPTS if p != "p-cat")


def test_runs_of_different_prompt_sets_are_refused(tmp_path):
    runs = {"a": make_run(tmp_path / "a", "ga"), "b": make_run(tmp_path / "b", "gb", prompt_set_hash="other")}
    with pytest.raises(UserError, match="different prompt sets"):
        load_run_images(runs)


@pytest.mark.parametrize("kwargs, match", [
    ({"overlap": 4}, "only 3"),
    ({"overlap": 0}, "overlap: expected an integer >= 1"),
    ({"overlap": 1, "gold": 0.9}, "gold: expected a fraction"),
    ({"overlap": 1, "questions": ("beauty",)}, "questions: expected"),
])
def test_bad_parameters_name_the_argument(two_runs, kwargs, match):
    with pytest.raises(UserError, match=match):
        plan_study(load_run_images(two_runs), annotator_names(3), **kwargs)


def test_annotator_names():
    assert annotator_names(3) == ["annotator-01", "annotator-02", "annotator-03"]
    with pytest.raises(UserError, match="appears twice"):
        annotator_names(["ann", "ann"])
    with pytest.raises(UserError, match="at least 1"):
        annotator_names(0)


def test_degraded_copy_is_visibly_worse_and_deterministic():
    rng = np.random.default_rng(0)
    # a sharp checkerboard with detail: blur must remove most of its high-frequency energy
    base = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    img = np.stack([base, 255 - base, rng.integers(0, 256, (128, 128), dtype=np.uint8)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = degrade_image(buf.getvalue(), seed=1)
    assert out == degrade_image(buf.getvalue(), seed=1)
    deg = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"), dtype=np.float64)
    assert Image.open(io.BytesIO(out)).format == "PNG" and deg.shape == img.shape

    def detail(a):
        return np.abs(np.diff(a[..., 0], axis=1)).mean()

    assert detail(deg) < 0.3 * detail(img.astype(np.float64))
    assert np.abs(deg - img).mean() > 40


def test_explicit_pairs_replace_all_pairs(three_runs):
    runs = load_run_images(three_runs)
    plan = plan_study(runs, annotator_names(2), overlap=1, pairs=[("r3", "r1")], gold=0.0)
    assert {(it.model_a, it.model_b) for it in plan.items} == {("r3", "r1")}
    with pytest.raises(UserError, match="pairs: 'nope' is not one of the runs"):
        plan_study(runs, annotator_names(2), overlap=1, pairs=[("r1", "nope")])
    with pytest.raises(UserError, match="repeats a pair"):
        plan_study(runs, annotator_names(2), overlap=1, pairs=[("r1", "r2"), ("r2", "r1")])
    with pytest.raises(UserError, match="either reference or explicit pairs"):
        plan_study(runs, annotator_names(2), overlap=1, pairs=[("r1", "r2")], reference="r1")


def _with_seed(path, benchmark_seed, samples=None):
    """Record a benchmark seed (and samples) in a test run's run.json, as `k3eval generate` does."""
    from k3eval.runs import RunFolder

    run = RunFolder(path)
    info = run.read_info()
    info["seed"] = {"benchmark_seed": benchmark_seed, "rule": "sha256 rule", "noise": "cpu"}
    if samples is not None:
        info["samples"] = samples
    run.write_info(info)
    return path


def test_runs_with_other_seeds_or_samples_are_not_paired(tmp_path):
    from k3eval.sbs.design import pairing_of

    a = _with_seed(make_run(tmp_path / "a", "ga", samples=2), 0)
    same = _with_seed(make_run(tmp_path / "same", "gs", samples=2, seed=5), 0)
    other_seed = _with_seed(make_run(tmp_path / "os", "go", samples=2, seed=6), 7)
    other_samples = _with_seed(make_run(tmp_path / "ss", "gq", samples=1, seed=7), 0)
    imported = make_run(tmp_path / "imp", "dall-e-3", samples=2, seed=8)  # no seed recorded: made elsewhere

    plan = plan_study(load_run_images({"a": a, "same": same}), annotator_names(1), overlap=1, gold=0.0)
    assert plan.pairing["mode"] == "seed" and plan.pairing["differences"] == []
    assert plan.pairing["runs"] == {"a": {"benchmark_seed": 0, "samples": 2}, "same": {"benchmark_seed": 0,
                                                                                        "samples": 2}}
    plan = plan_study(load_run_images({"a": a, "imp": imported}), annotator_names(1), overlap=1, gold=0.0)
    assert plan.pairing["mode"] == "prompt"
    for other, named in ((other_seed, "a vs b: benchmark seed 0 vs 7"), (other_samples,
                                                                           "a vs b: samples per prompt 2 vs 1")):
        runs = load_run_images({"a": a, "b": other})
        with pytest.raises(UserError, match=f"not a paired comparison \\({named}\\).*--unpaired"):
            plan_study(runs, annotator_names(1), overlap=1, gold=0.0)
        plan = plan_study(runs, annotator_names(1), overlap=1, gold=0.0, unpaired=True)
        assert plan.pairing["mode"] == "unpaired" and plan.pairing["differences"] == [named]
    # only the comparisons made count: a reference run paired with each other run is a paired study
    runs = load_run_images({"a": a, "same": same, "os": other_seed})
    assert pairing_of(runs, [("a", "same")])["mode"] == "seed"
    with pytest.raises(UserError, match="a vs os: benchmark seed 0 vs 7; same vs os: benchmark seed 0 vs 7"):
        pairing_of(runs, [("a", "same"), ("a", "os"), ("same", "os")])
