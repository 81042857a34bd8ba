"""First-time-user mistakes on the command line: each is refused in one line that says what to do instead, before
anything runs (no torch, no model: these tests are fast)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from compress.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_make_help_lists_every_documented_target():
    """`make help` is the first thing a new user types: it lists each target with its `##` description."""
    proc = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    documented = [m.group(1) for m in re.finditer(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)]
    assert "pipeline" in documented and "bundle" in documented
    for target in documented:
        assert any(line.split()[:1] == [target] for line in proc.stdout.splitlines()), (target, proc.stdout)
    assert "run the recipe end to end" in proc.stdout
