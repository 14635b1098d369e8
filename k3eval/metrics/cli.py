"""`k3eval score` and `k3eval reference build`. Imports torch only inside the handlers (`k3eval --help` stays fast)."""

from __future__ import annotations

import argparse

from k3eval.cli import nonnegative_int, positive_int


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `score` and `reference build`: protocol, weights, models, device, cache."""
    p.add_argument("--protocol", default="clean", help="Inception resize protocol: clean (PIL bicubic, default) or tf "
                   "(TF1 bilinear, as torch-fidelity / pytorch-fid)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="TF-ported Inception weights file (default: torch hub cache, else download); 'synthetic' for "
                   "seeded random test weights")
    p.add_argument("--clip-backend", default="open_clip", help="open_clip (default) or transformers")
    p.add_argument("--clip-model", default="ViT-L-14", help="open_clip model name, or HF id/folder for transformers")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip pretrained tag or checkpoint file; "
                   "'synthetic' for seeded random test weights")
    p.add_argument("--cmmd-model", default="ViT-L-14-336", help="open_clip model for CMMD (default ViT-L-14-336)")
    p.add_argument("--cmmd-pretrained", default="openai", help="pretrained tag or file for the CMMD model")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=nonnegative_int, default=None, metavar="N",
                   help="processes that decode and preprocess images while the networks run (default: one per CPU "
                   "core, at most 4; 0: decode in the main process)")
    p.add_argument("--dtype", default="float32", help="Inception compute dtype: float32 (default) or float64")
    p.add_argument("--cache", default="default", metavar="DIR",
                   help="feature cache folder (default $K3EVAL_CACHE/features); 'none' disables it")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave missing and unreadable images out (listed in the summary) instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cache(value: str) -> str | None:
    return None if value.lower() == "none" else value


def parse_metric_settings(items: list[str]) -> dict[str, dict]:
    """`--set NAME.KEY=VALUE` (repeatable) -> {NAME: {KEY: VALUE}}; values are parsed as YAML scalars."""
    from k3eval.errors import UserError
    from k3eval.generators.base import parse_set_options

    out: dict[str, dict] = {}
    for item in items:
        ((key, value),) = parse_set_options([item]).items()
        name, _, option = key.partition(".")
        if not option or not name:
            raise UserError(f"--set {item}: name the metric and its setting, as NAME.KEY=VALUE")
        out.setdefault(name, {})[option] = value
    return out


def _device(args) -> str:
    """--device checked before any work (`banana`, or `cuda` on a machine without one, is a one-line error); under
    torchrun a bare `cuda` is this rank's own GPU."""
    from k3eval.generate import rank_device
    from k3eval.utils import check_device

    return check_device(rank_device(args.device))


def cmd_score(args) -> int:
    from k3eval.metrics.score import ScoreOptions, score_run

    args.device = _device(args)

    opts = ScoreOptions(
        metrics=args.metrics, reference=args.reference, reference_protocol=args.reference_protocol,
        protocol=args.protocol, inception_weights=args.inception_weights, clip_backend=args.clip_backend,
        clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, cmmd_model=args.cmmd_model,
        cmmd_pretrained=args.cmmd_pretrained, bootstrap=args.bootstrap, set_bootstrap=args.set_bootstrap,
        seed=args.seed, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
        is_splits=args.is_splits, min_category=args.min_category, skip_bad=args.skip_bad,
        allow_protocol_mismatch=args.allow_protocol_mismatch, device=args.device, batch_size=args.batch_size,
        dtype=args.dtype, cache=_cache(args.cache), progress=not args.quiet, workers=args.workers,
        settings=parse_metric_settings(args.set or []))
    summary = score_run(args.run_dir, opts)
    if summary:  # empty on the ranks other than 0 under torchrun
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    lines = [f"{summary['run']['path']}: {summary['n_images']} images"
             + (" (SYNTHETIC weights: pipeline test only)" if summary.get("synthetic_weights") else "")]
    for m in summary["metrics"].values():
        v = "n/a" if m["value"] is None else f"{m['value']:.4f}"
        ci = f" [{m['ci'][0]:.4f}, {m['ci'][1]:.4f}]" if m.get("ci") else ""
        about = ", ".join([f"n={m['n']}", *([m["protocol"]["protocol"]] if m["protocol"].get("protocol") else [])])
        lines.append(f"  {m['display_name']:<16} {v}{ci}  ({about})")
    if summary.get("skipped"):
        lines.append(f"  skipped {len(summary['skipped'])} image(s) (--skip-bad): listed in summary.json")
    lines.append(f"  -> {summary['run']['path']}/scores/summary.json")
    return "\n".join(lines)


