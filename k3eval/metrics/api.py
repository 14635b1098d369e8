"""The score stage's interface: extractors turn images or prompts into cached per-item values, metrics reduce them.

A metric (a `Metric` subclass, registered in `k3eval.metrics.registry`) declares in `needs()` what it reads, as
named roles: `{"image": Need(extractor), "text": Need(text_extractor, text="prompt")}`. The stage (`score.py`)
collects the needs of every requested metric, extracts each distinct one once through the feature cache (two
metrics asking for extractors with the same fingerprint share the features), and hands each metric a `ScoreData`
whose `data[role]` holds one value per scored image, in manifest-row order. `compute()` returns a `MetricResult`
(value, interval, per category, protocol, warnings, per-image columns); the stage writes it to `scores/`.

Extractors come in three kinds, all with a `fingerprint` (everything their output depends on: it keys the cache)
and a batched `run()`:
- `ImageExtractor`: `prepare(image)` on one decoded 8-bit RGB image (CPU only, no model, runs in decoding worker
  processes), then `run(batch of prepared inputs)` in the main process; cached by the image's sha256.
- `ImageTextExtractor`: the same with a text per image (`prepare(image, text)`), e.g. a VQA model asked about the
  prompt; cached by (image sha256, text).
- `TextExtractor`: `run(batch of texts)`; cached by the text's sha256.
`run()` returns one float32 array per input (an N x D array, or a list of arrays of any shape: detections, several
answers). The stage decodes each image once for all extractors that need it, in worker processes, in bounded
batches: what accumulates is outputs, never images. An optional `setup()` runs in the main process before any
image is prepared (when something must be computed), for what `prepare` needs from a loaded model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from k3eval.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from pydantic import BaseModel

    from k3eval.metrics.reference import Reference
    from k3eval.metrics.score import ScoreOptions


# ---- extractors ----------------------------------------------------------------------------------------------------
class Extractor(ABC):
    """Something that maps inputs to one float32 array each. Load models lazily in `run`, never in `__init__`:
    constructing an extractor must stay cheap, because a fully cached rescoring never calls `run`.

    Image extractors run `prepare` in decoding worker processes forked from the main one (they inherit the extractor
    as it is after `setup`); what `prepare` returns is pickled back to the main process, which runs `run`."""

    kind: ClassVar[str] = ""
    batch_size: int = 32

    @property
    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything the output depends on (model, weights and their sha256, preprocessing, dtype, versions)."""

    def setup(self) -> None:
        """Called once in the main process before any image is prepared, only when something must be computed: load
        here what `prepare` needs and cannot build alone in a worker (e.g. a transform that comes with the model)."""
        return None

    @abstractmethod
    def run(self, batch: list) -> np.ndarray | list[np.ndarray]:
        """One output per input of the batch, in order."""


class ImageExtractor(Extractor):
    kind = "image"

    def prepare(self, image: np.ndarray) -> Any:
        """CPU preprocessing of one H x W x 3 uint8 image (resize, crop, normalise); what `run` receives."""
        return image


class ImageTextExtractor(Extractor):
    kind = "image_text"

    def prepare(self, image: np.ndarray, text: str) -> Any:
        """CPU preprocessing of one image and its text (tokenising may happen here or in `run`)."""
        return image, text


class TextExtractor(Extractor):
    kind = "text"


@dataclass(frozen=True)
class Need:
    """What a metric reads under one role: an extractor, and for text kinds where the text of each image comes from
    (a column of the manifest rows, `prompt` by default, or a function of a row)."""

    extractor: Extractor
    text: str | Callable[[dict], str] | None = None
    desc: str | None = None  # progress bar label

    def texts(self, rows: pd.DataFrame) -> list[str]:
        """The text of every row, for text and image-text extractors."""
        src = self.text or "prompt"
        if callable(src):
            return [str(src(r)) for r in rows.to_dict("records")]
        if src not in rows.columns:
            raise UserError(f"{type(self.extractor).__name__} needs the column '{src}' of the run manifest, which "
                            f"this run does not have (columns: {', '.join(map(str, rows.columns))})")
        return rows[src].astype(str).tolist()


