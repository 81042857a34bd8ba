"""The Makefile offers one target per stage and each runs the stage it names (dry run: nothing executes)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("stage", ["teacher", "distill", "prune", "quantize", "report"])
def test_stage_target_runs_that_stage(stage):
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", stage, "RECIPE=pipelines/mrpc.yaml"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert f'run "pipelines/mrpc.yaml" --stage {stage}' in out, out


@pytest.mark.parametrize("target,command", [("bench", 'bench "pipelines/mrpc.yaml"'),
                                            ("bundle", 'bundle "pipelines/mrpc.yaml"'),
                                            ("pipeline", 'run "pipelines/mrpc.yaml"'),
                                            ("dry-run", 'run "pipelines/mrpc.yaml" --dry-run')])
def test_other_stage_targets(target, command):
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", target, "RECIPE=pipelines/mrpc.yaml"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert command in out, out


@pytest.mark.parametrize("target", ["pipeline", "teacher", "report", "bundle", "bench", "search", "dry-run"])
def test_runs_dir_and_set_reach_the_command(target):
    """RUNS_DIR and SET were read by no target: outputs went to the recipe's runs_dir (the repository's runs/), and a
    seed run or any override needed the compress command itself."""
    def command(*args) -> str:  # the compress line (under `make test`, make also says which folder it enters)
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", *args], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        return next(line for line in out.splitlines() if "compress " in line)

    line = command(target, "RECIPE=pipelines/mrpc.yaml", "RUNS_DIR=/tmp/my runs", "SET=seed=43 teacher.epochs=1")
    assert "\"pipelines/mrpc.yaml\"" in line and line.endswith(
        "--set 'seed=43' --set 'teacher.epochs=1' --runs-dir \"/tmp/my runs\""), line
    line = command("validate", "SET=seed=43")
    assert line.endswith("validate \"pipelines/quickstart.yaml\" --set 'seed=43'"), line


def test_a_recipe_path_with_a_space_reaches_the_command_whole(tmp_path):
    """`make validate RECIPE="my recipes/q.yaml"`: the path was split at the space (two arguments, "my" not found)."""
    folder = tmp_path / "my recipes"
    folder.mkdir()
    (folder / "q.yaml").write_text((ROOT / "pipelines" / "quickstart.yaml").read_text())
    out = subprocess.run(["make", "-s", "-o", ".venv/.installed", "validate", f"RECIPE={folder / 'q.yaml'}",
                          f"COMPRESS={sys.executable} -m compress"],  # this interpreter (a host without .venv too)
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and f"{folder / 'q.yaml'}: ok; stages: teacher" in out.stdout, out.stderr


def test_torch_index_reaches_the_torch_install_only_when_given():
    """`make install TORCH_INDEX=URL` takes torch from URL (pypi.org's Linux torch is the CUDA build); by default pip's
    configured index, as before."""
    def install(*extra):
        out = subprocess.run(["make", "-n", "-B", ".venv/.installed", *extra], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        return [line.split() for line in out.splitlines() if "torch==" in line]
    url = "https://download.pytorch.org/whl/cpu"
    pip = [".venv/bin/pip", "install", "--quiet", "torch==2.13.0"]
    assert install(f"TORCH_INDEX={url}") == [pip + ["--index-url", f'"{url}"']]
    assert install() == [pip]


def test_set_up_names_what_the_machine_lacks(tmp_path):
    """A Python older than 3.11 (the pinned numpy and onnxruntime have no wheels for it) and a machine without npm
    (`make test` runs the bundle's predict.mjs under Node.js) are refused by one line saying so, before pip or npm
    fail somewhere in their output. Run on a copy of the Makefile with stand-ins: nothing is installed."""
    import shutil

    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.10.4' && exit 0\n"
                   "[ \"$1\" = -c ] && exit 1\nexit 3\n")  # sys.version_info < (3, 11): exit 1
    old.chmod(0o755)
    out = subprocess.run(["make", "install", f"PYTHON={old}"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and not (tmp_path / ".venv").exists()
    assert f"make: {old} is Python 3.10.4: the pinned stack needs Python 3.11 or later" in out.stderr, out.stderr
    out = subprocess.run(["make", "install", "PYTHON=python3.99"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "make: python3.99 not found: the pinned stack needs Python 3.11" in out.stderr, \
        out.stderr

    (tmp_path / "compress").mkdir()
    (tmp_path / "compress" / "bundle.py").write_text("")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / ".installed").touch()  # set up already, after pyproject.toml: only the npm step is due
    empty = tmp_path / "no-npm"
    empty.mkdir()
    out = subprocess.run([shutil.which("make"), ".node/.installed"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": str(empty)})
    assert out.returncode != 0 and not (tmp_path / ".node").exists()
    assert "make: npm not found: the tests run the bundle's predict.mjs under Node.js 20 or later" in out.stderr, \
        out.stderr
