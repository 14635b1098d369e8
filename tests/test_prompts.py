"""Prompt sets: shipped loaders with their real counts, user files, selection, and every bad input."""

from __future__ import annotations

import hashlib
import json

import pytest

from k3eval.errors import UserError
from k3eval.prompts import BUILTIN, load_file, load_prompt_set
from k3eval.prompts.core import Prompt, PromptSet


@pytest.mark.parametrize("name,count,n_categories", [("parti", 1632, 12), ("geneval", 553, 6),
                                                      ("t2i-compbench", 2400, 8), ("coco30k", 30000, 1)])
def test_builtin_counts(name, count, n_categories):
    ps = load_prompt_set(name)
    assert len(ps) == count == BUILTIN[name].size
    assert len(ps.categories()) == n_categories
    assert len({p.id for p in ps}) == count


def test_parti_exact_rows():
    ps = load_prompt_set("parti")
    by_text = {p.text: p for p in ps}
    # Quoting off: the quotes of this prompt survive (an ordinary CSV reader strips them).
    giggle = next(t for t in by_text if t.startswith('"G I G G L E"'))
    assert giggle.endswith("with a splotch of exploding white paint.")
    assert ps[0].text == "bond" and ps[0].category == "Abstract" and ps[0].tags["challenge"] == "Basic"
    assert ps.categories()["Animals"] == 314 and ps.categories()["Indoor Scenes"] == 40
    expected_id = "parti-" + hashlib.sha1(b"bond").hexdigest()[:10]
    assert ps[0].id == expected_id


def test_geneval_and_compbench_rows():
    g = load_prompt_set("geneval")
    assert g[0].text == "a photo of a bench" and g[0].category == "single_object"
    assert g.categories() == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                              "color_attr": 100}
    assert json.loads(g[0].tags["include"]) == [{"class": "bench", "count": 1}]
    c = load_prompt_set("t2i-compbench")
    assert set(c.categories().values()) == {300}
    assert c[0].text == "a green bench and a blue bowl" and c[0].category == "color"
    assert all("\r" not in p.text for p in c)  # CRLF files are split cleanly


def test_coco30k_rows():
    ps = load_prompt_set("coco30k")
    first = ps[0]
    assert first.id == "coco-203564" and first.text == "A bicycle replica with a clock as the front wheel."
    assert first.tags["evaluation_seed"] == "41337"
    assert all("\n" not in p.text for p in ps)  # 97 captions had an embedded newline inside quotes


