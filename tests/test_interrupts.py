"""Signals that land when a command has already finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the program as the console script runs it (main() reads sys.argv), then a slow interpreter teardown, as freeing
# torch, onnxruntime and matplotlib takes 1-7 s after a run
PROGRAM = """
import sys, time
from compress.cli import main
sys.argv = ["compress", "zoo", "list"]
rc = main()
class Slow:
    def __del__(self):
        time.sleep(3)
sys.modules["_slow_teardown"] = Slow()  # freed during finalisation, after Python has reset its signal handlers
print("DONE", flush=True)
raise SystemExit(rc)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_command_finished_keeps_its_exit_status(signum, tmp_path):
    """A Ctrl-C (or `kill`) after the work is done and said, while the interpreter tears down: the command's own exit
    status, not a death by signal (was 130 / 143 with nothing printed, after a run that had succeeded)."""
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COMPRESS_CACHE": str(tmp_path)})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("DONE"):
            break
    time.sleep(1.0)  # inside Slow.__del__: the interpreter is finalising
    proc.send_signal(signum)
    rest, err = proc.communicate(timeout=60)
    assert "minilm-l6" in "".join(lines)
    assert proc.returncode == 0, (proc.returncode, err)
