"""Latency-budget search on a tiny random 3-layer BERT teacher and a real SST-2 slice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from compress.cli import main
from compress.config import load_recipe, search_settings
from compress.errors import CompressError
from compress.search import ModelSpec, candidates, front, pick, run_search, skip_reason
from compress.tasks import round_down

from conftest import tiny_bert_config

SEARCH = {"depths": [1, 3], "keep_macs": [1.0, 0.5], "modes": ["dynamic"], "train_steps": 3, "recover_steps": 2,
          "batch_size": 8, "calibration_samples": 8, "dev_rows": 8, "time_limit_min": 5.0}


def _recipe(tmp_path: Path, glue_dir: Path, tokenizer, *, teacher: bool = True, **search) -> Path:
    """A recipe whose run folder already holds a (tiny, random) fine-tuned teacher."""
    from transformers import BertForSequenceClassification

    runs = tmp_path / "runs"
    if teacher:
        torch.manual_seed(0)
        folder = runs / "tiny" / "teacher" / "model"
        BertForSequenceClassification(tiny_bert_config(num_hidden_layers=3)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "runs_dir": str(runs),
        "task": {"name": "sst2", "data_dir": str(glue_dir / "SST-2"), "max_length": 32, "max_train_samples": 200,
                 "max_eval_samples": 48, "holdout": 0.05},
        "teacher": {"model": "minilm-l6"},
        "search": {**SEARCH, **search}}))
    return path


def test_pick_ranks_by_the_held_out_score_within_an_inclusive_budget_and_breaks_ties_by_speed():
    """Picked on ``select_metric`` (held-out rows), not on dev's ``metric``; a candidate exactly at the budget fits;
    of two equally scored, the faster; a nan score is never picked."""
    def cand(name, dev, held_out, ms):
        return {"id": name, "metric": dev, "select_metric": held_out, "latency": {"p50_ms": ms}}

    best_on_dev = cand("a", 0.95, 0.80, 1.0)  # the best dev score, a worse held-out one
    at_budget = cand("b", 0.85, 0.90, 2.0)
    faster_tie = cand("d", 0.84, 0.90, 1.5)
    unranked = cand("e", 0.99, float("nan"), 0.5)
    assert pick([best_on_dev, at_budget, unranked], 2.0)["id"] == "b"
    assert pick([best_on_dev, at_budget, faster_tie, unranked], 2.0)["id"] == "d"
    assert pick([best_on_dev, at_budget], 1.99)["id"] == "a" and pick([unranked], 1.0) is None


def test_space_order_pick_and_front():
    cfg = load_recipe_free_search()
    space = candidates(cfg, 6)
    assert [s.id for s in space][:3] == ["L1-k50", "L1", "L2-k50"]  # cheapest (fewest MACs) first
    assert ModelSpec(1, 0.504, 6).id == "L1-k50.4" != ModelSpec(1, 0.5, 6).id  # ids never round two models together
    fr = [s.macs_fraction for s in space]
    assert fr == sorted(fr) and space[-1].is_teacher
    rs = [{"id": "a", "metric": 0.80, "latency": {"p50_ms": 1.0}}, {"id": "b", "metric": 0.85, "latency": {"p50_ms": 2.0}},
          {"id": "c", "metric": 0.84, "latency": {"p50_ms": 3.0}}, {"id": "d", "metric": 0.90, "latency": {"p50_ms": 5.0}}]
    assert pick(rs, 2.5)["id"] == "b" and pick(rs, 0.5) is None and pick(rs, 10)["id"] == "d"
    assert [r["id"] for r in front(rs)] == ["a", "b", "d"]
    spec = ModelSpec(3, 1.0, 6)
    assert skip_reason(spec, "dynamic", 1.0, 10.0, [], 3.0) == (  # 10 x 0.5 = 5 ms > 3 x 1 ms
        "estimate 5.00 ms (teacher fp32 at its fastest on record 10.00 ms x MACs 0.50) > budget x 3")
    assert skip_reason(spec, "dynamic", 2.0, 10.0, [], 3.0) is None
    # int8 runs faster than fp32 of its MACs: a measured candidate 4.17x faster than that estimate makes this one's
    # 1.2 ms, within 3 x 1 ms (an audit's int8 models that fit were skipped and the search picked a worse one);
    # another mode learns nothing from it
    fast = {"id": "L1-k50-dynamic", "mode": "dynamic", "macs_fraction": 0.25, "depth": 1, "keep_macs": 0.5,
            "latency": {"p50_ms": 0.6}}
    assert skip_reason(spec, "dynamic", 1.0, 10.0, [fast], 3.0) is None
    assert skip_reason(ModelSpec(6, 1.0, 6), "dynamic", 0.5, 10.0, [fast], 3.0) == (
        "estimate 2.40 ms (teacher fp32 at its fastest on record 10.00 ms x MACs 1.00 / 4.17, the most a measured "
        "dynamic candidate ran faster than that) > budget x 3")
    assert skip_reason(spec, "static", 1.0, 10.0, [fast], 3.0).startswith("estimate 5.00 ms")
    small_over = {"id": "L2-dynamic", "mode": "dynamic", "macs_fraction": 0.33, "depth": 2, "keep_macs": 1.0,
                  "latency": {"p50_ms": 2.5}}
    assert "already takes" in skip_reason(spec, "dynamic", 2.0, 10.0, [small_over], 3.0)
    assert skip_reason(spec, "static", 2.0, 10.0, [small_over], 3.0) is None  # another mode is not dominated
    # fewer MACs but deeper (L6 pruned to a quarter, over budget): a shallower unpruned model may still fit (at batch 1
    # latency follows depth more than width): it was skipped as "no larger"
    deep_over = {"id": "L6-k25-dynamic", "mode": "dynamic", "macs_fraction": 0.25, "depth": 6, "keep_macs": 0.25,
                 "latency": {"p50_ms": 2.5}}
    assert skip_reason(spec, "dynamic", 2.0, 10.0, [deep_over], 3.0) is None
    assert "already takes" in skip_reason(ModelSpec(6, 0.5, 6), "dynamic", 2.0, 10.0, [deep_over], 3.0)
    from compress.search import estimate_base

    assert estimate_base({"p50_ms": 16.0}, [{"teacher_fp32_p50_ms_same_pass": 7.0}]) == 7.0  # least loaded timing


def load_recipe_free_search():
    from compress.config import SearchConfig

    return SearchConfig()


def test_search_budget_resume_and_none_fits(tmp_path, glue_dir, tokenizer, capsys):
    path = _recipe(tmp_path, glue_dir, tokenizer)
    recipe = load_recipe(path)
    out = recipe.run_dir / "search"
    summary = run_search(recipe, budget_ms=1000.0)
    # the candidates' int8 lines are the search's, with no guard verdict ("shippable: within budget" of a 100-point
    # budget read as if the recipe's accuracy check had passed)
    printed = capsys.readouterr().out
    assert "[search L1] int8 dynamic: " in printed and "(no accuracy guard in the search)" in printed
    assert "[quantize]" not in printed and "shippable" not in printed
    ids = {r["id"] for r in summary["candidates"]}
    assert ids == {"L1-dynamic", "L1-k50-dynamic", "L3-dynamic", "L3-k50-dynamic"}
    assert summary["counts"] == {"measured": 4, "reused": 0, "skipped": 0, "not_started": 0}
    best = next(r for r in summary["candidates"] if r["id"] == summary["best"])
    assert best["latency"]["p50_ms"] <= 1000.0
    # picked on the held-out training rows, not on the dev figure it reports
    assert all(r["select_on"] == "holdout" and set(r["holdout_metrics"]) == {"accuracy"} for r in summary["candidates"])
    assert best["select_metric"] == max(r["select_metric"] for r in summary["candidates"])
    assert "picked on held-out training rows" in summary["message"]
    for r in summary["candidates"]:
        assert 0.0 <= r["metric"] <= 1.0 and r["latency"]["p50_ms"] > 0 and Path(r["file"]).is_file()
    pruned = next(r for r in summary["candidates"] if r["id"] == "L3-k50-dynamic")
    full = next(r for r in summary["candidates"] if r["id"] == "L3-dynamic")
    assert pruned["params"] < full["params"]
    assert summary["front"] and set(summary["front"]) <= ids
    written = json.loads((out / "search.json").read_text())
    assert written["best"] == summary["best"]
    assert (out / "pareto.png").stat().st_size > 1000
    assert summary["best"] in (out / "search.md").read_text()
    # the width pruning kept, and what the candidate keeps of the teacher's encoder MACs (depth too)
    assert pruned["macs_fraction"] == full["macs_fraction"] / 2 < 1
    assert f"| L3-k50-dynamic | 3 | 0.5 | {pruned['macs_fraction']:.0%} | dynamic |" in (out / "search.md").read_text()
    from compress.report import RunTable, _provenance_lines

    line = dict(_provenance_lines(RunTable("tiny", str(recipe.run_dir), "accuracy", [])))["latency-budget search"]
    assert line.startswith(f"best within 1000 ms: {summary['best']}") and "search/search.md" in line

    # the CLI ships the best candidate as an edge bundle (candidates reused, nothing re-measured); an earlier pick's
    # bundle is removed (it stayed beside the new one, nothing saying which was the search's answer)
    from compress.bundle import make_tar

    earlier = out / "bundle" / "tiny-sst2-L9-static"
    earlier.mkdir(parents=True)
    (earlier / "manifest.json").write_text(json.dumps({"format": "compress-bundle/1"}))
    make_tar(earlier, out / "bundle" / "tiny-sst2-L9-static.tar.gz")
    mine = ["tiny-sst2-NOTES.md", "tiny-sst2-deployed", "tiny-sst2-L8-dynamic", "tiny-sst2-latest"]  # the user's
    (out / "bundle" / mine[0]).write_text("notes")
    (out / "bundle" / mine[1]).mkdir()
    (out / "bundle" / mine[2]).mkdir()  # named like a pick, but no bundle in it
    (out / "bundle" / mine[3]).symlink_to(earlier)
    capsys.readouterr()
    assert main(["search", str(path), "--budget-ms", "1000", "--bundle"]) == 0
    folder = out / "bundle" / f"tiny-sst2-{summary['best']}"
    from compress.bundle_predict import sha256_file  # the value to publish apart, as `compress bundle` prints it

    assert f"manifest.json sha256: {sha256_file(folder / 'manifest.json')}" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "bundle").iterdir()) == sorted([folder.name, f"{folder.name}.tar.gz",
                                                                        *mine])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["artifact"] == f"search candidate {summary['best']}"
    assert manifest["latency"]["p50_ms"] == best["latency"]["p50_ms"] and manifest["metrics"]["dev"] == best["metrics"]
    # scored again as it ships (bundle.verify): the candidate's own score, row for row the same predictions
    assert manifest["verified"]["metrics"] == best["metrics"] and manifest["verified"]["points_apart"] == 0.0
    assert manifest["source"]["pick"].endswith("on held-out training rows; dev not used to pick")
    assert "allow_spinning=0" in manifest["latency"]["protocol"]  # the search's protocol line
    assert "idle threads spinning" in (folder / "README.md").read_text()
    # the candidate's own config.json for Optimum (its depth; the teacher's config for the teacher itself)
    assert manifest["transformers_files"][0] == "config.json"
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == best["depth"]
    from compress.bundle import predict

    assert predict(folder, ["a gripping film", "a dull mess"])[0]["label"] in ("negative", "positive")

    # rerun with a budget nothing can meet: every candidate is reused (files untouched), none fits; the work files
    # a killed search left (no such process) are removed
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "candidates").glob("*.json")}
    dead = [out / ".quantize-L1-dynamic-999999999", out / "models" / ".L1-base.tmp-999999999"]
    for folder in dead:
        folder.mkdir()
    again = run_search(recipe, budget_ms=1e-4)
    assert not any(folder.exists() for folder in dead)
    assert again["counts"]["measured"] == 0 and again["counts"]["reused"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "candidates").glob("*.json")} == stamps
    assert again["best"] is None and again["message"].startswith("no candidate fits 0.0001 ms")

    # a candidate recorded before int8 models were scored one text at a time is measured again, the others reused
    old = out / "candidates" / "L1-dynamic.json"
    record = json.loads(old.read_text())
    assert record["scored_batch"] == 1
    del record["scored_batch"]
    old.write_text(json.dumps(record))
    third = run_search(recipe, budget_ms=1000.0)
    assert third["counts"]["measured"] == 1 and third["counts"]["reused"] == 3
    assert json.loads(old.read_text())["scored_batch"] == 1

    # an int8 file that is no longer the one its record measured (a killed search of other settings overwrote it)
    # is measured again; the model behind it is not retrained
    int8 = Path(json.loads((out / "candidates" / "L3-k50-dynamic.json").read_text())["file"])
    int8.write_bytes(int8.read_bytes() + b"\0")
    models = {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/model.safetensors")}
    assert len(models) == 4  # one per model folder (L3 is the teacher itself)
    capsys.readouterr()
    fourth = run_search(recipe, budget_ms=1000.0)
    assert fourth["counts"]["measured"] == 1 and fourth["counts"]["reused"] == 3
    assert f"[search] L3-k50-dynamic: its int8 file changed since it was measured (sha256) ({int8}): its record is " \
        f"not reused" in capsys.readouterr().out  # redone without a word before
    # killed between moving a new int8 file into place and writing its record: the old record stands beside the new
    # file. With the same settings the file is the one the record measured, byte for byte (quantizing is
    # deterministic), so the next search reuses it; with other settings the record's no longer match and it is
    # measured again anyway
    import compress.search as search_module

    record = (out / "candidates" / "L3-k50-dynamic.json").read_text()
    int8.write_bytes(int8.read_bytes() + b"\0")  # its record no longer stands: measured again, then killed
    real_write = search_module.write_json

    def killed(path, data):
        if Path(path).name == "L3-k50-dynamic.json":
            raise KeyboardInterrupt
        real_write(path, data)

    search_module.write_json = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            run_search(recipe, budget_ms=1000.0)
    finally:
        search_module.write_json = real_write
    assert (out / "candidates" / "L3-k50-dynamic.json").read_text() == record  # the old record, a new file
    assert json.loads(record)["sha256"] == sha256_file(int8) and not list(out.glob(".quantize-*"))
    resumed = run_search(recipe, budget_ms=1000.0)
    assert resumed["counts"]["measured"] == 0 and resumed["counts"]["reused"] == 4
    # other timing threads: every candidate is timed again, no model is trained, quantized or scored again; records
    # of before that (no scored_settings) are stamped when reused, else they were re-made at every new --threads
    for record in (out / "candidates").glob("*.json"):
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items()
                                      if k != "scored_settings"}))
    near = json.loads((out / "candidates" / "L1-dynamic.json").read_text())["latency"]["p50_ms"]
    stamped = run_search(recipe, budget_ms=near)  # L1 near the budget: timed twice more, its record written again
    assert stamped["counts"]["reused"] == 4 and "L1-dynamic" in stamped["retimed"]
    assert all("scored_settings" in json.loads(r.read_text()) for r in (out / "candidates").glob("*.json"))
    limited = run_search(recipe, budget_ms=1000.0, threads=2, time_limit_min=0.0)  # no timing pass after the limit
    assert limited["counts"]["not_started"] == 4 and "timed_again" not in limited["counts"]
    int8_files = {p.name: p.stat().st_mtime_ns for p in (out / "int8").glob("*.onnx")}
    # timed again though every estimate is far over the budget (a teacher reference read slow on a loaded CPU): a
    # record whose own p50 is within budget x margin is timed, not skipped on an estimate (the winner flipped)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(search_module, "estimate_base", lambda ref, results: 1e9)
        fifth = run_search(recipe, budget_ms=1000.0, threads=2)
    assert fifth["counts"]["measured"] == 0 and fifth["counts"]["timed_again"] == 4 and fifth["threads"] == 2
    assert all(r["latency"]["threads"] == 2 for r in fifth["candidates"])
    assert {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/model.safetensors")} == models
    assert {p.name: p.stat().st_mtime_ns for p in (out / "int8").glob("*.onnx")} == int8_files
    assert run_search(recipe, budget_ms=1000.0, threads=2)["counts"]["reused"] == 4  # and stands
    # timed under other settings (2 threads; 1 now), and ruled out as a fresh search would rule them out (a budget
    # no model nears): skipped, not timed again (they were, whatever the budget); their records stand
    tiny = run_search(recipe, budget_ms=1e-4, threads=1)
    assert "timed_again" not in tiny["counts"] and tiny["counts"]["skipped"] == 4, tiny["counts"]
    assert run_search(recipe, budget_ms=1000.0, threads=2)["counts"]["reused"] == 4
    # fewer dev rows scored (task.max_eval_samples): every candidate is measured again, no model is trained again
    sixth = run_search(load_recipe(path, {"task.max_eval_samples": 32}), budget_ms=1000.0, threads=2)
    assert sixth["counts"]["measured"] == 4
    assert {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/model.safetensors")} == models
    # other calibration rows: dynamic int8 calibrates nothing, so nothing is measured again (all 4 were)
    overrides = {"task.max_eval_samples": 32, "search.calibration_samples": 16}
    assert run_search(load_recipe(path, overrides), budget_ms=1000.0, threads=2)["counts"]["measured"] == 0
    # another learning rate retrains the models, but neither exports the teacher again nor reruns it over the slice
    teacher_files = {p.name: p.stat().st_mtime_ns for p in out.glob("teacher_*")}
    teacher_int8 = (out / "int8" / "L3-dynamic.onnx").stat().st_mtime_ns
    relearnt = run_search(load_recipe(path, {**overrides, "search.lr": 3e-4}), budget_ms=1000.0, threads=2)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("teacher_*")} == teacher_files
    assert {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/model.safetensors")} != models
    # nor quantizes and scores the teacher's own candidate again (the teacher used as it is: nothing of it trains)
    assert (relearnt["counts"]["measured"], relearnt["counts"]["reused"]) == (3, 1), relearnt["counts"]
    assert (out / "int8" / "L3-dynamic.onnx").stat().st_mtime_ns == teacher_int8
    # more steps than the training slice (190 rows) has batches of 8: exactly that many (one pass, 24, before)
    run_search(load_recipe(path, {**overrides, "search.train_steps": 30}), budget_ms=1000.0, threads=2)
    assert json.loads((out / "models" / "L1-base" / "search_model.json").read_text())["train_steps"] == 30


def test_search_time_limit_and_estimate_skips(tmp_path, glue_dir, tokenizer, capsys):
    path = _recipe(tmp_path, glue_dir, tokenizer, depths=[1, 2])
    recipe = load_recipe(path)
    stopped = run_search(recipe, budget_ms=1000.0, time_limit_min=0.0)
    assert stopped["stopped"].startswith("time limit 0 min reached")
    assert stopped["counts"]["measured"] == 0 and len(stopped["not_started"]) == 4
    # not "no candidate fits": the time limit came before any candidate, nothing was learnt about the budget
    assert stopped["message"].startswith("stopped by the time limit before any candidate was measured (time limit 0 "
                                         "min reached after ")
    assert stopped["message"].endswith("; 4 not started): raise --time-limit-min, or rerun to go on")
    capsys.readouterr()
    assert main(["search", str(path), "--budget-ms", "1000", "--time-limit-min", "0", "--bundle"]) == 1
    assert "no bundle made: the time limit came before any candidate was measured\n" in capsys.readouterr().out
    assert not (recipe.run_dir / "search" / "pareto.png").exists()
    assert not list((recipe.run_dir / "search" / "candidates").glob("*.json"))
    # stopped with some candidates measured (here: by an earlier search of depth 1 only): the answer is said to be
    # of the candidates measured so far
    import dataclasses

    run_search(recipe, dataclasses.replace(recipe.search, depths=[1]), budget_ms=1000.0)
    partial = run_search(recipe, budget_ms=1000.0, time_limit_min=0.0)
    assert partial["counts"]["reused"] == 2 and partial["stopped"]
    assert partial["message"].startswith("stopped early (time limit 0 min reached after") and \
        "2 candidate(s) not started" in partial["message"] and "so far, best within 1000 ms" in partial["message"]
    for folder in ("candidates", "models", "int8"):
        shutil.rmtree(recipe.run_dir / "search" / folder)
    # a budget far below the teacher's fp32 latency / margin: every model is skipped without being built
    tiny = run_search(recipe, budget_ms=1e-4)
    assert tiny["counts"]["skipped"] == 4 and tiny["counts"]["measured"] == 0
    assert all(s["reason"].startswith("estimate ") for s in tiny["skipped"])
    assert tiny["message"] == "no candidate fits 0.0001 ms: none was measured (4 skipped as too slow)"
    assert not list((recipe.run_dir / "search" / "models").iterdir())
    assert main(["search", str(recipe.path), "--budget-ms", "0.0001"]) == 1  # CLI: exit 1 when nothing fits
    assert "no candidate fits" in capsys.readouterr().out


def test_the_time_limit_stops_the_search_between_two_models(tmp_path, glue_dir, tokenizer, monkeypatch):
    """The limit is read before each model: one that runs past it is finished and kept, the next is not started,
    and the answer is said to be of the candidates measured so far (every other test stops at 0 minutes, before
    the first model)."""
    from compress import search

    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1, 2]))
    now = [1000.0]
    build = search.build_model

    def slow_build(ctx, spec):  # the first model takes an hour of the search's clock
        out = build(ctx, spec)
        now[0] += 3600.0
        return out

    monkeypatch.setattr(search, "clock", lambda: now[0])
    monkeypatch.setattr(search, "build_model", slow_build)
    summary = run_search(recipe, budget_ms=1000.0, time_limit_min=1.0)
    assert summary["counts"]["measured"] == 1 and [r["id"] for r in summary["candidates"]] == ["L1-k50-dynamic"]
    assert summary["not_started"] == ["L1-dynamic", "L2-k50-dynamic", "L2-dynamic"]  # cheapest first
    assert summary["stopped"] == "time limit 1 min reached after 60.0 min"
    assert summary["message"].startswith("stopped early (time limit 1 min reached after 60.0 min; 3 candidate(s) not "
                                         "started: raise --time-limit-min or rerun to go on) - so far, best within "
                                         "1000 ms: L1-")


def test_bad_inputs_one_line_errors(tmp_path, glue_dir, tokenizer, capsys):
    path = _recipe(tmp_path, glue_dir, tokenizer, teacher=False)
    assert main(["search", str(path), "--budget-ms", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no fine-tuned teacher" in err and "--stage teacher" in err
    assert main(["search", str(path), "--budget-ms", "5", "--runs-dir", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()  # the command it names trains the teacher where this search looks
    assert err.endswith(f"run `compress run {path} --stage teacher --runs-dir {tmp_path / 'other'}` first")
    assert main(["search", str(path), "--budget-ms", "5", "--runs-dir", str(tmp_path / "my runs")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--runs-dir '{tmp_path / 'my runs'}'` first")  # pasteable
    assert main(["search", str(path), "--budget-ms", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --budget-ms: must be a finite number > 0 ms, got -3"
    for option, value in (("--budget-ms", "inf"), ("--budget-ms", "nan"), ("--time-limit-min", "nan")):
        args = ["--budget-ms", "5"] if option != "--budget-ms" else []
        assert main(["search", str(path), *args, option, value]) == 2
        assert capsys.readouterr().err.startswith(f"error: {option}: must be a finite number")
    assert main(["search", str(path)]) == 2  # no budget anywhere
    assert "no latency budget" in capsys.readouterr().err
    assert main(["search", str(path), "--budget-ms", "5", "--time-limit-min", "-1"]) == 2
    assert "--time-limit-min: must be a finite number >= 0" in capsys.readouterr().err
    # said before torch is imported (seconds, not the ~40 s a loaded 2-core machine takes to import it)
    code = f"import sys; from compress.cli import main; rc = main(['search', {str(path)!r}]); " \
           "print(rc, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["2", "False"] and "no latency budget" in proc.stderr, proc.stderr
    with pytest.raises(CompressError, match=r"tiny.yaml: search.budget_ms: must be > 0 ms"):
        load_recipe(path, {"search.budget_ms": -1})
    with pytest.raises(CompressError, match=r"search.keep_macs: fractions in \(0, 1\]"):
        load_recipe(path, {"search.keep_macs": [0]})
    for key, value in (("modes", ["dynamic", "dynamic"]), ("keep_macs", [0.5, 0.5]), ("depths", [1, 1])):
        with pytest.raises(CompressError, match=rf"tiny.yaml: search.{key}: .* is listed twice"):
            load_recipe(path, {f"search.{key}": value})
    # a depth the teacher does not have: named with the recipe, before torch loads and before any folder is made
    deep = _recipe(tmp_path, glue_dir, tokenizer, depths=[2, 5])  # the trained teacher's depth (3), not minilm-l6's
    assert main(["search", str(deep), "--budget-ms", "5"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {deep}: search.depths: 5 layers, but the teacher has 3"
    deeper = _recipe(tmp_path, glue_dir, tokenizer, depths=[2, 7])  # deeper than the recipe's teacher: at validation
    assert main(["validate", str(deeper)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {deeper}: search.depths: 7 layers, but the teacher has 6"
    assert not (tmp_path / "runs" / "tiny" / "search").exists()


def test_search_plot_stars_the_best_candidate(tmp_path, monkeypatch):
    """The plot names the pick: a star on the best candidate within the budget (picked on held-out rows, so not
    necessarily a point of the dev Pareto front) and its id in the legend."""
    from compress import pareto
    from compress.search import plot

    seen = {}
    real = pareto._spread_labels

    def spy(fig, ax, labels, points=()):
        seen["ax"], seen["labels"] = ax, labels
        return real(fig, ax, labels, points)

    monkeypatch.setattr(pareto, "_spread_labels", spy)
    cands = [{"id": f"L{d}-{m}", "mode": m, "params": 1e6, "size_bytes": 1, "metric_name": "accuracy",
              "metric": 0.80 + 0.01 * d - 0.002 * (m == "static"),
              "latency": {"p50_ms": 0.4 * d * (1.3 if m == "static" else 1.0), "p90_ms": 1.0}}
             for d in range(1, 7) for m in ("dynamic", "static")]
    summary = {"recipe": "tiny", "budget_ms": 1.7, "threads": 1, "candidates": cands, "best": "L4-static",
               "front": [r["id"] for r in front(cands)]}
    assert plot(summary, tmp_path / "pareto.png").stat().st_size > 10_000
    ax = seen["ax"]
    assert "best: L4-static" in [t.get_text() for t in ax.get_legend().get_texts()]
    stars = [c for c in ax.collections if c.get_label() == "best: L4-static"]
    assert len(stars) == 1 and tuple(stars[0].get_offsets()[0]) == pytest.approx((0.4 * 4 * 1.3, 0.838))
    assert [a.get_fontweight() for a in seen["labels"] if a.get_text() == "L4-static"] == ["bold"]
    assert seen["ax"].get_xlabel().startswith("p50 latency per sentence")
    summary["best"] = None  # nothing fits: no star
    plot(summary, tmp_path / "pareto.png")
    assert not [c for c in seen["ax"].collections if str(c.get_label()).startswith("best:")]
    summary["pair"] = True  # a pair task (MRPC, RTE) is timed per pair, both texts in one input
    plot(summary, tmp_path / "pareto.png")
    assert seen["ax"].get_xlabel().startswith("p50 latency per pair")


def test_search_md_sets_the_runs_own_bundle_beside_the_best(tmp_path):
    """A search's candidates are trained briefly; its best (0.8337 at 0.78 ms on the quickstart) was worse than the
    model the run's bundle already shipped (0.8383 at 0.49 ms), and nothing said so. search.md now names the run's
    bundle, its dev score and its bench p50 at the search's threads; without a bundle, or an unreadable one, nothing."""
    from types import SimpleNamespace

    from compress.search import markdown, run_bundle

    recipe = SimpleNamespace(run_dir=tmp_path / "runs" / "quickstart")
    assert run_bundle(recipe, 1) is None  # no bundle stage ran
    stage = recipe.run_dir / "bundle"
    (stage / "quickstart-sst2-int8").mkdir(parents=True)
    (stage / "manifest.json").write_text(json.dumps({"bundle": {"paths": ["quickstart-sst2-int8"],
                                                                "chosen": "pruned · int8 dynamic"}}))
    (stage / "quickstart-sst2-int8" / "manifest.json").write_text(json.dumps(
        {"metrics": {"dev": {"accuracy": 0.8383}}, "latency": {"by_threads": {"1": {"p50_ms": 0.491},
                                                                              "2": {"p50_ms": 0.691}}}}))
    shipped = run_bundle(recipe, 1)
    assert shipped == {"artifact": "pruned · int8 dynamic", "metric_name": "accuracy", "metric": 0.8383, "threads": 1,
                       "p50_ms": 0.491}
    assert run_bundle(recipe, 4)["p50_ms"] is None  # a thread count the bench did not time: the score alone
    summary = {"recipe": "quickstart", "task": "sst2", "message": "best within 1 ms: L5-k50-dynamic", "budget_ms": 1.0,
               "threads": 1, "latency": "p50", "teacher_fp32": {"p50_ms": 4.7}, "wall_s": 190.0,
               "counts": {"measured": 8, "reused": 0, "skipped": 0, "not_started": 4}, "stopped": None,
               "candidates": [], "front": [], "skipped": [], "not_started": [], "best": None, "run_bundle": shipped}
    assert ("For comparison, the run's own bundle (the recipe's models, trained in full; not a candidate here): "
            "pruned · int8 dynamic, dev accuracy 0.8383, p50 0.49 ms at 1 thread(s) in the bench stage's pass") in \
        markdown(summary, None)
    (stage / "manifest.json").write_text("{not json")
    assert run_bundle(recipe, 1) is None


