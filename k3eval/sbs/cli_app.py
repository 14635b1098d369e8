"""`k3eval sbs serve NAME`: start the Streamlit annotation app (human_eval/app.py) for one study.

The study name and database URL reach the app through the environment (`K3EVAL_SBS_STUDY`, `K3EVAL_DB`), so the
app needs no arguments and `streamlit run human_eval/app.py` works the same way by hand. `serve` runs it through
human_eval/server.py, which puts `BlockPaths` in front of Streamlit's own endpoints. The process replaces itself with
Streamlit (exec), so stopping `k3eval sbs serve` (Ctrl-C, SIGTERM) stops the server itself.
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
# Streamlit endpoints a study's server does not answer: /_stcore/metrics is public (no sign-in) and tells anyone how
# many sessions are open and how much memory the app uses.
BLOCKED_PATHS = ("/_stcore/metrics",)


class BlockPaths:
    """ASGI middleware: 404 for every request whose path ends in one of BLOCKED_PATHS (any method, any
    `server.baseUrlPath`); everything else goes to Streamlit unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/")
        if scope["type"] in ("http", "websocket") and path.endswith(BLOCKED_PATHS):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            from starlette.responses import PlainTextResponse

            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {v}")
    return v


def app_path(name: str = "app.py") -> Path:
    """human_eval/NAME (the app, or server.py that serves it) of the k3eval checkout this package runs from (the app
    is not part of the wheel)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        p = base / "human_eval" / name
        if p.is_file():
            return p
    raise UserError(f"human_eval/{name} not found next to the k3eval package or in the current folder; run "
                    "`k3eval sbs serve` from a k3eval checkout (pip install -e .)")


def streamlit_command(app: Path, port: int, address: str | None) -> list[str]:
    """The `python -m streamlit run` command line for `app` (human_eval/server.py): headless, no telemetry, no file
    watcher, no error details (a traceback could show file paths of the runs, which would reveal the models), and no
    agent API (it would let a script drive the voting page)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(app),
           "--server.headless", "true",
           "--server.port", str(port),
           "--server.fileWatcherType", "none",
           "--server.runOnSave", "false",
           "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal",
           "--client.showErrorDetails", "none",
           "--global.developmentMode", "false",
           "--server.enableAgentApi", "false",
           # A chosen answer is drawn in the primary colour: blue reads as "selected", Streamlit's red as an error.
           "--theme.primaryColor", "#1f6feb"]
    if address:
        cmd += ["--server.address", address]
    return cmd


def cmd_serve(args) -> int:
    from k3eval.sbs import default_db_url, study_info

    db_url = args.db or default_db_url()
    info = study_info(args.name, db_url=db_url)  # a missing study or database fails here, before the server starts
    app = app_path("server.py")
    app_path()  # the app itself must be there too
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
