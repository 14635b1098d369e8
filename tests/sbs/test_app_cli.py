"""`k3eval sbs serve`: argument checks, the Streamlit command line, and refusing a study that is not there before any
server starts (the real server is exercised by test_browser_app.py)."""

from __future__ import annotations

import pytest

from k3eval.cli import main
from k3eval.sbs import create_study, dispose_engines
from k3eval.sbs.cli_app import app_path, streamlit_command


def test_streamlit_command_is_headless_and_hides_error_details():
    cmd = streamlit_command(app_path("server.py"), 8600, "127.0.0.1")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("human_eval/server.py")
    opts = dict(zip(cmd[5::2], cmd[6::2]))
    assert opts["--server.enableAgentApi"] == "false"  # no script may drive the voting page
    assert opts["--server.headless"] == "true"
    assert opts["--server.port"] == "8600"
    assert opts["--server.address"] == "127.0.0.1"
    assert opts["--client.showErrorDetails"] == "none"  # a traceback could name run folders
    assert opts["--browser.gatherUsageStats"] == "false"
    assert "--server.address" not in streamlit_command(app_path(), 8501, None)


def test_serve_refuses_a_missing_study_before_starting(tmp_path, two_runs, capsys):
    db = f"sqlite:///{tmp_path / 'v.db'}"
    create_study("real", two_runs, 1, overlap=1, db_url=db)
    try:
        assert main(["sbs", "serve", "nope", "--db", db]) == 2
        err = capsys.readouterr().err
        assert "study 'nope' not found" in err and "real" in err and "Traceback" not in err
        assert main(["sbs", "serve", "real", "--db", f"sqlite:///{tmp_path / 'missing.db'}"]) == 2
        assert "not found" in capsys.readouterr().err
    finally:
        dispose_engines()


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_serve_port_is_checked(port, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sbs", "serve", "x", "--port", port])
    assert e.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_blocked_paths_answer_404_and_pass_everything_else():
    import asyncio

    from k3eval.sbs.cli_app import BlockPaths

    seen = []

    async def streamlit(scope, receive, send):
        seen.append(scope["path"])

    async def call(path: str, kind: str = "http"):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request"}

        await BlockPaths(streamlit)({"type": kind, "path": path, "method": "GET", "headers": []}, receive, send)
        return sent

    for path in ("/_stcore/metrics", "/_stcore/metrics/", "/base/_stcore/metrics"):
        sent = asyncio.run(call(path))
        assert sent[0]["status"] == 404
    assert asyncio.run(call("/_stcore/metrics", "websocket")) == [{"type": "websocket.close", "code": 1008}]
    for path in ("/", "/_stcore/health", "/media/abc.jpg", "/_stcore/stream"):
        assert asyncio.run(call(path)) == []
    assert seen == ["/", "/_stcore/health", "/media/abc.jpg", "/_stcore/stream"]
