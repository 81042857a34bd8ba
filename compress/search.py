"""``compress search RECIPE --budget-ms X``: the most accurate int8 model within a latency budget, and the Pareto front.

The space (recipe section ``search:``, `SearchConfig`): depth (layer-drop students of the run's fine-tuned teacher,
layers evenly spaced, `students.layer_drop`), width (structured pruning of heads and FFN neurons to a fraction of the
encoder MACs, `compress.prune`) and int8 mode (`compress.quantize`, under the recipe's `quantize:` settings,
`int8_config`). A model is built once and quantized in every
mode; a candidate is one (model, mode).

Each depth's layer-drop student is distilled briefly (``train_steps``): logit KD against the teacher's logits on a
slice of training rows (computed once, cached) plus 0.5 x cross-entropy, the prune stage's recovery objective,
through `compress.train.fit`. Every model of that depth starts from it, is pruned (or not) and trains
``recover_steps`` more with the same objective: pruned and unpruned candidates get the same training budget (the
teacher itself is a candidate as it is). Each int8 model is scored on the held-out training rows (``task.holdout``)
and on dev (its first ``task.max_eval_samples`` rows when set), one text at a time, and timed with the bench's loop
in a fresh process (`compress.bench.measure_in_fresh_process`: batch 1, real dev sentences one at a time, one pass
with the teacher's ONNX fp32 model as the in-pass reference, the bench's default order). The best within the budget
is picked on the held-out rows, so its dev figure is not one it was selected on (a task with ``holdout: 0`` picks on
dev, and says so).

Order and pruning of the space: models by estimated cost (encoder MACs fraction, smallest first), so a useful answer
comes first. A model is skipped when its fp32 latency estimate (teacher fp32 p50 x MACs fraction) exceeds the budget
by ``skip_margin``, or when a measured candidate of the same mode, no deeper and pruned no less, was already over
budget (x 1.1). A candidate near the budget (`near_budget`: one noisy pass could put it on the wrong side) is timed in
`NEAR_BUDGET_PASSES` passes as soon as it is measured and decided on the median, before it can rule out others.

Resumable: every finished candidate is one JSON file under ``runs/<recipe>/search/candidates/`` (written atomically,
with the sha256 of its int8 file) and every trained model one folder under ``models/``; a rerun with the same settings
reuses them (the budget and the time limit are not part of the settings, so a new budget re-selects without
re-measuring; other timing threads, timed rows or timing protocol re-time the int8 files (`retime`), their scores
kept; other calibration rows (static int8), other `quantize:` settings (`int8_changes`) or another machine (CPU,
cores, onnxruntime) re-quantize and re-score without retraining). Bounded: no new model starts after
``time_limit_min``. Writes ``search.json`` (best, front, every candidate, skips), ``search.md`` and ``pareto.png``
(the report's plot).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from operator import attrgetter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from compress.bundle_predict import sha256_file
from compress.config import (BenchConfig, PruneConfig, QuantizeConfig, Recipe, RecoverConfig, SearchConfig,
                             search_settings)
from compress.errors import CompressError
from compress.tasks import round_down
from compress.export import SHIPPED_BATCH
from compress.manifest import (fingerprint, hash_tree, now_utc, read_json, remove_dead, remove_dead_scratch,
                               timing_machine, usable_cores, versions, write_json)

log = logging.getLogger(__name__)

OVER_BUDGET_SLACK = 1.1
"""A measured candidate dominates larger ones only when it is over budget by more than timing noise."""
NEAR_BUDGET_PASSES = 3
"""Timing passes behind the p50 of a candidate near the budget (`near_budget`): its p50 is the median of the passes'
p50s, so that one noisy pass does not decide whether it fits, nor whether it rules out the larger candidates."""
NEAR_BUDGET_OVER = 1.5
"""How far over the budget a first pass still counts as near it: a pass on a briefly loaded machine can read a
candidate that fits as up to this much over (and over budget x `OVER_BUDGET_SLACK`, it would also have ruled out every
larger candidate of its mode unmeasured, `skip_reason`)."""


# ------------------------------------------------------------------------------------------------ the space
@dataclass(frozen=True)
class ModelSpec:
    depth: int
    keep: float
    """Fraction of encoder MACs kept by pruning (1.0: unpruned)."""
    teacher_depth: int

    @property
    def id(self) -> str:
        return f"L{self.depth}" + ("" if self.keep >= 1.0 else f"-k{self.keep * 100:g}")  # 0.504 -> k50.4

    @property
    def macs_fraction(self) -> float:
        return self.depth / self.teacher_depth * self.keep

    @property
    def is_teacher(self) -> bool:
        return self.depth == self.teacher_depth and self.keep >= 1.0


def candidates(cfg: SearchConfig, teacher_depth: int) -> list[ModelSpec]:
    """Every model of the space, cheapest first (MACs fraction, then depth); ``cfg.depths`` are within the teacher's
    (`search_settings` refuses deeper ones before torch loads)."""
    depths = cfg.depths or list(range(1, teacher_depth + 1))
    specs = {ModelSpec(d, k, teacher_depth) for d in depths for k in cfg.keep_macs}
    return sorted(specs, key=lambda s: (s.macs_fraction, s.depth))


def pick(results: list[dict], budget_ms: float) -> Optional[dict]:
    """The most accurate measured candidate with p50 <= budget (ties: the faster), by its score on the held-out
    training rows (``select_metric``; dev where the task holds nothing out): dev stays a figure nothing was picked
    on. A candidate scored nan (a constant prediction's correlation) cannot be ranked and is not picked."""
    fits = [r for r in results if r["latency"]["p50_ms"] <= budget_ms
            and math.isfinite(r.get("select_metric", r["metric"]))]
    return max(fits, key=lambda r: (r.get("select_metric", r["metric"]), -r["latency"]["p50_ms"])) if fits else None


def front(results: list[dict]) -> list[dict]:
    from compress.pareto import pareto_front

    return [results[i] for i in pareto_front([(r["latency"]["p50_ms"], r["metric"]) for r in results])]


def skip_reason(spec: ModelSpec, mode: str, budget_ms: float, ref_ms: float, results: list[dict],
                margin: float) -> Optional[str]:
    """Why (spec, mode) need not be measured for this budget, or None. The latency estimate is the teacher's fp32 p50
    x the MACs fraction, divided by the largest speedup over that estimate a measured candidate of the mode has shown
    (int8 runs several times faster than fp32 of the same MACs: an fp32 estimate alone skipped int8 models that
    fit)."""
    gains = [ref_ms * r["macs_fraction"] / r["latency"]["p50_ms"] for r in results if r.get("mode") == mode
             and isinstance(r.get("macs_fraction"), (int, float)) and r["latency"]["p50_ms"] > 0]
    gain = max([1.0, *gains])
    estimate = ref_ms * spec.macs_fraction / gain
    if estimate > budget_ms * margin:
        return (f"estimate {estimate:.2f} ms (teacher fp32 at its fastest on record {ref_ms:.2f} ms x MACs "
                f"{spec.macs_fraction:.2f}" + (f" / {gain:.2f}, the most a measured {mode} candidate ran faster than "
                                               f"that" if gain > 1 else "") + f") > budget x {margin:g}")
    for r in results:  # no deeper and no wider: at batch 1 a deep narrow model is slower than a shallow wide one
        if (r["mode"] == mode and r.get("depth", math.inf) <= spec.depth and r.get("keep_macs", math.inf) <= spec.keep
                and r["latency"]["p50_ms"] > budget_ms * OVER_BUDGET_SLACK):
            return f"{r['id']} (no deeper, no wider) already takes {ms(r['latency']['p50_ms'], budget_ms)} ms > budget"
    return None


def estimate_base(ref: dict, results: list[dict]) -> float:
    """The teacher's fp32 p50 behind the estimates: the lowest of this run's reference timing and the in-pass timings
    stored with the candidates, earlier searches' included (on a shared CPU the least loaded one; a high one would
    skip models that fit)."""
    return min([ref["p50_ms"]] + [r["teacher_fp32_p50_ms_same_pass"] for r in results])


def machine() -> dict:
    """The machine and runtime the latencies are measured on (a candidate timed on another one is timed again): the
    pipeline's `compress.manifest.timing_machine` less its int8 features (they go with the CPU) and torch (the search
    times ONNX models only), as candidates have always recorded it."""
    found = timing_machine()
    return {k: found.get(k) for k in ("cpu", "cores", "onnxruntime")}


def _stamp(path: Path) -> dict:
    """A work file's stamp; {} when missing or unreadable (a torn or hand-edited one: rebuilt, never trusted)."""
    try:
        data = read_json(path) if path.is_file() else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------------ the run's data
@dataclass
class Context:
    recipe: Recipe
    cfg: SearchConfig
    out: Path
    teacher_dir: Path
    teacher: torch.nn.Module
    tokenizer: object
    spec: object  # TaskSpec
    train: object  # tokenized, with an ``index`` column
    dev: object
    holdout: object
    """Held-out training rows (the candidates are picked on them); empty when the task holds nothing out."""
    calib: object
    collator: object
    settings: str
    """Fingerprint of everything a candidate's record depends on (training and measuring)."""
    train_settings: str
    """Fingerprint of what the trained models depend on (not the timing threads, timed rows or calibration rows:
    changing those re-measures without retraining)."""
    mode_settings: dict[str, str]
    """int8 mode -> fingerprint its candidates' records hold: ``settings`` less the calibration rows for dynamic int8,
    which calibrates nothing (a new ``calibration_samples`` re-measured every dynamic candidate)."""
    scored_settings: dict[str, str]
    """int8 mode -> fingerprint of what its candidates' int8 file and scores depend on (``mode_settings`` less the
    timing: threads, timed rows, protocol): a record that matches it but not ``mode_settings`` is timed again only
    (another ``--threads`` re-quantized and re-scored every candidate)."""
    teacher_settings: str
    """What the reference export depends on (the teacher, the task); with ``logits_settings``, what the teacher's
    logits on the training slice depend on (also the seed and the slice's rows): a new ``search.lr`` exported the
    teacher and ran it over the slice again. Stamps of either written with ``train_settings`` stay valid."""
    logits_settings: str
    base_settings: str
    """What a depth's distilled base student depends on: ``train_settings`` less ``recover_steps`` (which trains only
    the models made from it), plus the slice's rows (its batches' order). A new ``recover_steps`` retrained every base
    student, a minute or more each."""
    teacher_stamps: tuple[dict[str, str], dict[str, str]]
    """``mode_settings`` and ``scored_settings`` of the teacher's own candidates (its depth, unpruned: the teacher used
    as it is), ``teacher_settings`` in place of ``train_settings``: a new ``search.lr`` quantized and scored the
    teacher again. Their records of before (2026-12-06), stamped with ``train_settings``, stay valid."""
    _logits: Optional[torch.Tensor] = None

    def stamps(self, spec: "ModelSpec") -> tuple[dict[str, str], dict[str, str]]:
        """(mode_settings, scored_settings) of the candidates of model ``spec`` (`record_spec` for a record)."""
        return self.teacher_stamps if spec.is_teacher else (self.mode_settings, self.scored_settings)

    def record_spec(self, record: dict) -> "ModelSpec":
        """The model a candidate record measured."""
        return ModelSpec(record.get("depth"), record.get("keep_macs") or 0.0, self.teacher.config.num_hidden_layers)

    def teacher_logits(self) -> torch.Tensor:
        """The teacher's logits on the training slice (cached on disk for reruns)."""
        if self._logits is None:
            path = self.out / "teacher_logits.npy"
            stamp = self.out / "teacher_logits.json"
            if path.is_file() and _stamp(stamp).get("settings") in (self.logits_settings, self.train_settings):
                self._logits = _saved_logits(path, len(self.train))
            if self._logits is None:
                from compress.prune_stage import logits_of
                from compress.train import process_device

                self._logits = logits_of(self.teacher.to(process_device()), self.train, self.collator)
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
                np.save(tmp, self._logits.numpy())
                stamp.unlink(missing_ok=True)  # killed before restamping: no stamp, not the old one over new logits
                os.replace(tmp, path)
                write_json(stamp, {"settings": self.logits_settings, "rows": len(self.train)})
        return self._logits


def _saved_logits(path: Path, rows: int) -> Optional[torch.Tensor]:
    """The teacher's logits saved by an earlier search, or None when the file is torn or not of ``rows`` rows (a
    truncated file stopped every rerun with numpy's traceback)."""
    try:
        logits = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        print(f"[search] {path}: unreadable ({type(e).__name__}): the teacher labels the slice again", flush=True)
        return None
    if logits.ndim != 2 or len(logits) != rows:
        print(f"[search] {path}: shape {logits.shape}, not {rows} rows: the teacher labels the slice again", flush=True)
        return None
    return torch.from_numpy(logits).float()


def teacher_identity(recipe: Recipe) -> tuple[dict, bool]:
    """(what names the run's teacher in the search's keys, whether its stage vouches for it): the teacher stage's
    hashes of its files when its folder still holds them (`compress.pipeline._reuse`'s check; `search_settings` has
    refused a teacher of other config or inputs), else (put there by hand, or edited since) the model files' own
    hashes (what loading reads: `compress.pipeline.model_file`) and the data files' (by content): a teacher replaced
    under its manifest, or data edited under a teacher without one, reused models and scores of the old ones."""
    from compress.manifest import outputs_intact
    from compress.pipeline import model_file
    from compress.tasks import data_files

    folder = recipe.run_dir / "teacher"
    try:
        outputs = read_json(folder / "manifest.json").get("outputs") if (folder / "manifest.json").is_file() else None
    except (ValueError, AttributeError):  # unreadable, or not a JSON object
        outputs = None
    if outputs and outputs_intact(folder, outputs):
        # its model's files: not its metrics.json, which a teacher kept and scored again on other dev rows rewrites
        # (every model retrained for a task.max_eval_samples); the dev rows count in the scoring stamps instead
        return {k: v for k, v in outputs.items() if k.startswith("model/")}, True
    return {"model": hash_tree(folder / "model", keep=model_file),
            "data": sorted(sha256_file(p) for p in data_files(recipe.task))}, False


def load_context(recipe: Recipe, cfg: SearchConfig) -> Context:
    from compress.data import Collator, load_task, rows_digest, tokenize
    from compress.modeling import load_trained

    teacher_dir = recipe.run_dir / "teacher" / "model"  # there: checked by search_settings
    teacher, tokenizer = load_trained(teacher_dir)
    teacher.eval()
    data = load_task(recipe.task, seed=recipe.seed)  # the split of every stage, the teacher's included
    ml = recipe.task.max_length
    rows = min(len(data.train), max(cfg.train_steps, cfg.recover_steps) * cfg.batch_size)
    train = tokenize(data.train.select(range(rows)), tokenizer, ml)
    train = train.add_column("index", list(range(len(train))))
    calib = tokenize(data.train.select(range(min(cfg.calibration_samples, len(data.train)))), tokenizer, ml)
    dev, holdout = tokenize(data.dev, tokenizer, ml), tokenize(data.holdout, tokenizer, ml)
    teacher_id, vouched = teacher_identity(recipe)
    training = ("train_steps", "recover_steps", "batch_size", "lr")
    # max_eval_samples cuts the dev rows the candidates are scored on, not what trains them (it retrained every model):
    # a measurement setting, kept in the task section at None so that the models of a recipe without it stay valid.
    # The data's paths: with a teacher its stage vouches for, its inputs (the same bytes wherever they are) pin them
    task = {**recipe.section("task"), "max_eval_samples": None,
            **({"data_dir": None, "files": None} if vouched else {})}
    # a slice shorter than the steps asked trained one pass over it until 2026-12-05: those models are made again
    short = {"steps": "exact"} if rows < max(cfg.train_steps, cfg.recover_steps) * cfg.batch_size else {}
    train_settings = fingerprint({"search": {k: getattr(cfg, k) for k in training}, "task": task,
                                  "seed": recipe.seed, "teacher": teacher_id, **short})
    measure = {k: getattr(cfg, k) for k in ("threads", "calibration_samples", "dev_rows")}
    measure["dev"] = rows_digest(data.dev)  # what the candidates are scored (and timed) on: its max_eval_samples rows
    protocol = protocol_changes(timing_config(recipe, cfg))

    here = machine()

    int8 = {m: int8_changes(recipe, m) for m in ("dynamic", "static")}  # {} for a recipe of the defaults

    def measured(measure: dict, mode: str = "static", train: str = train_settings) -> str:
        return fingerprint({"train": train, "measure": {**measure, **({"protocol": protocol} if protocol else {}),
                                                        **({"int8": int8[mode]} if int8[mode] else {})},
                            "machine": here})

    settings = measured(measure)
    scoring = {k: v for k, v in measure.items() if k in ("calibration_samples", "dev")}
    # int8 files and scores do not depend on the cores (their timings do: `mode_settings`): another count re-times
    scoring_machine = {k: v for k, v in here.items() if k != "cores"}

    def stamps(train: str) -> tuple[dict[str, str], dict[str, str]]:
        """(mode_settings, scored_settings) of the candidates of models trained under ``train``."""
        modes = {m: measured(measure, m, train) if m != "dynamic" else measured(
            {k: v for k, v in measure.items() if k != "calibration_samples"}, m, train) for m in cfg.modes}
        scored = {m: fingerprint({"train": train, "machine": scoring_machine, "scoring": {
            **{k: v for k, v in scoring.items() if m != "dynamic" or k != "calibration_samples"},
            **({"int8": int8[m]} if int8[m] else {})}}) for m in cfg.modes}
        return modes, scored

    modes, scored = stamps(train_settings)
    teacher_settings = fingerprint({"task": task, "teacher": teacher_id})
    logits_settings = fingerprint({"task": task, "teacher": teacher_id, "seed": recipe.seed, "rows": rows})
    base_settings = fingerprint({"base": {k: getattr(cfg, k) for k in ("train_steps", "batch_size", "lr")},
                                 "task": task, "seed": recipe.seed, "teacher": teacher_id, "rows": rows})
    out = recipe.run_dir / "search"
    for sub in ("candidates", "models", "int8"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "models", out / "candidates", out / "int8"):  # work files of a killed search
        remove_dead(folder, ".*", r"\..*-(\d+)(?:\.npy)?")  # (.quantize-<id>-<pid>, .<m>.tmp-<pid>, .<f>.tmp-<pid>)
    remove_dead_scratch()  # and its quantize/bench scratch folders in the system's temporary folder
    return Context(recipe, cfg, out, teacher_dir, teacher, tokenizer, data.spec, train, dev, holdout, calib,
                   Collator({"": tokenizer}, regression=data.spec.is_regression), settings, train_settings, modes,
                   scored, teacher_settings, logits_settings, base_settings, stamps(teacher_settings))


# ------------------------------------------------------------------------------------------------ building models
def _fit(ctx: Context, model, steps: int, desc: str, seed: int):
    from compress.prune_stage import recovery_objective
    from compress.train import fit

    cfg = ctx.cfg  # as many epochs as steps: ``steps`` exactly, however few rows the slice holds
    rcfg = RecoverConfig(epochs=float(steps), max_steps=steps, lr=cfg.lr, batch_size=cfg.batch_size, warmup_ratio=0.1)
    return fit(model, ctx.train, ctx.collator, rcfg, seed=seed,
               objective=recovery_objective(ctx.teacher_logits(), rcfg, ctx.spec.is_regression),
               group_by_length=ctx.recipe.task.group_by_length, desc=desc)


def _load_saved(ctx: Context, folder: Path, base: bool = False) -> Optional[tuple[torch.nn.Module, dict]]:
    """The model saved in ``folder`` when its stamp holds the settings it depends on (``base``: a base student's,
    whose stamps before 2026-12-06 held ``train_settings``), else None."""
    from compress.modeling import load_trained

    info = _stamp(folder / "search_model.json")
    if info.get("settings") not in ((ctx.base_settings, ctx.train_settings) if base else (ctx.train_settings,)):
        return None
    try:
        return load_trained(folder)[0].eval(), {**info, "reused": True}
    except CompressError as e:  # a file deleted or torn under its stamp: made again (it was a failed candidate)
        print(f"[search] {folder.name}: its saved model does not load ({e}): made again", flush=True)
        return None


def base_student(ctx: Context, depth: int) -> Path:
    """The folder of the layer-drop student of ``depth`` layers distilled for ``train_steps`` (built once): the
    starting point of every model of that depth (the fine-tuned teacher itself at the teacher's depth)."""
    if depth == ctx.teacher.config.num_hidden_layers:
        return ctx.teacher_dir
    folder = ctx.out / "models" / f"L{depth}-base"
    if _load_saved(ctx, folder, base=True) is None:
        from compress.modeling import save_atomic
        from students.layer_drop import layer_drop_student

        t0 = time.perf_counter()
        model, kept = layer_drop_student(ctx.teacher, depth)
        fit = _fit(ctx, model, ctx.cfg.train_steps, f"search L{depth} distill", ctx.recipe.seed)
        save_atomic(model, ctx.tokenizer, folder, {"search_model.json": {
            "source": "layer_drop", "kept_layers": kept, "settings": ctx.base_settings, "train_steps": fit.steps,
            "train_s": round(time.perf_counter() - t0, 1)}})
    return folder


def build_model(ctx: Context, spec: ModelSpec) -> tuple[torch.nn.Module, dict]:
    """The model of ``spec``: its depth's distilled base student, pruned to ``keep`` of its MACs (or not), then
    trained ``recover_steps`` more with the same objective, so pruned and unpruned candidates of one depth get the
    same training budget. From disk when a rerun finds it, else built and saved. The teacher is used as it is."""
    from compress.modeling import load_trained, save_atomic

    if spec.is_teacher:
        return ctx.teacher, {"source": "teacher", "train_s": 0.0}
    folder = ctx.out / "models" / spec.id
    saved = _load_saved(ctx, folder)
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    seed = ctx.recipe.seed
    base = base_student(ctx, spec.depth)
    model = load_trained(base)[0]
    info = {"source": f"L{spec.depth} distilled {ctx.cfg.train_steps} steps" if spec.depth < spec.teacher_depth
            else "the teacher"}
    if spec.keep < 1.0:
        from compress import prune as P
        from compress.prune_stage import calibration_batches

        pcfg = PruneConfig(keep_macs=spec.keep, importance="taylor", calibration_batches=4)
        P.prune(model, pcfg, batches=calibration_batches(ctx.train, ctx.collator, pcfg, seed, 0),
                seq_len=ctx.recipe.task.max_length, where="search")  # its errors name search.keep_macs
        info["source"] += f", pruned to {spec.keep:g} of its encoder MACs"
    fit = _fit(ctx, model, ctx.cfg.recover_steps, f"search {spec.id} recover", seed)
    info.update(settings=ctx.train_settings, recover_steps=fit.steps, train_s=round(time.perf_counter() - t0, 1))
    save_atomic(model, ctx.tokenizer, folder, {"search_model.json": info})
    return model.eval(), info


# ------------------------------------------------------------------------------------------------ measuring
def reference(ctx: Context) -> dict:
    """The teacher's ONNX fp32 model (the in-pass timing reference and the basis of the latency estimates): ORT's
    transformer fusions applied when they keep its logits, as for the report's and the bundle's reference and the
    candidates' own graphs (`compress.export.fused_if_exact`), so speedups are not flattered by a slower reference."""
    from compress.export import export_onnx, fused_if_exact

    stamp = ctx.out / "teacher_fp32.json"
    recorded = _stamp(stamp)
    path = ctx.out / str(recorded.get("file", "teacher_fp32.onnx"))
    # its sha256 (recorded since 2026-12-06; a stamp without one is trusted as before): a torn file failed every rerun
    current = path.is_file() and recorded.get("settings") in (ctx.teacher_settings, ctx.train_settings)
    if not (current and recorded.get("sha256") in (None, sha256_file(path))):
        stamp.unlink(missing_ok=True)  # as for the teacher's logits: never the old stamp over a new export
        for old in ctx.out.glob("teacher_fp32*.onnx"):
            old.unlink()
        rows = ctx.dev.select(range(min(64, len(ctx.dev))))
        path = fused_if_exact(export_onnx(ctx.teacher, ctx.out / "teacher_fp32.onnx"),
                              ctx.teacher.config.model_type, rows, ctx.collator)
        write_json(stamp, {"settings": ctx.teacher_settings, "file": path.name, "sha256": sha256_file(path)})
    ref = {"kind": "onnx", "path": str(path)}
    lat = time_pass(ctx, {"teacher_fp32": ref})["teacher_fp32"]
    return {"path": str(path), **lat}


PROTOCOL_KEYS = ("warmup", "order", "rounds", "spin")
"""The recipe's `bench:` settings the search times with (its own `threads` and `dev_rows` replace the bench's). Not
``repeats``, ``min_runs``, ``max_seconds`` (fixed shapes only: the search times dev sentences) nor ``isolate`` (the
memory probe: the search measures none): a change of one re-timed every candidate for nothing."""


def timing_config(recipe: Recipe, cfg: SearchConfig) -> BenchConfig:
    """The benchmark protocol of the search's timings: the recipe's `bench:` section (the defaults without one) at
    the search's thread count and dev rows, dev sentences only (it timed with the defaults whatever the recipe said,
    so its latencies could disagree with the bench stage's)."""
    return replace(recipe.bench or BenchConfig(), threads=[cfg.threads], batch_sizes=[], seq_lengths=[],
                   dev_rows=cfg.dev_rows)


def protocol_changes(bcfg: BenchConfig) -> dict:
    """The `PROTOCOL_KEYS` ``bcfg`` sets to other than their defaults (in the measurement settings only then: a search
    folder timed under the defaults keeps its candidates)."""
    default = BenchConfig()
    return {k: getattr(bcfg, k) for k in PROTOCOL_KEYS if getattr(bcfg, k) != getattr(default, k)}


INT8_KEYS = {"dynamic": ("per_channel", "reduce_range", "weight_type", "optimize", "parity_atol",
                         "parity_min_agreement", "table_bits"),
             "static": ("per_channel", "reduce_range", "weight_type", "parity_atol", "parity_min_agreement",
                        "activation_type", "format", "calibration.method", "calibration.percentile", "table_bits")}
"""The recipe's `quantize:` settings that shape a search candidate's int8 model (or whether its export passes), by
mode; the search's own ``modes`` and ``calibration_samples`` replace the stage's, and it runs no accuracy guard. Not
``optimize`` for static int8 (always calibrated on the plain export), nor ``calibration.percentile`` unless the method
is percentile (the others ignore it). ``table_bits``: with no guard every table passes as int4 blocks (a candidate
quantized at 8 was reused at 4 before)."""


def int8_config(recipe: Recipe, cfg: SearchConfig) -> QuantizeConfig:
    """How the search quantizes: the recipe's `quantize:` section (the defaults without one), so that a candidate is
    the int8 model the quantize stage would make of it (it quantized with the defaults whatever the recipe said, e.g.
    per tensor or 7-bit weights for a CPU without VNNI), with the search's modes and calibration rows, no accuracy
    guard (max_drop 100 points: every node int8) and no .ort copy."""
    base = recipe.quantize or QuantizeConfig()
    return replace(base, source=None, modes=list(cfg.modes), max_drop=100.0, sensitivity_rows=1, ort_format=False,
                   guard_rows="dev", calibration=replace(base.calibration, samples=cfg.calibration_samples))


def int8_changes(recipe: Recipe, mode: str) -> dict:
    """The `INT8_KEYS` of ``mode`` the recipe sets to other than their defaults (part of its candidates' settings
    only then: a search folder quantized under the defaults keeps its candidates)."""
    mine, default = recipe.quantize or QuantizeConfig(), QuantizeConfig()
    keys = [k for k in INT8_KEYS[mode] if k != "calibration.percentile" or mine.calibration.method == "percentile"]
    return {k: attrgetter(k)(mine) for k in keys if attrgetter(k)(mine) != attrgetter(k)(default)}


def time_pass(ctx: Context, artifacts: dict[str, dict]) -> dict[str, dict]:
    """p50/p90 of each ONNX artifact, timed in one pass (the bench's loop under the recipe's protocol,
    `timing_config`: dev sentences, batch 1) in a fresh process, as the bench stage times: this one has trained with
    torch, whose OpenMP threads would not follow the protocol's wait policy."""
    from compress.bench import measure_in_fresh_process

    bcfg = timing_config(ctx.recipe, ctx.cfg)
    results = measure_in_fresh_process(artifacts, ctx.dev, bcfg, {}, peak=False)["results"]
    return {n: {k: rows[0][k] for k in ("p50_ms", "p90_ms", "runs")} for n, rows in results.items()}


def timed_on(ctx: Context) -> dict:
    """A latency record's thread count and dev rows: those timed (dev_rows 1000 of a 50-row dev is 50)."""
    return {"threads": ctx.cfg.threads, "dev_rows": min(ctx.cfg.dev_rows, len(ctx.dev))}


def measure_model(ctx: Context, spec: ModelSpec, model, info: dict, modes: list[str], ref_path: str) -> list[dict]:
    """Quantize ``model`` in ``modes``, score each int8 model on dev, time them with the reference; one result per
    mode (also written to candidates/<id>.json)."""
    from compress.export import score_shipped
    from compress.modeling import count_params
    from compress.quantize import quantize_model

    t0 = time.perf_counter()
    qcfg = replace(int8_config(ctx.recipe, ctx.cfg), modes=list(modes))
    work = ctx.out / f".quantize-{spec.id}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        record = quantize_model(model, ctx.dev, np.asarray(ctx.dev["label"]), ctx.spec.metrics, ctx.collator, qcfg,
                                work, calib_rows=ctx.calib, sens_rows=ctx.calib.select(range(1)),
                                label=f"search {spec.id}", verdicts=False)
        files = {}
        for mode in modes:
            dst = ctx.out / "int8" / f"{spec.id}-{mode}.onnx"
            os.replace(work / record["int8"][mode]["file"], dst)
            files[mode] = dst
    finally:
        shutil.rmtree(work, ignore_errors=True)
    arts = {"ref": {"kind": "onnx", "path": ref_path},
            **{f"{spec.id}-{m}": {"kind": "onnx", "path": str(p)} for m, p in files.items()}}
    lat = time_pass(ctx, arts)
    params = count_params(model)
    metric = ctx.spec.metrics[0]
    stamps = ctx.stamps(spec)
    out = []
    for mode, path in files.items():
        cid = f"{spec.id}-{mode}"
        m = record["int8"][mode]["metrics"]
        held = (score_shipped(path, ctx.holdout, ctx.collator, ctx.spec.metrics, np.asarray(ctx.holdout["label"]))
                if len(ctx.holdout) else None)
        selection = {"select_on": "holdout", "select_metric": held[metric], "holdout_metrics": held} if held else \
            {"select_on": "dev", "select_metric": m[metric]}
        result = {**selection, "id": cid, "model": spec.id, "depth": spec.depth, "keep_macs": spec.keep, "mode": mode,
                  "macs_fraction": round(spec.macs_fraction, 4), "params": params, "file": str(path),
                  "size_bytes": path.stat().st_size, "sha256": sha256_file(path), "metric_name": metric,
                  "metric": m[metric], "metrics": m,
                  "fp32_metrics": record["fp32"]["metrics"], "scored_batch": record["scored_batch"],
                  "latency": {**lat[cid], **timed_on(ctx)},
                  "teacher_fp32_p50_ms_same_pass": lat["ref"]["p50_ms"],
                  "speedup_vs_teacher_fp32": round_down(lat["ref"]["p50_ms"] / lat[cid]["p50_ms"], 4),
                  "build": {k: v for k, v in info.items() if k != "settings"},
                  "measure_s": round(time.perf_counter() - t0, 1), "settings": stamps[0][mode],
                  "scored_settings": stamps[1][mode], "created": now_utc()}
        write_json(ctx.out / "candidates" / f"{cid}.json", result)
        out.append(result)
    return out


