"""Small run folders for study tests, written through RunFolder's own API (PNG files, journal, manifest), and a
throwaway PostgreSQL server (also used by benchmarks/perf/vote_store.py)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from k3eval.runs import RunFolder

PG_BIN = Path(os.environ.get("K3EVAL_PG_BIN", "/usr/lib/postgresql/15/bin"))

PROMPTS = [
    ("p-cat", "a cat on a red sofa", "Animals"),
    ("p-dog", "a dog in the snow", "Animals"),
    ("p-car", "a blue car at night", "Vehicles"),
    ("p-bus", "a yellow bus on a bridge", "Vehicles"),
    ("p-xss", "<script>alert('x')</script> [click](http://evil.example) **bold** ünïcödé " + "long " * 40,
     "Abstract"),
    ("p-tree", "a lone tree on a hill", "Scenes"),
]


def make_run(path: Path, generator: str, prompts=PROMPTS, samples: int = 1, size: int = 32, seed: int = 0,
             prompt_set_hash: str = "hash-of-test-set", bad: tuple[str, ...] = ()) -> Path:
    """A run folder with a random-texture PNG per (prompt, sample); prompt ids in `bad` get status 'black'."""
    run = RunFolder(path)
    run.write_info({"k3eval_run": 1, "identity": {"generator": generator},
                    "generator": {"name": generator}, "prompt_set": {"name": "test-set", "hash": prompt_set_hash},
                    "samples": samples, "status": "complete"})
    rng = np.random.default_rng(seed)
    rows = []
    for pid, text, cat in prompts:
        for s in range(samples):
            img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            rel, sha, nbytes = run.write_image(pid, s, img)
            rows.append({"prompt_set": "test-set", "prompt_id": pid, "prompt": text, "category": cat, "sample": s,
                         "seed": s, "path": rel, "width": size, "height": size, "steps": 1, "guidance": 1.0,
                         "seconds": 0.0, "status": "black" if pid in bad else "ok", "sha256": sha, "bytes": nbytes,
                         "generator": generator})
    run.append_rows("test", rows)
    run.consolidate()
    return path


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
            try:
                shutil.chown(self.root, self.as_user)
            except LookupError:
                raise RuntimeError("running as root, and there is no 'postgres' user to run the server as") from None
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
