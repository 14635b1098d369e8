"""The generator interface every family implements, and the parameter handling they share."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from k3eval.errors import UserError, did_you_mean

DTYPES = ("fp32", "fp16", "bf16")
#: Largest height / width any generator accepts, checked before anything is allocated: 4x the 1024 px the largest
#: models here were trained at; a typo such as `height=100000000` would otherwise take all memory.
MAX_SIDE = 4096
#: Bounds every generator applies to these parameters when it has them (inclusive). Steps: the schedulers here have
#: 1000 training timesteps, and no sampler can visit more.
BOUNDS: dict[str, tuple[int, int]] = {"height": (1, MAX_SIDE), "width": (1, MAX_SIDE), "steps": (1, 1000)}

#: How every generator draws its noise unless it says otherwise (run.json `seed.noise`).
NOISE_RULE = "initial noise drawn on the CPU in float32 from the image seed"

log = logging.getLogger("k3eval")


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
    check_bounds(generator, out, BOUNDS)
    return out


def check_bounds(generator: str, params: dict[str, Any], bounds: dict[str, tuple[int, int]]) -> None:
    """Refuse integer parameters outside their [low, high] bounds, naming the parameter, the value and the range."""
    for key, (low, high) in bounds.items():
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
            why = " (k3eval's limit, see docs/generation.md)" if key in ("height", "width") else ""
            raise UserError(f"parameter '{key}' of '{generator}' must be between {low} and {high}{why}, got {value}")


def check_choice(generator: str, params: dict[str, Any], key: str, allowed: Sequence[str]) -> None:
    """Refuse a string parameter outside `allowed`."""
    if params.get(key) not in allowed:
        raise UserError(f"parameter '{key}' of '{generator}': got {params.get(key)!r}; use one of {', '.join(allowed)}")


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

    The contract: `__init__` checks the parameters and loads nothing (so a benchmark can validate every generator
    before any runs), `generate` returns one output per request, in order, and the image for a request depends only on
    the request (its seed and prompt) and the parameters, never on the other requests in the batch.
    """

    #: parameters a catalog entry may set, with their defaults (height, width, steps, guidance at least)
    defaults: ClassVar[dict[str, Any]] = {}
    #: keys accepted besides the defaults (e.g. optional weights paths)
    extra_keys: ClassVar[tuple[str, ...]] = ()
    #: True when the weights are built locally (tests and the demo use only these)
    offline: ClassVar[bool] = False
    #: height and width must be multiples of this; `rounds_size` says whether the model rounds them up itself (then
    #: k3eval rounds up first, with a warning, so the recorded size is the size made) or refuses them (then so does
    #: k3eval, before loading anything)
    size_multiple: ClassVar[int] = 1
    rounds_size: ClassVar[bool] = False
    #: why sizes are multiples of `size_multiple` (named in the messages)
    size_reason: ClassVar[str] = ""

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        self.name = name
        self.params = coerce_params(name, type(self).defaults, params, type(self).extra_keys)
        self.device = device
        self.dtype = check_dtype(dtype)
        self._loaded = False
        self.load_seconds: float | None = None
        self.warnings: list[str] = []
        #: every repository or local folder the load read, with the commit a hub revision resolved to (hub.py)
        self.repositories: list[dict[str, Any]] = []
        #: prompt text -> its token count, for prompts longer than the text encoder takes (cut at generation)
        self.truncated: dict[str, int] = {}
        self.token_limit: int | None = None
        self._size_noted = False
        for key in ("height", "width"):
            self._fit_size(key)

    def _fit_size(self, key: str) -> None:
        value, multiple = self.params.get(key), type(self).size_multiple
        if not isinstance(value, int) or multiple <= 1 or value % multiple == 0:
            return
        rounded = -(-value // multiple) * multiple
        if not type(self).rounds_size:
            raise UserError(f"parameter '{key}' of '{self.name}' must be a multiple of {multiple}"
                            f"{self.size_reason}, got {value}; use {rounded}")
        self.warn(f"{self.name}: {key} {value} is not a multiple of {multiple}{self.size_reason}; rounded up to "
                  f"{rounded}, the size the model makes")
        self.params[key] = rounded

    def warn(self, message: str) -> None:
        """A warning for the user now (stderr) and for run.json (`generator.warnings`), once per message."""
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning(message)

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

    # ---- what a load and a generation report ------------------------------------------------------------------
    def record_source(self, role: str, source: str, revision: str | None, probe: str) -> None:
        """Note a component read from `source` (hub id or local path) at `revision`; `probe` is a file of it that the
        load read, used to find the commit in the Hugging Face cache."""
        from k3eval.generators.hub import source_record

        self.repositories.append(source_record(role, source, revision, probe))

    def token_extras(self, prompt: str, n_tokens: int, limit: int) -> dict[str, Any]:
        """Manifest columns for one prompt's token count; a prompt over `limit` is cut by the text encoder, which is
        counted for run.json and warned about once per prompt."""
        self.token_limit = limit
        truncated = n_tokens > limit
        if truncated and prompt not in self.truncated:
            self.truncated[prompt] = n_tokens
            log.warning("%s: prompt of %d tokens cut to the text encoder's %d: %.80r", self.name, n_tokens, limit,
                        prompt)
        return {"prompt_tokens": int(n_tokens), "prompt_truncated": bool(truncated)}

    def note_output_size(self, height: int, width: int) -> None:
        """Warn (once) when the images made are not the size the parameters ask for; the manifest records the size
        of each image as made."""
        want = (self.params.get("height"), self.params.get("width"))
        if self._size_noted or None in want or (height, width) == want:
            return
        self._size_noted = True
        self.warn(f"{self.name}: asked for {want[0]}x{want[1]} (height x width), the model made {height}x{width}; "
                  "the manifest records the size made")

    # ---- what the run records -----------------------------------------------------------------------------------
    def manifest_fields(self) -> dict[str, Any]:
        """Per-row columns that come from the parameters: width, height, steps, guidance."""
        p = self.params
        return {"width": p.get("width"), "height": p.get("height"), "steps": p.get("steps"),
                "guidance": p.get("guidance")}

    def describe(self) -> dict[str, Any]:
        """The generator section of run.json: name, class, resolved parameters, weights and their sources, the
        repositories read (with commits), prompts cut by the text encoder in this process, warnings."""
        cls = type(self)
        out = {"name": self.name, "class": f"{cls.__module__}:{cls.__qualname__}", "params": dict(self.params),
               "device": self.device, "dtype": self.dtype or "fp32", "offline": cls.offline,
               "weights": self.weights_info(), "repositories": list(self.repositories),
               "warnings": list(self.warnings)}
        if self.token_limit is not None:
            out["truncated_prompts"] = {"count": len(self.truncated), "token_limit": self.token_limit,
                                        "first": [p[:200] for p in list(self.truncated)[:5]]}
        return out

    def weights_info(self) -> dict[str, Any]:
        return {}

    def noise_rule(self) -> str:
        """How this generator draws its noise from the image seed (run.json `seed.noise`)."""
        return NOISE_RULE

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to resume into an existing folder."""
        return {"generator": self.name, "params": dict(self.params)}

    def close(self) -> None:  # noqa: B027 - optional hook, most generators free nothing explicitly
        """Free memory (called when a benchmark moves to the next generator)."""
