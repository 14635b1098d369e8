"""`k3eval demo`: the smoke benchmark on tiny offline generators, end to end, then the report (plus a GenEval run
scored with the synthetic detector)."""

from __future__ import annotations

from pathlib import Path

from k3eval.errors import UserError


def smoke_benchmark(name: str = "smoke.yaml") -> Path:
    """benchmarks/NAME of the current folder, else of the k3eval checkout this package was installed from."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        p = base / "benchmarks" / name
        if p.exists():
            return p
    raise UserError(f"benchmarks/{name} not found: run `k3eval demo` from the k3eval checkout")


def run_demo(out: Path = Path("reports/demo"), progress: bool = True) -> Path:
    """Generate and score the GenEval part of the smoke benchmark (benchmarks/smoke_geneval.yaml: another prompt
    set, so another benchmark), then run every stage of the smoke benchmark (generate, score, study, report); returns
    the report's index.html."""
    from k3eval.benchmark import run_benchmark

    run_benchmark(smoke_benchmark("smoke_geneval.yaml"), stages=["generate", "score"], progress=progress)
    ctx = run_benchmark(smoke_benchmark(), progress=progress, report_out=out)
    if not ctx.outputs.get("report"):
        raise UserError("the demo ran, but no report was written: is the report stage installed (k3eval.report)?")
    return Path(ctx.outputs["report"])
