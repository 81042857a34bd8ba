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


@pytest.mark.parametrize("extra,named", [(["--out", "dist"], "--out"),
                                         (["--name", "x"], "--name"),
                                         (["--max-length", "32"], "--max-length"),
                                         (["--task", "mrpc"], "--task"),
                                         (["--no-ort"], "--no-ort"),
                                         (["--tokenizer", "t.json"], "--tokenizer")])
def test_bundle_with_a_recipe_refuses_options_it_would_ignore(extra, named, capsys, tmp_path):
    """`compress bundle RECIPE --out dist` used to run the recipe and write the bundle under runs/ as if --out had
    not been given; the single-model options are refused by name with a recipe, before the recipe is even read."""
    assert main(["bundle", str(tmp_path / "r.yaml"), *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and "--model" in err and err.count("\n") == 1, err
    assert not (tmp_path / "dist").exists()


def test_bundle_with_both_a_recipe_and_a_model_says_so(capsys, tmp_path):
    assert main(["bundle", str(tmp_path / "r.yaml"), "--model", "m.onnx", "--tokenizer", "t.json"]) == 2
    err = capsys.readouterr().err
    assert "not both" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("extra", [["--set", "seed=1"], ["--force", "bundle"], ["--runs-dir", "elsewhere"]])
def test_bundle_of_a_model_refuses_recipe_options(extra, capsys):
    assert main(["bundle", "--model", "m.onnx", "--tokenizer", "t.json", *extra]) == 2
    err = capsys.readouterr().err
    assert extra[0] in err and "RECIPE" in err and err.count("\n") == 1, err


def _folder_of_bundles(root: Path) -> Path:
    """The bundle stage's folder as a run leaves it: its stage manifest beside the bundle folder and archive."""
    stage = root / "runs" / "r" / "bundle"
    (stage / "r-sst2-int8").mkdir(parents=True)
    (stage / "r-sst2-int8" / "manifest.json").write_text(json.dumps({"format": "compress-bundle/1", "files": {}}))
    (stage / "r-sst2-int8.tar.gz").write_bytes(b"")
    (stage / "manifest.json").write_text(json.dumps({"stage": "bundle", "bundle": {"paths": ["r-sst2-int8"]}}))
    return stage


def test_predict_on_the_bundle_stage_folder_names_the_bundle_in_it(tmp_path, capsys):
    """`compress predict runs/quickstart/bundle TEXT` (the stage folder, one level too high) used to say
    '.../manifest.json: not a compress-bundle/1 manifest (format: None)'; it now names the bundle to give."""
    stage = _folder_of_bundles(tmp_path)
    assert main(["predict", str(stage), "a gripping, funny film"]) == 2
    err = capsys.readouterr().err
    assert "format: None" not in err and str(stage / "r-sst2-int8") in err and err.count("\n") == 1, err
    (stage / "manifest.json").unlink()  # search/bundle/ holds bundles without a stage manifest
    assert main(["predict", str(stage), "a gripping, funny film"]) == 2
    err = capsys.readouterr().err
    assert "no manifest.json" not in err and str(stage / "r-sst2-int8") in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["run", "r.yaml", "--bogus"], ["predict", "b", "a", "--json", "b", "c"]])
