"""Rendering sections to one self-contained HTML file and to Markdown, and writing the report's files.

The HTML has inline CSS, base64 images, no script and nothing fetched. Every table is `<table id="t-<name>">`; each
cell lists the raw CSV columns it shows in `data-k` and their raw values in `data-v` (both JSON), so a reader or a
test can match any cell to tables/<name>.csv. Tables wrap rather than scroll: every table fits a 1440 px window.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

from k3eval.report.blocks import Example, Section, Table, is_missing

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111;background:#fff;
line-height:1.45}
header,main{max-width:1360px;margin:0 auto;padding:0 1.2em;box-sizing:border-box}
header{padding-top:1.2em}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid #222;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}
nav ul{display:flex;flex-wrap:wrap;gap:.3em 1.4em;margin:.4em 0 1em;list-style:none;padding-left:0}
.banner{border:3px solid #000;background:#eee;padding:.6em 1em;font-weight:600;margin:.8em 0}
.note{border-left:4px solid #666;background:#f4f4f4;padding:.4em .8em;margin:.6em 0}
.warn{border-left:4px solid #b00;background:#fbeeee;padding:.4em .8em;margin:.6em 0;font-weight:600}
.tw{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0 .3em;max-width:100%}
th,td{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#e8e8e8}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cap{font-weight:600;font-size:.82em;margin:1em 0 0}
ol.fn{font-size:.8em;color:#333;margin:.2em 0 1em;padding-left:2.2em}
details{margin:.4em 0 1em}summary{cursor:pointer}
figure{display:inline-block;vertical-align:top;margin:1em 1.2em 1em 0;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#333}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:1em}
.ex{border:1px solid #bbb;padding:.5em}.ex .pair{display:flex;gap:.5em}.ex .pair div{text-align:center;flex:1}
.ex img{width:100%;max-width:192px;height:auto}.ex .kind{font-weight:600}.ex .prompt{font-style:italic}
small{color:#444}
"""


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def raw(v: Any) -> str:
    """A raw value as the CSV writes it (floats as repr, so nothing is lost)."""
    if is_missing(v):
        return ""
    if isinstance(v, (np.bool_, bool)):
        return str(bool(v))
    if isinstance(v, np.integer):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def _attr(values: list[str]) -> str:
    return html.escape(json.dumps(values, ensure_ascii=False), quote=True)


def html_table(t: Table) -> str:
    cols = t.display()
    head = "".join((f'<th title="{html.escape(c.help, quote=True)}">' if c.help else "<th>")
                   + f"{html.escape(c.header)}</th>" for c in cols)
    body = []
    for row in t.rows():
        cells = []
        for col, vals, text in row:
            # numbers (and intervals, whose cells hold numbers and an empty note) align right and never wrap
            cls = ' class="num"' if all(_is_num(v) or is_missing(v) or v == "" for v in vals) and \
                any(_is_num(v) for v in vals) else ""
            cells.append(f'<td{cls} data-k="{_attr([str(k) for k in col.keys])}" '
                         f'data-v="{_attr([raw(v) for v in vals])}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    # the title sits above the table, not in a <caption>: a caption is as narrow as its table and wraps
    table = (f'<p class="cap">{html.escape(t.title)}</p><div class="tw"><table id="t-{t.name}" '
             f'data-csv="tables/{t.name}.csv" aria-label="{html.escape(t.title, quote=True)}">'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    notes = ""
    if t.footnotes:
        notes = '<ol class="fn">' + "".join(f"<li>{html.escape(n)}</li>" for n in t.footnotes) + "</ol>"
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    if t.collapsed:
        return (f"<details><summary>{html.escape(t.title)} ({len(t.frame)} rows; also tables/{t.name}.csv)</summary>"
                f"{table}{notes}</details>{note}")
    return table + notes + note


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    cols = t.display()
    lines = [f"**{t.title}** (`tables/{t.name}.csv`)", "",
             "| " + " | ".join(_md_cell(c.header) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in t.rows():
        lines.append("| " + " | ".join(_md_cell(text) for _, _, text in row) + " |")
    if t.footnotes:
        lines += [""] + [f"{k}. {n}" for k, n in enumerate(t.footnotes, 1)]
    if t.note:
        lines += ["", f"> {t.note}"]
    return "\n".join(lines)


def _b64(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _html_examples(examples: list[Example]) -> str:
    parts = ['<div class="examples">']
    for e in examples:
        imgs = []
        for model, data in ((e.model_a, e.thumb_a), (e.model_b, e.thumb_b)):
            img = (f'<img src="{_b64(data, "image/jpeg")}" alt="{html.escape(model, quote=True)} image">'
                   if data else "<p>(image not found)</p>")
            imgs.append(f"<div>{img}<br><small>{html.escape(model)}</small></div>")
        cat = f" · {html.escape(e.category)}" if e.category else ""
        parts.append(f'<div class="ex"><div class="kind">{html.escape(e.kind)}{cat}</div>'
                     f'<div class="prompt">“{html.escape(e.prompt)}”</div><div class="pair">'
                     f"{''.join(imgs)}</div><small>votes: {html.escape(e.votes)}</small></div>")
    parts.append("</div>")
    return "".join(parts)


def render_html(title: str, subtitle: str, banner: str | None, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
             f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append(f'<p class="banner" id="simulated-banner">{html.escape(banner)}</p>')
    parts.append(f"<p><small>{html.escape(subtitle)}</small></p><nav><ul>")
    parts += [f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections]
    parts.append("</ul></nav></header><main>")
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        for kind, b in s.blocks:
            if kind == "p":
                parts.append(f"<p>{html.escape(b)}</p>")
            elif kind in ("note", "warn"):
                parts.append(f'<p class="{kind}">{html.escape(b)}</p>')
            elif kind == "h3":
                parts.append(f"<h3>{html.escape(b)}</h3>")
            elif kind == "list":
                parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                parts.append(html_table(b))
            elif kind == "figure":
                parts.append(f'<figure id="f-{b.name}"><img src="{_b64(b.png, "image/png")}" '
                             f'alt="{html.escape(b.title, quote=True)}"><figcaption>{html.escape(b.title)} '
                             f"(figures/{b.name}.png)</figcaption></figure>")
            elif kind == "examples":
                parts.append(_html_examples(b))
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "".join(parts)


def render_markdown(title: str, subtitle: str, banner: str | None, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    if banner:
        out += [f"> **{banner}**", ""]
    out += [f"_{subtitle}_", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for kind, b in s.blocks:
            if kind == "p":
                out += [b, ""]
            elif kind == "note":
                out += [f"> {b}", ""]
            elif kind == "warn":
                out += [f"> **{b}**", ""]
            elif kind == "h3":
                out += [f"### {b}", ""]
            elif kind == "list":
                out += [f"- {x}" for x in b] + [""]
            elif kind == "table":
                out += [md_table(b), ""]
            elif kind == "figure":
                out += [f"![{b.title}](figures/{b.name}.png)", ""]
            elif kind == "examples":
                for e in b:
                    cat = f" ({e.category})" if e.category else ""
                    imgs = " ".join(f"![{m}]({f})" for m, f in ((e.model_a, e.file_a), (e.model_b, e.file_b)) if f)
                    out += [f"- **{e.kind}**{cat}: “{e.prompt}” — {e.model_a} vs {e.model_b}; votes: {e.votes}",
                            *([f"  {imgs}"] if imgs else [])]
                out.append("")
    return "\n".join(out).rstrip() + "\n"


__all__ = ["CSS", "html_table", "md_table", "raw", "render_html", "render_markdown"]