def load_result(ctx: Context, cid: str) -> tuple[Optional[dict], bool]:
    """A finished candidate's record when its int8 file and scores still stand (else None), and whether its timing
    does too (`Context.mode_settings`; else only `Context.scored_settings` match: `retime` it)."""

    path = ctx.out / "candidates" / f"{cid}.json"
    if not path.is_file():
        return None, False
    try:
        result = read_json(path)
    except ValueError:  # a torn file cannot happen with atomic writes, but a hand-edited one can
        return None, False
    latency = result.get("latency") if isinstance(result, dict) else None  # a record of another shape: measured again
    if not (isinstance(latency, dict) and isinstance(latency.get("p50_ms"), (int, float))
            and not isinstance(latency.get("p50_ms"), bool)):
        return None, False
    mode = result.get("mode") if isinstance(result.get("mode"), str) else None
    if mode not in ctx.mode_settings:
        return None, False
    # its mode's settings, or (a dynamic record of before `Context.mode_settings`) every mode's
    modes, scored = ctx.stamps(ctx.record_spec(result))  # (the teacher's: also those of before it had its own)
    timed = result.get("settings") in (modes[mode], ctx.mode_settings[mode], ctx.settings)
    # a candidate scored before int8 models were scored one text at a time (compress.export.SHIPPED_BATCH) is measured
    # again: its batched score is not the shipped model's
    fresh = ((timed or result.get("scored_settings") in (scored[mode], ctx.scored_settings[mode]))
             and result.get("scored_batch") == SHIPPED_BATCH
             and "select_on" in result)  # records from before the pick moved to held-out rows are measured again
    path = ctx.out / "int8" / f"{cid}.onnx"  # where it was measured: a runs folder moved keeps its int8 files
    result["file"] = str(path)
    # the file must still be the one measured: a run with other settings, killed, may have overwritten it
    if not fresh:
        return None, False
    if not (path.is_file() and sha256_file(path) == result.get("sha256")):
        what = "changed since it was measured (sha256)" if path.is_file() else "is gone"
        print(f"[search] {cid}: its int8 file {what} ({path}): its record is not reused", flush=True)
        return None, False
    for key in ("metric", "select_metric"):  # a nan score is saved as null (strict JSON): nan again, as scored
        if key in result and result[key] is None:
            result[key] = float("nan")
    return result, timed