def test_an_interrupted_search_leaves_its_three_outputs_of_one_search(tmp_path, monkeypatch):
    """Ctrl-C while the plot was drawn (about a second) left the new budget's search.json beside the old search's
    page and plot; now the page and plot are made under temporary names first and search.json goes in last."""
    from compress import search

    def plot(summary, path):
        if summary["budget_ms"] == 2:
            raise KeyboardInterrupt
        path.write_bytes(b"png %g" % summary["budget_ms"])
        return path

    def markdown(summary, png):
        if summary["budget_ms"] == 3:
            raise KeyboardInterrupt
        return f"budget {summary['budget_ms']:g}, plot {png}"

    monkeypatch.setattr(search, "plot", plot)
    monkeypatch.setattr(search, "markdown", markdown)

    def outputs() -> tuple:
        return (json.loads((tmp_path / "search.json").read_text())["budget_ms"],
                (tmp_path / "search.md").read_text(), (tmp_path / "pareto.png").read_bytes())

    search.write_outputs(tmp_path, {"budget_ms": 1})
    assert outputs() == (1, "budget 1, plot pareto.png", b"png 1")
    for budget in (2, 3):
        with pytest.raises(KeyboardInterrupt):
            search.write_outputs(tmp_path, {"budget_ms": budget})
        assert outputs() == (1, "budget 1, plot pareto.png", b"png 1")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "search.json", "search.md"]


