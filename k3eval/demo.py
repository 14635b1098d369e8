"""`k3eval demo`: the smoke benchmark on tiny offline generators, end to end, then the report."""

from __future__ import annotations

from pathlib import Path

from k3eval.errors import UserError


def smoke_benchmark() -> Path:
    """benchmarks/smoke.yaml of the current folder, else of the k3eval checkout this package was installed from."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        p = base / "benchmarks" / "smoke.yaml"
        if p.exists():
            return p
    raise UserError("benchmarks/smoke.yaml not found: run `k3eval demo` from the k3eval checkout")


def run_demo(out: Path = Path("reports/demo"), progress: bool = True) -> Path:
    """Run every stage of the smoke benchmark (generate, score, study, report); returns the report's index.html."""
    from k3eval.benchmark import run_benchmark

    ctx = run_benchmark(smoke_benchmark(), progress=progress, report_out=out)
    if not ctx.outputs.get("report"):
        raise UserError("the demo ran, but no report was written: is the report stage installed (k3eval.report)?")
    return Path(ctx.outputs["report"])