def retime(ctx: Context, records: list[dict], ref_path: str) -> list[dict]:
    """Time again, in one pass with the teacher's fp32 reference, candidates whose int8 files and scores still stand
    (`load_result`) under this run's timing settings; their records updated and saved."""
    lat = time_pass(ctx, {"ref": {"kind": "onnx", "path": ref_path},
                          **{r["id"]: {"kind": "onnx", "path": r["file"]} for r in records}})
    for r in records:
        r.update(latency={**lat[r["id"]], **timed_on(ctx)},
                 teacher_fp32_p50_ms_same_pass=lat["ref"]["p50_ms"],
                 speedup_vs_teacher_fp32=round_down(lat["ref"]["p50_ms"] / lat[r["id"]]["p50_ms"], 4),
                 settings=ctx.stamps(ctx.record_spec(r))[0][r["mode"]], retimed=now_utc())
        write_json(ctx.out / "candidates" / f"{r['id']}.json", r)
    return records


def near_budget(result: dict, budget_ms: float) -> bool:
    """Whether one noisy pass could have put a candidate's p50 on the wrong side of the budget: from budget /
    `OVER_BUDGET_SLACK` to budget x `NEAR_BUDGET_OVER` (a loaded machine reads slower, rarely faster)."""
    return budget_ms / OVER_BUDGET_SLACK <= result["latency"]["p50_ms"] <= budget_ms * NEAR_BUDGET_OVER


