"""Building blocks of the report: tables (raw frame + display columns), figures, examples, sections, footnotes and
the cell formatters. Every section module builds these; `render.py` turns them into HTML and Markdown.

A table keeps its raw values in `frame` (written to tables/<name>.csv); its display `columns` may show several raw
columns in one cell (a value with its interval), so a table fits a 1440 px window while the CSV keeps every number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

SECTIONS = [("summary", "Summary"), ("setup", "1. Setup"), ("metrics", "2. Automatic metrics"),
            ("speed", "3. Speed and cost"), ("preference", "4. Human preference"),
            ("metric_people", "5. Automatic scores vs people"), ("examples", "6. Examples"),
            ("limitations", "7. Limitations")]
TITLES = dict(SECTIONS)


def is_missing(v: Any) -> bool:
    try:
        return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def fmt_value(v: Any) -> str:
    """Default display: integers as is, floats with 4 significant digits, missing as an en dash."""
    if is_missing(v):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def pct(v: Any) -> str:
    return "–" if is_missing(v) else f"{100 * float(v):.1f}%"


def pct0(v: Any) -> str:
    return "–" if is_missing(v) else f"{100 * float(v):.0f}%"


def pval(v: Any) -> str:
    return "–" if is_missing(v) else f"{float(v):.2g}"


def fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: "–" if is_missing(v) else f"{float(v):.{digits}f}"


def interval(digits: int = 2, scale: float = 1.0) -> Callable[[Any, Any, Any], str]:
    """'0.59 [0.53, 0.65]' from (value, low, high); the value alone without an interval."""
    def show(v: Any, lo: Any, hi: Any) -> str:
        if is_missing(v):
            return "–"
        text = f"{scale * float(v):.{digits}f}"
        if is_missing(lo) or is_missing(hi):
            return text
        return f"{text} [{scale * float(lo):.{digits}f}, {scale * float(hi):.{digits}f}]"
    return show


def value_interval(v: Any, lo: Any, hi: Any) -> str:
    """A stored value with its stored interval at 4 significant digits: '0.2465 [0.2365, 0.2565]'."""
    if is_missing(v):
        return "–"
    return fmt_value(v) + ("" if is_missing(lo) or is_missing(hi) else f" [{fmt_value(lo)}, {fmt_value(hi)}]")


def shares(*values: Any) -> str:
    """'45 / 20 / 3 / 32 %' from shares in [0, 1] (win / equal / both bad / loss)."""
    return " / ".join(f"{100 * float(x):.0f}" for x in values) + " %"


@dataclass
class Column:
    """A display column: `header`, the raw frame columns it shows (`keys`) and how (`fmt` takes their values)."""

    header: str
    keys: tuple[str, ...]
    fmt: Callable[..., str] | None = None
    help: str = ""

    def text(self, values: Sequence[Any]) -> str:
        if self.fmt is not None:
            return self.fmt(*values)
        return fmt_value(values[0])


class Footnotes:
    """Numbered notes of one table: the same text gets the same number, and is printed once below the table."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if not text:
            return ""
        if text not in self.texts:
            self.texts.append(text)
        return f"(note {self.texts.index(text) + 1})"


@dataclass
class Table:
    """`frame` holds raw values (written to tables/<name>.csv); `columns` say what the page shows (default: every
    frame column, formatted by `fmt` or `fmt_value`). `footnotes` are printed once below the table."""

    name: str
    title: str
    frame: pd.DataFrame
    fmt: dict[str, Callable[[Any], str]] = field(default_factory=dict)
    note: str = ""
    collapsed: bool = False  # shown inside <details> in HTML (long or secondary tables)
    columns: list[Column] | None = None
    footnotes: list[str] = field(default_factory=list)

    def display(self) -> list[Column]:
        if self.columns is not None:
            return self.columns
        return [Column(str(c), (c,), self.fmt.get(c)) for c in self.frame.columns]

    def rows(self) -> list[list[tuple[Column, list[Any], str]]]:
        """Per row, per display column: (column, raw values, displayed text)."""
        cols = self.display()
        out = []
        for _, r in self.frame.iterrows():
            cells = []
            for c in cols:
                vals = [r[k] for k in c.keys]
                cells.append((c, vals, c.text(vals)))
            out.append(cells)
        return out


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


@dataclass
class Example:
    kind: str
    comparison: str
    prompt: str
    category: str
    model_a: str
    model_b: str
    thumb_a: bytes | None
    thumb_b: bytes | None
    votes: str
    file_a: str = ""
    file_b: str = ""


@dataclass
class Section:
    id: str
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    def named(cls, sid: str) -> Section:
        return cls(sid, TITLES[sid])

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def warn(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("list", lines))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))

    def figure(self, f: Figure) -> None:
        self.blocks.append(("figure", f))

    def examples(self, ex: list[Example]) -> None:
        self.blocks.append(("examples", ex))


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))[:40]


__all__ = ["SECTIONS", "TITLES", "Column", "Example", "Figure", "Footnotes", "Section", "Table", "fixed", "fmt_value",
           "interval", "is_missing", "pct", "pct0", "pval", "shares", "slug",
           "value_interval"]
