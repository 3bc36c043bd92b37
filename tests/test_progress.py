"""No silent waits: on a terminal, the steps that can take seconds (reading, loading a model, timing the windows
on the first run, reading a DICOM folder) show a progress line; off a terminal nothing is drawn."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from medseg.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def _stderr_on_a_terminal(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    """Run ``medseg ARGS`` with stderr on a pseudo-terminal (stdout piped); its exit code, stdout and terminal text."""
    master, slave = pty.openpty()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medseg.cli", *args], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read().decode()
    return proc.wait(timeout=60), out, b"".join(chunks).decode(errors="replace")


def test_plan_shows_each_step_on_a_terminal_and_keeps_stdout_clean(tmp_path):
    """The first ``medseg plan`` with a network times its window batches (seconds, silent before); each stage
    is named on the terminal while --json stays one JSON document on stdout."""
    code, out, terminal = _stderr_on_a_terminal(
        ["plan", "sample_data/chest_ct.nii.gz", "--model", "phantom-unet3d", "--json"], tmp_path
    )
    assert code == 0, terminal
    for stage in ("read", "load model", "plan", "time windows"):
        assert stage in terminal, (stage, terminal)
    import json

    assert json.loads(out)["model"] == "phantom-unet3d"


def test_reading_a_dicom_folder_is_shown(tmp_path):
    code, out, terminal = _stderr_on_a_terminal(["series", "sample_data/chest_ct_dicom"], tmp_path)
    assert code == 0 and "1 stack(s) in 79 file(s)" in out
    assert "read DICOM" in terminal


def test_nothing_is_drawn_off_a_terminal(capsys):
    with Progress() as progress:  # pytest's captured stderr is not a terminal
        progress.stage("read")
        progress.update(0.5)
    assert capsys.readouterr().err == ""