def clock() -> float:
    """Seconds of the search's time limit (`time.perf_counter`; one name, so that a test can move it on)."""
    return time.perf_counter()


def confirm_near_budget(ctx: Context, results: list[dict], budget_ms: float, ref_path: str,
                        deadline: Optional[float] = None) -> tuple[list[str], list[str]]:
    """Time the candidates near the budget again until each has `NEAR_BUDGET_PASSES` passes (all of them and the
    teacher's fp32 reference in one pass, each pass in a fresh process, as `time_pass`), then give each the median
    p50/p90 of its passes (and the reference's median, the speedup from both), saved with its record
    (``latency.passes``; `verdict` says it). A candidate confirmed earlier (a rerun) is not timed again. No pass
    starts after ``deadline`` (`clock`; the search's time limit): a candidate left with fewer passes keeps
    the median of those it has, and a rerun times it on. Returns the ids re-timed and those left with fewer passes."""
    near = [r for r in results if near_budget(r, budget_ms)
            and len(r["latency"].get("passes") or [None]) < NEAR_BUDGET_PASSES]
    for r in near:
        lat = r["latency"]
        lat.setdefault("passes", [{"p50_ms": lat["p50_ms"], "p90_ms": lat["p90_ms"],
                                   "teacher_fp32_p50_ms": r["teacher_fp32_p50_ms_same_pass"]}])
    had = {r["id"]: len(r["latency"]["passes"]) for r in near}
    while True:
        todo = [r for r in near if len(r["latency"]["passes"]) < NEAR_BUDGET_PASSES]
        if not todo or (deadline is not None and clock() >= deadline):
            break
        lat = time_pass(ctx, {"ref": {"kind": "onnx", "path": ref_path},
                              **{r["id"]: {"kind": "onnx", "path": r["file"]} for r in todo}})
        for r in todo:
            r["latency"]["passes"].append({"p50_ms": lat[r["id"]]["p50_ms"], "p90_ms": lat[r["id"]]["p90_ms"],
                                           "teacher_fp32_p50_ms": lat["ref"]["p50_ms"]})
    for r in near:
        passes = r["latency"]["passes"]
        r["latency"]["p50_ms"] = float(np.median([p["p50_ms"] for p in passes]))
        r["latency"]["p90_ms"] = float(np.median([p["p90_ms"] for p in passes]))
        r["teacher_fp32_p50_ms_same_pass"] = float(np.median([p["teacher_fp32_p50_ms"] for p in passes]))
        r["speedup_vs_teacher_fp32"] = round_down(r["teacher_fp32_p50_ms_same_pass"] / r["latency"]["p50_ms"], 4)
        write_json(ctx.out / "candidates" / f"{r['id']}.json", r)
    return ([r["id"] for r in near if len(r["latency"]["passes"]) > had[r["id"]]],
            [r["id"] for r in near if len(r["latency"]["passes"]) < NEAR_BUDGET_PASSES])


