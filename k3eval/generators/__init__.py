"""Generators: one file per family, registered by name in catalog/*.yaml (imported lazily)."""

from k3eval.generators.registry import GeneratorEntry, all_entries, get_entry, validate_params

__all__ = ["GeneratorEntry", "all_entries", "get_entry", "validate_params"]
