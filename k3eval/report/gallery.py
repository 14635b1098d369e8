"""A self-contained HTML gallery: for each prompt, one image per run side by side (thumbnails embedded)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from k3eval.runs import RunFolder, load_run
from k3eval.utils import atomic_write_text


def thumbnail_data_uri(path: Path, size: int = 256) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def build_gallery(run_dirs: dict[str, Path], out_dir: Path, title: str = "k3eval gallery",
                  max_prompts: int = 200) -> Path:
    """Write `out_dir/index.html`; returns its path."""
    runs = {name: load_run(p) for name, p in run_dirs.items()}
    manifests = {name: r.read_manifest() for name, r in runs.items()}
    first = next(iter(manifests.values()))
    order = list(dict.fromkeys(zip(first["prompt_id"], first["category"], first["prompt"])))[:max_prompts]
    rows_html = []
    for pid, cat, text in order:
        cells = []
        for name, df in manifests.items():
            hit = df[(df["prompt_id"] == pid) & (df["sample"] == 0)]
            if len(hit) and hit.iloc[0]["status"] != "nan":
                uri = thumbnail_data_uri(RunFolder.image_path(runs[name], hit.iloc[0].to_dict()))
                cells.append(f'<td><img src="{uri}" alt="" width="160"><br><small>{html.escape(name)} '
                             f'({html.escape(str(hit.iloc[0]["status"]))})</small></td>')
            else:
                cells.append(f"<td><small>{html.escape(name)}: no image</small></td>")
        rows_html.append(f"<tr><td class=p><b>{html.escape(cat)}</b><br>{html.escape(text)}</td>{''.join(cells)}</tr>")
    doc = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}td{{vertical-align:top;padding:6px}}
td.p{{max-width:28em}}table{{border-collapse:collapse}}tr{{border-bottom:1px solid #ddd}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(order)} prompts, runs: {html.escape(", ".join(runs))}</p>
<table>{"".join(rows_html)}</table></body></html>"""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    atomic_write_text(index, doc)
    return index