def cmd_score_diff(args) -> int:
    from k3eval.metrics.paired import compare_runs, format_differences

    diffs = compare_runs(args.run_a, args.run_b, args.metrics, n_resamples=args.resamples, seed=args.seed)
    print(format_differences(diffs))
    if args.out:
        import pandas as pd

        from k3eval.utils import atomic_write_text

        atomic_write_text(args.out, pd.DataFrame([d.row() for d in diffs]).to_csv(index=False))
        print(f"-> {args.out}")
    return 0


def cmd_reference_build(args) -> int:
    from k3eval.errors import UserError
    from k3eval.metrics.cache import default_root
    from k3eval.metrics.extract import ClipImageExtractor, InceptionExtractor
    from k3eval.metrics.reference import build_reference
    from k3eval.metrics.weights import resolve_inception_weights

    metrics = (["fid"] if args.stats_only else ["fid", "kid"]) if args.metrics is None else args.metrics
    unknown = [m for m in metrics if m not in ("fid", "kid", "cmmd")]
    if unknown or not metrics:
        raise UserError(f"--metrics: a reference serves fid, kid and cmmd; got {', '.join(unknown)}")
    if args.stats_only and "kid" in metrics:
        raise UserError("--stats-only keeps the mean and covariance only, and KID needs the features: leave kid out "
                        "of --metrics, or drop --stats-only")
    args.device = _device(args)
    inception = InceptionExtractor(resolve_inception_weights(args.inception_weights), args.protocol, args.device,
                                   args.batch_size, args.dtype)
    clip = ClipImageExtractor("open_clip", args.cmmd_model, args.cmmd_pretrained, args.device, args.batch_size) \
        if "cmmd" in metrics else None
    cache = _cache(args.cache)
    root = None if cache is None else (default_root() if cache == "default" else cache)
    ref = build_reference(args.images_dir, args.out, inception, root, clip=clip, skip_bad=args.skip_bad,
                          progress=not args.quiet, features=not args.stats_only, workers=args.workers)
    print(f"{args.out}: reference of {ref.n} images, protocol {args.protocol}, weights "
          f"{ref.protocol['weights']} ({'standard' if ref.protocol['standard_weights'] else 'NON-STANDARD'})"
          + (", statistics only (FID)" if args.stats_only else "")
          + (", with CLIP embeddings for CMMD" if clip else ""))
    for w in ref.warnings:
        print(f"  warning: {w}")
    return 0


def cmd_export_geneval(args) -> int:
    from k3eval.metrics.geneval_layout import export_geneval

    done = export_geneval(args.run_dir, args.out, force=args.force)
    print(f"{args.out}: {done['images']} images of {done['prompts']} prompts in GenEval's layout "
          "(<index>/metadata.jsonl, <index>/samples/NNNNN.png), for GenEval's evaluation/evaluate_images.py")
    return 0