def verdict(r: dict, budget_ms: float) -> str:
    """A candidate's console line: its score, its p50 (the median of its passes, which are listed, when it was timed
    more than once) and whether that fits the budget."""
    lat = r["latency"]
    passes = [p["p50_ms"] for p in lat.get("passes") or []]
    timed = (f", the median of {len(passes)} passes near the budget ({', '.join(ms(p, budget_ms) for p in passes)})"
             if len(passes) > 1 else "")
    if passes and len(passes) < NEAR_BUDGET_PASSES:
        timed += f"; time limit reached before its {NEAR_BUDGET_PASSES} passes: rerun to time it again"
    ok = "within" if lat["p50_ms"] <= budget_ms else "over"
    return (f"[search] {r['id']}: {r['metric_name']}={r['metric']:.4f}, p50 {ms(lat['p50_ms'], budget_ms)} ms{timed} "
            f"({ok} budget), {r['params'] / 1e6:.1f}M params")


def ms(x: float, budget: Optional[float] = None) -> str:
    """Milliseconds to 2 decimals (3 significant digits below 0.1 ms), and more where fewer would show ``budget``
    itself for a latency on one side of it ("p50 0.03 ms (over budget)" for a budget of 0.032 ms)."""
    d = 2 if not 0 < x < 0.1 else 2 - math.floor(math.log10(x))
    while budget is not None and d < 6 and x != budget and round(x, d) == round(budget, d):
        d += 1
    return f"{x:.{d}f}"