def test_a_candidate_near_the_budget_is_decided_on_the_median_of_several_passes(tmp_path, monkeypatch):
    """One timing pass does not decide a candidate within timing noise of the budget: it is timed again (with the
    reference, in one pass per round) until it has NEAR_BUDGET_PASSES, and the median decides; far ones are not."""
    from types import SimpleNamespace

    from compress import search

    (tmp_path / "candidates").mkdir()
    ctx = SimpleNamespace(out=tmp_path)

    def cand(cid, p50, metric):
        return {"id": cid, "file": str(tmp_path / f"{cid}.onnx"), "metric": metric, "select_metric": metric,
                "select_on": "holdout", "latency": {"p50_ms": p50, "p90_ms": p50 * 1.5, "threads": 1},
                "teacher_fp32_p50_ms_same_pass": 4.0, "speedup_vs_teacher_fp32": round(4.0 / p50, 3)}

    near, fast, slow = cand("L2-dynamic", 1.05, 0.85), cand("L1-dynamic", 0.5, 0.80), cand("L3-dynamic", 1.8, 0.88)
    results = [fast, near, slow]
    passes = iter([0.96, 0.97])
    calls = []

    def fake_time_pass(ctx_, arts):
        calls.append(sorted(arts))
        p50 = next(passes)
        return {"ref": {"p50_ms": 4.2, "p90_ms": 5.0, "runs": 8},
                "L2-dynamic": {"p50_ms": p50, "p90_ms": 1.4, "runs": 8}}

    monkeypatch.setattr(search, "time_pass", fake_time_pass)
    assert search.pick(results, 1.0)["id"] == "L1-dynamic"  # on its first pass alone, L2 is over the budget
    # past the search's time limit no pass starts: the candidate keeps its one pass, said unconfirmed
    past = time.perf_counter() - 1.0
    assert search.confirm_near_budget(ctx, results, 1.0, "ref.onnx", deadline=past) == ([], ["L2-dynamic"])
    assert calls == [] and near["latency"]["p50_ms"] == 1.05 and len(near["latency"]["passes"]) == 1
    assert search.confirm_near_budget(ctx, results, 1.0, "ref.onnx") == (["L2-dynamic"], [])  # (a rerun)
    assert calls == [["L2-dynamic", "ref"], ["L2-dynamic", "ref"]]  # only the near one, with the reference
    assert [p["p50_ms"] for p in near["latency"]["passes"]] == [1.05, 0.96, 0.97]
    assert near["latency"]["p50_ms"] == 0.97 and near["teacher_fp32_p50_ms_same_pass"] == 4.2
    assert near["speedup_vs_teacher_fp32"] == round_down(4.2 / 0.97, 4)  # cut, not rounded (4.3298)
    assert "passes" not in fast["latency"] and slow["latency"]["p50_ms"] == 1.8
    assert search.pick(results, 1.0)["id"] == "L2-dynamic"  # the median fits: the more accurate one is picked
    saved = json.loads((tmp_path / "candidates" / "L2-dynamic.json").read_text())
    assert saved["latency"]["p50_ms"] == 0.97 and len(saved["latency"]["passes"]) == 3
    # a rerun (the saved record reused) does not time it again
    assert search.confirm_near_budget(ctx, [saved, fast, slow], 1.0, "ref.onnx") == ([], []) and len(calls) == 2
    summary = {"recipe": "tiny", "task": "sst2", "message": "m", "budget_ms": 1.0, "threads": 1, "latency": "p50",
               "teacher_fp32": {"p50_ms": 4.0}, "wall_s": 1.0, "stopped": None, "skipped": [], "not_started": [],
               "counts": {"measured": 3, "reused": 0, "skipped": 0, "not_started": 0}, "best": "L2-dynamic",
               "front": [], "candidates": [{**r, "depth": 1, "keep_macs": 1.0, "macs_fraction": 0.25, "mode": "dynamic",
                                            "params": 1e6, "metric_name": "accuracy"} for r in (fast, saved, slow)]}
    md = search.markdown(summary, None)
    assert "| 0.97 (median of 3) |" in md and "| 0.50 |" in md and "budget x 1.5 after its first pass is timed in 3 " \
        "passes" in md
    assert "ms per sentence at 1 thread(s)" in md
    assert "ms per pair at 1 thread(s)" in search.markdown({**summary, "pair": True}, None)
    # the speedups divide each candidate's own pass's teacher p50, not the one in the header: its range is said
    assert "Teacher ONNX fp32: p50 4.00 ms (each speedup is over the teacher's p50 timed in that candidate's own " \
        "pass: 4.00 to 4.20 ms here, teacher_fp32_p50_ms_same_pass in search.json). " in md
    one = [{**c, "teacher_fp32_p50_ms_same_pass": 4.0} for c in summary["candidates"]]
    assert "Teacher ONNX fp32: p50 4.00 ms. " in search.markdown({**summary, "candidates": one}, None)


