"""What a report reads: run folders (run.json, manifest, stored scores), the study's facts and votes, and the
statistics of those votes. Everything is read and checked here before anything is written: a report whose runs
are not the study's runs is refused with both sets named."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from k3eval.errors import UserError


@dataclass
class RunData:
    name: str
    path: Path
    info: dict[str, Any]
    manifest: pd.DataFrame
    scores: dict[str, Any] | None


def resolve_runs(runs: dict[str, str | Path] | list[str | Path]) -> dict[str, Path]:
    """{name: folder}: a dict as given; a list of folders or NAME=FOLDER strings, named by run.json's run_name or
    the folder name."""
    if isinstance(runs, dict):
        return {str(k): Path(v) for k, v in runs.items()}
    out: dict[str, Path] = {}
    for r in runs:
        text = str(r)
        if "=" in text and not Path(text).exists():
            name, _, p = text.partition("=")
            path = Path(p)
        else:
            path = Path(text)
            name = ""
            if (path / "run.json").exists():
                try:
                    name = json.loads((path / "run.json").read_text(encoding="utf-8")).get("run_name") or ""
                except (OSError, json.JSONDecodeError):
                    name = ""
            name = name or path.name
        if name in out:
            raise UserError(f"--runs: two runs are named {name!r}; name them with NAME=FOLDER")
        out[name] = path
    return out


def load_runs(runs: dict[str, Path]) -> list[RunData]:
    from k3eval.runs import load_run

    out = []
    for name, path in runs.items():
        run = load_run(path)
        summary = None
        sp = run.scores_dir / "summary.json"
        if sp.exists():
            try:
                summary = json.loads(sp.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{sp} is not valid JSON: {e}") from None
        out.append(RunData(name, Path(path), run.read_info(), run.read_manifest(), summary))
    return out


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _identity(path: Path) -> Any:
    try:
        return json.loads((path / "run.json").read_text(encoding="utf-8")).get("identity")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def check_runs_against_study(named: dict[str, Path], study_runs: dict[str, Path], study: str
                             ) -> tuple[list[str], list[str]]:
    """(runs given but not in the study, study runs not given) after refusing what would put one set of systems'
    metrics beside another set's votes: a study folder given under another name, a study name given for a
    different run, or no study run among `named` at all. Errors name both sets."""
    given = ", ".join(f"{n}={p}" for n, p in named.items())
    theirs = ", ".join(f"{n}={p}" for n, p in study_runs.items())
    for name, path in named.items():
        for s_name, s_path in study_runs.items():
            if s_name != name and _same_folder(path, s_path):
                raise UserError(f"--runs: the run folder {path} is named {name!r} here but {s_name!r} in study "
                                f"{study!r}; give it as {s_name}={path} so that one system has one name")
        if name in study_runs and not _same_folder(path, study_runs[name]):
            mine, other = _identity(path), _identity(study_runs[name])
            if mine is not None and other is not None and mine != other:
                raise UserError(f"--runs: run {name!r} is {path} here but study {study!r} has {name!r} = "
                                f"{study_runs[name]}, a different run (run.json identity differs)")
    if study_runs and not set(named) & set(study_runs):
        raise UserError(f"--runs: none of the runs ({given}) is a run of study {study!r} ({theirs}); the report would "
                        "show metrics of one set of systems beside votes of another. Give the study's runs")
    return [n for n in named if n not in study_runs], [n for n in study_runs if n not in named]


@dataclass
class ReportInputs:
    """Everything the sections read, gathered and checked once."""

    runs: list[RunData]
    named: dict[str, Path]
    info: dict[str, Any]
    votes: pd.DataFrame | None
    stats_all: Any = None
    stats_excl: Any = None
    extra_runs: list[str] = field(default_factory=list)  # given with --runs, not in the study
    absent_runs: list[str] = field(default_factory=list)  # in the study, not given with --runs
    prompts: dict[str, str] = field(default_factory=dict)
    image_paths: dict[str, dict[tuple[str, int], Path]] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return bool(self.info.get("simulated")) or bool(self.stats_all is not None
                                                        and self.stats_all.summary.get("simulated"))

    @property
    def unscored(self) -> list[str]:
        return [r.name for r in self.runs if not (r.scores and r.scores.get("metrics"))]


def gather(runs: dict[str, str | Path] | list[str | Path], *, study: str | None, db_url: str | None,
           votes: pd.DataFrame | None, info: dict[str, Any] | None, n_resamples: int, seed: int,
           two_level: bool) -> ReportInputs:
    """Read and check every input of a report (nothing is written)."""
    from k3eval.sbs.analysis import analyze_votes
    from k3eval.sbs.metric_agreement import load_image_scores

    named = resolve_runs(runs)
    if not named:
        raise UserError("--runs: give at least one run folder")
    if votes is None and study is not None:
        from k3eval.sbs import study_info, votes_frame

        info = study_info(study, db_url)
        votes = votes_frame(study, db_url)
    info = dict(info or {})
    study_runs = {k: Path(v) for k, v in (info.get("runs") or {}).items()}
    extra, absent = check_runs_against_study(named, study_runs, str(info.get("name", study)))
    run_data = load_runs(named)
    out = ReportInputs(run_data, named, info, votes, extra_runs=extra, absent_runs=absent)
    if votes is not None:
        scores = load_image_scores({**study_runs, **named})
        kw = dict(n_resamples=n_resamples, seed=seed, two_level=two_level, comparisons=info.get("comparisons"),
                  questions=info.get("questions"))
        out.stats_all = analyze_votes(votes, scores, **kw)
        if out.stats_all.summary["flagged_annotators"]:
            out.stats_excl = analyze_votes(votes, scores, exclude_flagged=True, **kw)
    for r in run_data:
        ok = r.manifest[r.manifest["status"] == "ok"] if len(r.manifest) else r.manifest
        out.prompts.update(dict(zip(ok["prompt_id"].astype(str), ok["prompt"].astype(str))))
        out.image_paths[r.name] = {(str(p), int(s)): r.path / str(f) for p, s, f in
                                   zip(ok["prompt_id"], ok["sample"], ok["path"])}
    for name, path in study_runs.items():
        if name not in out.image_paths and (path / "manifest.parquet").exists():
            m = pd.read_parquet(path / "manifest.parquet")
            m = m[m["status"] == "ok"]
            out.prompts.update(dict(zip(m["prompt_id"].astype(str), m["prompt"].astype(str))))
            out.image_paths[name] = {(str(p), int(s)): path / str(f) for p, s, f in
                                     zip(m["prompt_id"], m["sample"], m["path"])}
    return out


__all__ = ["ReportInputs", "RunData", "check_runs_against_study", "gather", "load_runs", "resolve_runs"]