# ------------------------------------------------------------------------------------------------ the search
def run_search(recipe: Recipe, cfg: Optional[SearchConfig] = None, *, budget_ms: Optional[float] = None,
               time_limit_min: Optional[float] = None, threads: Optional[int] = None) -> dict:
    """Search, write search.json / search.md / pareto.png into runs/<recipe>/search/, return the summary."""
    from tqdm.auto import tqdm

    t_start = clock()
    cfg = search_settings(recipe, cfg, budget_ms, time_limit_min, threads)
    if cfg.threads > usable_cores():  # as the bench stage warns
        log.warning("search.threads %s: more than this machine's %s cores; its timings measure oversubscription",
                    cfg.threads, usable_cores())
    ctx = load_context(recipe, cfg)
    space = candidates(cfg, ctx.teacher.config.num_hidden_layers)
    ref = reference(ctx)
    print(f"[search] budget {cfg.budget_ms:g} ms p50 at {cfg.threads} thread(s); teacher ONNX fp32 p50 "
          f"{ref['p50_ms']:.2f} ms; {len(space)} models x {len(cfg.modes)} int8 modes; time limit "
          f"{cfg.time_limit_min:g} min", flush=True)
    results: list[dict] = []
    skipped, not_started, stopped = [], [], None
    reused = measured = timed_again = 0
    retimed: list[str] = []  # timed in more passes near the budget (`confirm_near_budget`)
    unconfirmed: list[str] = []  # near it, but the time limit came before their passes
    deadline = t_start + 60.0 * cfg.time_limit_min  # no new model, nor timing pass, starts after it

    def confirm(records: list[dict]) -> list[str]:
        """One pass near the budget decides nothing (an earlier run's or a re-timing's either): ``records`` are timed
        in their passes now, before they can rule out larger candidates (`skip_reason`); returns the ids timed."""
        again, left = confirm_near_budget(ctx, records, cfg.budget_ms, ref["path"], deadline=deadline)
        retimed.extend(again)
        unconfirmed.extend(left)  # (a rerun of a search stopped by its time limit goes on with them)
        return again

    progress = tqdm(space, desc="search", unit="model")
    for spec in progress:
        todo, stale, kept = [], [], []
        for mode in cfg.modes:
            cid = f"{spec.id}-{mode}"
            old, timed = load_result(ctx, cid)
            if old is not None and timed:
                if old.get("scored_settings") != ctx.stamps(spec)[1][mode]:  # a record of before them: stamped,
                    old["scored_settings"] = ctx.stamps(spec)[1][mode]  # so that another --threads re-times it (it
                    write_json(ctx.out / "candidates" / f"{cid}.json", old)  # was re-made each time)
                kept.append(old)
                reused += 1
                continue
            why = skip_reason(spec, mode, cfg.budget_ms, estimate_base(ref, results), results, cfg.skip_margin)
            if why and old is not None and old["latency"]["p50_ms"] <= cfg.budget_ms * cfg.skip_margin:
                why = None  # a record timed under other settings whose own p50 is not far off: timed, not estimated
            if why:
                skipped.append({"id": cid, "reason": why})
            elif old is not None:  # made and scored under these settings, timed under others
                stale.append(old)
            else:
                todo.append(mode)
        elapsed_min = (clock() - t_start) / 60.0
        if stale and elapsed_min >= cfg.time_limit_min:  # no timing pass starts after the limit either
            stopped = f"time limit {cfg.time_limit_min:g} min reached after {elapsed_min:.1f} min"
            not_started += [r["id"] for r in stale]
            stale = []
        if stale:
            for r in retime(ctx, stale, ref["path"]):
                progress.write(f"[search] {r['id']}: timed again (the int8 model and its scores reused), p50 "
                               f"{r['latency']['p50_ms']:.2f} ms")
            timed_again += len(stale)
            kept += stale
        again = confirm(kept)
        for r in kept:
            if r["id"] in again:
                progress.write(verdict(r, cfg.budget_ms))
        results += kept
        if not todo:
            continue
        elapsed_min = (clock() - t_start) / 60.0
        if elapsed_min >= cfg.time_limit_min:
            stopped = f"time limit {cfg.time_limit_min:g} min reached after {elapsed_min:.1f} min"
            not_started += [f"{spec.id}-{m}" for m in todo]
            # the bar still runs to its end (later models may have finished results to reuse): say these were not
            progress.set_postfix_str(f"time limit reached: {len(not_started)} not started")
            continue
        progress.set_postfix_str(spec.id)
        try:
            model, info = build_model(ctx, spec)
            new = measure_model(ctx, spec, model, info, todo, ref["path"])
        except CompressError as e:  # e.g. a width pruning cannot reach, an export parity failure: this model only
            skipped += [{"id": f"{spec.id}-{m}", "reason": f"failed: {e}"} for m in todo]
            progress.write(f"[search] {spec.id}: failed: {e}")  # said here too, not only in search.md
            continue
        confirm(new)
        for r in new:
            progress.write(verdict(r, cfg.budget_ms))
        results += new
        measured += len(new)
    progress.close()
    if unconfirmed and stopped is None:  # the limit came between a candidate's timing passes: stopped by it too
        stopped = f"time limit {cfg.time_limit_min:g} min reached after {(clock() - t_start) / 60.0:.1f} min"
    summary = summarize(ctx, cfg, ref, results, skipped, not_started, stopped, reused, measured,
                        clock() - t_start, timed_again)
    summary["retimed"] = retimed
    if unconfirmed:
        summary["unconfirmed"] = unconfirmed
        summary["message"] += (f" ({len(unconfirmed)} candidate(s) near the budget timed fewer than "
                               f"{NEAR_BUDGET_PASSES} times: {', '.join(unconfirmed)}; time limit reached; rerun to "
                               f"confirm)")
    write_outputs(ctx.out, summary)
    return summary