def test_search_removes_the_scratch_folders_of_a_killed_search(tmp_path, glue_dir, tokenizer, monkeypatch):
    """A search killed with -9 left its quantize and bench scratch folders (model-sized int8 tries) in the system's
    temporary folder, and search reruns never removed them (only `compress run` did). A live process's are kept."""
    import os
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dead = scratch / "compress-quantize-999999999-x1"  # no such process
    live = scratch / f"compress-bench-{os.getpid()}-x2"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "guard-1.onnx").write_bytes(b"\0")
    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1]))
    run_search(recipe, budget_ms=1000.0, time_limit_min=0.0)
    assert not dead.exists() and live.exists()


def test_a_candidate_timed_on_another_machine_is_timed_again(tmp_path, glue_dir, tokenizer, monkeypatch):
    """Resume reuses a candidate's latency only when it was measured on this machine (CPU, cores, onnxruntime): a run
    folder copied to another machine, or a rerun after an onnxruntime upgrade, re-measures without retraining."""
    import compress.manifest

    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0]))
    first = run_search(recipe, budget_ms=1000.0)
    assert first["counts"]["measured"] == 1
    models = {p.name: p.stat().st_mtime_ns for p in (recipe.run_dir / "search" / "models").glob("*/model.safetensors")}
    monkeypatch.setattr(compress.manifest, "cpu_model", lambda: "Another CPU @ 9.9GHz")
    again = run_search(recipe, budget_ms=1000.0)
    assert again["counts"]["measured"] == 1 and again["counts"]["reused"] == 0
    assert {p.name: p.stat().st_mtime_ns
            for p in (recipe.run_dir / "search" / "models").glob("*/model.safetensors")} == models


def test_search_results_and_its_bundle_name_the_machine_they_were_timed_on(tmp_path, glue_dir, tokenizer, monkeypatch):
    """A latency means little without the machine behind it: search.json and the bundle of its pick record the CPU,
    its cores and the onnxruntime version (as the bench stage's protocol does)."""
    from types import SimpleNamespace

    from compress import bundle, search
    from compress.config import SearchConfig

    ctx = SimpleNamespace(recipe=SimpleNamespace(name="tiny", bench=None, run_dir=Path("/no-such-run")),
                          spec=SimpleNamespace(name="sst2", text_pair=None), settings="s")
    cand = {"id": "L1-dynamic", "file": "L1-dynamic.onnx", "metric": 0.8, "select_metric": 0.8, "select_on": "holdout",
            "metric_name": "accuracy", "metrics": {"accuracy": 0.8}, "speedup_vs_teacher_fp32": 4.0,
            "latency": {"p50_ms": 1.0, "p90_ms": 1.2, "threads": 1}}
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [cand], [], [], None, 1, 0, 1.0)
    assert summary["machine"] == search.machine() and summary["machine"]["cpu"] and summary["machine"]["cores"]
    assert summary["versions"]["onnxruntime"] and summary["versions"]["torch"]  # what built and timed them
    seen = {}
    monkeypatch.setattr(bundle, "build", lambda *a, **kw: seen.update(kw) or (None, None))
    search.bundle_best(load_recipe(_recipe(tmp_path, glue_dir, tokenizer, teacher=False)), summary)
    m = summary["machine"]
    assert seen["latency"]["machine"] == f"{m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}"


