"""The generator registry: named entries read from YAML catalog files, classes imported only when used.

Shipped entries live in `k3eval/generators/catalog/*.yaml`. A user adds generators with the same format in a file
named by `$K3EVAL_GENERATORS` (several paths separated by ':') or by `generators_file:` in a benchmark YAML:

    my-sd:
      class: k3eval.generators.diffusers_pipeline:DiffusersPipelineGenerator
      description: my fine-tuned SD 1.5
      params: {model: /models/my-sd, pipeline_class: StableDiffusionPipeline, steps: 30, guidance: 7.5}
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from k3eval.errors import UserError, unknown_name

ENTRY_KEYS = {"class", "description", "params", "offline", "family"}


@dataclass(frozen=True)
class GeneratorEntry:
    name: str
    class_path: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    offline: bool = False
    family: str = ""
    source: str = ""

    def load_class(self):
        module, _, attr = self.class_path.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"generator '{self.name}' ({self.source}): cannot load class '{self.class_path}': {e}") \
                from None
        return cls

    def create(self, overrides: dict[str, Any] | None = None, device: str = "cpu", dtype: str | None = None):
        """Instantiate the generator with the entry's parameters, then `overrides` (from --set or a benchmark)."""
        cls = self.load_class()
        params = {**self.params, **(overrides or {})}
        return cls(self.name, params, device=device, dtype=dtype)


def _parse_catalog(text: str, source: str) -> dict[str, GeneratorEntry]:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"generator catalog {source} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"generator catalog {source}: expected a mapping of name -> entry")
    out = {}
    for name, entry in data.items():
        where = f"{source}, entry '{name}'"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with at least 'class'")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
        if "class" not in entry or ":" not in str(entry["class"]):
            raise UserError(f"{where}: 'class' must be 'module:ClassName'")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise UserError(f"{where}: 'params' must be a mapping")
        out[str(name)] = GeneratorEntry(str(name), str(entry["class"]), str(entry.get("description", "")), params,
                                        bool(entry.get("offline", False)), str(entry.get("family", "")), source)
    return out


def load_catalog_file(path: str | Path) -> dict[str, GeneratorEntry]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"generator catalog file not found: {p}")
    return _parse_catalog(p.read_text(encoding="utf-8"), str(p))


_BUILTIN: dict[str, GeneratorEntry] | None = None


def builtin_entries() -> dict[str, GeneratorEntry]:
    global _BUILTIN
    if _BUILTIN is None:
        entries: dict[str, GeneratorEntry] = {}
        catalog = resources.files("k3eval.generators").joinpath("catalog")
        for item in sorted(catalog.iterdir(), key=lambda x: x.name):
            if item.name.endswith(".yaml"):
                entries.update(_parse_catalog(item.read_text(encoding="utf-8"), f"catalog/{item.name}"))
        _BUILTIN = entries
    return dict(_BUILTIN)


def all_entries(extra_files: list[str | Path] | None = None) -> dict[str, GeneratorEntry]:
    entries = builtin_entries()
    files = [f for f in os.environ.get("K3EVAL_GENERATORS", "").split(os.pathsep) if f]
    for f in [*files, *(extra_files or [])]:
        entries.update(load_catalog_file(f))
    return entries


def get_entry(name: str, extra_files: list[str | Path] | None = None) -> GeneratorEntry:
    entries = all_entries(extra_files)
    if name in entries:
        return entries[name]
    if name.startswith("diffusers:"):
        # Any diffusers text-to-image pipeline by hub id or local path; the pipeline class is read from its config.
        return GeneratorEntry(name, "k3eval.generators.diffusers_pipeline:DiffusersPipelineGenerator",
                              f"diffusers pipeline {name[10:]}", {"model": name[10:]}, False, "diffusers",
                              "diffusers:ID")
    raise unknown_name("generator", name, [*entries, "diffusers:ORG/NAME"])


def validate_params(name: str, params: dict[str, Any] | None = None, *, device: str = "cpu",
                    dtype: str | None = None, extra_files: list[str | Path] | None = None) -> dict[str, Any]:
    """Check generator `name` with `params` (overrides of its catalog entry) without loading any weights: unknown
    keys, wrong types, values out of bounds, sizes the model cannot make, unknown diffusers class names. Raises
    UserError naming the problem; returns the resolved parameters (after rounding) for a benchmark to show."""
    from k3eval.generate import check_generator

    gen = get_entry(name, extra_files).create(params, device=device, dtype=dtype)
    check_generator(gen)
    return dict(gen.params)
