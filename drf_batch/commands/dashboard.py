"""`drf-batch dashboard`: start the Streamlit dashboard on a scores database."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import typer

logger = logging.getLogger(__name__)

# The dashboard lives in the repository's `app/` folder, beside the `drf_batch` package, so it is
# found in a source checkout or an editable install (`pip install -e .`).
APP_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "dashboard.py"


def streamlit_command(
    *, app_script: Path, db: Path, image_root: Path | None, host: str, port: int
) -> list[str]:
    """Build the `streamlit run` command line that serves `app_script` on host:port."""
    command = [
        sys.executable, "-m", "streamlit", "run", str(app_script),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--",
        "--db", str(db),
    ]  # fmt: skip
    if image_root is not None:
        command.extend(["--image-root", str(image_root)])
    return command


def dashboard(
    db: Path = typer.Option(..., "--db", help="Scores database written by `drf-batch score`."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder that the posts' image_path values are relative to; images outside it are not shown."
    ),
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="TCP port to serve the dashboard on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; the default serves this machine only."
    ),
) -> None:
    """Start the analyst dashboard (Streamlit) on a scores database, read-only."""
    db = db.expanduser().resolve()
    if not db.is_file():
        raise typer.BadParameter(
            f"scores database not found: {db}; pass the file that `drf-batch score --db` wrote", param_hint="--db"
        )
    if image_root is not None:
        image_root = image_root.expanduser().resolve()
        if not image_root.is_dir():
            raise typer.BadParameter(f"image root is not a folder: {image_root}", param_hint="--image-root")
    if not APP_SCRIPT.is_file():
        typer.echo(
            f"Dashboard app not found at {APP_SCRIPT}. It ships in the repository's app/ folder; install "
            "drf-batch from a clone with `pip install -e .` to use this command.",
            err=True,
        )
        raise typer.Exit(1)

    command = streamlit_command(app_script=APP_SCRIPT, db=db, image_root=image_root, host=host, port=port)
    logger.info("starting the dashboard on http://%s:%d for %s", host, port, db)
    if os.name == "posix":
        # Replace this process with Streamlit, so that a signal sent to `drf-batch dashboard`
        # (Ctrl+C, SIGTERM from a supervisor) stops the server instead of orphaning it.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    try:
        completed = subprocess.run(command, check=False)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(completed.returncode)