# ---- what a metric receives and returns ----------------------------------------------------------------------------
class ScoreContext:
    """What `Metric.needs` may look at: the options, and `shared()` to reuse one extractor object between metrics."""

    def __init__(self, opts: ScoreOptions):
        self.opts = opts
        self._shared: dict[tuple, Any] = {}

    def shared(self, factory: Callable[..., Any], *args: Any) -> Any:
        """`factory(*args)`, built once per scoring call (so resolving weights happens once)."""
        key = (factory, *args)
        if key not in self._shared:
            self._shared[key] = factory(*args)
        return self._shared[key]


def weights_warning(fingerprint: dict[str, Any], what: str) -> list[str]:
    """The warning every number computed with synthetic or non-standard weights carries (empty otherwise)."""
    if fingerprint.get("synthetic_weights"):
        return [f"{what} computed with synthetic (seeded random, non-standard) weights: for testing the pipeline "
                "only, not comparable with any published number"]
    if fingerprint.get("standard_weights") is False:
        return [f"{what} computed with non-standard weights (sha256 {fingerprint.get('sha256', '')[:12]}...): "
                "not comparable with numbers computed with the official file"]
    return []


def category_entry(value: float | None, n: int, ci: Sequence[float] | None = None,
                   flag: str | None = None) -> dict[str, Any]:
    """One entry of `per_category` in the stored format (non-finite values are stored as null)."""
    ok = value is not None and np.isfinite(value)
    return {"value": float(value) if ok else None,
            "ci": [float(ci[0]), float(ci[1])] if ci is not None and np.all(np.isfinite(ci)) else None,
            "n": int(n), "flag": flag}


@dataclass
class MetricResult:
    """What `Metric.compute` returns. `per_image` holds extra columns of per_image.parquet (one value per scored
    image, row order), `extra` further keys of the summary entry (e.g. `std`). `n` defaults to the images scored."""

    protocol: dict[str, Any]
    value: float | None = None
    ci: Sequence[float] | None = None
    ci_method: str | None = None
    warnings: list[str] = field(default_factory=list)
    per_category: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_image: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    n: int | None = None


@dataclass
class ScoreData:
    """The inputs of one metric: the scored manifest rows and, per role of its `needs()`, one value per row."""

    rows: pd.DataFrame
    features: dict[str, np.ndarray | list[np.ndarray]]
    extractors: dict[str, Extractor]
    opts: ScoreOptions
    settings: BaseModel | None = None
    reference: Reference | None = None
    reference_warnings: list[str] = field(default_factory=list)

    def __getitem__(self, role: str) -> np.ndarray | list[np.ndarray]:
        """N x D array when every value of the role has the same shape, else a list of arrays."""
        return self.features[role]

    @property
    def n(self) -> int:
        return len(self.rows)

    @cached_property
    def groups(self) -> np.ndarray:
        """The prompt of each image: the unit of every resampling."""
        return self.rows["prompt_id"].astype(str).to_numpy()

    @cached_property
    def cats(self) -> np.ndarray:
        return self.rows["category"].fillna("").astype(str).to_numpy()

    @cached_property
    def categories(self) -> list[str]:
        return sorted(set(self.cats) - {""})

    def category_indices(self) -> Iterator[tuple[str, np.ndarray]]:
        """(category, row indices) for every named category, sorted by name."""
        for c in self.categories:
            yield c, np.flatnonzero(self.cats == c)

    def bootstrap_mean(self, values: np.ndarray, idx: np.ndarray | None = None):
        """Percentile interval of the mean of per-image `values` (optionally of rows `idx`) by resampling prompts,
        `opts.bootstrap` resamples; None when turned off or fewer than 2 images."""
        from k3eval.stats import bootstrap_ci

        v, g = (values, self.groups) if idx is None else (values[idx], self.groups[idx])
        if self.opts.bootstrap <= 0 or len(v) < 2:
            return None
        return bootstrap_ci(v, groups=g, n_resamples=self.opts.bootstrap, seed=self.opts.seed)

    def set_bootstrap(self, stat: Callable[[np.ndarray], float]):
        """Percentile interval of a set metric `stat(row indices)` by resampling prompts (all images of a prompt
        together), `opts.set_bootstrap` resamples; None when turned off."""
        from k3eval.stats import bootstrap_ci

        if self.opts.set_bootstrap <= 0 or self.n < 2:
            return None
        return bootstrap_ci(np.arange(self.n, dtype=np.float64), groups=self.groups,
                            stat=lambda idx: stat(idx.astype(np.int64)), n_resamples=self.opts.set_bootstrap,
                            seed=self.opts.seed)


