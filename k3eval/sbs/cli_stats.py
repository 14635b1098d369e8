"""`k3eval sbs stats NAME` and `k3eval sbs simulate NAME`: statistics of a study, and simulated annotators.

Registered by `k3eval.sbs.cli`; heavy modules (pandas, scipy) are imported inside the handlers only.
"""

from __future__ import annotations

from pathlib import Path

from k3eval.cli import positive_int


def cmd_stats(args) -> int:
    from k3eval.sbs import study_info, votes_frame
    from k3eval.sbs.analysis import analyze_votes, format_overview, write_stats
    from k3eval.sbs.metric_agreement import load_image_scores

    info = study_info(args.name, args.db)
    votes = votes_frame(args.name, args.db)
    scores = load_image_scores(info["runs"])
    result = analyze_votes(votes, scores, exclude_flagged=args.exclude_flagged, n_resamples=args.resamples,
                           seed=args.seed, two_level=args.two_level, comparisons=info.get("comparisons"),
                           questions=info.get("questions"))
    result.summary["study"] = info["name"]
    if info.get("simulated"):
        print("NOTE: this study holds simulated votes (k3eval sbs simulate), not human judgements.")
    print(format_overview(result))
    if args.out:
        # a distinct suffix, so both variants can live in one folder (the report shows both)
        paths = write_stats(result, Path(args.out), suffix="_excluding_flagged" if args.exclude_flagged else "")
        print(f"wrote {len(paths)} files to {args.out}")
    return 0


def cmd_simulate(args) -> int:
    from k3eval.sbs.simulate import simulate_study

    out = simulate_study(args.name, annotators=args.annotators, seed=args.seed, db_url=args.db,
                         progress=not args.quiet)
    print(f"study {out['study']}: {out['votes_recorded']} simulated votes recorded by {out['annotators']} annotators "
          f"({out['votes_kept']} answers already there were kept); seed {out['seed']}")
    print(f"rule: {out['rule']}")
    if not out["metric"]:
        print("no CLIP scores stored in the runs (run `k3eval score` first): the simulated answers are pure noise "
              "plus position bias")
    return 0


def register(sbs_subparsers) -> None:
    """Add `stats` and `simulate` to `k3eval sbs`."""
    p = sbs_subparsers.add_parser("stats", help="preference, Bradley-Terry, agreement and quality control of a study")
    p.add_argument("name", help="study name")
    p.add_argument("--exclude-flagged", action="store_true",
                   help="recompute everything without the annotators flagged by quality control")
    p.add_argument("--out", default=None, help="folder for the tables (CSV) and summary.json (names end in "
                   "_excluding_flagged with --exclude-flagged)")
    p.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of every bootstrap and permutation test (default 0)")
    p.add_argument("--two-level", action="store_true",
                   help="resample annotators as well as prompts (for studies with few annotators; docs/statistics.md)")
    p.add_argument("--db", default=None, help="vote database URL (default: $K3EVAL_DB or sqlite:///k3eval.db)")
    p.set_defaults(func=cmd_stats)

    s = sbs_subparsers.add_parser("simulate", help="answer a study with simulated annotators (marked as simulated)")
    s.add_argument("name", help="study name")
    s.add_argument("--annotators", type=positive_int, default=None,
                   help="simulate the first N annotators of the study (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the simulated answers (default 0)")
    s.add_argument("--db", default=None, help="vote database URL (default: $K3EVAL_DB or sqlite:///k3eval.db)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_simulate)


__all__ = ["register"]