def test_the_search_bundle_of_an_mrpc_pick_carries_its_test_split_scores(tmp_path, glue_dir, tokenizer, monkeypatch):
    """A bundle made by `compress run` on MRPC ships its model's and the teacher's scores on the labelled test split;
    the search's bundle shipped dev only. Its pick is now scored on the test rows the teacher stage scored (the first
    48 under task.max_eval_samples), one pair at a time, as shipped."""
    from types import SimpleNamespace

    from compress import bundle, search
    from compress.config import SearchConfig
    from compress.data import Collator, load_task, tokenize
    from compress.config import QuantizeConfig
    from compress.export import export_onnx, onnx_predict, session
    from compress.modeling import load_trained
    from compress.quantize import quantize_dynamic

    path = _recipe(tmp_path, glue_dir, tokenizer)
    path.write_text(path.read_text().replace("name: sst2", "name: mrpc").replace("SST-2", "MRPC"))
    recipe = load_recipe(path)
    teacher_dir = recipe.run_dir / "teacher" / "model"
    model, tok = load_trained(teacher_dir)
    # int8 dynamic: its scores depend on the batch, so one pair at a time is what the bundle's figures must be
    onnx = quantize_dynamic(export_onnx(model.eval(), tmp_path / "fp32.onnx"), tmp_path / "cand.onnx",
                            QuantizeConfig())
    (teacher_dir.parent / "manifest.json").write_text(json.dumps({
        "metrics": {"dev": {"f1": 0.8, "accuracy": 0.7}, "test": {"f1": 0.79, "accuracy": 0.69}},
        "train": {"dev_rows": 48, "dev_split_rows": 408, "test_rows": 48, "test_split_rows": 1725}}))
    ctx = SimpleNamespace(recipe=SimpleNamespace(name="tiny", bench=None, run_dir=Path("/no-such-run")),
                          spec=SimpleNamespace(name="mrpc", text_pair="sentence2"), settings="s")
    cand = {"id": "L3-dynamic", "file": str(onnx), "metric": 0.6, "select_metric": 0.6, "select_on": "holdout",
            "metric_name": "f1", "metrics": {"f1": 0.6, "accuracy": 0.5}, "speedup_vs_teacher_fp32": 1.0,
            "latency": {"p50_ms": 1.0, "p90_ms": 1.2, "threads": 1}}
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [cand], [], [], None, 1, 0, 1.0)
    seen = {}
    monkeypatch.setattr(bundle, "build", lambda *a, **kw: seen.update(kw) or (None, None))
    search.bundle_best(recipe, summary)
    metrics = seen["metrics"]
    test = tokenize(load_task(recipe.task).test, tok, 32)
    labels = np.asarray(test["label"])
    alone = onnx_predict(session(onnx), test, Collator({"": tok}), batch_size=1).argmax(-1)
    assert len(test) == 48 and metrics["test"]["accuracy"] == pytest.approx(float((alone == labels).mean()))
    assert metrics["teacher_test"] == {"f1": 0.79, "accuracy": 0.69}
    assert metrics["test_retention"] == pytest.approx(metrics["test"]["f1"] / 0.79)
    assert (metrics["test_rows"], metrics["test_subset"]) == (48, True)
    assert metrics["dev"] == {"f1": 0.6, "accuracy": 0.5} and (metrics["dev_rows"], metrics["dev_subset"]) == (48, True)
    # a teacher scored on other test rows (its cap changed since): its test score is not set beside the pick's
    manifest = json.loads((teacher_dir.parent / "manifest.json").read_text())
    manifest["train"]["test_rows"] = 100
    (teacher_dir.parent / "manifest.json").write_text(json.dumps(manifest))
    search.bundle_best(recipe, summary)
    metrics = seen["metrics"]
    assert (metrics["test_rows"], metrics["test_subset"]) == (48, True) and "test" in metrics
    assert "teacher_test" not in metrics and "test_retention" not in metrics


def test_search_survives_torn_state_files(tmp_path, glue_dir, tokenizer):
    """A torn (or hand-edited) stamp of the search's work files is not trusted and does not crash the rerun: the
    reference export, the teacher's logits and a saved model are rebuilt, as a torn candidate record is re-measured."""
    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0]))
    run_search(recipe, budget_ms=1000.0)
    out = recipe.run_dir / "search"
    for stamp in ("teacher_fp32.json", "teacher_logits.json", "models/L1/search_model.json",
                  "candidates/L1-dynamic.json"):
        (out / stamp).write_text('{"settings": "')
    again = run_search(recipe, budget_ms=1000.0)
    assert again["counts"]["measured"] == 1 and again["best"] == "L1-dynamic"
    assert json.loads((out / "teacher_fp32.json").read_text())["file"].startswith("teacher_fp32")
    assert "settings" in json.loads((out / "models" / "L1" / "search_model.json").read_text())
    for stamp in ("teacher_logits.json", "candidates/L1-dynamic.json"):  # rewritten whole, not left torn
        assert isinstance(json.loads((out / stamp).read_text()), dict)

    # the work files themselves torn or deleted under intact stamps: a torn teacher_logits.npy stopped every rerun
    # with numpy's traceback, a torn reference export failed it, a deleted model left its candidate failed for good
    reference = out / json.loads((out / "teacher_fp32.json").read_text())["file"]
    for torn in (out / "teacher_logits.npy", reference):
        torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    (out / "models" / "L1" / "model.safetensors").unlink()
    (out / "int8" / "L1-dynamic.onnx").unlink()
    third = run_search(recipe, budget_ms=1000.0)
    assert third["counts"]["measured"] == 1 and third["best"] == "L1-dynamic" and not third["skipped"]
    assert (out / "models" / "L1" / "model.safetensors").is_file()


def test_saved_teacher_logits_of_another_shape_or_torn_are_labelled_again(tmp_path, capsys):
    """The teacher's logits an earlier search saved are reused only when they are a (rows, labels) array of the
    slice's rows: a file of another slice, a vector or a torn file is said and labelled again (None)."""
    from compress.search import _saved_logits

    path = tmp_path / "teacher_logits.npy"
    logits = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(path, logits)
    assert torch.equal(_saved_logits(path, 6), torch.from_numpy(logits))
    for saved, rows, said in ((logits, 5, "shape (6, 2), not 5 rows"), (logits[:, 0], 6, "shape (6,), not 6 rows")):
        np.save(path, saved)
        assert _saved_logits(path, rows) is None
        assert f"[search] {path}: {said}: the teacher labels the slice again" in capsys.readouterr().out
    path.write_bytes(path.read_bytes()[:40])
    assert _saved_logits(path, 6) is None and "unreadable (" in capsys.readouterr().out


def test_candidates_that_failed_are_not_called_too_slow():
    """When candidates failed (an export parity failure, say) the message says so, rather than counting them as
    skipped for being too slow."""
    from types import SimpleNamespace

    from compress import search
    from compress.config import SearchConfig

    ctx = SimpleNamespace(recipe=SimpleNamespace(name="tiny", bench=None, run_dir=Path("/no-such-run")),
                          spec=SimpleNamespace(name="sst2", text_pair=None), settings="s")
    skipped = [{"id": "L1-dynamic", "reason": "failed: export parity: max |diff| 0.3"},
               {"id": "L3-dynamic", "reason": "fp32 estimate 9.00 ms (...) > budget x 3"}]
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [], skipped, [], None, 0, 0, 1.0)
    assert summary["message"] == ("no candidate fits 2 ms: none was measured (1 skipped as too slow, 1 failed: "
                                  "L1-dynamic: export parity: max |diff| 0.3)")
    # the time limit came before the cheapest candidates started: they may fit, so no "no candidate fits"
    stopped, waiting = "time limit 0 min reached after 0.0 min", [{"id": "L2-dynamic"}, {"id": "L2-static"}]
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [], skipped[1:], waiting, stopped,
                               0, 0, 1.0)
    assert summary["message"] == ("stopped by the time limit before any candidate was measured (time limit 0 min "
                                  "reached after 0.0 min; 2 not started, 1 skipped as too slow): raise "
                                  "--time-limit-min, or rerun to go on")
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [], skipped[:1], waiting, stopped,
                               0, 0, 1.0)
    assert summary["message"].startswith("stopped by the time limit before any candidate was measured (time limit 0 "
                                         "min reached after 0.0 min; 2 not started, 1 failed: L1-dynamic: export")
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [], [], [], None, 0, 0, 1.0)
    assert summary["message"] == "no candidate fits 2 ms: none was measured (none tried)"


def test_a_candidate_record_of_another_shape_is_measured_again_not_a_traceback(tmp_path):
    """A hand-edited candidates/<id>.json that is JSON but no record (a list, null, no latency, a p50 as text) is
    not reused: the candidate is measured again (it was an AttributeError out of `compress search`)."""
    from types import SimpleNamespace

    from compress.search import load_result

    ctx = SimpleNamespace(out=tmp_path)
    (tmp_path / "candidates").mkdir()
    for text in ("[]", "null", '{"mode": "dynamic"}', '{"mode": "dynamic", "latency": {"p50_ms": "1.0"}}',
                 '{"mode": "dynamic", "latency": {"p50_ms": true}}', "{torn"):
        (tmp_path / "candidates" / "L1-dynamic.json").write_text(text)
        assert load_result(ctx, "L1-dynamic") == (None, False), text


def test_bad_lr_or_skip_margin_names_its_own_field(tmp_path, glue_dir, tokenizer):
    path = _recipe(tmp_path, glue_dir, tokenizer, teacher=False)
    with pytest.raises(CompressError, match=r"^.*tiny.yaml: search.skip_margin: must be >= 1, got 0.5 \(a value given "
                                            r"with --set search.skip_margin\)$"):
        load_recipe(path, {"search.skip_margin": 0.5})
    with pytest.raises(CompressError, match=r"^.*tiny.yaml: search.lr: must be > 0, got 0"):
        load_recipe(path, {"search.lr": 0})


def test_keep_fractions_that_would_share_a_candidate_id_are_refused(tmp_path, glue_dir, tokenizer):
    """Two keep_macs that print alike (ids keep 6 significant digits) would be one candidate file: the second would
    reuse the first's record and the results would list it twice. Refused with the recipe, naming the field."""
    path = _recipe(tmp_path, glue_dir, tokenizer, teacher=False)
    with pytest.raises(CompressError, match=r"tiny.yaml: search.keep_macs: 0.1234561 and 0.1234562 .*k12.3456"):
        load_recipe(path, {"search.keep_macs": [1.0, 0.1234561, 0.1234562]})
    assert len({s.id for s in candidates(load_recipe(path, {"search.keep_macs": [1.0, 0.5, 0.504]}).search, 3)}) == 6


def test_pick_ignores_a_candidate_whose_selection_score_is_nan():
    """A regression candidate whose predictions are constant has pearson nan (compress.metrics): it cannot be ranked,
    and max() over a nan key kept it whenever it came first (the fastest), above every scored candidate."""
    nan = {"id": "L1-k50-dynamic", "metric": 0.1, "select_metric": float("nan"), "latency": {"p50_ms": 0.5}}
    good = {"id": "L2-dynamic", "metric": 0.8, "select_metric": 0.8, "latency": {"p50_ms": 1.0}}
    assert pick([nan, good], 2.0)["id"] == "L2-dynamic" and pick([good, nan], 2.0)["id"] == "L2-dynamic"
    assert pick([nan], 2.0) is None
    from types import SimpleNamespace

    from compress import search
    from compress.config import SearchConfig

    ctx = SimpleNamespace(recipe=SimpleNamespace(name="tiny", bench=None, run_dir=Path("/no-such-run")),
                          spec=SimpleNamespace(name="stsb", text_pair="s2"), settings="s")
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [nan], [], [], None, 1, 0, 1.0)
    assert summary["best"] is None and summary["message"].startswith(
        "no candidate fits 2 ms with a score to rank it by: L1-k50-dynamic scored nan")


