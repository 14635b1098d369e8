"""`k3eval sbs serve NAME`: start the Streamlit annotation app (human_eval/app.py) for one study.

The study name and database URL reach the app through the environment (`K3EVAL_SBS_STUDY`, `K3EVAL_DB`), so the
app needs no arguments and `streamlit run human_eval/app.py` works the same way by hand. The process replaces
itself with Streamlit (exec), so stopping `k3eval sbs serve` (Ctrl-C, SIGTERM) stops the server itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from k3eval.errors import UserError

STUDY_ENV = "K3EVAL_SBS_STUDY"
DB_ENV = "K3EVAL_DB"
DEFAULT_PORT = 8501


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {v}")
    return v


def app_path() -> Path:
    """human_eval/app.py of the k3eval checkout this package runs from (the app is not part of the wheel)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        p = base / "human_eval" / "app.py"
        if p.is_file():
            return p
    raise UserError("human_eval/app.py not found next to the k3eval package or in the current folder; run "
                    "`k3eval sbs serve` from a k3eval checkout (pip install -e .)")


def streamlit_command(app: Path, port: int, address: str | None) -> list[str]:
    """The `python -m streamlit run` command line: headless, no telemetry, no file watcher, no error details
    (a traceback could show file paths of the runs, which would reveal the models)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(app),
           "--server.headless", "true",
           "--server.port", str(port),
           "--server.fileWatcherType", "none",
           "--server.runOnSave", "false",
           "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal",
           "--client.showErrorDetails", "none",
           "--global.developmentMode", "false",
           # A chosen answer is drawn in the primary colour: blue reads as "selected", Streamlit's red as an error.
           "--theme.primaryColor", "#1f6feb"]
    if address:
        cmd += ["--server.address", address]
    return cmd


def cmd_serve(args) -> int:
    from k3eval.sbs import default_db_url, study_info

    db_url = args.db or default_db_url()
    info = study_info(args.name, db_url=db_url)  # a missing study or database fails here, before the server starts
    app = app_path()
    env = dict(os.environ)
    env[STUDY_ENV] = args.name
    env[DB_ENV] = db_url
    host = args.address or "localhost"
    print(f"serving study {info['name']!r} ({info.get('n_items', '?')} items, {info.get('n_annotators', '?')} "
          f"annotators) at http://{host}:{args.port}/ ; open the per-annotator links printed by `k3eval sbs create` "
          "(they carry ?token=...). Stop with Ctrl-C.", flush=True)
    cmd = streamlit_command(app, args.port, args.address)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached: execve replaces this process


def register(sbs_subparsers) -> None:
    """Add `serve` to the `k3eval sbs` subcommands."""
    p = sbs_subparsers.add_parser("serve", help="start the Streamlit annotation app for a study (headless)")
    p.add_argument("name", help="study name (as given to `k3eval sbs create`)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--address", default=None,
                   help="interface to listen on (default: all interfaces; 127.0.0.1 for this machine only)")
    p.add_argument("--db", default=None, help="vote database URL (default: $K3EVAL_DB or sqlite:///k3eval.db)")
    p.set_defaults(func=cmd_serve)
