"""The `k3eval` command. Thin: parses arguments and calls the modules; imports torch only inside handlers.

Each area adds its subcommands through a `register(subparsers)` function in its own `cli` module (listed in
`COMMAND_MODULES`), so this file stays small. A `UserError` anywhere prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from k3eval import __version__
from k3eval.errors import UserError

COMMAND_MODULES = [
    "k3eval.generators.cli", "k3eval.runs_cli", "k3eval.metrics.cli", "k3eval.sbs.cli", "k3eval.report.cli",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one message, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"k3eval: error: {message}\n")


def _int_at_least(n: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < n:
            raise argparse.ArgumentTypeError(f"must be at least {n}, got {v}")
        return v

    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_prompt_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=positive_int, help="use only the first N prompts (after other selection)")
    p.add_argument("--per-category", type=positive_int, help="a seeded, balanced sample of N prompts per category")
    # --category (singular) was `prompts show`'s spelling; both are accepted everywhere
    p.add_argument("--categories", "--category", dest="categories", type=_csv,
                   help="comma-separated categories to keep")
    p.add_argument("--selection-seed", type=int, default=0, help="seed of the --per-category sample (default 0)")


# ---- prompts ---------------------------------------------------------------------------------------------------
def cmd_prompts_list(args) -> int:
    from k3eval.prompts.loaders import BUILTIN, load_prompt_set

    print(f"{'name':<15} {'prompts':>7}  {'licence':<40} categories")
    for name, info in BUILTIN.items():
        cats = load_prompt_set(name).categories()
        shown = ", ".join(f"{c} ({n})" for c, n in list(cats.items())[:12])
        print(f"{name:<15} {info.size:>7}  {info.license:<40} {len(cats)}: {shown}")
    print("\nAlso: drawbench:PATH (your own copy of DrawBench.csv; not shipped, no stated licence) and any "
          ".csv/.tsv/.jsonl/.txt file with a prompt column (optional id, category).")
    return 0


def cmd_prompts_show(args) -> int:
    from k3eval.prompts import load_prompt_set

    ps = load_prompt_set(args.name).select(categories=args.categories, per_category=args.per_category,
                                           limit=args.limit, seed=args.selection_seed)
    for p in ps:
        print(f"{p.id}\t{p.category}\t{p.text}")
    print(f"# {len(ps)} prompts; set hash {ps.content_hash()[:16]}", file=sys.stderr)
    return 0


# ---- generators ------------------------------------------------------------------------------------------------
def cmd_generators_list(args) -> int:
    from k3eval.generators.registry import all_entries

    entries = all_entries()
    print(f"{'name':<26} {'offline':<8} {'defaults':<60} description")
    for name, e in sorted(entries.items()):
        params = ", ".join(f"{k}={v}" for k, v in e.params.items() if k in ("height", "width", "steps", "guidance"))
        print(f"{name:<26} {'yes' if e.offline else 'no':<8} {params:<60} {e.description}")
    print("\nAny diffusers text-to-image pipeline: diffusers:ORG/NAME (or a local folder). Add your own entries with "
          "a YAML file in $K3EVAL_GENERATORS.")
    return 0


def cmd_generate(args) -> int:
    from k3eval.generate import generate_run, parse_shard, rank_device
    from k3eval.generators.base import check_dtype, parse_set_options
    from k3eval.generators.registry import get_entry
    from k3eval.prompts import load_prompt_set
    from k3eval.utils import check_device, check_output_dir

    check_dtype(args.dtype)
    check_output_dir(args.out)
    entry = get_entry(args.generator)
    prompts = load_prompt_set(args.prompts).select(categories=args.categories, per_category=args.per_category,
                                                   limit=args.limit, seed=args.selection_seed)
    device = check_device(rank_device(args.device))
    gen = entry.create(parse_set_options(args.set or []), device=device, dtype=args.dtype)
    beautifier = None
    if args.beautify:
        from k3eval.generators.beautify import load_beautifier

        beautifier = load_beautifier(args.beautify, device=device)
    summary = generate_run(gen, prompts, args.out, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                           force=args.force, shard=parse_shard(args.shard), progress=not args.quiet,
                           beautifier=beautifier, retry_bad=args.retry_bad)
    bad = {k: v for k, v in summary.status_counts.items() if k != "ok"}
    print(f"{summary.run_dir}: {summary.generated} generated, {summary.done_before} already done, "
          f"{summary.total} in this run" + (f"; bad outputs: {bad}" if bad else ""))
    run_bad = {k: v for k, v in summary.run_counts.items() if k != "ok"}
    if run_bad:
        print(f"{summary.run_dir}: the run holds bad outputs {run_bad}; `--retry-bad` remakes them with the same "
              "seeds (in fp32 where the generator supports it)")
    return 0


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("generator", help="registered generator name (see `k3eval generators list`) or diffusers:ORG/NAME")
    p.add_argument("--prompts", required=True, help="prompt set: parti, geneval, t2i-compbench, coco30k, "
                   "drawbench:PATH or a prompt file")
    p.add_argument("--out", required=True, help="run folder to create or resume")
    add_prompt_selection(p)
    p.add_argument("--samples", type=positive_int, default=1, help="images per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed; image seeds derive from it (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the generator's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a generator parameter (repeatable)")
    p.add_argument("--shard", default=None, help="I/N: make only every N-th image starting at I (job arrays)")
    p.add_argument("--force", action="store_true", help="delete what the folder holds and regenerate everything")
    p.add_argument("--retry-bad", action="store_true",
                   help="remake images with status nan/black with the same seeds (in fp32 where supported)")
    p.add_argument("--beautify", metavar="MODEL", default=None,
                   help="rewrite each prompt with this causal LM first (the Kandinsky 3 report's prompt beautification;"
                   " e.g. Intel/neural-chat-7b-v3-1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ---- benchmark runs and the demo -------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from k3eval.benchmark import run_benchmark

    run_benchmark(args.benchmark, stages=args.stage, limit=args.limit, force=args.force, progress=not args.quiet)
    return 0


def cmd_demo(args) -> int:
    from k3eval.demo import run_demo

    index = run_demo(out=Path(args.out), progress=not args.quiet)
    print(f"demo report: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="k3eval", description="Evaluate and compare text-to-image models (Kandinsky 3 and "
                     "baselines): generate, score, run blind side-by-side studies, report.")
    parser.add_argument("--version", action="version", version=f"k3eval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("prompts", help="list and show prompt sets")
    psub = p.add_subparsers(dest="prompts_command", metavar="ACTION", parser_class=_Parser, required=True)
    psub.add_parser("list", help="every built-in set with its size, categories and licence").set_defaults(
        func=cmd_prompts_list)
    s = psub.add_parser("show", help="print the prompts of a set (id, category, text)")
    s.add_argument("name")
    add_prompt_selection(s)
    s.set_defaults(func=cmd_prompts_show)

    p = sub.add_parser("generators", help="list registered generators")
    gsub = p.add_subparsers(dest="generators_command", metavar="ACTION", parser_class=_Parser, required=True)
    gsub.add_parser("list", help="every registered generator with its defaults").set_defaults(
        func=cmd_generators_list)

    p = sub.add_parser("generate", help="generate images for a prompt set into a run folder (resumable)")
    add_generate_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run the stages of a benchmark YAML")
    p.add_argument("benchmark", help="benchmark YAML file (see benchmarks/)")
    p.add_argument("--stage", action="append", help="run only this stage (repeatable); default: all stages")
    p.add_argument("--limit", type=positive_int, help="use only the first N prompts of the benchmark")
    p.add_argument("--force", action="store_true", help="regenerate and recompute everything")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the whole flow on tiny offline generators; writes reports/demo/index.html")
    p.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    register_modules(COMMAND_MODULES, sub)
    return parser


def register_modules(names: list[str], subparsers) -> None:
    """Call `register(subparsers)` of each module in `names` that is installed (an optional area may be absent)."""
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(subparsers)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"k3eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress_bars()
        print("k3eval: interrupted", file=sys.stderr)
        return 130


def _end_progress_bars() -> None:
    """Close the progress bars Ctrl-C left open, so that the message after them starts on a line of its own."""
    tqdm_std = sys.modules.get("tqdm.std")
    bars = list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", None) or [])
    for bar in bars:
        bar.close()  # on a terminal this clears the bar's line (or ends it, for bars that stay)
    if not sys.stderr.isatty():
        # in a log file a bar's last refresh ends with a carriage return, not a newline: start a fresh line
        sys.stderr.write("\n")


if __name__ == "__main__":
    raise SystemExit(main())
