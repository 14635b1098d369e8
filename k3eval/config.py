"""Benchmark specs: one YAML file per benchmark, validated with errors that say where the problem is.

Sections for later stages (`metrics`, `study`, `report`) have their models with the stage that reads them; an error
there is reported as `FILE: metrics.protocol: ...` (`validate_section`). `k3eval.benchmark.validate_benchmark` checks
every section before any stage runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from k3eval.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptSpec(Strict):
    set: str = Field(description="built-in set name, drawbench:PATH, file:PATH or a path")
    categories: list[str] | None = None
    per_category: int | None = Field(default=None, ge=1)
    limit: int | None = Field(default=None, ge=1)
    selection_seed: int = 0


class RunSpec(Strict):
    generator: str = Field(description="registered generator name, or diffusers:ORG/NAME")
    name: str | None = Field(default=None, description="run folder name under runs_dir (default: generator)")
    params: dict[str, Any] = Field(default_factory=dict)
    dtype: str | None = None
    device: str | None = None
    batch_size: int | None = Field(default=None, ge=1)
    beautify: str | None = Field(default=None, description="causal LM that rewrites prompts before generation")

    @property
    def label(self) -> str:
        return self.name or self.generator.replace(":", "_").replace("/", "_")


class ImportedRunSpec(Strict):
    """Images of a system without open weights (DALL-E 3, Midjourney), imported with `k3eval import`."""

    name: str = Field(description="run name (folder under runs_dir), used in comparisons")
    system: str | None = Field(default=None, description="system name in run.json (default: name)")
    version: str | None = None
    date: str | None = Field(default=None, description="when the images were made, YYYY-MM-DD")
    images: str | None = Field(default=None, description="folder of the exported images")
    mapping: str | None = Field(default=None, description="CSV: file, prompt_id or prompt, sample")
    path: str | None = Field(default=None, description="an existing run folder made by `k3eval import`")
    allow_missing: bool = Field(default=False, description="import even if some prompts have no (usable) image")
    allow_odd_sizes: bool = Field(default=False, description="import even if some images differ in size")

    @model_validator(mode="after")
    def _images_with_mapping(self) -> ImportedRunSpec:
        if (self.images is None) != (self.mapping is None):
            raise ValueError("give both 'images' and 'mapping' (or neither, with 'path')")
        return self


class ComparisonSpec(Strict):
    """One pairwise comparison of two runs (by run name), e.g. a side-by-side question of the report."""

    a: str
    b: str
    name: str | None = None
    note: str = ""


class BenchmarkSpec(Strict):
    name: str
    description: str = ""
    seed: int = 0
    samples: int = Field(default=1, ge=1)
    prompts: PromptSpec
    generators: list[RunSpec] = Field(min_length=1)
    runs_dir: str | None = None
    generators_file: str | None = None
    batch_size: int = Field(default=1, ge=1)
    device: str = "cpu"
    metrics: dict[str, Any] | None = None
    study: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    comparisons: list[ComparisonSpec] | None = None
    imported: list[ImportedRunSpec] | None = None
    notes: str = ""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a non-empty folder-safe name")
        return v

    @model_validator(mode="after")
    def _unique_labels(self) -> BenchmarkSpec:
        seen = set()
        for r in self.generators:
            if r.label in seen:
                raise ValueError(f"two generators share the run name '{r.label}': give one a distinct 'name'")
            seen.add(r.label)
        for imp in self.imported or []:
            if imp.name in seen:
                raise ValueError(f"imported run '{imp.name}' has the name of another run: give it a distinct 'name'")
            seen.add(imp.name)
        for i, c in enumerate(self.comparisons or []):
            for side in ("a", "b"):
                if getattr(c, side) not in seen:
                    raise ValueError(f"comparisons.{i}.{side}: no run named '{getattr(c, side)}'; runs: "
                                     f"{', '.join(sorted(seen))}")
        return self

    def runs_path(self, root: Path | None = None) -> Path:
        base = Path(self.runs_dir) if self.runs_dir else Path("runs") / self.name
        return base if base.is_absolute() or root is None else root / base


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def validate_section(source: str, section: str, model: type[BaseModel], data: dict[str, Any] | None) -> BaseModel:
    """Validate one stage's section of a benchmark with that stage's model; errors name `section.key`."""
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        raise UserError(format_validation_error(f"{source}: {section}", e)) from None


def load_benchmark(path: str | Path, check_generators: bool = True) -> BenchmarkSpec:
    """Read and validate a benchmark YAML (and that every generator name is registered)."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise UserError(f"benchmark file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; give the benchmark YAML file (e.g. benchmarks/smoke.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p} is not valid UTF-8") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping at the top level")
    try:
        spec = BenchmarkSpec.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(str(p), e)) from None
    if check_generators:
        from k3eval.generators.registry import get_entry

        extra = [resolve_relative(p, spec.generators_file)] if spec.generators_file else None
        for i, r in enumerate(spec.generators):
            try:
                get_entry(r.generator, extra)
            except UserError as e:
                raise UserError(f"{p}: generators.{i}.generator: {e}") from None
    return spec


def resolve_relative(benchmark_file: Path, path: str) -> Path:
    """Paths inside a benchmark YAML are relative to the current folder if they exist there, else to the file."""
    q = Path(path)
    if q.is_absolute() or q.exists():
        return q
    return benchmark_file.parent / q
