"""Tokens, parts of speech and noun chunks of a prompt, for T2I-CompBench's rules (`compbench_rules`).

The official scripts (Karine-Huang/T2I-CompBench @ 1b709499) parse prompts with spaCy's `en_core_web_sm`: noun chunks
for the BLIP-VQA questions (`BLIPvqa_eval/BLIP_vqa.py`), the first and last NOUN for the 2D/3D spatial objects
(`UniDet_eval/2D_spatial_eval.py`, `3D_spatial_eval.py`), NOUN/PROPN tags around prepositions for complex prompts,
ADJ tags for the CLIP text of complex prompts (`CLIPScore_eval/CLIP_similarity.py`) and plain tokens for numeracy
(`UniDet_eval/numeracy_eval.py`). That model is installed separately from spaCy (not from PyPI), so two parsers give
the same interface:

- `SpacyParser`: spaCy's `en_core_web_sm` when both are installed (the official rule);
- `RuleParser`: a documented rule-based stand-in with no model. Tokens: runs of letters/digits, every other
  non-space character alone (as spaCy splits these prompts). Tags, first match wins: punctuation, determiners, number
  words, coordinating conjunctions, prepositions, listed pronouns/adverbs/subordinators, auxiliaries and listed verbs
  (with their -s/-es forms), listed adjectives (colours, shapes, materials, textures, sizes, common descriptive
  words), words ending in -ing/-ed (verbs, except right after a determiner, number or adjective, where they are
  nouns); every other word is a NOUN. A noun chunk is a maximal run of determiners, numbers, adjectives (commas
  between adjectives included) and nouns that ends at its last noun (a run of adjectives after a determiner without
  a noun takes its last word as the noun: "a brown orange"); a determiner or number after a noun starts a new
  chunk.

T2I-CompBench's attribute prompts are mostly "a(n) ADJ NOUN and a(n) ADJ NOUN", where both give the same chunks;
when spaCy is available the score records how many prompts the two parse differently (`compare_parsers`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

DETERMINERS = frozenset("a an the this that these those some each every its his her their my your our another any no "
                        "several many few".split())
NUMBERS = frozenset("one two three four five six seven eight nine ten eleven twelve".split())
CONJUNCTIONS = frozenset("and or but nor".split())
PREPOSITIONS = frozenset(
    "of on in at with by from to into onto under over near beside besides behind above below across against along "
    "among around before after between beyond during for inside outside through toward towards upon within without "
    "underneath beneath atop past off like amid via".split())
_VERB_STEMS = (
    "sit stand lie lay hang rest hold serve mix write read eat drink play run walk fly swim look watch make take give "
    "cover contrast support provide create melt blow pour bloom graze perch zoom drip simmer roll cook drape snake "
    "sing shine grow rise sparkle control flow struggle carry wear ride lean float glow cast fill reflect surround "
    "decorate adorn chase jump climb sleep dance paint draw open close wait hide stay keep see show").split()
#: auxiliaries, irregular forms and listed verbs with their -s and -es forms (-ed and -ing words are verbs by suffix)
VERBS = frozenset(
    "is are was were be been being am has have had does do did can could will would should may might must "
    "lay lies sat stood hung rose shone grew ran flew swam held ate drank made gave took saw hidden seen given "
    "taken worn drawn thrown grown shown written eaten fallen sung".split()
    + _VERB_STEMS + [v + "s" for v in _VERB_STEMS] + [v + "es" for v in _VERB_STEMS])
#: words that end a noun chunk and are neither verbs nor prepositions (pronouns, adverbs, subordinators)
OTHERS = frozenset(
    "which who whom whose while when where whereas because although though if as than so then there here he she it "
    "they we you i him them us me up down nearby next together very too also not only most more just still".split())
ADJECTIVES = frozenset(
    # colours
    "red orange yellow green blue purple pink brown black white gray grey silver gold golden beige tan cream teal "
    "turquoise violet maroon navy crimson ivory bronze copper colorful colourful "
    # shapes
    "round square rectangular oval circular triangular cubic spherical cylindrical conical pyramidal pentagonal "
    "hexagonal octagonal oblong teardrop crescent diamond heart-shaped star-shaped curved straight flat angular "
    # materials and textures
    "metallic wooden plastic glass leather fabric rubber fluffy furry soft hard smooth rough shiny glossy matte silky "
    "woolen woollen wool cotton velvet ceramic stone marble concrete paper stainless steel iron brick crystal "
    "striped spotted checkered plaid polka-dot dotted transparent translucent fuzzy sticky crisp crunchy creamy "
    # sizes and other descriptive words
    "big small large tiny huge giant little tall short long wide narrow thick thin heavy light old new young ancient "
    "modern fresh ripe juicy sweet sour spicy hot cold cool warm wet dry clean dirty bright dark pale deep shallow "
    "empty full open closed broken rusty sharp dull gentle calm quiet loud cozy sturdy delicate tender fragrant "
    "grand beautiful pretty ugly happy sad natural intricate gnarled twisted rich chilly sugary distant glowing "
    "blooming thorny refreshing vibrant elegant vintage antique shimmering sparkling bare cute".split())
_TOKEN = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
RULES_NAME = "rule-based v1"


@dataclass(frozen=True)
class Token:
    """One token: its text, a coarse part of speech (spaCy's names: NOUN, PROPN, ADJ, DET, NUM, ADP, CCONJ, AUX,
    VERB, PUNCT) and whether a space follows it in the prompt."""

    text: str
    pos: str
    space: bool = True


def span_text(tokens: list[Token]) -> str:
    """The text of consecutive tokens as the prompt spells it (spaCy's `Span.text`)."""
    return "".join(t.text + (" " if t.space and i < len(tokens) - 1 else "") for i, t in enumerate(tokens))


class RuleParser:
    """The rule-based stand-in for spaCy (see the module docstring); deterministic, no model."""

    name = RULES_NAME

    @staticmethod
    def _pos(word: str) -> str:
        w = word.lower()
        if not w[0].isalnum():
            return "PUNCT"
        if w in DETERMINERS:
            return "DET"
        if w in NUMBERS or w.isdigit():
            return "NUM"
        if w in CONJUNCTIONS:
            return "CCONJ"
        if w in PREPOSITIONS:
            return "ADP"
        if w in OTHERS:
            return "ADV"
        if w in VERBS:
            return "VERB"
        if w in ADJECTIVES:
            return "ADJ"
        if len(w) > 4 and (w.endswith("ing") or w.endswith("ed")):
            return "VERB"
        return "NOUN"

    def tokens(self, text: str) -> list[Token]:
        out: list[Token] = []
        for m in _TOKEN.finditer(text):
            space = m.end() < len(text) and text[m.end()].isspace()
            pos = self._pos(m.group())
            # an -ing/-ed word right after a determiner, number or adjective names a thing ("a short sapling", "the
            # circular steering wheel"), it is not the verb
            if pos == "VERB" and m.group().lower() not in VERBS and out and out[-1].pos in ("DET", "NUM", "ADJ"):
                pos = "NOUN"
            out.append(Token(m.group(), pos, space))
        return out

    def noun_chunks(self, text: str) -> list[str]:
        toks = self.tokens(text)
        chunks: list[list[Token]] = []
        cur: list[Token] = []

        def close():
            if cur and not any(c.pos == "NOUN" for c in cur) and cur[-1].pos == "ADJ" and len(cur) > 1:
                cur[-1] = Token(cur[-1].text, "NOUN", cur[-1].space)  # "a brown orange": the last word is the noun
            while cur and cur[-1].pos != "NOUN":
                cur.pop()
            if cur:
                chunks.append(list(cur))
            cur.clear()

        for i, t in enumerate(toks):
            if t.pos in ("DET", "NUM") and any(c.pos == "NOUN" for c in cur):
                close()
            between_adjectives = (t.text == "," and cur and cur[-1].pos == "ADJ" and i + 1 < len(toks)
                                  and toks[i + 1].pos == "ADJ")
            if t.pos in ("DET", "NUM", "ADJ", "NOUN") or between_adjectives:
                cur.append(t)
            else:
                close()
        close()
        return [span_text(c) for c in chunks]


class SpacyParser:
    """spaCy with `en_core_web_sm` (the official parser)."""

    def __init__(self, nlp):
        self._nlp = nlp
        meta = getattr(nlp, "meta", {}) or {}
        self.name = f"spacy {meta.get('name', 'core_web_sm')} {meta.get('version', '')}".strip()

    @cache  # noqa: B019 - one parser lives for the whole process; prompts repeat across images
    def _doc(self, text: str):
        return self._nlp(text)

    def tokens(self, text: str) -> list[Token]:
        return [Token(t.text, t.pos_, bool(t.whitespace_)) for t in self._doc(text)]

    def noun_chunks(self, text: str) -> list[str]:
        return [c.text for c in self._doc(text).noun_chunks]


def load_spacy():
    """spaCy's `en_core_web_sm` pipeline, or None when spaCy or the model is not installed."""
    try:
        import spacy

        return spacy.load("en_core_web_sm")
    except (ImportError, OSError):  # OSError: spaCy installed, model not
        return None


PARSERS = ("auto", "spacy", "rules")


def get_parser(choice: str = "auto") -> tuple[RuleParser | SpacyParser, SpacyParser | None]:
    """(the parser to use, the spaCy parser when available). `auto`: spaCy when installed with its model, else the
    rule-based parser; `spacy`: spaCy or an error; `rules`: always the rule-based parser."""
    from k3eval.errors import UserError

    if choice not in PARSERS:
        raise UserError(f"--set t2i_compbench.parser: unknown value {choice!r}; accepted: {', '.join(PARSERS)}")
    nlp = load_spacy()
    spacy_parser = SpacyParser(nlp) if nlp is not None else None
    if choice == "spacy" and spacy_parser is None:
        raise UserError("--set t2i_compbench.parser=spacy: spaCy's en_core_web_sm is not installed (pip install spacy; "
                        "python -m spacy download en_core_web_sm); use parser=auto for the rule-based fallback")
    if choice == "rules" or spacy_parser is None:
        return RuleParser(), spacy_parser
    return spacy_parser, spacy_parser