def test_the_report_line_says_which_thread_count_the_budget_was_timed_at(tmp_path):
    """The report's tables hold latencies at several thread counts; its search line says which one the budget's p50
    was measured at."""
    from compress.report import _search_summary

    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "search.json").write_text(json.dumps(
        {"message": "best within 5 ms: L2-dynamic (...)", "front": ["L1-dynamic", "L2-dynamic"], "threads": 4}))
    line = _search_summary(str(tmp_path))
    assert line.startswith("best within 5 ms: L2-dynamic (...)") and "p50 at 4 thread(s)" in line


def test_search_warns_when_timing_threads_exceed_the_cores(tmp_path, glue_dir, tokenizer, caplog):
    """As the bench stage does: more timing threads than the machine has cores measure oversubscription."""
    import logging
    import os

    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0]))
    with caplog.at_level(logging.WARNING, logger="compress.search"):
        run_search(recipe, budget_ms=1000.0, time_limit_min=0.0, threads=os.cpu_count() + 1)
    assert f"search.threads {os.cpu_count() + 1}: more than this machine's {os.cpu_count()} cores" in caplog.text


def test_a_teacher_without_a_manifest_replaced_retrains_and_remeasures(tmp_path, glue_dir, tokenizer):
    """The trained models and their records depend on the teacher: one without a stage manifest (put there by hand,
    as here) is identified by its files, so another teacher in its place is not served the old one's students."""
    from transformers import BertForSequenceClassification

    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0]))
    assert run_search(recipe, budget_ms=1000.0)["counts"]["measured"] == 1
    torch.manual_seed(1)
    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=3)).save_pretrained(
        recipe.run_dir / "teacher" / "model")
    again = run_search(recipe, budget_ms=1000.0)
    assert again["counts"]["measured"] == 1 and again["counts"]["reused"] == 0
    assert json.loads((recipe.run_dir / "search" / "candidates" / "L1-dynamic.json").read_text())["build"].get(
        "reused") is None  # the student was distilled again, from the new teacher


def test_a_width_the_model_cannot_be_pruned_to_fails_that_candidate_only(tmp_path, glue_dir, tokenizer):
    """keep_macs below what pruning can reach (one head and one neuron a layer) fails that candidate, as an export
    failure does, instead of ending the whole search with prune's error."""
    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0, 0.01]))
    summary = run_search(recipe, budget_ms=1000.0)
    assert summary["best"] == "L1-dynamic" and summary["counts"]["measured"] == 1
    assert [s["id"] for s in summary["skipped"]] == ["L1-k1-dynamic"]
    # named as the search's setting (search.keep_macs), not the prune stage's
    assert summary["skipped"][0]["reason"].startswith("failed: search.keep_macs: 0.01 cannot be met")


def test_teacher_logits_replaced_but_not_yet_stamped_are_not_trusted(tmp_path, monkeypatch):
    """The cached logits and their stamp are two files: a search that replaced the logits (another teacher) and died
    before restamping left the old stamp over the new logits, which a rerun of the old settings then trusted."""
    from compress import prune_stage, search, train

    monkeypatch.setattr(train, "process_device", lambda: "cpu")
    teacher = torch.nn.Linear(1, 1)

    def ctx(settings, value):
        monkeypatch.setattr(prune_stage, "logits_of", lambda *a: torch.full((4, 2), value))
        return search.Context(None, None, tmp_path, None, teacher, None, None, [0] * 4, *[None] * 4, "s", settings, {},
                              {}, "t", settings, "b", ({}, {}))

    assert ctx("teacher A", 1.0).teacher_logits()[0, 0] == 1.0

    def killed(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        ctx("teacher B", 2.0).teacher_logits()
    monkeypatch.undo()
    monkeypatch.setattr(train, "process_device", lambda: "cpu")
    assert ctx("teacher A", 1.0).teacher_logits()[0, 0] == 1.0


def test_search_times_under_the_recipes_bench_protocol(monkeypatch):
    """The search timed with the default protocol whatever the recipe's `bench:` said (spin, rounds, order...): its
    latencies could disagree with the bench stage's. It takes them, at its own threads and dev rows; a protocol other
    than the defaults is part of its measurement settings (the defaults are not: earlier folders keep their timings)."""
    from types import SimpleNamespace

    from compress import bench, search
    from compress.config import BenchConfig, SearchConfig

    cfg = SearchConfig(threads=2, dev_rows=50)
    # repeats, min_runs, max_seconds (fixed shapes) and isolate (the memory probe) time nothing the search times: a
    # change of one re-timed every candidate (quickstart's bench sets max_seconds)
    recipe = SimpleNamespace(bench=BenchConfig(spin=True, rounds=5, threads=[1], dev_rows=300, repeats=5, min_runs=1,
                                               max_seconds=0.2, isolate=False))
    seen = {}

    def fake_measure(artifacts, dev, bcfg, flops, peak=True):
        seen["cfg"] = bcfg
        return {"results": {n: [{"p50_ms": 1.0, "p90_ms": 2.0, "runs": 9}] for n in artifacts}}

    monkeypatch.setattr(bench, "measure_in_fresh_process", fake_measure)
    ctx = SimpleNamespace(recipe=recipe, cfg=cfg, dev=None)
    assert search.time_pass(ctx, {"a": {"kind": "onnx", "path": "a.onnx"}}) == {"a": {"p50_ms": 1.0, "p90_ms": 2.0,
                                                                                       "runs": 9}}
    used = seen["cfg"]
    assert (used.spin, used.rounds, used.threads, used.dev_rows, used.batch_sizes, used.seq_lengths) == \
        (True, 5, [2], 50, [], [])
    assert search.protocol_changes(used) == {"rounds": 5, "spin": True}
    assert search.protocol_changes(search.timing_config(SimpleNamespace(bench=None), cfg)) == {}


def test_the_teacher_is_named_by_its_model_files_and_the_candidates_by_the_dev_rows_they_are_scored_on(tmp_path):
    """A teacher kept and scored again on other dev rows (task.max_eval_samples) rewrites its metrics.json: naming the
    teacher by every output of its stage retrained every search model for it. Its model files name it; the dev rows
    count in the candidates' measurement stamps (`load_context`: ``measure["dev"]``)."""
    from types import SimpleNamespace

    from compress.manifest import hash_tree
    from compress.search import teacher_identity

    folder = tmp_path / "run" / "teacher"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "metrics.json").write_text('{"dev": {"accuracy": 0.9}}')
    (folder / "manifest.json").write_text(json.dumps({"outputs": hash_tree(folder)}))
    recipe = SimpleNamespace(run_dir=tmp_path / "run")
    first, vouched = teacher_identity(recipe)
    assert vouched and first == {"model/config.json": hash_tree(folder)["model/config.json"]}
    (folder / "metrics.json").write_text('{"dev": {"accuracy": 0.8}}')  # scored again, by its stage
    (folder / "manifest.json").write_text(json.dumps({"outputs": hash_tree(folder)}))
    assert teacher_identity(recipe) == (first, True)
    (folder / "model" / "config.json").write_text('{"a": 1}')  # another model: another teacher
    (folder / "manifest.json").write_text(json.dumps({"outputs": hash_tree(folder)}))
    assert teacher_identity(recipe)[0] != first