def test_ids_are_stable_under_reordering(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("a red cube\na blue ball\n", encoding="utf-8")
    b.write_text("a blue ball\nsomething new\na red cube\n", encoding="utf-8")
    ids_a = {p.text: p.id for p in load_file(a)}
    ids_b = {p.text: p.id for p in load_file(b)}
    assert ids_a["a red cube"] == ids_b["a red cube"] and ids_a["a blue ball"] == ids_b["a blue ball"]


def test_user_formats(tmp_path):
    (tmp_path / "p.csv").write_text('id,Prompt,Category,extra\nx1,"a cat, sitting",Animals,foo\nx2,a dog,Animals,\n',
                                    encoding="utf-8")
    (tmp_path / "p.tsv").write_text("prompt\tcategory\na cat\tA\na dog\tB\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "category": "A"}\n\n{"prompt": "a dog"}\n',
                                      encoding="utf-8")
    csv_rows = load_file(tmp_path / "p.csv")
    assert [(p.id, p.text, p.category) for p in csv_rows] == [("x1", "a cat, sitting", "Animals"),
                                                               ("x2", "a dog", "Animals")]
    assert csv_rows[0].tags == {"extra": "foo"}
    assert [p.category for p in load_file(tmp_path / "p.tsv")] == ["A", "B"]
    rows = load_file(tmp_path / "p.jsonl")
    assert [(p.text, p.category) for p in rows] == [("a cat", "A"), ("a dog", "uncategorized")]
    (tmp_path / "q.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2: no 'prompt' field"):
        load_file(tmp_path / "q.jsonl")


def test_drawbench_from_user_path(tmp_path):
    path = tmp_path / "DrawBench.csv"
    path.write_text('Prompts,Category\n"A red colored car.",Colors\nA pear,Gary Marcus et al. ', encoding="utf-8")
    ps = load_prompt_set(f"drawbench:{path}")
    assert len(ps) == 2 and ps[1].category == "Gary Marcus et al."
    assert ps[0].id.startswith("drawbench-")


@pytest.mark.parametrize("content,suffix,message", [
    (b"text_x,category\na,b\n", ".csv", "no prompt column"),
    (b"prompt,category\na cat,A\n   ,B\n", ".csv", "line 3: the prompt is empty"),
    (b"id,prompt\n1,a cat\n1,a dog\n", ".csv", "line 3: duplicate id '1'"),
    (b"prompt\na cat\na cat\n", ".csv", "duplicate prompt"),
    (b"prompt\nok\nbad \xff byte\n", ".csv", "not valid UTF-8 \\(line 3"),
    (b'{"prompt": "a"}\n{not json\n', ".jsonl", "line 2: not valid JSON"),
    (b'{"prompt": "a"}\n{"prompt": 5}\n', ".jsonl", r"line 2: the prompt \('prompt'\) must be a string, got int 5"),
    (b'{"prompt": "a"}\n{"prompt": null}\n', ".jsonl", r"line 2: the prompt \('prompt'\) must be a string, got "
     "NoneType null"),
    (b'{"prompt": "a"}\n{"prompt": " "}\n', ".jsonl", "line 2: the prompt is empty"),
    (b"prompt\n", ".csv", "has no prompts"),
    (b"a,b\n", ".xlsx", "unsupported extension"),
    (b"id,prompt\nbad/id,a cat\n", ".csv", "not a valid id"),
])
def test_bad_user_files(tmp_path, content, suffix, message):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_prompt_set(str(path))
    assert str(path) in str(err.value) or "prompt set" in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="prompt file not found"):
        load_prompt_set(str(tmp_path / "nope.csv"))
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        load_prompt_set(str(folder))


def test_unknown_set_suggests_closest():
    with pytest.raises(UserError, match="did you mean 'parti'"):
        load_prompt_set("partii")


def test_selection_balanced_seeded_and_nested():
    ps = load_prompt_set("parti")
    two = ps.select(per_category=2, seed=3)
    assert set(two.categories().values()) == {2} and len(two) == 24
    assert [p.id for p in ps.select(per_category=2, seed=3)] == [p.id for p in two]  # seeded: repeatable
    assert [p.id for p in ps.select(per_category=2, seed=4)] != [p.id for p in two]
    five = ps.select(per_category=5, seed=3)
    assert {p.id for p in two} <= {p.id for p in five}  # a larger sample extends a smaller one
    order = {p.id: i for i, p in enumerate(ps)}
    assert [order[p.id] for p in five] == sorted(order[p.id] for p in five)  # original order kept
    sub = ps.select(categories=["Animals", "Arts"], limit=10)
    assert len(sub) == 10 and {p.category for p in sub} <= {"Animals", "Arts"}
    assert sub.selection == {"categories": ["Animals", "Arts"], "limit": 10}


def test_selection_errors():
    ps = load_prompt_set("geneval")
    with pytest.raises(UserError, match="no category 'colour'; did you mean 'colors'"):
        ps.select(categories=["colour"])
    with pytest.raises(UserError, match="--limit must be at least 1, got 0"):
        ps.select(limit=0)
    with pytest.raises(UserError, match="--per-category must be at least 1"):
        ps.select(per_category=0)


def test_promptset_validation_and_hash():
    a = PromptSet("x", [Prompt("a", "one"), Prompt("b", "two", "c")])
    b = PromptSet("x", [Prompt("a", "one"), Prompt("b", "two", "d")])
    assert a.content_hash() != b.content_hash()
    assert a.content_hash() == PromptSet("y", list(a.prompts)).content_hash()
    with pytest.raises(UserError, match="duplicate prompt id 'a'"):
        PromptSet("x", [Prompt("a", "one"), Prompt("a", "two")])
    with pytest.raises(UserError, match="is empty"):
        PromptSet("x", [Prompt("a", "  ")])
