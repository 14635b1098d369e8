"""`k3eval report --runs RUN... [--study NAME] --out DIR`: the comparison report from stored runs, scores and votes.

Heavy modules are imported inside the handler, so `k3eval --help` stays light.
"""

from __future__ import annotations

from k3eval.cli import nonnegative_int


def cmd_report(args) -> int:
    from k3eval.report.build import build_report
    from k3eval.utils import check_output_dir

    check_output_dir(args.out)

    if args.resamples < 1:
        from k3eval.errors import UserError

        raise UserError(f"--resamples: expected at least 1, got {args.resamples}")
    index = build_report(args.runs, args.out, study=args.study, db_url=args.db, n_resamples=args.resamples,
                         seed=args.seed, examples=args.examples, title=args.title, two_level=args.two_level)
    print(f"report: {index}")
    return 0


def register(subparsers) -> None:
    """Add `k3eval report`."""
    p = subparsers.add_parser("report", help="write the comparison report (HTML, Markdown, CSV, PNG) from stored runs, "
                              "scores and a study's votes")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                   help="run folders (RUN_DIR or NAME=RUN_DIR); a study's runs must carry the study's names")
    p.add_argument("--study", default=None, help="side-by-side study to include (its votes and facts)")
    p.add_argument("--db", default=None, help="vote database URL (default: $K3EVAL_DB or sqlite:///k3eval.db)")
    p.add_argument("--out", required=True, help="report folder (index.html, report.md, tables/, figures/)")
    p.add_argument("--resamples", type=nonnegative_int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of every bootstrap and permutation test (default 0)")
    p.add_argument("--two-level", action="store_true",
                   help="resample annotators as well as prompts (studies with few annotators; docs/statistics.md)")
    p.add_argument("--examples", type=nonnegative_int, default=4,
                   help="examples of each kind per comparison (default 4)")
    p.add_argument("--title", default=None, help="report title (default: from the benchmark name)")
    p.set_defaults(func=cmd_report)


__all__ = ["register"]
