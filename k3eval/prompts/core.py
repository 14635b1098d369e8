"""PromptSet: an ordered, validated list of prompts with stable ids, categories and tags."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from k3eval.errors import UserError


@dataclass(frozen=True)
class Prompt:
    """One prompt. `id` is stable across releases and safe as a folder name."""

    id: str
    text: str
    category: str = "uncategorized"
    tags: dict[str, str] = field(default_factory=dict)


_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def text_id(prefix: str, text: str) -> str:
    """A content id: `prefix-` + 10 hex digits of the prompt's sha1. The same text keeps its id whatever the order."""
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    return f"{prefix}-{digest}" if prefix else digest


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")
    return s or "x"


@dataclass
class PromptSet:
    """Prompts of one set. `name` is how it was asked for (e.g. 'parti' or 'file:prompts.csv')."""

    name: str
    prompts: list[Prompt]
    source: str = ""
    license: str = ""
    selection: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, p in enumerate(self.prompts):
            if not _ID_OK.match(p.id):
                raise UserError(f"prompt set '{self.name}': prompt id {p.id!r} (row {i + 1}) is not a valid id: use "
                                "letters, digits, '.', '_' or '-' (at most 128 characters, not starting with '.')")
            if not p.text.strip():
                raise UserError(f"prompt set '{self.name}': prompt '{p.id}' (row {i + 1}) is empty")
            if p.id in seen:
                raise UserError(f"prompt set '{self.name}': duplicate prompt id '{p.id}' (rows {seen[p.id] + 1} "
                                f"and {i + 1})")
            seen[p.id] = i

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]

    def by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}

    def categories(self) -> dict[str, int]:
        """Category -> number of prompts, in order of first appearance."""
        return dict(Counter(p.category for p in self.prompts))

    def content_hash(self) -> str:
        """sha256 over (id, text, category) of every prompt, in order: two runs compare only if hashes match."""
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(json.dumps([p.id, p.text, p.category], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def select(self, *, categories: Sequence[str] | None = None, per_category: int | None = None,
               limit: int | None = None, seed: int = 0) -> PromptSet:
        """Filter by category, take a seeded balanced sample of `per_category` from each, then the first `limit`.

        The balanced sample keeps the set's original order, so a larger `per_category` is a superset of a smaller
        one with the same seed.
        """
        prompts = list(self.prompts)
        selection = dict(self.selection)
        if categories:
            known = self.categories()
            for c in categories:
                if c not in known:
                    from k3eval.errors import did_you_mean

                    raise UserError(f"prompt set '{self.name}' has no category '{c}'{did_you_mean(c, known)}")
            wanted = set(categories)
            prompts = [p for p in prompts if p.category in wanted]
            selection["categories"] = list(categories)
        if per_category is not None:
            if per_category < 1:
                raise UserError(f"--per-category must be at least 1, got {per_category}")
            by_cat: dict[str, list[int]] = {}
            for i, p in enumerate(prompts):
                by_cat.setdefault(p.category, []).append(i)
            keep: set[int] = set()
            for cat, idx in by_cat.items():
                # The per-category RNG is seeded by (seed, category) so adding a category does not reshuffle others.
                rng = random.Random(f"{seed}:{cat}")
                order = list(idx)
                rng.shuffle(order)
                keep.update(order[:per_category])
            prompts = [p for i, p in enumerate(prompts) if i in keep]
            selection["per_category"] = per_category
            selection["selection_seed"] = seed
        if limit is not None:
            if limit < 1:
                raise UserError(f"--limit must be at least 1, got {limit}")
            prompts = prompts[:limit]
            selection["limit"] = limit
        if not prompts:
            raise UserError(f"prompt set '{self.name}': the selection {selection} leaves no prompts")
        return PromptSet(self.name, prompts, self.source, self.license, selection)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"prompt_id": [p.id for p in self.prompts], "prompt": [p.text for p in self.prompts],
                             "category": [p.category for p in self.prompts],
                             "tags": [json.dumps(p.tags, ensure_ascii=False) for p in self.prompts]})
