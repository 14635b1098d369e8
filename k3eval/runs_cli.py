"""`k3eval import` (images made elsewhere -> run folder) and `k3eval runs merge` (sharded runs).

Imports nothing heavy at module level: `k3eval --help` must not load torch.
"""

from __future__ import annotations


def cmd_import(args) -> int:
    from k3eval.errors import UserError
    from k3eval.importer import import_images
    from k3eval.prompts import load_prompt_set

    if args.layout == "geneval":
        from k3eval.metrics.geneval_layout import import_geneval

        if args.mapping or args.prompts not in (None, "geneval"):
            raise UserError("--layout geneval: the folder's metadata.jsonl files give the prompts; leave out "
                            "--mapping and --prompts (or pass --prompts geneval)")
        report = import_geneval(args.images_dir, args.out, name=args.name, version=args.version, date=args.date,
                                force=args.force, allow_missing=args.allow_missing, progress=True)
        print("\n".join(report.lines()))
        return 0
    if not args.mapping or not args.prompts:
        raise UserError("import needs --mapping CSV and --prompts SET (or --layout geneval for a folder in GenEval's "
                        "layout)")
    prompts = load_prompt_set(args.prompts).select(categories=args.categories, per_category=args.per_category,
                                                   limit=args.limit, seed=args.selection_seed)
    report = import_images(args.images_dir, args.mapping, prompts, args.out, name=args.name, version=args.version,
                           date=args.date, force=args.force, allow_missing=args.allow_missing,
                           allow_odd_sizes=args.allow_odd_sizes, progress=True)
    for line in report.lines():
        print(line)
    return 0


def cmd_runs_merge(args) -> int:
    import sys

    from k3eval.generate import merge_run

    totals = merge_run(args.run_dir)
    status = ", ".join(f"{k}: {v}" for k, v in totals["status"].items()) or "no images"
    print(f"{args.run_dir}: {totals['images']} of {totals['expected']} images ({status}); "
          f"{totals['missing']} missing")
    if totals["missing"] and not args.allow_incomplete:
        # exit 1, not 2: the merge itself is done and written; what is missing is work, not a bad argument
        print(f"k3eval: {args.run_dir} is incomplete: {totals['missing']} of {totals['expected']} images are missing; "
              "rerun the missing shards (or the generate command), then merge again, or pass --allow-incomplete to "
              "accept it", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    """Add `import` and `runs merge` to the k3eval command."""
    from k3eval.cli import add_prompt_selection

    p = subparsers.add_parser("import", help="turn images made elsewhere (DALL-E 3, Midjourney...) into a run folder",
                              description="Every image is decoded and checked; nothing is written unless all is well "
                              "(every prompt and sample has a readable, non-black image of the usual size, every "
                              "mapping row names a prompt of the set and a file inside IMAGES_DIR).")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder holding the images (paths in the mapping are "
                   "relative to it)")
    p.add_argument("--mapping", help="CSV with columns file, prompt_id or prompt (exact text), and optional sample "
                   "(default 0); not with --layout")
    p.add_argument("--prompts", help="the prompt set the images answer (same spec as generate)")
    p.add_argument("--layout", choices=["geneval"], default=None,
                   help="geneval: IMAGES_DIR is laid out as GenEval's (<index>/metadata.jsonl, "
                   "<index>/samples/NNNNN.png); prompts and mapping come from it")
    add_prompt_selection(p)
    p.add_argument("--name", required=True, help="system name recorded in run.json (e.g. dall-e-3)")
    p.add_argument("--version", default=None, help="system version (e.g. 'API 2024-02')")
    p.add_argument("--date", default=None, help="when the images were made, YYYY-MM-DD")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing run folder at --out")
    p.add_argument("--allow-missing", action="store_true",
                   help="import even if some prompts or samples have no image, or images are all black (each listed; "
                   "black ones are kept with status black, out of metrics and studies)")
    p.add_argument("--allow-odd-sizes", action="store_true",
                   help="import images whose size differs from the usual one (or is under 64 px)")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("runs", help="run-folder maintenance (merge the parts of a sharded run)")
    # type(p): the k3eval parser class, whose usage errors exit 2 with one line
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True, parser_class=type(p))
    m = rsub.add_parser("merge", help="merge the journals of every shard into manifest.parquet")
    m.add_argument("run_dir", metavar="RUN_DIR")
    m.add_argument("--allow-incomplete", action="store_true",
                   help="exit 0 even when images are missing (by default a merge of an incomplete run exits 1)")
    m.set_defaults(func=cmd_runs_merge)
