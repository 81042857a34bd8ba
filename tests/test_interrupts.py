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


@pytest.fixture(scope="module")
def archive(tmp_path_factory, minilm_dir) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    from compress.bundle import build
    from conftest import export_int8, tiny_bert_config

    torch.manual_seed(0)
    model = export_int8(BertForSequenceClassification(tiny_bert_config()), tmp_path_factory.mktemp("int8"))
    return build(tmp_path_factory.mktemp("bundles"), "b", model=model, tokenizer=minilm_dir / "tokenizer.json",
                 task="sst2", labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=False)[1]


def _predict_from_stdin(archive: Path, scratch: Path, **kw) -> subprocess.Popen:
    """`compress predict ARCHIVE --file -` waiting for lines, its archive extracted under ``scratch``."""
    proc = subprocess.Popen([sys.executable, "-m", "compress", "predict", str(archive), "--file", "-"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)}, **kw)
    proc.stdin.write("a gripping film\n")
    proc.stdin.flush()
    assert proc.stdout.readline().split("\t")[0] in ("negative", "positive")  # extracted, verified, loaded
    assert list(scratch.glob("compress-bundle-*"))
    return proc


def test_what_a_killed_predict_extracted_is_removed_by_the_next_one(archive, tmp_path):
    """kill -9 (an OOM kill on a device) cannot unwind: `compress predict ARCHIVE` left its extracted bundle (a model's
    size) in the temporary folder for good, only `compress run` and `compress search` removing dead processes'
    scratch. Now the next predict removes it; a live process's is kept."""
    killed = _predict_from_stdin(archive, tmp_path)
    left = list(tmp_path.glob("compress-bundle-*"))
    killed.kill()
    killed.communicate(timeout=60)
    assert all(p.exists() for p in left)
    live = _predict_from_stdin(archive, tmp_path)  # extracts its own after removing the dead one's
    try:
        assert not any(p.exists() for p in left)
        ours = list(tmp_path.glob("compress-bundle-*"))
        out = subprocess.run([sys.executable, "-m", "compress", "predict", str(archive), "a dull mess"], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path)}, timeout=120)
        assert out.returncode == 0 and out.stdout.split("\t")[0] in ("negative", "positive"), out.stderr
        assert list(tmp_path.glob("compress-bundle-*")) == ours  # a live process's is kept
    finally:
        live.kill()
        live.communicate(timeout=60)


def test_a_hangup_unwinds_like_sigterm(archive, tmp_path):
    """The terminal or ssh session closing (SIGHUP) killed the process where it stood: `compress predict` left its
    extracted bundle in the temporary folder (nothing on a device ever removed it), a run its temporary stage folder.
    Now it unwinds as SIGTERM does, exit 129; under nohup (SIGHUP ignored) it is still ignored. (The first process
    gets SIGHUP's default disposition whatever this test's own: a suite run under nohup passed SIG_IGN down to it.)"""
    proc = _predict_from_stdin(archive, tmp_path, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129 and err.rstrip().endswith("hangup"), (proc.returncode, err)
    assert not list(tmp_path.glob("compress-bundle-*"))

    proc = _predict_from_stdin(archive, tmp_path, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate("a dull mess\n", timeout=60)
    assert proc.returncode == 0 and out.split("\t")[0] in ("negative", "positive"), (proc.returncode, err)
    assert not list(tmp_path.glob("compress-bundle-*"))