def test_a_run_folders_teacher_that_is_not_the_recipes_is_refused(tmp_path, glue_dir, tokenizer, capsys):
    """The search only looked for a teacher in the run folder: after an edit to the recipe's teacher (or task) it
    labelled, distilled and bundled from the old one, retention against the old one's metric, without a word.
    A teacher stage recorded for other settings is refused, naming the change; one put there by hand (no manifest)
    is searched as it is."""
    from compress import pipeline

    path = _recipe(tmp_path, glue_dir, tokenizer)
    recipe = load_recipe(path)
    folder = recipe.run_dir / "teacher"
    teacher = pipeline.STAGES[0]
    (folder / "manifest.json").write_text(json.dumps({
        "fingerprint": pipeline._fingerprint(recipe, teacher, {})[0], "config": pipeline._config(recipe, teacher),
        "seed": recipe.seed, "outputs": pipeline.hash_tree(folder)}))
    assert pipeline.explain(recipe, "teacher")[0][1:] == (False, "up to date")
    assert search_settings(recipe, budget_ms=5.0).budget_ms == 5.0
    assert main(["search", str(path), "--budget-ms", "5", "--set", "teacher.lr=1.0e-4", "--time-limit-min", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {folder / 'model'}: not the recipe's teacher (changed: teacher.lr: ")
    assert err.endswith(f"run `compress run {path} --stage teacher --runs-dir {recipe.runs_dir} --set "
                        f"teacher.lr=0.0001` first")  # with the --set it was asked with
    assert len(err.splitlines()) == 1


def test_a_spike_on_a_first_pass_does_not_rule_out_the_larger_candidates(tmp_path, glue_dir, tokenizer, monkeypatch,
                                                                          capsys):
    """A candidate whose first pass reads over budget x 1.1 rules out every larger one of its mode unmeasured: a
    pass on a briefly loaded machine (0.123 ms for a model whose next passes read 0.085) decided that alone, and a
    candidate over budget was never timed again. One near the budget (up to budget x 1.5) is timed in its three
    passes as soon as it is measured, and its console line gives the median, its passes and the final verdict."""
    from compress import search

    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, skip_margin=100.0))
    true = {"L1-k50": 0.80, "L1": 0.95, "L3-k50": 1.6, "L3": 3.0}  # p50 ms; budget 1 ms
    metric = {"L1-k50": 0.80, "L1": 0.85, "L3-k50": 0.90, "L3": 0.92}
    spike = {"L1-k50-dynamic": 1.30}  # its first pass only

    def fake_time_pass(ctx, arts):
        return {n: {"p50_ms": 4.0 if n == "ref" else spike.pop(n, true[n.rsplit("-", 1)[0]]), "p90_ms": 5.0, "runs": 9}
                for n in arts}

    def fake_measure(ctx, spec, model, info, modes, ref_path):
        out = []
        for mode in modes:
            cid = f"{spec.id}-{mode}"
            lat = fake_time_pass(ctx, {"ref": None, cid: None})
            out.append({"id": cid, "model": spec.id, "depth": spec.depth, "keep_macs": spec.keep, "mode": mode,
                        "macs_fraction": spec.macs_fraction, "params": 1e6, "file": str(tmp_path / f"{cid}.onnx"),
                        "size_bytes": 1, "metric_name": "accuracy", "metric": metric[spec.id],
                        "metrics": {"accuracy": metric[spec.id]}, "select_on": "holdout",
                        "select_metric": metric[spec.id], "latency": {**lat[cid], "threads": 1, "dev_rows": 8},
                        "teacher_fp32_p50_ms_same_pass": 4.0,
                        "speedup_vs_teacher_fp32": round(4.0 / lat[cid]["p50_ms"], 3)})
        return out

    monkeypatch.setattr(search, "time_pass", fake_time_pass)
    monkeypatch.setattr(search, "reference", lambda ctx: {"path": "ref.onnx", "p50_ms": 4.0, "p90_ms": 5.0})
    monkeypatch.setattr(search, "build_model", lambda ctx, spec: (None, {"source": "fake"}))
    monkeypatch.setattr(search, "measure_model", fake_measure)
    summary = run_search(recipe, budget_ms=1.0)
    # L1 and L3-k50 were ruled out by L1-k50's first pass (and L3 with them); L3 is, by L3-k50's 1.6 ms
    assert summary["counts"]["measured"] == 3
    assert [(s["id"], s["reason"].split(" (")[0]) for s in summary["skipped"]] == [("L3-dynamic", "L3-k50-dynamic")]
    assert summary["best"] == "L1-dynamic"  # (nothing fitted: L1-k50 stood at 1.30 ms, and L1 was never measured)
    first = next(r for r in summary["candidates"] if r["id"] == "L1-k50-dynamic")
    assert first["latency"]["p50_ms"] == 0.80 and [p["p50_ms"] for p in first["latency"]["passes"]] == [1.30, 0.8, 0.8]
    assert set(summary["retimed"]) == {"L1-k50-dynamic", "L1-dynamic"}  # L3-k50 at 1.6x: over, once is enough
    printed = capsys.readouterr().out
    assert ("[search] L1-k50-dynamic: accuracy=0.8000, p50 0.80 ms, the median of 3 passes near the budget (1.30, "
            "0.80, 0.80) (within budget)") in printed
    assert "[search] L3-k50-dynamic: accuracy=0.9000, p50 1.60 ms (over budget)" in printed


def test_the_search_quantizes_as_the_recipes_quantize_section_says(tmp_path, glue_dir, tokenizer, monkeypatch):
    """The search quantized with the defaults whatever the recipe's `quantize:` said (per tensor, 7-bit weights for a
    CPU without VNNI, a calibration method): its candidates were not the int8 models the pipeline would ship. It takes
    them (with its own modes and calibration rows, no guard), and a change re-makes the candidates of the modes it
    shapes only (the defaults change no fingerprint: earlier search folders keep their candidates)."""
    from compress import quantize, search

    plain = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, modes=["dynamic", "static"]))
    same = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, modes=["dynamic", "static"]),
                       overrides={"quantize": {"per_channel": True}})  # the default, said out loud
    tensor = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, modes=["dynamic", "static"]),
                         overrides={"quantize": {"per_channel": False}})
    method = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, modes=["dynamic", "static"]),
                         overrides={"quantize": {"calibration": {"method": "percentile"}, "max_drop": 0.1}})
    cfg = search_settings(tensor, budget_ms=1.0)
    q = search.int8_config(tensor, cfg)
    assert (q.per_channel, q.max_drop, q.calibration.samples, q.ort_format, q.modes) == \
        (False, 100.0, cfg.calibration_samples, False, ["dynamic", "static"])
    assert search.int8_config(method, cfg).calibration.method == "percentile"
    assert search.int8_changes(plain, "static") == search.int8_changes(same, "static") == {}
    assert search.int8_changes(tensor, "dynamic") == {"per_channel": False}
    assert search.int8_changes(method, "dynamic") == {}  # nor the guard's budget: the search runs no guard
    assert search.int8_changes(method, "static") == {"calibration.method": "percentile"}
    four = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, modes=["dynamic", "static"]),
                       overrides={"quantize": {"table_bits": 4}})  # int4 tables: within the search's 100 points
    assert search.int8_config(four, cfg).table_bits == 4
    assert search.int8_changes(four, "dynamic") == search.int8_changes(four, "static") == {"table_bits": 4}
    # what does not shape a static int8 file: the fused graph (static calibrates the plain export); a percentile
    # under another calibration method is refused when the recipe is read (config: read by nothing)
    unused = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, modes=["dynamic", "static"]),
                         overrides={"quantize": {"optimize": False}})
    assert search.int8_changes(unused, "static") == {} and search.int8_changes(unused, "dynamic") == {"optimize": False}
    ctx = {n: search.load_context(r, cfg) for n, r in
           (("plain", plain), ("same", same), ("tensor", tensor), ("method", method))}
    for key in ("mode_settings", "scored_settings"):
        got = {n: getattr(c, key) for n, c in ctx.items()}
        assert got["same"] == got["plain"]
        assert got["tensor"]["dynamic"] != got["plain"]["dynamic"] and got["tensor"]["static"] != got["plain"]["static"]
        assert got["method"]["dynamic"] == got["plain"]["dynamic"] != got["plain"]["static"] != got["method"]["static"]
    assert ctx["tensor"].train_settings == ctx["plain"].train_settings  # re-quantized, not retrained
    seen = {}

    def fake_quantize(model, *a, **kw):
        seen["cfg"] = a[4]
        raise CompressError("stop here")

    monkeypatch.setattr(quantize, "quantize_model", fake_quantize)
    with pytest.raises(CompressError, match="stop here"):
        search.measure_model(ctx["tensor"], ModelSpec(1, 1.0, 3), None, {}, ["static"], "ref.onnx")
    assert seen["cfg"].per_channel is False and seen["cfg"].modes == ["static"]
    assert not list((tensor.run_dir / "search").glob(".quantize-*"))  # its scratch folder removed


def test_a_search_on_a_busy_run_folder_is_refused_before_torch_loads(tmp_path, glue_dir, tokenizer):
    """`compress search` took the run folder's lock after importing the search (torch: seconds): "stops at once"."""
    path = _recipe(tmp_path, glue_dir, tokenizer)
    run_dir = load_recipe(path).run_dir
    hold = ("import sys, time\nfrom pathlib import Path\nfrom compress.pipeline import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        probe = ("import sys\nfrom compress.cli import main\nrc = main(['search', sys.argv[1], '--budget-ms', '1'])\n"
                 "print(rc, 'torch' in sys.modules)\n")
        proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=300)
        assert proc.stdout.split() == ["2", "False"], proc.stderr[-2000:]
        assert f"in use by another compress run (pid {holder.pid})" in proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_teacher_replaced_under_its_stage_manifest_is_not_served_the_old_ones_models(tmp_path, glue_dir, tokenizer):
    """The teacher was named by its stage manifest's hashes, not by the files there now: a teacher model replaced
    (or edited) under an intact manifest was searched ("its outputs were edited" is no refusal) and served the old
    teacher's students, logits and scores."""
    from transformers import BertForSequenceClassification

    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0]))
    folder = recipe.run_dir / "teacher"
    teacher = pipeline.STAGES[0]
    (folder / "manifest.json").write_text(json.dumps({
        "fingerprint": pipeline._fingerprint(recipe, teacher, {})[0], "config": pipeline._config(recipe, teacher),
        "seed": recipe.seed, "outputs": pipeline.hash_tree(folder)}))
    assert run_search(recipe, budget_ms=1000.0)["counts"]["measured"] == 1
    torch.manual_seed(1)
    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=3)).save_pretrained(folder / "model")
    assert pipeline.explain(recipe, "teacher")[0][2] == "its outputs were edited since they were written"
    again = run_search(recipe, budget_ms=1000.0)
    assert again["counts"]["measured"] == 1 and again["counts"]["reused"] == 0


def test_search_reuse_follows_data_content_cores_and_a_moved_runs_folder(tmp_path, glue_dir, tokenizer, monkeypatch):
    """Another core count re-times the candidates (their int8 files and scores stand: they were quantized and scored
    again); a runs folder moved elsewhere keeps them (their records named the old absolute path: measured again); data
    edited under a teacher without a stage manifest is a change (the data's paths alone were in the keys: the old
    scores were reused)."""
    import compress.manifest

    data = shutil.copytree(glue_dir / "SST-2", tmp_path / "SST-2")
    path = _recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0])
    path.write_text(path.read_text().replace(str(glue_dir / "SST-2"), str(data)))
    assert run_search(load_recipe(path), budget_ms=1000.0)["counts"]["measured"] == 1
    cores = compress.manifest.usable_cores()
    monkeypatch.setattr(compress.manifest, "usable_cores", lambda: cores + 1)
    again = run_search(load_recipe(path), budget_ms=1000.0)
    assert (again["counts"]["measured"], again["counts"].get("timed_again")) == (0, 1), again["counts"]
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    path.write_text(path.read_text().replace(str(tmp_path / "runs"), str(tmp_path / "moved")))
    moved = run_search(load_recipe(path), budget_ms=1000.0)
    assert (moved["counts"]["measured"], moved["counts"]["reused"]) == (0, 1), moved["counts"]
    assert moved["best"] == "L1-dynamic"
    rows = (data / "dev.tsv").read_text().splitlines()
    flipped = [rows[0]] + [f"{r.rsplit(chr(9), 1)[0]}\t{1 - int(r.rsplit(chr(9), 1)[1])}" for r in rows[1:]]
    (data / "dev.tsv").write_text("\n".join(flipped) + "\n")
    edited = run_search(load_recipe(path), budget_ms=1000.0)
    assert edited["counts"]["measured"] == 1 and edited["counts"]["reused"] == 0