# ---- metrics -------------------------------------------------------------------------------------------------------
class Metric(ABC):
    """A registered metric. Subclasses set the class attributes, `needs` and `compute` (or derive from
    `PerImageMetric` / `SetMetric`, which do the reduction). Options beyond the shared ones come through `Settings`
    (a pydantic model; `--set NAME.KEY=VALUE` on the command line, `metrics.settings.NAME` in a benchmark)."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    unit: ClassVar[str] = ""
    #: part of the default metric set (`k3eval score RUN` without --metrics)
    default: ClassVar[bool] = False
    #: the reference slot it compares with ("inception" or "clip", also the role of its needs), or None
    reference: ClassVar[str | None] = None
    #: whether it reads the reference's features (KID), not only its mean and covariance (FID): a folder given as
    #: the reference is then kept whole in memory instead of as running statistics
    reference_features: ClassVar[bool] = True
    Settings: ClassVar[type[BaseModel] | None] = None

    def __init__(self, settings: dict[str, Any] | None = None):
        self.settings = self._validate_settings(settings or {})

    @classmethod
    def _validate_settings(cls, settings: dict[str, Any]):
        if cls.Settings is None:
            if settings:
                raise UserError(f"--set {cls.name}.{next(iter(settings))}: {cls.name} takes no settings")
            return None
        from pydantic import ValidationError

        from k3eval.config import format_validation_error

        try:
            return cls.Settings.model_validate(settings)
        except ValidationError as e:
            raise UserError(format_validation_error(f"--set {cls.name}", e)) from None

    @abstractmethod
    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        """Role -> what to extract. Build extractors through `ctx.shared` so that metrics share them."""

    @abstractmethod
    def compute(self, data: ScoreData) -> MetricResult:
        """Reduce the extracted values to the stored result."""


class PerImageMetric(Metric):
    """One number per image (`per_image_scores`); the value is their mean, with a bootstrap interval over prompts,
    per category with its own interval; the per-image numbers are stored in per_image.parquet under `name`."""

    @abstractmethod
    def per_image_scores(self, data: ScoreData) -> tuple[np.ndarray, MetricResult]:
        """(score of every image, result holding protocol, warnings, extra columns and keys; value left empty)."""

    def compute(self, data: ScoreData) -> MetricResult:
        scores, res = self.per_image_scores(data)
        scores = np.asarray(scores, dtype=np.float64)
        res.per_image = {self.name: scores, **res.per_image}
        res.value = float(scores.mean())
        res.ci = data.bootstrap_mean(scores)
        res.ci_method = f"bootstrap over prompts, {data.opts.bootstrap} resamples"
        res.per_category = {c: category_entry(scores[idx].mean(), len(idx), data.bootstrap_mean(scores, idx))
                            for c, idx in data.category_indices()}
        return res


class SetMetric(Metric):
    """A number of the whole set of images (FID, KID, IS, CMMD): `statistic(data)` returns a function of row
    indices; the stage reports it on all rows, per category with at least `min_category` images (else flagged
    `too_small`), and with a prompt-bootstrap interval when `--set-bootstrap` asks for one. A statistic may return
    an object with `mean` and `std` (stored as value and `std`)."""

    @abstractmethod
    def statistic(self, data: ScoreData) -> Callable[[np.ndarray], Any]:
        """The metric as a function of row indices (raise UserError here for unusable inputs)."""

    @abstractmethod
    def describe(self, data: ScoreData, full: Any) -> MetricResult:
        """Protocol, warnings and extra keys, given the statistic of all rows."""

    def compute(self, data: ScoreData) -> MetricResult:
        stat = self.statistic(data)

        def value_of(idx: np.ndarray) -> float:
            r = stat(idx)
            return float(getattr(r, "mean", r))

        full = stat(np.arange(data.n))
        res = self.describe(data, full)
        res.value = float(getattr(full, "mean", full))
        if hasattr(full, "std"):
            res.extra.setdefault("std", float(full.std))
        res.ci = data.set_bootstrap(value_of)
        res.ci_method = f"bootstrap over prompts, {data.opts.set_bootstrap} resamples"
        floor = max(2, data.opts.min_category)
        res.per_category = {c: category_entry(value_of(idx), len(idx)) if len(idx) >= floor
                            else category_entry(None, len(idx), flag="too_small")
                            for c, idx in data.category_indices()}
        return res