def test_an_unknown_flag_prints_its_commands_usage(argv, capsys):
    """An unknown flag printed the top level's usage (`compress [-h] [-v] ... COMMAND`); it prints its command's, as
    a flag the command's parser refuses itself (`--threads 0`) does."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"usage: compress {argv[0]} "), err
    assert f"compress {argv[0]}: error: unrecognized arguments: {argv[-1]}" in err, err


def test_bench_threads_given_twice_is_refused_as_in_a_recipe(capsys, tmp_path):
    """`compress bench R --threads 1 1` timed every model twice at one count: refused as bench.threads [1, 1] is."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\nruns_dir: {tmp_path / 'runs'}\n")
    assert main(["bench", str(recipe), "--threads", "1", "1"]) == 2
    err = capsys.readouterr().err
    assert "--threads: each thread count once, got 1 1" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_bench_threads_before_the_recipe_says_where_the_recipe_goes(capsys, tmp_path):
    """`compress bench --threads 1 R` (the option takes every word up to the next option, the recipe too) said only
    "expected an integer, got 'R'"; it now says to put the recipe first or end the counts with `--`, which works."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\nruns_dir: {tmp_path / 'runs'}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--threads", "1", str(recipe)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "put the recipe first" in err and f"got {str(recipe)!r}" in err, err
    assert main(["bench", "--threads", "1", "1", "--", str(recipe)]) == 2  # the recipe read: refused as above
    assert "--threads: each thread count once, got 1 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a word that is neither a number nor a recipe: the plain message
        main(["bench", "--threads", "x", str(recipe)])
    assert "put the recipe first" not in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_full_or_read_only_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """A stage writing to a full disk or a read-only runs folder ended in a traceback; it is one line naming the file
    (status 1). A stray RANK in the shell (no WORLD_SIZE: not a distributed job) no longer hides error messages."""
    import errno
    import os

    from compress import cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: {name: sst2}\nteacher: {}\n")

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "runs" / "r" / "teacher"))

    monkeypatch.setattr(cli, "cmd_validate", full)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["validate", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'runs' / 'r' / 'teacher'}: No space left on device\n"
    monkeypatch.setenv("WORLD_SIZE", "4")  # a real distributed job's other process: the main one says it
    assert main(["validate", str(recipe)]) == 1 and capsys.readouterr().err == ""


def test_a_reader_of_the_output_gone_ends_the_command_quietly_with_141(monkeypatch):
    """``compress zoo list | head -0`` (or ``run --dry-run | head -1``) ended in a BrokenPipeError traceback, exit 1:
    now nothing on stderr and 141, as a shell reports SIGPIPE. A broken pipe of anything else stays a traceback."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # output buffered, flushed at the end
    for args in (["zoo", "list"], ["run", "pipelines/quickstart.yaml", "--dry-run"]):
        proc = subprocess.Popen([sys.executable, "-m", "compress", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=Path(__file__).parents[1], env=env)
        proc.stdout.close()  # no reader before the command writes: its first line meets a broken pipe
        err = proc.stderr.read().decode()
        assert (proc.wait(timeout=120), err) == (141, ""), args
    from compress import cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_zoo", broken)  # a pipe of its own broke, standard output is still read
    with pytest.raises(BrokenPipeError):
        main(["zoo", "list"])


def test_closed_or_full_standard_streams_give_no_traceback(tmp_path, monkeypatch, capsys):
    """Standard output closed (``compress zoo list >&-``): Python makes sys.stdout None and the final flush raised
    AttributeError (a traceback, status 1); standard error closed: error lines went to standard output; standard input
    closed to ``predict --file -``: a TypeError traceback; standard output on a full disk: a line naming no file, then
    "Exception ignored" at exit and status 120."""
    import os
    import sys

    from compress.bundle_predict import BundleError, read_lines

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # output buffered, flushed at the end
    cli = f"{sys.executable} -m compress"

    def shell(command):
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                              env=env, timeout=120)

    done = shell(f"{cli} zoo list >&-")
    assert (done.returncode, done.stderr) == (0, "")
    done = shell(f"{cli} validate {tmp_path / 'nope.yaml'} 2>&-")
    assert (done.returncode, done.stdout) == (2, "")  # the error line is not standard output's
    done = shell(f"{cli} zoo list >/dev/full")
    assert (done.returncode, done.stderr) == (1, "error: standard output: No space left on device\n")
    done = shell(f"PYTHONUNBUFFERED=1 {cli} zoo list >/dev/full")  # met at the first print, not the final flush
    assert (done.returncode, done.stderr) == (1, "error: standard output: No space left on device\n")
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(BundleError, match=r"^-: cannot read \(standard input is closed\)$"):
        list(read_lines("-", False))
    assert main(["validate", "/dev/null"]) == 2  # a device, or a FIFO (<(cat r.yaml)): was "recipe file not found"
    assert capsys.readouterr().err == "error: /dev/null: not a regular file (a recipe is read from a file)\n"