def test_search_md_shows_names_and_reasons_as_written():
    """search.md put the recipe and task names (a custom task's name may hold any text, a newline too) and failure
    reasons raw in Markdown: an `<img onerror>` was HTML there, a newline a second heading."""
    from types import SimpleNamespace

    from compress import search
    from compress.config import SearchConfig

    ctx = SimpleNamespace(recipe=SimpleNamespace(name="r<img src=x onerror=alert(1)>", bench=None,
                                                 run_dir=Path("/no-such-run")),
                          spec=SimpleNamespace(name="t<script>x</script>\n# injected", text_pair=None), settings="s")
    skipped = [{"id": "L1-dynamic", "reason": "failed: <b>export</b> parity | 0.3"}]
    summary = search.summarize(ctx, SearchConfig(budget_ms=2.0), {"p50_ms": 4.0}, [], skipped, [], None, 0, 0, 1.0)
    md = search.markdown(summary, None)
    assert md.splitlines()[0] == ("# Latency-budget search: r\\<img src=x onerror=alert(1)\\> "
                                  "(t\\<script\\>x\\</script\\> \\# injected)")
    assert "- L1-dynamic: failed: \\<b\\>export\\</b\\> parity \\| 0.3" in md
    assert not any(tag in md for tag in ("<img src=x onerror=alert(1)>", "<script>", "<b>"))


def test_a_new_recover_steps_retrains_the_candidates_but_not_their_depths_base_student(tmp_path, glue_dir,
                                                                                       tokenizer):
    """The base student of a depth (distilled ``train_steps`` on the slice) does not depend on ``recover_steps``
    unless the slice grows with it (its batches' order): a new value retrained every base student. Bases stamped by
    the earlier code (with the candidates' settings) still serve."""
    from compress.search import load_context

    path = _recipe(tmp_path, glue_dir, tokenizer, depths=[1], keep_macs=[1.0], train_steps=3, recover_steps=2)
    base = tmp_path / "runs" / "tiny" / "search" / "models" / "L1-base" / "search_model.json"
    assert run_search(load_recipe(path), budget_ms=1000.0)["counts"]["measured"] == 1
    first = json.loads(base.read_text())

    def rerun(**changes):
        search = {**SEARCH, "depths": [1], "keep_macs": [1.0], **changes}
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "search": search}))
        recipe = load_recipe(path)
        return run_search(recipe, budget_ms=1000.0), json.loads(base.read_text()), recipe

    done, stamp, _ = rerun(train_steps=3, recover_steps=1)  # same slice (3 x 8 rows): the base is kept
    assert done["counts"]["measured"] == 1 and stamp == first  # the candidate is retrained and measured again
    done, stamp, recipe = rerun(train_steps=3, recover_steps=5)  # 5 x 8 rows: another slice, another base
    assert done["counts"]["measured"] == 1 and stamp["settings"] != first["settings"]
    # a base stamped by the code before (with the settings of the candidates made with it) serves them
    search = {**SEARCH, "depths": [1], "keep_macs": [1.0], "recover_steps": 1}
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "search": search}))
    ctx = load_context(load_recipe(path), load_recipe(path).search)
    base.write_text(json.dumps({**stamp, "settings": ctx.train_settings, "train_s": -1.0}))
    done, stamp, _ = rerun(train_steps=3, recover_steps=1)
    assert done["counts"]["measured"] == 1 and stamp["train_s"] == -1.0 and stamp["settings"] == ctx.train_settings


def test_latencies_are_written_with_the_digits_that_place_them_against_the_budget():
    """A tiny model's "p50 0.03 ms (over budget)" against a budget of 0.032 ms read as within it; a speedup of 0.97
    read "1.0x slower than"."""
    from compress import search

    assert [search.ms(x) for x in (34.861, 1.0, 0.5, 0.0318, 0.00012)] == ["34.86", "1.00", "0.50", "0.0318",
                                                                             "0.000120"]
    assert search.ms(0.0318, 0.032) == "0.0318" and search.ms(10.004, 10.001) == "10.004"
    assert search.ms(10.004, 10.0) == "10.004" and search.ms(10.2, 10.0) == "10.20" and search.ms(5.0, 5.0) == "5.00"
    r = {"id": "L1-dynamic", "metric_name": "accuracy", "metric": 0.52, "params": 1e6,
         "latency": {"p50_ms": 0.0321, "passes": [{"p50_ms": 0.0321}, {"p50_ms": 0.0319}, {"p50_ms": 0.0322}]}}
    assert search.verdict(r, 0.032) == ("[search] L1-dynamic: accuracy=0.5200, p50 0.0321 ms, the median of 3 passes "
                                        "near the budget (0.0321, 0.0319, 0.0322) (over budget), 1.0M params")
    assert [search._speed(s) for s in (0.97, 1.04, 1.2, 0.5)] == ["about as fast as", "about as fast as",
                                                                  "1.2x faster than", "2.0x slower than"]


def test_a_smaller_candidate_over_budget_by_timing_noise_alone_rules_out_no_larger_one():
    """A measured candidate of the mode, no deeper and pruned no less, rules out a larger one only when it is over the
    budget by more than timing noise (x OVER_BUDGET_SLACK): at 1.05 x the budget it does not."""
    from compress.search import OVER_BUDGET_SLACK

    spec = ModelSpec(3, 1.0, 6)

    def smaller(p50):
        return {"id": "L2-dynamic", "mode": "dynamic", "depth": 2, "keep_macs": 1.0, "latency": {"p50_ms": p50}}

    assert skip_reason(spec, "dynamic", 2.0, 1.0, [smaller(2.0 * 1.05)], 3.0) is None
    assert skip_reason(spec, "dynamic", 2.0, 1.0, [smaller(2.0 * OVER_BUDGET_SLACK)], 3.0) is None  # not more
    assert "already takes" in skip_reason(spec, "dynamic", 2.0, 1.0, [smaller(2.0 * OVER_BUDGET_SLACK * 1.01)], 3.0)


def test_a_pruned_model_of_the_teachers_depth_is_not_the_teacher():
    """Only the unpruned model of the teacher's depth is the teacher (used as it is, timed under the teacher's
    stamps); a pruned one of that depth is built, pruned and trained like every other candidate."""
    assert ModelSpec(6, 1.0, 6).is_teacher
    assert not ModelSpec(6, 0.5, 6).is_teacher and not ModelSpec(5, 1.0, 6).is_teacher
    space = candidates(load_recipe_free_search(), 6)
    assert [s.id for s in space if s.is_teacher] == ["L6"]


def test_the_front_is_not_scrambled_by_a_nan_score_at_the_same_latency():
    """A nan dev score (a constant prediction's correlation) at the latency of two others left the sort unordered:
    the lower of those two, beaten by the higher at the same latency, was put on the front too."""
    rs = [{"id": "low", "metric": 0.6, "latency": {"p50_ms": 1.0}},
          {"id": "nan", "metric": float("nan"), "latency": {"p50_ms": 1.0}},
          {"id": "high", "metric": 0.7, "latency": {"p50_ms": 1.0}},
          {"id": "slow", "metric": 0.5, "latency": {"p50_ms": 2.0}}]
    assert [r["id"] for r in front(rs)] == ["high"]
    from compress.pareto import pareto_front

    assert pareto_front([(1.0, 0.6), (1.0, float("nan")), (1.0, 0.7), (1.0, 0.7)]) == [2, 3]  # exact ties: both


def test_the_best_candidates_latency_is_written_with_the_digits_that_place_it_within_the_budget():
    """"best within 0.0399 ms: ... p50 0.04 ms": two decimals put the pick over the budget it fits."""
    from types import SimpleNamespace

    from compress.config import SearchConfig
    from compress.search import summarize

    r = {"id": "L1-dynamic", "mode": "dynamic", "depth": 1, "keep_macs": 1.0, "metric_name": "accuracy",
         "metric": 0.8, "select_metric": 0.8, "select_on": "holdout", "speedup_vs_teacher_fp32": 2.0,
         "latency": {"p50_ms": 0.0398, "p90_ms": 0.05}}
    ctx = SimpleNamespace(recipe=SimpleNamespace(name="tiny", bench=None, run_dir=Path("/no-such-run")),
                          spec=SimpleNamespace(name="sst2", text_pair=None), settings="x")
    cfg = SearchConfig(budget_ms=0.0399)
    summary = summarize(ctx, cfg, {"p50_ms": 0.08}, [r], [], [], None, 0, 1, 1.0)
    assert summary["best"] == "L1-dynamic" and "p50 0.0398 ms" in summary["message"], summary["message"]
    over = {**r, "id": "L1-k50-dynamic", "latency": {"p50_ms": 0.0445}}
    assert "already takes 0.0445 ms > budget" in skip_reason(ModelSpec(2, 1.0, 3), "dynamic", 0.04, 0.01, [over], 3.0)


def test_a_search_bundle_takes_its_candidates_config_or_the_teachers_for_the_teacher_itself(tmp_path, caplog):
    from types import SimpleNamespace

    from compress.search import candidate_config

    recipe = SimpleNamespace(run_dir=tmp_path / "run")
    teacher = tmp_path / "run" / "teacher" / "model"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 6}))
    saved = tmp_path / "run" / "search" / "models" / "L2-k50"
    saved.mkdir(parents=True)
    (saved / "config.json").write_text("{}")
    assert candidate_config(recipe, {"id": "L2-k50-dynamic", "model": "L2-k50", "depth": 2, "keep_macs": 0.5},
                            teacher) == saved / "config.json"
    assert candidate_config(recipe, {"id": "L6-static", "model": "L6", "depth": 6, "keep_macs": 1.0},
                            teacher) == teacher / "config.json"  # the teacher as it is: never saved again
    assert not caplog.text
    # a pruned model of the teacher's depth, its folder gone: not the teacher's config (it has other widths)
    assert candidate_config(recipe, {"id": "L6-k50-dynamic", "model": "L6-k50", "depth": 6, "keep_macs": 0.5},
                            teacher) is None
    assert "no config.json for candidate L6-k50-dynamic" in caplog.text
