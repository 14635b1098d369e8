"""Benchmark stage `study`: create the side-by-side study described by the benchmark's `study:` section.

```yaml
study:
  name: smoke-demo           # default: the benchmark name
  annotators: 3              # a number or a list of names
  overlap: 2
  gold: 0.05
  repeats: 0.05
  questions: [alignment, quality]
  reference: tiny-kandinsky3 # optional: compare every run against this one
                             # (the benchmark's top-level `comparisons:` list, if any, gives the pairs instead)
  seed: 0                    # default: the benchmark seed
  db: sqlite:///runs/smoke/votes.db   # default: $K3EVAL_DB or sqlite:///k3eval.db
  links_file: runs/smoke/study_links.txt   # optional; holds the secret links (for demos); written 0600
  base_url: http://localhost:8501
  unpaired: false            # true: accept runs made with other seeds or sample counts (recorded in the study)
```
A study that already exists is kept (its links were shown when it was made); `--force` deletes and recreates it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from k3eval.config import Strict, validate_section


class StudySection(Strict):
    name: str | None = None
    annotators: int | list[str] = 3
    overlap: int = Field(default=2, ge=1)
    gold: float = Field(default=0.05, ge=0.0, le=0.5)
    repeats: float = Field(default=0.05, ge=0.0, le=0.5)
    questions: list[str] = Field(default_factory=lambda: ["alignment", "quality"])
    reference: str | None = None
    seed: int | None = None
    db: str | None = None
    links_file: str | None = None
    base_url: str = "http://localhost:8501"
    unpaired: bool = False
    #: read by the report stage (simulated annotators for demos; `k3eval.report.stage.SimulateSection`)
    simulate: dict[str, Any] | None = None

    @field_validator("annotators")
    @classmethod
    def _annotators_ok(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1")
        return v


def rooted_db_url(db: str, root: Path) -> str:
    """A relative SQLite path in the YAML is relative to the folder the benchmark runs in (like runs/)."""
    prefix = "sqlite:///"
    if db.startswith(prefix) and not db.startswith(prefix + "/") and db[len(prefix):] not in ("", ":memory:"):
        path = root / db[len(prefix):]
        return prefix + str(path if root != Path.cwd() else Path(db[len(prefix):]))
    return db


def run_stage(ctx) -> None:
    """Create the study (or keep an existing one) and put {name, db_url, links_file} in ctx.outputs['study']."""
    from k3eval.sbs import StudyExists, create_study, default_db_url, delete_study, study_info
    from k3eval.sbs.store import StudyNotFound, normalize_url

    if ctx.spec.study is None:
        print("[study] no study: section in the benchmark; skipped")
        return
    sec: StudySection = validate_section(str(ctx.source), "study", StudySection, ctx.spec.study)
    name = sec.name or ctx.spec.name
    db = rooted_db_url(sec.db, ctx.root) if sec.db else default_db_url()
    links = Path(sec.links_file) if sec.links_file else None
    if links is not None and not links.is_absolute():
        links = ctx.root / links
    ctx.outputs["study"] = {"name": name, "db_url": normalize_url(db), "links_file": str(links) if links else None}
    serve = f"k3eval sbs serve {shlex.quote(name)}" + (f" --db {shlex.quote(db)}" if sec.db else "")
    if ctx.force:
        try:
            delete_study(name, db)
        except StudyNotFound:
            pass
        except Exception as e:  # a database that does not exist yet has nothing to delete
            from k3eval.sbs import StoreUnavailable

            if not isinstance(e, StoreUnavailable):
                raise
    pairs = [(c.a, c.b) for c in ctx.spec.comparisons] if ctx.spec.comparisons else None
    try:
        created = create_study(name, ctx.run_dirs(), sec.annotators, sec.overlap, gold=sec.gold,
                               questions=tuple(sec.questions), reference=sec.reference,
                               seed=ctx.spec.seed if sec.seed is None else sec.seed, db_url=db, repeats=sec.repeats,
                               base_url=sec.base_url, pairs=pairs, unpaired=sec.unpaired)
    except StudyExists:
        info = study_info(name, db)
        where = f"; links in {links}" if links and links.exists() else ""
        print(f"[study] study {name!r} already exists ({info['n_votes']} votes so far){where}; open the app with: "
              f"{serve}   (--force recreates it)")
        return
    text = "".join(f"{n}\t{link}\n" for n, link in created.links.items()) + f"admin\t{created.admin_link}\n"
    if links is not None:
        from k3eval.utils import atomic_write_text

        atomic_write_text(links, text, private=True)  # the links carry secret tokens: 0600 whatever the umask
    print(f"[study] study {name!r}: {created.n_items} items ({created.n_gold} gold) + {created.n_repeats} repeats, "
          f"{len(created.tokens)} annotators x overlap {sec.overlap}, db {db}")
    print(f"[study] open the annotation app with: {serve}")
    shown = list(created.links.items())[:1] + [("admin", created.admin_link)]
    for n, link in shown:
        print(f"[study]   {n}: {link}")
    print(f"[study]   all links: {links}" if links else "[study]   (other annotators' links: rerun with a "
          "links_file, or create the study with `k3eval sbs create`)")