def summarize(ctx: Context, cfg: SearchConfig, ref: dict, results: list[dict], skipped: list, not_started: list,
              stopped: Optional[str], reused: int, measured: int, wall_s: float, timed_again: int = 0) -> dict:
    from compress.bench import spin_protocol

    results = sorted(results, key=lambda r: r["latency"]["p50_ms"])
    best = pick(results, cfg.budget_ms)
    if best:
        on = ("picked on held-out training rows" if best.get("select_on") == "holdout"
              else "picked on dev itself (the task holds no training rows out): an optimistic figure")
        message = (f"best within {cfg.budget_ms:g} ms: {best['id']} (dev {best['metric_name']} {best['metric']:.4f}, "
                   f"{on}; p50 {ms(best['latency']['p50_ms'], cfg.budget_ms)} ms, "
                   f"{_speed(best['speedup_vs_teacher_fp32'])} the teacher's ONNX fp32)")
    elif results and results[0]["latency"]["p50_ms"] <= cfg.budget_ms:
        message = (f"no candidate fits {cfg.budget_ms:g} ms with a score to rank it by: "
                   + ", ".join(r["id"] for r in results if r["latency"]["p50_ms"] <= cfg.budget_ms)
                   + " scored nan on the rows they are picked on (constant predictions?)")
    elif results:
        fastest = results[0]
        message = (f"no candidate fits {cfg.budget_ms:g} ms: the fastest measured, {fastest['id']}, takes "
                   f"{ms(fastest['latency']['p50_ms'], cfg.budget_ms)} ms")
    else:
        failed = [s for s in skipped if s["reason"].startswith("failed: ")]  # measure_model's CompressError
        slow = len(skipped) - len(failed)
        others = ", ".join(([f"{slow} skipped as too slow"] if slow else []) + (
            [f"{len(failed)} failed: {failed[0]['id']}: {failed[0]['reason'][len('failed: '):]}"
             + (f" (and {len(failed) - 1} more, see search.md)" if len(failed) > 1 else "")] if failed else []))
        if stopped and not_started:  # nothing said about the budget: the ones not started (the cheapest) may fit
            message = (f"stopped by the time limit before any candidate was measured ({stopped}; {len(not_started)} "
                       f"not started{f', {others}' if others else ''}): raise --time-limit-min, or rerun to go on")
        else:
            message = (f"no candidate fits {cfg.budget_ms:g} ms: none was measured ({others or 'none tried'}"
                       + (f", {len(not_started)} not started: {stopped}" if not_started else "") + ")")
    if stopped and results:  # the answer is of the candidates measured so far: say so first
        message = (f"stopped early ({stopped}; {len(not_started)} candidate(s) not started: raise --time-limit-min "
                   f"or rerun to go on) - so far, {message}")
    pair = ctx.spec.text_pair is not None
    inputs = "real dev pairs (both texts in one input)" if pair else "real dev sentences"
    timed = timing_config(ctx.recipe, cfg)
    shipped = run_bundle(ctx.recipe, cfg.threads)
    return {"recipe": ctx.recipe.name, "task": ctx.spec.name, "budget_ms": cfg.budget_ms, "threads": cfg.threads,
            "pair": pair,
            "latency": f"p50 of {inputs} one at a time (batch 1), compress.bench.measure ({timed.order} order), "
                       + spin_protocol(timed.spin),  # time_pass's protocol
            "machine": machine(),  # part of the settings: every candidate here was timed on it
            "versions": versions(),  # the libraries that trained, quantized and timed them
            "best": best["id"] if best else None, "message": message,
            "front": [r["id"] for r in front(results)], "teacher_fp32": ref, "candidates": results,
            "skipped": skipped, "not_started": not_started, "stopped": stopped,
            "counts": {"measured": measured, "reused": reused, "skipped": len(skipped),
                       "not_started": len(not_started), **({"timed_again": timed_again} if timed_again else {})},
            "settings": {**asdict(cfg), "fingerprint": ctx.settings}, "wall_s": round(wall_s, 1),
            **({"run_bundle": shipped} if shipped else {}), "created": now_utc()}


def run_bundle(recipe: Recipe, threads: int) -> Optional[dict]:
    """What the run's own bundle stage shipped (the recipe's models, trained in full, not a search candidate), for
    comparison with the search's best: its artifact, dev metric and bench p50 at ``threads`` (when benchmarked). None
    without a bundle, or one unreadable."""
    from compress.bundle import defined, last_shipped

    record = last_shipped(recipe.run_dir)
    try:
        manifest = read_json(recipe.run_dir / "bundle" / record["paths"][0] / "manifest.json")
        metric, value = next(iter(manifest["metrics"]["dev"].items()))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, StopIteration):  # None: no bundle
        return None
    by_threads = (manifest.get("latency") or {}).get("by_threads") or {}
    p50 = (by_threads.get(str(threads)) or {}).get("p50_ms") if isinstance(by_threads, dict) else None
    return {"artifact": record["chosen"], "metric_name": metric, "metric": value, "threads": threads,
            "p50_ms": p50 if defined(p50) else None}


# ------------------------------------------------------------------------------------------------ outputs
def write_outputs(out: Path, summary: dict) -> None:
    """search.json, search.md and pareto.png of one search. The plot and the page are made under temporary names
    first, then the three renamed in, search.json (what `compress report` reads; a rerun resumes from candidates/)
    last: an interrupted search left the new budget's search.json beside the old search's page and plot (drawing
    takes a second)."""
    png_tmp, md_tmp = out / f".pareto.png.tmp-{os.getpid()}", out / f".search.md.tmp-{os.getpid()}"
    try:
        png = plot(summary, png_tmp)
        md_tmp.write_text(markdown(summary, "pareto.png" if png else None), encoding="utf-8")
        if png is None:
            (out / "pareto.png").unlink(missing_ok=True)  # an earlier search's plot would read as this one's
        else:
            os.replace(png_tmp, out / "pareto.png")
        os.replace(md_tmp, out / "search.md")
    finally:
        png_tmp.unlink(missing_ok=True)
        md_tmp.unlink(missing_ok=True)
    write_json(out / "search.json", summary)


def plot(summary: dict, path: Path) -> Optional[Path]:
    """The report's Pareto plot of the measured candidates, the budget a dashed line and the pick (``best``) starred."""
    from compress.pareto import pareto_plot
    from compress.report import Latency, Row, RunTable

    t = summary["threads"]
    rows = [Row(r["id"], "int8", f"onnx int8 ({r['mode']})", params=r["params"], file_bytes=r["size_bytes"],
                metric=r["metric"], latency={t: Latency(r["latency"]["p50_ms"], r["latency"]["p90_ms"])})
            for r in summary["candidates"]]
    if not rows:
        return None
    table = RunTable(f"{summary['recipe']} search (budget {summary['budget_ms']:g} ms)", "",
                     summary["candidates"][0]["metric_name"], rows, pair=bool(summary.get("pair")))
    return pareto_plot([table], path, threads=t, budget_ms=summary["budget_ms"], best=summary.get("best"))


def _speed(speedup: Optional[float]) -> str:
    """A speedup in words: "2.3x faster than", "1.4x slower than" (a budget above the teacher's own latency)."""
    if speedup is None or speedup <= 0:
        return "not compared with"
    if (round_down(speedup, 1) if speedup >= 1 else round(1 / speedup, 1)) == 1.0:  # 0.97: not "1.0x slower than"
        return "about as fast as"
    return f"{round_down(speedup, 1):.1f}x faster than" if speedup >= 1 else f"{1 / speedup:.1f}x slower than"


def _held(r: dict) -> str:
    return f"{r['select_metric']:.4f}" if r.get("select_on") == "holdout" else "- (none held out: dev)"


def _passes(r: dict) -> str:
    n = len(r["latency"].get("passes") or [])
    return f" (median of {n})" if n > 1 else ""


def _same_pass_refs(summary: dict) -> str:
    """How the speedups were taken: each over the teacher's p50 timed in the candidate's own pass (the machine's speed
    drifts between passes), which the table does not show: its range, where it is not the one figure above."""
    refs = [r["teacher_fp32_p50_ms_same_pass"] for r in summary.get("candidates") or []
            if isinstance(r.get("teacher_fp32_p50_ms_same_pass"), (int, float))]
    if not refs or f"{min(refs):.2f}" == f"{max(refs):.2f}" == f"{summary['teacher_fp32']['p50_ms']:.2f}":
        return ""
    return (f" (each speedup is over the teacher's p50 timed in that candidate's own pass: {min(refs):.2f} to "
            f"{max(refs):.2f} ms here, teacher_fp32_p50_ms_same_pass in search.json)")


