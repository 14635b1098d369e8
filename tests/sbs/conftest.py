"""Fixtures for the study tests: run folders, a vote database on SQLite and on a real PostgreSQL server, Chromium.

The PostgreSQL server is started once per test session with Debian's initdb/pg_ctl in a temporary folder, on a
free localhost port (TCP only), as the `postgres` user when the tests run as root (the server refuses root). Each
test gets a fresh database on it. Without the binaries the PostgreSQL cases are skipped with the reason, and with
CI=true they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_study import chromium_available, launch  # noqa: E402
from helpers import PostgresServer, make_run  # noqa: E402

from k3eval.sbs import dispose_engines  # noqa: E402


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright (skipped with the reason when missing; with CI=true a failure)."""
    why = chromium_available()
    if why:
        if _in_ci():
            pytest.fail(f"browser test cannot run: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server (skips, or fails with CI=true, when it cannot be started)."""
    server = PostgresServer()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        server.stop()
        msg = f"PostgreSQL test server could not be started: {e}"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    yield server
    dispose_engines()
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty vote database: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'votes.db'}"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    yield url
    dispose_engines()


@pytest.fixture
def two_runs(tmp_path) -> dict[str, Path]:
    """Two run folders on the same 6-prompt test set, 2 samples each (12 (prompt, sample) pairs)."""
    return {"model-alpha": make_run(tmp_path / "runs" / "alpha", "gen-alpha", samples=2, seed=1),
            "model-beta": make_run(tmp_path / "runs" / "beta", "gen-beta", samples=2, seed=2)}
