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
