"""Fixtures for the study tests: run folders, and a vote database on SQLite and on a real PostgreSQL server.

The PostgreSQL server is started once per test session with Debian's initdb/pg_ctl in a temporary folder, on a
free localhost port (TCP only), as the `postgres` user when the tests run as root (the server refuses root). Each
test gets a fresh database on it. Without the binaries the PostgreSQL cases are skipped with the reason, and with
CI=true they fail instead.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import make_run  # noqa: E402

from k3eval.sbs import dispose_engines  # noqa: E402

PG_BIN = Path(os.environ.get("K3EVAL_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb, pg_ctl start on 127.0.0.1:port, pg_ctl stop, folder removed."""

    def __init__(self):
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="k3eval-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self._counter = itertools.count()

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        full = [*(["runuser", "-u", self.as_user, "--"] if self.as_user else []), *cmd]
        return subprocess.run(full, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).exists():
                raise RuntimeError(f"{PG_BIN / tool} not found (install Debian's postgresql package)")
        if self.as_user:
            shutil.chown(self.root, self.as_user)
        r = self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "k3eval", "--auth=trust", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200"
        r = self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                      "start")
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-800:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-300:]} {log}")

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://k3eval@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=k3eval dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)


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
