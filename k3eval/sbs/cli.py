"""`k3eval sbs ...`: create a study, show its status, export its votes.

Other modules add their own `sbs` sub-commands through `register(sbs_subparsers)`: `k3eval.sbs.cli_app` (serve)
and `k3eval.sbs.cli_stats` (stats, simulate), each loaded only when it exists. Nothing heavy is imported until a
handler runs, so `k3eval --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from k3eval.cli import positive_int
from k3eval.errors import UserError

EXTRA_MODULES = ["k3eval.sbs.cli_app", "k3eval.sbs.cli_stats"]


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.05, got {text!r}") from None
    if not 0.0 <= v <= 0.5:
        raise argparse.ArgumentTypeError(f"must be between 0 and 0.5, got {v}")
    return v


def parse_runs(values: list[str]) -> dict[str, Path]:
    """RUN_DIR or NAME=RUN_DIR; a bare folder is named by its folder name."""
    runs: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = Path(v).name, v
        if name in runs:
            raise UserError(f"--runs: two runs are named {name!r}; name them explicitly as NAME=RUN_DIR")
        runs[name] = Path(path)
    return runs


def parse_annotators(text: str) -> int | list[str]:
    """N, or a file with one annotator name per line (blank lines and lines starting with # are skipped)."""
    try:
        return int(text)
    except ValueError:
        pass
    p = Path(text)
    if not p.is_file():
        raise UserError(f"--annotators: expected a number or a file of names (one per line), got {text!r} "
                        "(no such file)")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """'A:B,C:D' -> [('A', 'B'), ('C', 'D')]."""
    pairs = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        a, sep, b = part.partition(":")
        if not sep or not a.strip() or not b.strip():
            raise argparse.ArgumentTypeError(f"expected RUN_A:RUN_B pairs separated by commas, got {part!r}")
        pairs.append((a.strip(), b.strip()))
    return pairs


def cmd_create(args) -> int:
    from k3eval.sbs import create_study, default_db_url, study_info
    from k3eval.sbs.design import PAIRING_MODES

    db = args.db or default_db_url()
    created = create_study(args.name, parse_runs(args.runs), parse_annotators(args.annotators), args.overlap,
                           gold=args.gold, questions=args.questions, reference=args.reference, seed=args.seed,
                           db_url=db, repeats=args.repeats, base_url=args.base_url, pairs=args.pairs,
                           unpaired=args.unpaired)
    comps = ", ".join(f"{a} vs {b}" for a, b in created.comparisons)
    print(f"study {created.name!r} created in {db}: {created.n_items} items ({created.n_gold} gold) + "
          f"{created.n_repeats} swapped repeats, {len(created.tokens)} annotators, {created.n_assignments} shown "
          f"items in all; comparisons: {comps}")
    pairing = study_info(created.name, db).get("pairing") or {}
    print(f"pairing: {PAIRING_MODES.get(pairing.get('mode'), '?')}"
          + "".join(f"; {d}" for d in pairing.get("differences", [])))
    print("Personal links (each holds a secret token, stored only hashed: this is the only time they are shown):")
    for name, link in created.links.items():
        print(f"  {name}\t{link}")
    print(f"  admin\t{created.admin_link}")
    print(f"Start the app with: k3eval sbs serve {_quote(created.name)}" + (f" --db {_quote(args.db)}"
                                                                           if args.db else ""))
    return 0


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def cmd_status(args) -> int:
    from k3eval.sbs import admin_overview, study_info

    info = study_info(args.name, args.db)
    ov = admin_overview(args.name, args.db)
    print(f"study {info['name']!r}: {info['n_items']} items ({info['n_gold']} gold, {info['n_repeats']} repeats), "
          f"overlap {info['overlap']}, questions {', '.join(info['questions'])}, runs {', '.join(info['runs'])}")
    pct = 100.0 * ov.votes / ov.expected_votes if ov.expected_votes else 0.0
    print(f"votes: {ov.votes} of {ov.expected_votes} ({pct:.1f} %); logins {ov.logins}, exports {ov.exports}")
    print(f"{'annotator':<24} {'done':>9} {'votes':>6} {'gold':>9} {'repeats':>8} {'median s':>9} {'left %':>7}  flags")
    for a in ov.annotators:
        gold = f"{a.gold_correct}/{a.gold_total}" if a.gold_total else "-"
        rep = f"{a.repeat_agree}/{a.repeat_total}" if a.repeat_total else "-"
        med = f"{a.median_seconds:.1f}" if a.median_seconds is not None else "-"
        left = f"{100 * a.left_share:.0f}" if a.left_share is not None else "-"
        print(f"{a.name:<24} {a.done:>4}/{a.assigned:<4} {a.votes:>6} {gold:>9} {rep:>8} {med:>9} {left:>7}  "
              f"{', '.join(a.flags)}")
    return 0


def cmd_export(args) -> int:
    from k3eval.sbs import export_votes

    out = export_votes(args.name, args.out, args.db)
    import pandas as pd

    n = len(pd.read_parquet(out)) if out.suffix == ".parquet" else len(pd.read_csv(out))
    print(f"{n} votes of study {args.name!r} -> {out}")
    return 0


def cmd_revoke(args) -> int:
    from k3eval.sbs import revoke

    revoke(args.name, args.annotator, args.db)
    print(f"revoked the token of {args.annotator!r} in study {args.name!r}; their votes are kept")
    return 0


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="vote database URL (default: $K3EVAL_DB or sqlite:///k3eval.db)")


