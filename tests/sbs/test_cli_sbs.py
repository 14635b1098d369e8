"""`k3eval sbs` on the command line: bad invocations in subprocesses (exit code 2, one line, no traceback, nothing
written), `status` as an aligned table that says open or closed, and `close` / `reopen`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from k3eval.cli import main
from k3eval.sbs import authenticate, create_study, dispose_engines, next_item, record_vote

REPO = Path(__file__).resolve().parents[2]


def k3eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "k3eval", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and modification time."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.fixture
def work(tmp_path, two_runs):
    """A folder with two run folders, a study in votes.db, a plain file and a folder named like a csv file."""
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    created = create_study("cli-study", two_runs, ["ann-a", "ann-b"], overlap=1, db_url=db)
    dispose_engines()
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "taken.csv").mkdir()
    return tmp_path, created, two_runs


BAD = [
    # (arguments, with {db} the study's database, {work} the folder, {runs} the two run folders), text expected
    (["sbs", "create", "new", "--runs", "{runs}", "--annotators", "1", "--overlap", "1", "--db",
      "mysql://user@localhost/votes"], "pip install mysqlclient"),
    (["sbs", "status", "cli-study", "--db", "mysql+pymysql://user:secret@db.example/votes"], "pip install PyMySQL"),
    (["sbs", "serve", "cli-study", "--db", "mysql://user@localhost/votes"], "mysqlclient"),
    (["sbs", "create", "new", "--runs", "{runs}", "--annotators", "1", "--overlap", "1", "--db",
      "nosuchdb://host/x"], "unknown kind of database 'nosuchdb'"),
    (["sbs", "create", "new", "--runs", "{runs}", "--annotators", "1", "--overlap", "1", "--db",
      "sqlite:///{work}/a-file/votes.db"], "cannot create the vote database"),
    (["sbs", "create", "new", "--runs", "{runs}", "--annotators", "1", "--overlap", "1", "--db",
      "sqlite:////proc/k3eval-no-such/votes.db"], "cannot create the vote database"),
    (["sbs", "status", "cli-study", "--db", "sqlite:///{work}/missing.db"], "not found"),
    (["sbs", "export", "cli-study", "--out", "{work}/taken.csv", "--db", "{db}"], "is a folder"),
    (["sbs", "export", "cli-study", "--out", "{work}/a-file/votes.csv", "--db", "{db}"], "cannot write"),
    (["sbs", "export", "cli-study", "--out", "/proc/k3eval-votes.csv", "--db", "{db}"], "cannot write"),
    (["sbs", "export", "cli-study", "--out", "{work}/votes.xlsx", "--db", "{db}"], "expected a .parquet or .csv"),
    (["sbs", "close", "no-such-study", "--db", "{db}"], "study 'no-such-study' not found"),
]


@pytest.mark.parametrize("args, expected", BAD, ids=[" ".join(a[:2]) + f" #{k}" for k, (a, _) in enumerate(BAD)])
def test_bad_invocations_fail_cleanly_and_write_nothing(work, args, expected):
    folder, created, runs = work
    db = created.db_url
    argv: list[str] = []
    for a in args:
        if a == "{runs}":
            argv += [str(p) for p in runs.values()]
        else:
            argv.append(a.replace("{db}", db).replace("{work}", str(folder)))
    before = snapshot(folder)
    r = k3eval(*argv, cwd=folder)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out, out
    assert expected in r.stderr, out
    assert len(r.stderr.strip().splitlines()) == 1, out
    assert "secret" not in out  # a password in a URL is never printed
    assert snapshot(folder) == before
    assert not Path("/proc/k3eval-votes.csv").exists()


def test_status_is_an_aligned_table_and_says_open_or_closed(work, capsys):
    folder, created, _ = work
    who = authenticate(created.tokens["ann-b"], "cli-study", created.db_url, log=False)
    for _ in range(3):
        view = next_item(who)
        for q in view.questions:
            record_vote(who, view.item_id, q.key, "left", 12.345)
    try:
        assert main(["sbs", "status", "cli-study", "--db", created.db_url]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("study 'cli-study' (open):")
        table = out[2:]
        assert table[0].split()[:3] == ["annotator", "done", "votes"] and len(table) == 3
        # A cell is a run of words separated by single spaces; cells are 2+ spaces apart.
        cells = [[(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", line)] for line in table]
        assert [len(c) for c in cells] == [8, 7, 7]  # no flags yet: the last column is empty
        for k in range(1, 7):  # the number columns end where their header ends
            assert len({row[k][1] for row in cells}) == 1, table
        assert {row[0][0] for row in cells} == {0}
        ann_b = [c[2] for c in cells[2]]
        assert ann_b[0] == "ann-b" and ann_b[1].startswith("3/") and ann_b[2:] == ["6", "-", "-", "12.3", "100"]
        assert main(["sbs", "close", "cli-study", "--db", created.db_url]) == 0
        assert "closed" in capsys.readouterr().out
        assert main(["sbs", "status", "cli-study", "--db", created.db_url]) == 0
        assert re.match(r"study 'cli-study' \(closed since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\):",
                        capsys.readouterr().out)
        view = next_item(who)
        with pytest.raises(Exception, match="closed"):
            record_vote(who, view.item_id, "alignment", "left", 1.0)
        assert main(["sbs", "close", "cli-study", "--db", created.db_url]) == 0
        assert "was already closed" in capsys.readouterr().out
        assert main(["sbs", "reopen", "cli-study", "--db", created.db_url]) == 0
        assert "reopened" in capsys.readouterr().out
        assert record_vote(who, view.item_id, "alignment", "left", 1.0).status == "recorded"
    finally:
        dispose_engines()
