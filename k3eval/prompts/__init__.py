"""Prompt sets: built-in public benchmarks (shipped with their licences) and user files."""

from k3eval.prompts.core import Prompt, PromptSet
from k3eval.prompts.loaders import BUILTIN, load_file, load_prompt_set

__all__ = ["BUILTIN", "Prompt", "PromptSet", "load_file", "load_prompt_set"]
