"""`k3eval sbs create/status/export/revoke` and the benchmark `study` stage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import make_run

import k3eval.sbs as sbs
from k3eval.benchmark import BenchmarkContext
from k3eval.cli import main
from k3eval.config import BenchmarkSpec
from k3eval.errors import UserError
from k3eval.sbs.stage import run_stage

REPO = Path(__file__).resolve().parents[2]


def test_create_status_export_revoke(two_runs, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    names = tmp_path / "people.txt"
    names.write_text("# annotators\nalice\nbob\n\ncarol\n", encoding="utf-8")
    runs = [f"{n}={p}" for n, p in two_runs.items()]
    assert main(["sbs", "create", "cli-study", "--runs", *runs, "--annotators", str(names), "--overlap", "2",
                 "--db", db, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    links = dict(re.findall(r"^  (\S+)\t(http://\S+)$", out, flags=re.M))
    assert set(links) == {"alice", "bob", "carol", "admin"}
    assert not any("cli-study" in link or "study=" in link for link in links.values())  # the name may unblind
    assert "k3eval sbs serve cli-study --db" in out
    token = links["alice"].split("token=")[1]
    who = sbs.authenticate(token, "cli-study", db)
    view = sbs.next_item(who)
    sbs.record_vote(who, view.item_id, "alignment", "left", 2.0)

    # the same name again is refused with one line and exit code 2
    assert main(["sbs", "create", "cli-study", "--runs", *runs, "--annotators", "2", "--overlap", "1",
                 "--db", db]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["sbs", "status", "cli-study", "--db", db]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^alice\s+0/\d+\s+1\s", out, flags=re.M) and "votes: 1 of" in out

    target = tmp_path / "votes.parquet"
    assert main(["sbs", "export", "cli-study", "--out", str(target), "--db", db]) == 0
    df = pd.read_parquet(target)
    assert len(df) == 1 and df.loc[0, "annotator"] == "alice"

    assert main(["sbs", "revoke", "cli-study", "alice", "--db", db]) == 0
    with pytest.raises(sbs.AccessDenied):
        sbs.authenticate(token, "cli-study", db)
    assert main(["sbs", "status", "nope", "--db", db]) == 2
    assert "study 'nope' not found" in capsys.readouterr().err


def test_missing_database_and_bad_arguments_are_one_line_errors(two_runs, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'absent.db'}"
    assert main(["sbs", "status", "x", "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found; create a study first" in err
    runs = [str(p) for p in two_runs.values()]
    assert main(["sbs", "create", "s", "--runs", *runs, "--annotators", "2", "--overlap", "3", "--db", db]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["sbs", "create", "s", "--runs", *runs, "--annotators", "nobody.txt", "--overlap", "1",
                 "--db", db]) == 2
    assert "--annotators: expected a number or a file" in capsys.readouterr().err


def test_sbs_help_imports_no_heavy_modules():
    code = ("import sys; from k3eval.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'pandas', 'PIL', 'scipy', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert "torch" not in out.stdout and "pandas" not in out.stdout


def _ctx(tmp_path, study: dict | None) -> BenchmarkContext:
    spec = BenchmarkSpec.model_validate({
        "name": "bench", "seed": 4, "prompts": {"set": "parti"}, "runs_dir": str(tmp_path / "runs"),
        "generators": [{"generator": "tiny-kandinsky3"}, {"generator": "tiny-sd"}], "study": study})
    for i, label in enumerate(["tiny-kandinsky3", "tiny-sd"]):
        make_run(tmp_path / "runs" / label, label, seed=i)
    return BenchmarkContext(spec, tmp_path / "bench.yaml", root=tmp_path, progress=False)


def test_stage_creates_the_study_once_and_force_recreates(tmp_path, capsys):
    study = {"name": "demo-study", "annotators": 2, "overlap": 2, "db": "sqlite:///votes.db",
             "links_file": "links.txt"}
    ctx = _ctx(tmp_path, study)
    run_stage(ctx)
    out = capsys.readouterr().out
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    assert ctx.outputs["study"] == {"name": "demo-study", "db_url": db, "links_file": str(tmp_path / "links.txt")}
    assert "open the annotation app with: k3eval sbs serve demo-study --db" in out
    lines = (tmp_path / "links.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["annotator-01", "annotator-02", "admin"]
    assert (tmp_path / "links.txt").stat().st_mode & 0o077 == 0
    info = sbs.study_info("demo-study", db)
    assert set(info["runs"]) == {"tiny-kandinsky3", "tiny-sd"} and info["seed"] == 4 and info["overlap"] == 2

    token = lines[0].split("token=")[1]
    who = sbs.authenticate(token, "demo-study", db)
    sbs.record_vote(who, sbs.next_item(who).item_id, "quality", "equal", 1.0)
    run_stage(ctx)  # a rerun keeps the study and its votes
    assert "already exists (1 votes so far)" in capsys.readouterr().out
    assert sbs.study_info("demo-study", db)["n_votes"] == 1

    ctx.force = True
    run_stage(ctx)
    assert sbs.study_info("demo-study", db)["n_votes"] == 0
    with pytest.raises(sbs.AccessDenied):
        sbs.authenticate(token, "demo-study", db)


def test_stage_section_is_validated_and_optional(tmp_path, capsys):
    run_stage(_ctx(tmp_path, None))
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"study: overlap: Input should be greater than or equal to 1"):
        run_stage(_ctx(tmp_path, {"overlap": 0}))
    with pytest.raises(UserError, match=r"study: colour: unknown key"):
        run_stage(_ctx(tmp_path, {"colour": "red"}))


def test_stage_uses_the_benchmarks_comparisons(tmp_path):
    spec = BenchmarkSpec.model_validate({
        "name": "bench", "prompts": {"set": "parti"}, "runs_dir": str(tmp_path / "runs"),
        "generators": [{"generator": "tiny-kandinsky3"}, {"generator": "tiny-sd"}, {"generator": "tiny-sd",
                                                                                      "name": "sd-b"}],
        "comparisons": [{"a": "tiny-sd", "b": "tiny-kandinsky3"}],
        "study": {"name": "pairs-study", "annotators": 2, "overlap": 1, "db": "sqlite:///votes.db"}})
    for i, label in enumerate(["tiny-kandinsky3", "tiny-sd", "sd-b"]):
        make_run(tmp_path / "runs" / label, label, seed=i)
    run_stage(BenchmarkContext(spec, tmp_path / "bench.yaml", root=tmp_path, progress=False))
    votes_db = f"sqlite:///{tmp_path / 'votes.db'}"
    info = sbs.study_info("pairs-study", votes_db)
    assert [tuple(c) for c in info["comparisons"]] == [("tiny-sd", "tiny-kandinsky3")]


def test_parse_pairs():
    from k3eval.sbs.cli import parse_pairs

    assert parse_pairs("a:b, c:d") == [("a", "b"), ("c", "d")]
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="RUN_A:RUN_B"):
        parse_pairs("a-b")


def test_create_refuses_an_unpaired_study_unless_asked_and_records_it(tmp_path, capsys):
    from k3eval.runs import RunFolder

    runs = []
    for name, seed in (("a", 0), ("b", 1)):
        path = make_run(tmp_path / name, f"gen-{name}", samples=1)
        run = RunFolder(path)
        run.write_info({**run.read_info(), "seed": {"benchmark_seed": seed, "rule": "rule", "noise": "cpu"}})
        runs.append(str(path))
    db_file = tmp_path / "votes.db"
    args = ["sbs", "create", "s", "--runs", *runs, "--annotators", "2", "--overlap", "1", "--db", f"sqlite:///{db_file}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a paired comparison (a vs b: benchmark seed 0 vs 1)" in err and "--unpaired" in err
    assert not db_file.exists()
    assert main([*args, "--unpaired"]) == 0
    assert "pairing: UNPAIRED (--unpaired)" in capsys.readouterr().out
    info = sbs.study_info("s", f"sqlite:///{db_file}")
    assert info["pairing"]["mode"] == "unpaired" and info["pairing"]["differences"] == ["a vs b: benchmark seed 0 vs 1"]
