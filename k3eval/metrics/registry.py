"""The metrics `k3eval score` knows, by name. Entries are "module:Class" strings, imported on first use, so listing
names imports no torch. A new metric is one module with a `k3eval.metrics.api.Metric` subclass plus one line in
`BUILTIN` (or a `register_metric` call, e.g. from a plugin). The order here is the order of the stored summary.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from k3eval.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from k3eval.metrics.api import Metric

BUILTIN: dict[str, str] = {
    "clip_score": "k3eval.metrics.clip_metrics:ClipScore",
    "fid": "k3eval.metrics.inception_metrics:Fid",
    "kid": "k3eval.metrics.inception_metrics:Kid",
    "is": "k3eval.metrics.inception_metrics:InceptionScore",
    "cmmd": "k3eval.metrics.clip_metrics:Cmmd",
    "geneval": "k3eval.metrics.geneval:Geneval",
    "t2i_compbench": "k3eval.metrics.t2i_compbench:T2ICompBench",
    "pickscore": "k3eval.metrics.pickscore:PickScore",
    "hpsv21": "k3eval.metrics.hps:HpsV21",
    "imagereward": "k3eval.metrics.imagereward:ImageReward",
    "aesthetic": "k3eval.metrics.aesthetic:Aesthetic",
    "vqascore": "k3eval.metrics.vqascore:VqaScore",
}
_REGISTRY: dict[str, str | type[Metric]] = dict(BUILTIN)


def register_metric(name: str, target: str | type[Metric]) -> None:
    """Make `name` a metric of `k3eval score`: `target` is a Metric subclass or "module:Class"."""
    _REGISTRY[name] = target


def metric_names() -> list[str]:
    return list(_REGISTRY)


def get_metric(name: str) -> type[Metric]:
    """The Metric class registered as `name`; a UserError with the closest name when there is none."""
    if name not in _REGISTRY:
        raise UserError(f"--metrics: unknown metric '{name}'{did_you_mean(name, _REGISTRY)}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
        _REGISTRY[name] = target
    if target.name != name:
        raise RuntimeError(f"metric registered as {name!r} is named {target.name!r}")
    return target
