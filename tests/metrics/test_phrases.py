"""The rule-based stand-in for spaCy's en_core_web_sm (k3eval.metrics.phrases) on T2I-CompBench prompts, and the choice
between the two parsers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from k3eval.errors import UserError
from k3eval.metrics import phrases
from k3eval.metrics.phrases import RuleParser


@pytest.mark.parametrize(("prompt", "chunks"), [
    ("a red backpack and a blue train", ["a red backpack", "a blue train"]),
    ("a round pizza and a rectangular piece of lasagna", ["a round pizza", "a rectangular piece", "lasagna"]),
    ("a metallic fork and a wooden jewelry box", ["a metallic fork", "a wooden jewelry box"]),
    ("The fresh omelet cooked the fluffy eggs and the crisp vegetables.",
     ["The fresh omelet", "the fluffy eggs", "the crisp vegetables"]),
    ("The soft, fluffy texture of the cotton candy melted in the mouth",
     ["The soft, fluffy texture", "the cotton candy", "the mouth"]),
    ("two dogs and three cats", ["two dogs", "three cats"]),
])
def test_rule_based_noun_chunks(prompt, chunks):
    assert RuleParser().noun_chunks(prompt) == chunks


def test_rule_based_tokens_and_parts_of_speech():
    t = RuleParser().tokens("The brown dog was lying on the green mat.")
    assert [x.text for x in t] == ["The", "brown", "dog", "was", "lying", "on", "the", "green", "mat", "."]
    assert [x.pos for x in t] == ["DET", "ADJ", "NOUN", "VERB", "VERB", "ADP", "DET", "ADJ", "NOUN", "PUNCT"]
    assert [x.space for x in t][-2:] == [False, False]  # no space between "mat" and "."
    assert phrases.span_text(t[5:9]) == "on the green mat"


def test_parser_choice_without_spacy(monkeypatch):
    monkeypatch.setattr(phrases, "load_spacy", lambda: None)
    used, spacy = phrases.get_parser("auto")
    assert isinstance(used, RuleParser) and spacy is None
    with pytest.raises(UserError, match="en_core_web_sm is not installed"):
        phrases.get_parser("spacy")
    with pytest.raises(UserError, match="unknown value 'nltk'"):
        phrases.get_parser("nltk")


def fake_spacy(overrides: dict[str, list[str]]):
    """A stand-in for spacy.load('en_core_web_sm'): the rule parser's tokens, with the noun chunks of some prompts
    replaced (so the two parsers disagree on exactly those)."""
    rules = RuleParser()

    def nlp(text: str):
        tokens = [SimpleNamespace(text=t.text, pos_=t.pos, whitespace_=" " if t.space else "")
                  for t in rules.tokens(text)]
        chunks = [SimpleNamespace(text=c) for c in overrides.get(text, rules.noun_chunks(text))]
        return SimpleNamespace(__iter__=None, noun_chunks=chunks, tokens=tokens)

    class Doc(list):
        pass

    def load():
        def parse(text):
            d = nlp(text)
            doc = Doc(d.tokens)
            doc.noun_chunks = d.noun_chunks
            return doc

        parse.meta = {"name": "core_web_sm", "version": "3.8.0"}
        return parse

    return load


def test_spacy_is_preferred_when_installed(monkeypatch):
    monkeypatch.setattr(phrases, "load_spacy", fake_spacy({}))
    used, spacy = phrases.get_parser("auto")
    assert used is spacy and used.name == "spacy core_web_sm 3.8.0"
    assert used.noun_chunks("a red car and a blue cup") == ["a red car", "a blue cup"]
    assert isinstance(phrases.get_parser("rules")[0], RuleParser)


@pytest.mark.parametrize(("prompt", "chunks"), [
    ("a red horse and a brown orange", ["a red horse", "a brown orange"]),   # a colour word as the noun
    ("a short sapling and a tall tree", ["a short sapling", "a tall tree"]),  # -ing after an adjective: a noun
    ("a balloon hidden by a candle", ["a balloon", "a candle"]),
    ("The wooden spoon and metallic ladle serve the fluffy soup", ["The wooden spoon", "metallic ladle",
                                                                   "the fluffy soup"]),
    ("A man in a black jacket standing in a kitchen next to a gray dog",
     ["A man", "a black jacket", "a kitchen", "a gray dog"]),
])
def test_rule_based_noun_chunks_edge_cases(prompt, chunks):
    assert RuleParser().noun_chunks(prompt) == chunks


def test_rule_based_chunk_counts_on_the_attribute_prompts():
    """Most attribute prompts are "a(n) ADJ NOUN and a(n) ADJ NOUN": two chunks each."""
    from k3eval.metrics.t2i_compbench import shipped_prompts

    counts = [len(RuleParser().noun_chunks(t)) for t, c in shipped_prompts().values() if c in ("color", "shape",
                                                                                                 "texture")]
    assert counts.count(2) / len(counts) > 0.75 and min(counts) >= 1
