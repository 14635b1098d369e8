"""The generator interface every family implements, and the parameter handling they share."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from k3eval.errors import UserError, did_you_mean

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class GenRequest:
    """One image to make. `seed` comes from `k3eval.seeds.image_seed`; the initial noise is drawn from it on the CPU."""

    prompt_id: str
    prompt: str
    sample: int
    seed: int
    negative_prompt: str | None = None


@dataclass
class GenOutput:
    """One image as float32 HxWx3 in [0, 1] (it may hold NaN: the run folder classifies it), plus manifest extras
    (per-stage seconds, U-Net evaluations, peak memory, beautified prompt...)."""

    image: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def torch_dtype(name: str | None):
    import torch

    return {None: torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def check_dtype(name: str | None) -> str | None:
    if name is not None and name not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{name}'; use one of {', '.join(DTYPES)}")
    return name


def coerce_params(generator: str, defaults: dict[str, Any], overrides: dict[str, Any],
                  extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Merge `overrides` into `defaults`, refusing unknown keys and values of the wrong type (named in the error)."""
    out = dict(defaults)
    allowed = set(defaults) | set(extra_keys)
    for key, value in overrides.items():
        if key not in allowed:
            raise UserError(f"generator '{generator}' has no parameter '{key}'{did_you_mean(key, allowed)}")
        default = defaults.get(key)
        if default is not None and value is not None:
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise UserError(f"parameter '{key}' of '{generator}' must be true or false, got {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise UserError(f"parameter '{key}' of '{generator}' must be an integer, got {value!r}")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UserError(f"parameter '{key}' of '{generator}' must be a number, got {value!r}")
                value = float(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise UserError(f"parameter '{key}' of '{generator}' must be a string, got {value!r}")
        out[key] = value
    for key in ("height", "width", "steps"):
        if key in out and isinstance(out[key], int) and out[key] < 1:
            raise UserError(f"parameter '{key}' of '{generator}' must be at least 1, got {out[key]}")
    return out


def parse_set_options(items: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are parsed as YAML scalars (so 7 is an int, 3.0 a float, true a bool)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


class Generator(ABC):
    """A text-to-image system. Subclasses set `defaults`, implement `load` and `generate`.

    The contract: `generate` returns one output per request, in order, and the image for a request depends only on
    the request (its seed and prompt) and the parameters, never on the other requests in the batch.
    """

    #: parameters a catalog entry may set, with their defaults (height, width, steps, guidance at least)
    defaults: ClassVar[dict[str, Any]] = {}
    #: keys accepted besides the defaults (e.g. optional weights paths)
    extra_keys: ClassVar[tuple[str, ...]] = ()
    #: True when the weights are built locally (tests and the demo use only these)
    offline: ClassVar[bool] = False

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        self.name = name
        self.params = coerce_params(name, type(self).defaults, params, type(self).extra_keys)
        self.device = device
        self.dtype = check_dtype(dtype)
        self._loaded = False
        self.load_seconds: float | None = None
        self.warnings: list[str] = []

    def ensure_loaded(self) -> None:
        if not self._loaded:
            t0 = time.perf_counter()
            self.load()
            self.load_seconds = time.perf_counter() - t0
            self._loaded = True

    @abstractmethod
    def load(self) -> None:
        """Load weights (from the cache, local paths or the hub) onto `self.device`."""

    @abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        """Make one image per request."""

    # ---- what the run records -----------------------------------------------------------------------------------
    def manifest_fields(self) -> dict[str, Any]:
        """Per-row columns that come from the parameters: width, height, steps, guidance."""
        p = self.params
        return {"width": p.get("width"), "height": p.get("height"), "steps": p.get("steps"),
                "guidance": p.get("guidance")}

    def describe(self) -> dict[str, Any]:
        """The generator section of run.json: name, class, resolved parameters, weights and their sources."""
        cls = type(self)
        return {"name": self.name, "class": f"{cls.__module__}:{cls.__qualname__}", "params": dict(self.params),
                "device": self.device, "dtype": self.dtype or "fp32", "offline": cls.offline,
                "weights": self.weights_info(), "warnings": list(self.warnings)}

    def weights_info(self) -> dict[str, Any]:
        return {}

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to resume into an existing folder."""
        return {"generator": self.name, "params": dict(self.params)}

    def close(self) -> None:  # noqa: B027 - optional hook, most generators free nothing explicitly
        """Free memory (called when a benchmark moves to the next generator)."""