def markdown(summary: dict, png: Optional[str]) -> str:
    from compress.report import md_text

    on_front = set(summary["front"])
    lines = [f"# Latency-budget search: {md_text(summary['recipe'])} ({md_text(summary['task'])})", "",
             f"**{md_text(summary['message'])}**", "",
             f"Budget: p50 <= {summary['budget_ms']:g} ms per {'pair' if summary.get('pair') else 'sentence'} at "
             f"{summary['threads']} thread(s), "
             f"{summary['latency']}. Teacher ONNX fp32: p50 {summary['teacher_fp32']['p50_ms']:.2f} ms"
             + _same_pass_refs(summary) + ". "
             f"Wall time {summary['wall_s']:.0f} s; measured {summary['counts']['measured']}, reused "
             f"{summary['counts']['reused']}"
             + (f", timed again {summary['counts']['timed_again']}" if summary["counts"].get("timed_again") else "")
             + f", skipped {summary['counts']['skipped']}, not started "
             f"{summary['counts']['not_started']}." + (f" Stopped: {summary['stopped']}." if summary["stopped"] else "")
             + f" A candidate from budget / {OVER_BUDGET_SLACK:g} to budget x {NEAR_BUDGET_OVER:g} after its first "
               f"pass is timed in {NEAR_BUDGET_PASSES} passes: its p50, p90 and speedup are the medians (marked: "
               f"median of N).",
             ""]
    shipped = summary.get("run_bundle")
    if shipped:  # candidates are trained briefly: the run's own bundle may beat the best
        speed = "" if not shipped.get("p50_ms") else (
            f", p50 {shipped['p50_ms']:.2f} ms at {shipped['threads']} thread(s) in the bench stage's pass (another "
            f"pass than this search's: read the two latencies as a guide)")
        lines += [f"For comparison, the run's own bundle (the recipe's models, trained in full; not a candidate here): "
                  f"{md_text(str(shipped['artifact']))}, dev {md_text(shipped['metric_name'])} "
                  f"{shipped['metric']:.4f}{speed}.", ""]
    if png:
        lines += [f"![metric vs latency]({png})", ""]
    if summary["candidates"]:
        metric = summary["candidates"][0]["metric_name"]
        lines += [f"| candidate | layers | kept by pruning | of the teacher's MACs | int8 | params | {metric} (int8, dev) | {metric} (held-out, "
                  f"picked on) | p50 ms | p90 ms | speedup vs teacher fp32 | budget | Pareto |",
                  "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in summary["candidates"]:
            mark = "**best**" if r["id"] == summary["best"] else (
                "within" if r["latency"]["p50_ms"] <= summary["budget_ms"] else "over")
            lines.append(f"| {r['id']} | {r['depth']} | {r['keep_macs']:g} | {r['macs_fraction']:.0%} | {r['mode']} | {r['params'] / 1e6:.1f}M | "
                         f"{r['metric']:.4f} | {_held(r)} | {ms(r['latency']['p50_ms'], summary['budget_ms'])}"
                         f"{_passes(r)} | {ms(r['latency']['p90_ms'])} | "
                         f"{round_down(r['speedup_vs_teacher_fp32'], 1):.1f}x | {mark} | "
                         f"{'yes' if r['id'] in on_front else ''} |")
        lines.append("")
    if summary["skipped"]:
        lines += ["Skipped:", ""] + [f"- {s['id']}: {md_text(s['reason'])}" for s in summary["skipped"]] + [""]
    if summary["not_started"]:
        lines += [f"Not started (time limit): {', '.join(summary['not_started'])}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ shipping the best
def _test_metrics(recipe: Recipe, model: Path, teacher_dir: Path) -> tuple[Optional[dict], dict]:
    """The shipped candidate's metrics on the task's labelled test split (MRPC's; None without one), one text at a time
    as the bundle runs it, its first rows under ``task.max_eval_samples``; nothing is chosen on them. With them
    ``{"test_rows": n, "test_subset": whether the split's first only}``."""
    from compress.data import Collator, load_test, task_spec, tokenize
    from compress.export import score_shipped
    from compress.modeling import load_tokenizer

    test, split_rows = load_test(recipe.task)
    if test is None:
        return None, {}
    tokenizer = load_tokenizer(str(teacher_dir), {}, f"{teacher_dir}: cannot load its tokenizer",  # the candidates'
                               "rerun the teacher stage")
    rows = tokenize(test, tokenizer, recipe.task.max_length)
    spec = task_spec(recipe.task)
    metrics = score_shipped(model, rows, Collator({"": tokenizer}, regression=spec.is_regression), spec.metrics,
                            np.asarray(rows["label"]))
    print(f"[search] {model.name} on the labelled test split ({len(rows)} rows): "
          + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    return metrics, {"test_rows": len(rows), "test_subset": len(rows) < split_rows}


def candidate_config(recipe: Recipe, best: dict, teacher_dir: Path) -> Optional[Path]:
    """The transformers config.json of a candidate's torch model, for the bundle's Optimum files: its saved folder
    (search/models/<model>), or the teacher's for the teacher itself (kept whole: not saved again); None, said, where
    neither is there."""
    saved = recipe.run_dir / "search" / "models" / str(best.get("model")) / "config.json"
    if saved.is_file():
        return saved
    try:
        depth = read_json(teacher_dir / "config.json").get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        depth = None
    if best.get("depth") == depth and best.get("keep_macs", 1.0) >= 1.0 and (teacher_dir / "config.json").is_file():
        return teacher_dir / "config.json"
    log.warning("search: no config.json for candidate %s (%s): its bundle is built without one, so Optimum cannot "
                "load it; predict.py and predict.mjs run it as usual", best.get("id"), saved)
    return None


def bundle_best(recipe: Recipe, summary: dict) -> tuple[Path, Path]:
    """Edge bundle (``compress.bundle.build``) of the search's best candidate within the budget, into
    runs/<recipe>/search/bundle/; its manifest carries the candidate's dev metric, retention against the teacher's
    fp32 ONNX and the latency measured by the search."""
    from compress.bundle import build, bundle_metrics, is_bundle_archive, is_bundle_folder, verifier
    from compress.config import default_bundle_name
    from compress.data import task_spec
    from compress.report import split_scope

    best = next((r for r in summary["candidates"] if r["id"] == summary["best"]), None)
    if best is None:
        raise CompressError(f"search: nothing to bundle: {summary['message']}")
    spec = task_spec(recipe.task)
    teacher_dir = recipe.run_dir / "teacher" / "model"
    base = default_bundle_name(recipe.name, spec.name).removesuffix("-int8")  # "mrpc-mrpc-..." said the task twice
    name = f"{base}-{best['id']}"
    lat = best["latency"]
    manifest = recipe.run_dir / "teacher" / "manifest.json"
    teacher = read_json(manifest) if manifest.is_file() else {}
    # the candidates are scored on the teacher's dev rows (task.max_eval_samples)
    test, scope = _test_metrics(recipe, Path(best["file"]), teacher_dir)
    # the teacher's test score where it was scored on these same rows (a cap changed since: not comparable)
    same = split_scope(teacher, "test")[0] in (None, scope.get("test_rows"))
    metrics = bundle_metrics(best["metrics"], (teacher.get("metrics") or {}).get("dev", {}), best["metric_name"],
                             *split_scope(teacher), test, (teacher.get("metrics") or {}).get("test") if same else None,
                             **scope)
    latency = {"p50_ms": lat["p50_ms"], "p90_ms": lat.get("p90_ms"), "threads": lat["threads"], "batch_size": 1,
               "speedup_vs_teacher_onnx_fp32": best["speedup_vs_teacher_fp32"], "protocol": summary["latency"],
               "machine": "{cpu}, {cores} cores, onnxruntime {onnxruntime}".format(**summary["machine"])
               if summary.get("machine") else None}
    source = {"recipe": recipe.path, "run": str(recipe.run_dir), "artifact": f"search candidate {best['id']}",
              "file": best["file"], "pick": f"most accurate within {summary['budget_ms']:g} ms (compress search), "
                                            + ("on held-out training rows; dev not used to pick"
                                               if best.get("select_on") == "holdout" else
                                               "on dev itself (no training rows held out): dev is optimistic")}
    out = recipe.run_dir / "search" / "bundle"
    made = build(out, name, model=Path(best["file"]), tokenizer=teacher_dir / "tokenizer.json", task=spec.name,
                 labels=spec.labels, text_pair=spec.text_pair is not None, max_length=recipe.task.max_length,
                 metrics=metrics, latency=latency, source=source,
                 check=verifier(recipe, best["metrics"], best["metric_name"], metrics.get("dev_rows")),
                 config=candidate_config(recipe, best, teacher_dir))
    prefixes = "|".join(re.escape(f"{p}-") for p in {base, f"{recipe.name}-{spec.name}"})  # and as named before
    earlier = re.compile(rf"(?:{prefixes})L\d+(?:-k[\d.]+)?-(?:dynamic|static)")
    for old in sorted(out.iterdir()) if out.is_dir() else []:  # an earlier pick's bundle (a user's files stay)
        stem = old.name.removesuffix(".tar.gz")
        if old in made or old.is_symlink() or not earlier.fullmatch(stem):
            continue
        if old.is_dir() and is_bundle_folder(old):
            shutil.rmtree(old)
        elif old.is_file() and old.name.endswith(".tar.gz") and is_bundle_archive(old, stem):
            old.unlink()
    return made