def register(sub) -> None:
    from k3eval.metrics.registry import metric_names

    p = sub.add_parser("score", help="automatic metrics of a run folder (FID, KID, IS, CLIP score, CMMD) -> "
                       "RUN_DIR/scores/")
    p.add_argument("run_dir", help="run folder (from generate or import)")
    p.add_argument("--metrics", type=_csv, default=None,
                   help=f"comma-separated, from {','.join(metric_names())} (default: clip_score,is, plus fid,kid,cmmd "
                   "with --reference)")
    p.add_argument("--reference", default=None, help="reference .npz (k3eval reference build, or external with "
                   "--reference-protocol), a folder of reference images / a run folder, or synthetic:N (N seeded "
                   "test images: the numbers mean nothing)")
    p.add_argument("--set", action="append", metavar="NAME.KEY=VALUE",
                   help="a setting of one metric (repeatable; the settings of each metric: docs/metrics.md)")
    p.add_argument("--reference-protocol", default=None, help="declare the protocol (tf|clean) of an external .npz")
    p.add_argument("--allow-protocol-mismatch", action="store_true",
                   help="score against a reference of another protocol anyway (recorded as a warning)")
    p.add_argument("--bootstrap", type=nonnegative_int, default=1000,
                   help="resamples of the CLIP score interval over prompts (default 1000; 0: no interval)")
    p.add_argument("--set-bootstrap", type=nonnegative_int, default=0,
                   help="resamples for intervals of FID, KID, IS and CMMD (each recomputes the metric; default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of bootstrap, KID subsets and IS splits (default 0)")
    p.add_argument("--kid-subsets", type=positive_int, default=100)
    p.add_argument("--kid-subset-size", type=positive_int, default=1000)
    p.add_argument("--is-splits", type=positive_int, default=10)
    p.add_argument("--min-category", type=positive_int, default=50,
                   help="fewest images for a per-category FID/KID/IS/CMMD (smaller ones are flagged too_small)")
    add_protocol_args(p)
    p.set_defaults(func=cmd_score)

    d = sub.add_parser("score-diff", help="paired differences of per-image metrics between two scored runs on the "
                       "same prompts (A - B with a prompt-level interval, share of prompts where A is higher)")
    d.add_argument("run_a", help="scored run folder A")
    d.add_argument("run_b", help="scored run folder B (same prompts)")
    d.add_argument("--metrics", type=_csv, default=None, help="comma-separated (default: every per-image metric "
                   "both runs stored)")
    d.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    d.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the sign-flip test (default 0)")
    d.add_argument("--out", default=None, metavar="FILE.csv", help="also write the table as CSV")
    d.set_defaults(func=cmd_score_diff)

    r = sub.add_parser("reference", help="reference statistics for FID, KID and CMMD")
    rsub = r.add_subparsers(dest="reference_command", metavar="ACTION", required=True)
    b = rsub.add_parser("build", help="statistics of a folder of images or a run folder -> REF.npz")
    b.add_argument("images_dir", help="folder of images (searched recursively) or a run folder")
    b.add_argument("--out", required=True, help="output .npz (mu, sigma as pytorch-fid/clean-fid, plus features "
                   "and the protocol)")
    b.add_argument("--metrics", type=_csv, default=None, help="what the reference serves: fid,kid (default), add cmmd "
                   "to store CLIP embeddings")
    b.add_argument("--stats-only", action="store_true",
                   help="store the mean and covariance only, accumulated image by image (memory flat in the number "
                   "of images; serves FID, not KID)")
    add_protocol_args(b)
    b.set_defaults(func=cmd_reference_build)

    e = sub.add_parser("export", help="write a run in a benchmark's own folder layout, for its official scorer")
    esub = e.add_subparsers(dest="export_command", metavar="LAYOUT", required=True, parser_class=type(e))
    g = esub.add_parser("geneval", help="a run of the geneval prompt set -> <index>/metadata.jsonl + "
                        "<index>/samples/NNNNN.png (the layout GenEval's evaluate_images.py reads)")
    g.add_argument("run_dir", metavar="RUN_DIR")
    g.add_argument("--out", required=True, help="folder to create")
    g.add_argument("--force", action="store_true", help="replace an existing folder at --out")
    g.set_defaults(func=cmd_export_geneval)
