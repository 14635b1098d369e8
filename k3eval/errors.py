"""User-facing errors: the CLI prints their message and exits with code 2, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with what the user gave (file, name, value). The message names it and what would be accepted."""


class MissingDependencyError(UserError):
    """An optional part needs a package that is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None):
        hint = f"pip install 'k3eval[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the package '{package}', which is not installed: {hint}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or a list of known names when none is close."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    return f"; known: {shown}"


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    return UserError(f"unknown {kind} '{name}'{did_you_mean(name, known)}")