def test_validate_strict_fails_on_what_run_refuses_from_the_shapes(tmp_path, tiny_bert_dir, capsys):
    """A random student whose vocab_size is not its tokenizer's: `validate --strict` exited 0 (CI passed it) and
    `run` refused it at once. Plain validate stays light (no torch): a warning only with --strict."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: rte}}\nteacher: {{model: {tiny_bert_dir}}}\nstudents: [{{name: s, kind: narrow, "
                      f"layers: 1, hidden: 32, heads: 2, ffn: 64, vocab_size: 1000}}]\n")
    assert main(["validate", str(recipe)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["validate", "--strict", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {recipe}: students[0] (s): student s: vocab_size 1000 does not match its "
                          f"tokenizer's"), err


def test_a_path_no_file_can_have_is_one_line_naming_it(tmp_path, capsys):
    """A recipe, run folder, bundle or --out path of a name too long for the file system (or under a folder that
    cannot hold one, /proc) ended in a traceback (OSError: File name too long) with status 1: one line, status 2."""
    long = str(tmp_path / ("a" * 300))
    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    (run / "teacher" / "manifest.json").write_text("{}")
    for args, path in ((["validate", long + ".yaml"], long + ".yaml"), (["report", long], long),
                       (["predict", long, "fine"], long), (["report", str(run), "--out", "/proc/x/y"], "/proc/x")):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {path}: "), (args, err)
    assert not (run / "report").exists()


def test_another_process_gone_is_one_line_and_the_other_processes_log_errors_only(tmp_path, capsys, monkeypatch):
    """Under torchrun, one process killed mid-training left the survivor printing gloo's 40-line traceback ("Read
    error ... Connection reset by peer"); every process logged each warning (two copies). Now the main process says
    one line, and the others log errors only."""
    import logging
    import sys
    import types

    from compress import cli

    class DistBackendError(RuntimeError):
        pass

    dist = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                 DistBackendError=DistBackendError)
    monkeypatch.setitem(sys.modules, "torch.distributed", dist)
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))

    def raising(error):
        def cmd(args):
            raise error
        return cmd

    peer = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:4: Connection "
                        "reset by peer\nmore lines")
    for error in (peer, DistBackendError("NCCL communicator was aborted")):
        monkeypatch.setattr(cli, "cmd_validate", raising(error))
        assert main(["validate", "r.yaml"]) == 2
        assert capsys.readouterr().err == f"error: another process of this run stopped ({str(error).splitlines()[0]})\n"
    monkeypatch.setattr(cli, "cmd_validate", raising(RuntimeError("a bug of ours")))  # not a peer: shown whole
    with pytest.raises(RuntimeError, match="a bug of ours"):
        main(["validate", "r.yaml"])
    monkeypatch.setattr(cli, "cmd_validate", raising(peer))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["validate", "r.yaml"]) == 2 and capsys.readouterr().err == ""  # the main process says it
    assert levels == [logging.WARNING] * 3 + [logging.ERROR]


@pytest.mark.parametrize("ours", ["int8_dynamic", None])
def test_bench_always_remeasures_applies_full_and_exits_1_without_a_shippable_model(ours, capsys, tmp_path,
                                                                                    monkeypatch):
    """`compress bench` forces its own stage (timings re-measured), `--full` sets the full grid, `--threads` the
    counts; exit status 1 when no int8 model is shippable (no `ours`)."""
    import compress.pipeline

    seen = {}

    def fake_run(recipe, until, force):
        seen.update(recipe=recipe, until=until, force=force)
        return {"bench": {"bench": {"ours": ours}}}

    monkeypatch.setattr(compress.pipeline, "run_pipeline", fake_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\nruns_dir: {tmp_path / 'runs'}\n")
    assert main(["bench", str(recipe), "--full", "--threads", "1", "2", "--force", "quantize"]) == (0 if ours else 1)
    assert seen["until"] == "bench" and seen["force"] == ("bench", "quantize")
    bench = seen["recipe"].bench
    assert (bench.batch_sizes, bench.seq_lengths, bench.dev_rows, bench.repeats) == ([1, 8, 32], [32, 128], None, 50)
    assert bench.threads == [1, 2]
    assert "bench.json" in capsys.readouterr().out
    # a key of the sections the recipe lacks (--help's own example: it was refused, "the recipe has no bench
    # section"), and a bad one refused before any stage (seq_lengths past the positions: after quantize had run)
    assert main(["bench", str(recipe), "--set", "bench.dev_rows=100"]) == (0 if ours else 1)
    assert seen["recipe"].bench.dev_rows == 100 and seen["recipe"].overrides == {"bench.dev_rows": 100}
    seen.clear()
    assert main(["bench", str(recipe), "--set", "bench.seq_lengths=[600]"]) == 2
    assert seen == {} and "600" in capsys.readouterr().err


def test_bench_full_keeps_the_values_given_with_set(tmp_path, monkeypatch):
    """`--full` sets the full grid, but not over a value the user gave with --set: `--full --set bench.dev_rows=50`
    timed all of dev, without a word."""
    import compress.pipeline

    seen = {}

    def fake_run(recipe, until, force):
        seen.update(recipe=recipe)
        return {"bench": {"bench": {"ours": "int8_dynamic"}}}

    monkeypatch.setattr(compress.pipeline, "run_pipeline", fake_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\nbench: {{}}\n"
                      f"runs_dir: {tmp_path / 'runs'}\n")
    assert main(["bench", str(recipe), "--full", "--set", "bench.dev_rows=50", "--set", "bench.max_seconds=10"]) == 0
    bench = seen["recipe"].bench
    assert (bench.dev_rows, bench.max_seconds) == (50, 10)
    assert (bench.batch_sizes, bench.seq_lengths, bench.repeats, bench.warmup) == ([1, 8, 32], [32, 128], 50, 3)
    assert main(["bench", str(recipe), "--full", "--set", "bench={warmup: 0}"]) == 0
    assert (seen["recipe"].bench.warmup, seen["recipe"].bench.dev_rows) == (0, None)


def test_validate_runs_no_stage(capsys, tmp_path, monkeypatch):
    import compress.pipeline

    def no_run(*args, **kwargs):
        raise AssertionError("validate ran a stage")

    monkeypatch.setattr(compress.pipeline, "run_pipeline", no_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\nruns_dir: {tmp_path / 'runs'}\n")
    assert main(["validate", str(recipe)]) == 0
    assert "ok; stages: teacher" in capsys.readouterr().out and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["run", "bench", "search", "bundle", "report"])
def test_an_empty_runs_dir_or_out_is_refused_not_the_working_folder(command, tmp_path, capsys, monkeypatch):
    """A CI script's unset `$RUNS_DIR` (or `$OUT`): `compress run R --runs-dir ""` ran the whole recipe into the
    working folder and `compress report RUN --out ""` wrote there, while `bundle --out ""` and `--set runs_dir=` were
    refused. Refused alike now, before anything runs."""
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "pipelines" / "quickstart.yaml"
    argv = ["report", str(tmp_path), "--out", ""] if command == "report" else [command, str(recipe), "--runs-dir", ""]
    assert main(argv) == 2
    flag = "--out" if command == "report" else "--runs-dir"
    assert capsys.readouterr().err == f"error: {flag} is empty (a folder; . for the working folder)\n"
    assert list(tmp_path.iterdir()) == []
