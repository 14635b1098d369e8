"""Prompt beautification on a tiny offline causal LM: chat template with the report's system message, greedy
rewrites, the run's cache and manifest column, and the offline error."""

from __future__ import annotations

import json

import pytest

from k3eval.errors import UserError
from k3eval.generate import generate_run
from k3eval.generators.beautify import SYSTEM_MESSAGE, TINY_MODEL, load_beautifier
from k3eval.generators.registry import get_entry
from k3eval.prompts import load_prompt_set
from k3eval.runs import RunFolder


@pytest.fixture(scope="module")
def kandinsky3_beautifier():
    return load_beautifier(TINY_MODEL)


def test_chat_template_carries_the_report_system_message(kandinsky3_beautifier):
    b = kandinsky3_beautifier
    assert b.template == "tokenizer chat template"
    messages = [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": "a red fox"}]
    rendered = b.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert SYSTEM_MESSAGE in rendered and rendered.index(SYSTEM_MESSAGE) < rendered.index("a red fox")
    # what reaches the model is that text (the tiny tokenizer lowercases and decodes subwords spaced apart)
    text = b.tokenizer.decode(b._inputs("a red fox")["input_ids"][0]).replace(" ", "")
    assert "youareapromptengineer" in text and text.index("engineer") < text.index("aredfox")
    assert b.describe()["system_message"] == SYSTEM_MESSAGE and b.describe()["model"] == TINY_MODEL


def test_rewrites_are_greedy_and_independent(kandinsky3_beautifier):
    b = kandinsky3_beautifier
    one = b.rewrite(["a red fox", "a blue car"])
    assert len(one) == 2 and all(isinstance(t, str) and t for t in one)
    assert b.rewrite(["a blue car"]) == [one[1]]  # same answer alone: no padding, no sampling
    assert one[0] != "a red fox"  # the answer replaces the prompt


def test_generate_with_beautify_records_the_rewrite(tmp_path, kandinsky3_beautifier):
    prompts = load_prompt_set("parti").select(limit=2)
    gen = get_entry("tiny-kandinsky3-flash").create({"embedding_cache": "none"})
    generate_run(gen, prompts, tmp_path / "run", beautifier=kandinsky3_beautifier, progress=False)
    df = RunFolder(tmp_path / "run").read_manifest()
    rewrites = json.loads((tmp_path / "run" / "beautified.json").read_text())
    assert df["prompt"].tolist() == [p.text for p in prompts]  # the original is kept
    assert df["beautified_prompt"].tolist() == [rewrites[p.text] for p in prompts]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["beautify"]["model"] == TINY_MODEL and info["identity"]["beautify"] == TINY_MODEL


def test_missing_model_offline_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"--beautify: cannot load the language model .*--beautify /path/to/model"):
        load_beautifier(str(tmp_path / "no-such-model"))


def test_a_hub_model_takes_a_revision_and_records_where_it_came_from(kandinsky3_beautifier, fake_hub):
    from k3eval.generators.beautify import split_revision

    assert split_revision("Intel/neural-chat-7b-v3-1@4d2b5c1") == ("Intel/neural-chat-7b-v3-1", "4d2b5c1")
    assert split_revision("Intel/neural-chat-7b-v3-1") == ("Intel/neural-chat-7b-v3-1", None)
    source = kandinsky3_beautifier.describe()["source"]
    assert source["local"] and source["role"] == "beautifier"
    with pytest.raises(UserError, match=r"hf download Intel/neural-chat-7b-v3-1 --revision 4d2b5c1"):
        load_beautifier("Intel/neural-chat-7b-v3-1@4d2b5c1")
