"""The `drf-batch dashboard` command: argument checks and the Streamlit command line it runs."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from drf_batch.cli import app
from drf_batch.commands import dashboard


def test_app_script_exists_in_checkout():
    assert dashboard.APP_SCRIPT.is_file()
    assert dashboard.APP_SCRIPT.parent.name == "app"


def test_streamlit_command_binds_loopback(tmp_path):
    command = dashboard.streamlit_command(
        app_script=Path("app/dashboard.py"), db=tmp_path / "s.duckdb", image_root=tmp_path, host="127.0.0.1", port=8123
    )

    assert command[:5] == [sys.executable, "-m", "streamlit", "run", "app/dashboard.py"]
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8123"
    script_arguments = command[command.index("--") + 1 :]
    assert script_arguments == ["--db", str(tmp_path / "s.duckdb"), "--image-root", str(tmp_path)]


def test_streamlit_command_without_image_root(tmp_path):
    command = dashboard.streamlit_command(
        app_script=Path("app/dashboard.py"), db=tmp_path / "s.duckdb", image_root=None, host="127.0.0.1", port=8501
    )

    assert "--image-root" not in command


def test_dashboard_rejects_missing_database(tmp_path):
    result = CliRunner().invoke(app, ["dashboard", "--db", str(tmp_path / "absent.duckdb")])

    assert result.exit_code == 2
    assert "scores database not found" in result.output


def test_dashboard_rejects_missing_image_root(tmp_path):
    db_path = tmp_path / "s.duckdb"
    db_path.write_bytes(b"")

    result = CliRunner().invoke(app, ["dashboard", "--db", str(db_path), "--image-root", str(tmp_path / "absent")])

    assert result.exit_code == 2
    assert "image root is not a folder" in result.output


def test_dashboard_runs_streamlit(monkeypatch, tmp_path):
    db_path = tmp_path / "s.duckdb"
    db_path.write_bytes(b"")
    launched: list[list[str]] = []

    class Completed:
        returncode = 0

    def fake_run(command, check):
        launched.append(command)
        return Completed()

    def fake_execv(path, command):
        launched.append(command)
        raise SystemExit(0)

    monkeypatch.setattr(dashboard.subprocess, "run", fake_run)
    monkeypatch.setattr(dashboard.os, "execv", fake_execv)
    result = CliRunner().invoke(app, ["dashboard", "--db", str(db_path), "--port", "9000"])

    assert result.exit_code == 0, result.output
    assert len(launched) == 1
    assert launched[0][0] == sys.executable
    assert launched[0][launched[0].index("--db") + 1] == str(db_path.resolve())
    assert launched[0][launched[0].index("--server.port") + 1] == "9000"