def register(subparsers) -> None:
    """Add `k3eval sbs` with create, status, export, revoke, then the sub-commands of EXTRA_MODULES."""
    p = subparsers.add_parser("sbs", help="blind side-by-side human studies: create, status, export (serve, stats)")
    sub = p.add_subparsers(dest="sbs_command", metavar="ACTION", parser_class=type(p), required=True)

    c = sub.add_parser("create", help="create a study from run folders made on one prompt set; prints the links")
    c.add_argument("name", help="study name (unique in the database)")
    c.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                   help="two or more run folders (RUN_DIR or NAME=RUN_DIR); the order fixes model_a/model_b")
    c.add_argument("--reference", default=None, help="compare every run against this run name (default: all pairs)")
    c.add_argument("--pairs", type=parse_pairs, default=None, metavar="A:B,C:D",
                   help="explicit comparisons by run name instead of all pairs or --reference")
    c.add_argument("--annotators", required=True, help="number of annotators, or a file with one name per line")
    c.add_argument("--overlap", type=positive_int, required=True, help="annotators per item (K)")
    c.add_argument("--gold", type=_fraction, default=0.05, help="gold items as a fraction of the items (default 0.05)")
    c.add_argument("--repeats", type=_fraction, default=0.05,
                   help="swapped repeats as a fraction of each annotator's items (default 0.05)")
    c.add_argument("--questions", default="alignment,quality", help="comma-separated: alignment,quality (default)")
    c.add_argument("--seed", type=int, default=0, help="seed of the design: assignment, order, sides, gold")
    c.add_argument("--unpaired", action="store_true",
                   help="accept runs made with other benchmark seeds or samples per prompt (refused otherwise: not a "
                   "paired comparison); the study records it")
    c.add_argument("--base-url", default="http://localhost:8501", help="where the app will be reachable (for links)")
    _db_arg(c)
    c.set_defaults(func=cmd_create)

    s = sub.add_parser("status", help="progress per annotator, gold accuracy, repeat consistency and flags")
    s.add_argument("name")
    _db_arg(s)
    s.set_defaults(func=cmd_status)

    e = sub.add_parser("export", help="write every vote of a study to parquet or csv")
    e.add_argument("name")
    e.add_argument("--out", required=True, help="FILE.parquet or FILE.csv")
    _db_arg(e)
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("revoke", help="revoke one annotator's token (their votes stay)")
    r.add_argument("name")
    r.add_argument("annotator", help="annotator name (or 'admin')")
    _db_arg(r)
    r.set_defaults(func=cmd_revoke)

    from k3eval.cli import register_modules

    register_modules(EXTRA_MODULES, sub)


__all__ = ["EXTRA_MODULES", "parse_annotators", "parse_pairs", "parse_runs", "register"]
