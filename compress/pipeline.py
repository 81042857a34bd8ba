"""The stage graph: which stages a recipe runs, in which order, and when a stage can be skipped.

Each stage is one module with one entry function ``run(recipe, out, inputs) -> dict``: it writes its artifacts into
``out`` (a temporary folder) and returns what goes into its manifest (``metrics``, ``params`` and anything else).
This module alone knows the order and the cache: a stage is redone only when its fingerprint (its recipe sections,
the task's data files, the outputs of the stages it needs, the package version) changed, when its outputs no longer
match their recorded hashes, or when forced. The temporary folder is renamed into place only after the manifest is
written, so an interrupted run never leaves a stage that a rerun would trust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from compress import __version__, hub
from compress.config import (CalibrationConfig, DistillConfig, QuantizeConfig, Recipe, TrainConfig,
                             default_bundle_name, from_dict, newest_source, transfer_folder)
from compress.tasks import data_files, split_paths
from compress.errors import CompressError
from compress.manifest import (Timer, content_outputs, file_lock, fingerprint, hash_tree, hidden_path, host,
                               missing_folders, now_utc, other_machine, outputs_intact, part_intact, published_manifest,
                               read_json, record_digests, remove_dead, remove_dead_scratch, remove_empty, versions,
                               write_json)
from compress.bundle_predict import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function"
    sections: tuple[str, ...]  # recipe sections that configure it (all must be present for it to run)
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()  # optional upstream stages: inputs (and fingerprint) only when the recipe runs them
    trains: bool = False
    """Trains with `compress.train.fit` (data-parallel under ``accelerate launch``/torchrun: every process runs it);
    a stage that does not runs on the main process alone, the others waiting for its published folder."""
    models: tuple[str, ...] = ()
    """Recipe fields naming a model it loads (``students.*.init``: every student's): a local folder's files are inputs
    like the task's data files (zoo models are pinned by sha256; a hub id has no files here)."""
    reads: tuple[str, ...] = ()
    """Other recipe sections it reads when the recipe has them: part of its config when no stage of theirs runs (the
    report times models with the bench settings; when the bench stage runs, its outputs follow them already)."""
    runs: tuple[str, ...] = ()
    """Recipe fields naming other run folders it reads (``report.compare``): their stages' manifest.json files are
    inputs (a stage redone there rewrites its manifest)."""
    variant: Optional[Callable[[Recipe], Optional[str]]] = None
    """recipe -> a word joined to the fingerprint when the stage's outputs for that recipe changed meaning (a fix that
    concerns a few recipes: their stages are redone, not every run folder's, as a `revision` would), or when what
    the recipe makes it read is not among its inputs otherwise (a default source: `_taken_by_default`); None: none."""
    files: tuple[str, ...] = ()
    """Files of a run folder (this run's, and those `runs` names) that it reads beside stage outputs, when there: their
    sha256 are inputs (the report's line on ``compress search``'s results stayed out of date after a search)."""
    added: tuple[str, ...] = ()
    """Names of files and folders that tools a user runs in the stage's outputs add beside them (a bundle's
    ``npm install``: node_modules/, package-lock.json; ``from predict import Predictor``: __pycache__/): not outputs,
    so they do not make the stage count as edited (and be rebuilt, deleting them), unless the stage wrote them."""
    ships: tuple[str, ...] = ()
    """Files of this package the stage copies into its outputs as they are (a bundle's runners): their sha256 are
    inputs (``package:compress/<file>``), so a new version of one redoes the stage without a `revision` bump."""
    revision: int = 1
    """Raised when the stage's outputs change meaning with the same inputs and config, so run folders made before
    redo it (and what follows). Part of the fingerprint from 2 on: stages at 1 keep their fingerprints."""

    timed: bool = False
    """Its outputs are latencies: measured on another machine (`compress.manifest.other_machine`: CPU, cores, int8
    features, onnxruntime or torch version), the stage is redone (a run folder copied to a laptop reported the
    server's timings as the laptop's)."""
    takes_forced: bool = False
    """Its function takes ``forced`` (--force): the report stage then times again what it would keep, the distill
    stage trains every student again (none copied from its previous run)."""
    named: bool = False
    """Its outputs carry the recipe's name (the report's title, the bundle's default name and run): a run renamed (its
    folder moved to the recipe's new name) redoes it, not the stages before it."""
    reads_files: Optional[Callable[[Recipe, str, str], bool]] = None
    """(recipe, upstream stage, its output file) -> whether the stage reads it, when not all: the bundle reads the
    report's latency.json, not its tables and plot (a new report title or thread count rebuilt the bundle); prune and
    quantize read their source student's folder of the distill stage, not the others' (`_source_files`)."""

    reads_only: Optional[Callable[[Recipe, tuple[str, ...]], tuple[str, ...]]] = None
    """(recipe, upstream stages) -> those the stage reads for this recipe, when fewer: the quantize stage reads only
    its source model's stage (and the teacher's), so a new pruning does not redo the int8 teacher of
    ``quantize.source: teacher``. Only those are its inputs and in its fingerprint."""

    def upstream(self, done, recipe: Optional[Recipe] = None) -> tuple[str, ...]:
        names = self.needs + tuple(u for u in self.uses if u in done)
        if self.reads_only is None or recipe is None:
            return names
        return tuple(n for n in names if n in self.reads_only(recipe, names))

    def function(self):
        module, fn = self.entry.split(":")
        return getattr(importlib.import_module(module), fn)


def _variants(*words: Optional[str]) -> Optional[str]:
    return "+".join(w for w in words if w) or None


def _accumulates(*configs) -> Optional[str]:
    """Training with gradient accumulation stepped an epoch's short last group on a fraction of its gradient
    (2026-12-05), and gave the rows of the epoch's short last batch more weight than the others of its group
    (2026-12-06): a stage that trains with ``grad_accum`` > 1 is redone, no other."""
    return "grad-accum-rows" if any(c is not None and c.grad_accum > 1 for c in configs) else None


@functools.lru_cache(maxsize=None)
def _float_warmup_differs(ratio: float) -> bool:
    """Whether ``int(ratio * total)`` (the warm-up before 2026-12-06) falls one step short of `TrainConfig.warmup_steps`
    for some total up to a million steps: only where the exact product is an integer (total a multiple of the ratio's
    denominator), which the float product can miss from below (0.29, 0.35, 0.41, 0.47; not 0.06, 0.1, 0.2)."""
    exact = Fraction(repr(ratio))
    if exact == Fraction(ratio):  # 0, 0.5, 0.25: the float is the ratio as written, its products exact
        return False
    return any(int(ratio * t) != exact.numerator * t // exact.denominator
               for t in range(exact.denominator, 1_000_001, exact.denominator))


def _inexact_warmup(*configs) -> Optional[str]:
    """A stage that trains with a warm-up ratio whose step count `TrainConfig.warmup_steps` now rounds on the ratio as
    written (2026-12-06) is redone, no other (its step count may have been one short)."""
    differs = any(c is not None and _float_warmup_differs(c.warmup_ratio) for c in configs)
    return "warmup-exact" if differs else None


def _trains(*configs) -> Optional[str]:
    """The words of a stage that trains with ``configs`` (`_accumulates`, `_inexact_warmup`)."""
    return _variants(_accumulates(*configs), _inexact_warmup(*configs))


def _teacher_variant(recipe: Recipe) -> Optional[str]:
    return _trains(recipe.teacher) if recipe.teacher.finetune else None


def _distill_variant(recipe: Recipe) -> Optional[str]:
    """Students of one augment setting that pick its neighbours with their own embeddings trained on the first one's
    copies until each got its own (2026-12-04): a stage with two or more of them is redone, no other; and
    ``intermediate_max_steps`` capped the intermediate step at the epochs' budget instead of setting it (2026-12-05)."""
    settings = [dataclasses.astuple(s.distill.augment) for s in recipe.students or []
                if s.distill.augment is not None and s.distill.augment.embeddings == "student"]
    exact = any(s.distill.intermediate_max_steps is not None for s in recipe.students or [])
    # an embedding match compared the teacher's embeddings with the student's after dropout (2026-12-08)
    undropped = any(_matches_embeddings(s.distill) for s in recipe.students or [])
    # two_step's first step (no logit loss) had AdamW decay the weights no loss reached (2026-12-05)
    undecayed = any(s.distill.two_step for s in recipe.students or [])
    return _variants("augment-per-student" if len(settings) > len(set(settings)) else None,
                     _trains(*(s.train for s in recipe.students or [])),
                     "intermediate-steps-exact" if exact else None, "two-step-undecayed" if undecayed else None,
                     "embedding-undropped" if undropped else None)


def _matches_embeddings(cfg: DistillConfig) -> bool:
    """Whether a student's distill section matches its embeddings' output (as `compress.distill.objective
    .matches_embeddings` finds in its resolved matches): an explicit embedding match, or hidden of student layer 0, of
    weight > 0, or ``layer_map`` with the embedding feature."""
    explicit = any(m.weight > 0 and (m.feature == "embedding" or (m.feature == "hidden" and m.student_layer == 0))
                   for m in cfg.matches)
    return explicit or (cfg.layer_map is not None and cfg.layer_map_weight > 0
                        and "embedding" in cfg.layer_map_features)


def _taken_by_default(recipe: Recipe, stage: str) -> Optional[str]:
    """The first student, where ``stage`` takes it by default among two or more (prune; quantize without a prune
    stage, `newest_source`). Its name is part of the stage's identity: it was so only through the key order of the
    distill stage's metrics.json, so reordered students whose models came out byte-identical reused a stage made from
    another one."""
    section = {"prune": recipe.prune, "quantize": recipe.quantize if recipe.prune is None else None}.get(stage)
    students = recipe.students or []
    return students[0].name if section is not None and section.source is None and len(students) > 1 else None


def _source_word(recipe: Recipe, stage: str) -> Optional[str]:
    name = _taken_by_default(recipe, stage)
    return f"source={name}" if name is not None else None


def _prune_variant(recipe: Recipe) -> Optional[str]:
    if recipe.prune is None:
        return None
    return _variants(_trains(recipe.prune.recover), _source_word(recipe, "prune"))


def _quantize_variant(recipe: Recipe) -> Optional[str]:
    return _variants(_source_word(recipe, "quantize"), _test_split_word(recipe))


def _test_split_word(recipe: Recipe) -> Optional[str]:
    """A task with a labelled test split (MRPC's): the quantize stage scores its ONNX models on it since 2026-12-05,
    and the report and bundle show those scores; its earlier outputs have none, so it is redone once (its export and
    guard again: seconds for a small student; the bench, report and bundle after it), and the report of a run without
    a quantize stage too (its timings kept). Other tasks keep their fingerprints."""
    from compress.rows import has_test_labels
    from compress.tasks import task_spec

    spec = task_spec(recipe.task)
    return "test-split" if "test" in spec.files and has_test_labels(recipe.task, spec, quiet=True) else None


def _report_variant(recipe: Recipe) -> Optional[str]:
    """The report names the model the bundle ships (`compress.report.bundle_pick`), by the bundle section's pick
    settings: a report of other settings is redone. The defaults add no word, and a report made before it named the
    pick is kept (`_accepted_fingerprints`, ``before_pick``); a bundle section added later with the defaults leaves
    the report without the line until `--force report`."""
    cfg = recipe.bundle
    word = None
    if cfg is not None and (cfg.pick, cfg.max_drop, cfg.threads) != ("best_within_drop", None, None):
        word = f"bundle-pick={cfg.pick},{cfg.max_drop},{cfg.threads}"
    return _variants(_test_split_word(recipe), word)


def _source_files(recipe: Recipe, need: str, rel: str, stage: str) -> bool:
    """Whether the prune (or quantize) ``stage`` reads output ``rel`` of upstream stage ``need``: of the distill stage,
    its source student's folder, and for prune the transfer sets and the teacher's logits (its recovery's KD targets);
    of the prune stage (quantize), its model. The other students' files and every metrics.json's timings are not
    read: a change to another student, or a stage redone to the same model, redid them and all after."""
    section = recipe.prune if stage == "prune" else recipe.quantize
    source = section.source or newest_source(recipe, ("teacher", "distill") if stage == "prune" else
                                             ("teacher", "distill", *(("prune",) if recipe.prune else ())))
    if need == "distill":
        if stage != "prune":
            return rel.startswith((f"{source}/", "model/"))
        student = next((s for s in recipe.students or [] if s.name == source), None)
        # its recovery reads a transfer set only with `recover.data: transfer`, and then its source student's alone
        # (another student's augment setting redid the prune stage, to the same model)
        transfer = (student is not None and student.distill.augment is not None and section.recover is not None
                    and section.recover.data == "transfer")
        keep = ("teacher_logits.", *((f"{source}/",) if source != "teacher" else ()),
                *((transfer_folder(student.distill.augment, source) + "/",) if transfer else ()))
        return rel.startswith(keep)
    return need != "prune" or rel.startswith("model/")


def _quantize_reads(recipe: Recipe, names: tuple[str, ...]) -> tuple[str, ...]:
    """The teacher's stage and the one holding ``quantize.source`` (else the newest model: `newest_source`)."""
    source = recipe.quantize.source or newest_source(recipe, names)
    return "teacher", source if source in ("teacher", "prune") else "distill"


STAGES: list[Stage] = [
    Stage("teacher", "teachers.finetune:run", ("task", "teacher"), trains=True, models=("teacher.model",),
          variant=_teacher_variant, takes_forced=True),
    Stage("distill", "compress.distill.stage:run", ("task", "teacher", "students"), needs=("teacher",), trains=True,
          models=("students.*.init", "students.*.tokenizer"), variant=_distill_variant, takes_forced=True),
    # prune takes the distilled student when the recipe has one (prune.source), else the teacher
    Stage("prune", "compress.prune_stage:run", ("task", "teacher", "prune"), needs=("teacher",), uses=("distill",),
          trains=True, variant=_prune_variant, takes_forced=True,
          reads_files=lambda recipe, need, rel: _source_files(recipe, need, rel, "prune")),
    # quantize/bench (keep them after distill/prune) take the newest model: pruned, else a student, else the teacher
    # revision 2: int8 models scored one dev text at a time, as shipped (compress.export.SHIPPED_BATCH); 3: fp32
    # metrics (and the guard's baseline) are model.onnx's own, .ort files without ORT's slow fusions, dynamic guard
    # candidates only the nodes dynamic int8 changes
    Stage("quantize", "compress.quantize:run", ("task", "quantize"), needs=("teacher",), uses=("distill", "prune"),
          revision=3, reads_only=_quantize_reads, variant=_quantize_variant,
          reads_files=lambda recipe, need, rel: _source_files(recipe, need, rel, "quantize")),
    # revision 2: the torch_fp32 row's dev metrics are the torch model's (they were model.onnx's, from quantize.json)
    Stage("bench", "compress.bench:run", ("task", "quantize", "bench"), needs=("quantize",), revision=2, timed=True),
    # report and bundle stay last (add stages above them): they read every earlier stage's outputs
    Stage("report", "compress.report:run", ("task", "report"), needs=("teacher",),
          uses=("distill", "prune", "quantize", "bench"), reads=("bench",), runs=("report.compare.*",), named=True,
          takes_forced=True, timed=True,
          files=("search/search.json",), variant=_report_variant),
    # revision 2: the bundle folder's manifest.json is among the stage's hashed outputs (an edit to it is seen)
    Stage("bundle", "compress.bundle:run", ("task", "bundle"), needs=("quantize",), uses=("bench", "report"),
          added=("node_modules", "package-lock.json", "__pycache__"), named=True,
          reads_files=lambda recipe, need, rel: need != "report" or rel == "latency.json",
          ships=("bundle_predict.py", "bundle_predict.mjs", "bundle_index.html"), revision=2),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def plan(recipe: Recipe, until: Optional[str] = None) -> list[Stage]:
    """The stages this recipe configures, in order, up to and including ``until``."""
    names = stage_names()
    if until is not None and until not in names:
        raise CompressError(f"unknown stage {until!r} (stages: {', '.join(names)})")
    chosen = [s for s in STAGES if all(getattr(recipe, sec, None) is not None for sec in s.sections)]
    if recipe.bench is not None and recipe.quantize is recipe.report is recipe.search is None:  # was dropped unsaid
        raise CompressError(f"{recipe.path}: bench: needs the quantize stage, which this recipe does not configure "
                            f"(add a quantize section; without one, bench settings only time the report stage's or "
                            f"`compress search`'s models)")
    for stage in chosen:  # before anything runs (and in `compress validate`), not once the earlier stages have run
        missing = [n for n in stage.needs if n not in [s.name for s in chosen]]
        if missing:
            sections = [sec for sec in next(s for s in STAGES if s.name == missing[0]).sections
                        if getattr(recipe, sec, None) is None]
            raise CompressError(f"{recipe.path}: {stage.name}: needs the {missing[0]} stage, which this recipe does "
                                f"not configure (add a {' and a '.join(sections)} section)")
    if until is not None:
        if until not in [s.name for s in chosen]:
            raise CompressError(f"{recipe.path}: stage {until!r} is not configured in this recipe")
        chosen = chosen[: [s.name for s in chosen].index(until) + 1]
    return chosen


def shape_problems(recipe: Recipe, names: Sequence[str]) -> list[str]:
    """What the recipe's shapes refuse before any of the stages ``names`` runs (`run` stops on the first,
    `compress validate --strict` lists them): students the distill stage cannot build, then (the students fine) a prune
    target its source cannot meet. The models are built on the meta device, once for both checks; imports torch."""
    built: dict = {}  # a checkpoint student's shape holds its weights: not kept past this call
    out: list[str] = []
    if "distill" in names:
        from compress.distill.stage import student_problems

        out += student_problems(recipe, built)
    if "prune" in names and not out:
        from compress.prune_stage import plan_problem

        out += [p for p in [plan_problem(recipe, built)] if p]
    return out


def _fingerprint(recipe: Recipe, stage: Stage, upstream: dict[str, dict]) -> tuple[str, dict]:
    inputs = _inputs(recipe, stage, upstream)
    read = _as_read(recipe)
    return _stage_fingerprint(read, stage, inputs, _result_config(_config(read, stage))), inputs


def _as_read(recipe: Recipe) -> Recipe:
    """``recipe`` as its stages read it, for fingerprints: one spelling of ``prune.source`` / ``quantize.source`` for
    the model the stage takes by default (`newest_source`), and static int8's settings (``calibration``,
    ``activation_type``, ``format``) at their defaults when ``quantize.modes`` has no static. Naming the default
    source, or a calibration setting of a dynamic-only run, redid the stage (and every one after it) for the same
    model. The source's spelling: its name where the stage picks the first of two or more students (the fingerprint
    of a recipe naming it, which `_taken_by_default`'s word stood for when unnamed), else unset (as most recipes have
    it). A setting given the value its default resolves to reads as unset: a section's ``seed`` equal to the run's
    (``prune.recover.seed`` where one step recovers: a later step's default is the run's seed + its index), a
    ``bundle.name`` equal to the default name (`--set teacher.seed=42` on a run of seed 42 retrained the teacher,
    and redid every stage after it, for the same weights). ``recipe`` itself when nothing changes; run folders
    fingerprinted from the recipe as written stay valid (`_reuse`)."""
    changes: dict[str, Any] = {}
    recipe = _defaults_unset(recipe)
    prune, quantize, several = recipe.prune, recipe.quantize, len(recipe.students or []) > 1
    student = newest_source(recipe, ("teacher", "distill") if recipe.students else ("teacher",))  # or the teacher

    def spelled(source: Optional[str], default: str, picks_first: bool) -> Optional[str]:
        if picks_first:
            return source or default
        return None if source == default else source

    if prune is not None and prune.source != spelled(prune.source, student, several):
        changes["prune"] = dataclasses.replace(prune, source=spelled(prune.source, student, several))
    if quantize is not None:
        fields: dict[str, Any] = {"source": spelled(quantize.source, "prune" if prune is not None else student,
                                                    several and prune is None)}
        if "static" not in quantize.modes:
            fields.update(calibration=CalibrationConfig(), activation_type=QuantizeConfig.activation_type,
                          format=QuantizeConfig.format)
        if any(getattr(quantize, k) != v for k, v in fields.items()):
            changes["quantize"] = dataclasses.replace(quantize, **fields)
    return dataclasses.replace(recipe, **changes) if changes else recipe


def _defaults_unset(recipe: Recipe) -> Recipe:
    """``recipe`` with the settings `_as_read` reads as unset (given their defaults' values) unset; ``recipe`` itself
    when there are none."""
    changes: dict[str, Any] = {}
    seed = recipe.seed
    if recipe.teacher.seed == seed:
        changes["teacher"] = dataclasses.replace(recipe.teacher, seed=None)
    if any(s.train.seed == seed for s in recipe.students or []):
        changes["students"] = [dataclasses.replace(s, train=dataclasses.replace(s.train, seed=None))
                               if s.train.seed == seed else s for s in recipe.students]
    prune = recipe.prune
    if prune is not None and prune.recover is not None and prune.recover.seed == seed and prune.steps == 1:
        changes["prune"] = dataclasses.replace(prune, recover=dataclasses.replace(prune.recover, seed=None))
    if recipe.bundle is not None and recipe.bundle.name == default_bundle_name(recipe.name, recipe.task.name):
        changes["bundle"] = dataclasses.replace(recipe.bundle, name=None)
    return dataclasses.replace(recipe, **changes) if changes else recipe


def _inputs(recipe: Recipe, stage: Stage, upstream: dict[str, dict], every_file: bool = False) -> dict[str, str]:
    """What the stage reads, path (or ``<stage>/<file>``) -> sha256: the task's data files, files it ships, the files
    of local model folders it loads (`model_file`), the commit of a hub id it loads, other run folders' manifests,
    and the outputs of the upstream stages it reads (``every_file``: all of theirs, as before `Stage.reads_files`)."""
    inputs = {str(p): sha256_file(p) for p in data_files(recipe.task)}
    inputs.update({f"package:compress/{name}": sha256_file(Path(__file__).with_name(name)) for name in stage.ships})
    for folder in _folders(recipe, stage.models):
        inputs.update({str(Path(folder) / rel): digest
                       for rel, digest in hash_tree(Path(folder), keep=model_file).items()})
    # a hub id's files are not here to hash: the commit it loads stands for them
    inputs.update({f"hub:{name}": hub.revision(name) or "unknown" for name in _field_values(recipe, stage.models)
                   if hub.is_hub_id(name)})
    dataset = (recipe.task.hub_dataset or "").split(":")[0]
    if dataset and not os.path.exists(dataset):  # a local folder's files are among data_files
        inputs[f"hub:datasets/{dataset}"] = hub.revision(dataset, "dataset") or "unknown"
    runs = [run for run in _folders(recipe, stage.runs, models=False)  # this run itself: its stages are upstream
            if Path(run).resolve() != recipe.run_dir.resolve()]
    for run in runs:
        inputs.update({str(p): sha256_file(p) for p in sorted(Path(run).glob("*/manifest.json"))
                       if not p.parent.name.startswith(".")})  # not a killed or working run's .<stage>.tmp-PID
    for run in [recipe.run_dir, *runs]:
        inputs.update({str(Path(run) / rel): sha256_file(Path(run) / rel) for rel in stage.files
                       if (Path(run) / rel).is_file()})
    for need in stage.upstream(upstream, recipe):
        for rel, digest in content_outputs(upstream[need]).items():
            if stage.reads_files is None or every_file or stage.reads_files(recipe, need, rel):
                inputs[f"{need}/{rel}"] = digest
    return inputs


def student_key(recipe: Recipe, index: int, teacher_manifest: dict, training: bool = False) -> str:
    """What one student of the distill stage is made from: the stage's fingerprint of a recipe holding that student
    alone (its section, the task, the seed, the data files, the model folders or hub commits it loads, the stage's
    code revision and the variant words that student alone implies), with the teacher stage's outputs
    (``teacher_manifest``'s) standing for the teacher section. The distill stage keeps a student of an unchanged key
    from its previous run when another student changed (each trains alone: its own seed, the teacher's logits those
    of the previous run, `compress.distill.stage.run`). ``training``: what its weights are made from
    (`training_key`): a student of an unchanged one is kept and scored again."""
    stage = next(s for s in STAGES if s.name == "distill")
    recipe = _defaults_unset(recipe)  # a student's train.seed given the run's is the same student
    alone = dataclasses.replace(recipe, students=[recipe.students[index]])
    inputs = _inputs(alone, stage, {"teacher": teacher_manifest})
    config = {**_result_config(_config(alone, stage)), "teacher": None}
    if training:
        inputs, config = _training_view(alone, inputs, config)
    return _stage_fingerprint(alone, stage, inputs, config)


def training_key(recipe: Recipe, stage_name: str, upstream: Optional[dict[str, dict]] = None) -> str:
    """What the weights a stage trains are made from: its fingerprint without what only scores them (`_training_view`;
    ``upstream``: the manifests of the stages it reads). A stage redone for a changed dev file or
    ``task.max_eval_samples`` alone keeps the model of its previous run whose key this is, and scores it again (the
    teacher and prune stages; the distill stage by `student_key`): training never reads dev (checkpoints are selected
    on the held-out slice of train)."""
    stage = next(s for s in STAGES if s.name == stage_name)
    read = _as_read(recipe)
    return _stage_fingerprint(read, stage, *_training_view(read, _inputs(read, stage, upstream or {}),
                                                           _result_config(_config(read, stage))))


def trained_alike(folder: Path, key: str, records: tuple[str, ...] = ("metrics.json",)) -> bool:
    """Whether the published stage ``folder``'s model (``model/``) was trained as ``key`` (`training_key`) says, and it
    and the ``records`` the stage keeps of its training are as that run wrote them."""
    manifest = published_manifest(folder)
    outputs = manifest.get("outputs") if isinstance(manifest.get("outputs"), dict) else {}
    return manifest.get("training_key") == key and part_intact(folder, manifest, "model") and all(
        rel in outputs and (folder / rel).is_file() and sha256_file(folder / rel) == outputs[rel] for rel in records)


def _kept_or_not(folder: Path, key: str, why: str) -> str:
    """What `explain` adds to why a training stage runs when it was trained as ``key`` says: its model is kept, or,
    edited since, trained again (a changed dev file hid the edit)."""
    if published_manifest(folder).get("training_key") != key:
        return ""
    if trained_alike(folder, key):
        return "; its trained model is kept and scored again"
    return "" if "edited" in why else "; its outputs were edited since they were written: trained again"


def _training_view(recipe: Recipe, inputs: dict, config: dict) -> tuple[dict, dict]:
    """``inputs`` and ``config`` of a fingerprint without what only scores a trained model: the dev and test files
    (the train file keyed ``data:train`` by its content, wherever it is), ``task.max_eval_samples``, the other splits'
    file names and ``task.data_dir``; and the upstream stages' ``metrics.json`` files (their models' scores). A
    ``hub_dataset``'s files are kept: which of them a split reads is not known here."""
    splits = split_paths(recipe.task)
    scoring = {str(path) for split, path in splits.items() if split != "train"}
    train = str(splits["train"]) if "train" in splits else None

    def scores(key: str) -> bool:
        return key.split("/", 1)[0] in stage_names() and key.rsplit("/", 1)[-1] == "metrics.json"

    kept = {("data:train" if k == train else k): v for k, v in inputs.items()
            if k == train or k not in scoring and not scores(k)}
    task = dict(config["task"], max_eval_samples=None, data_dir=None)
    if isinstance(task.get("files"), dict):
        task["files"] = {k: v for k, v in task["files"].items() if k == "train"}
    return kept, {**config, "task": task}


def _unread_model_files(recipe: Recipe, stage: Stage) -> dict[str, dict[str, str]]:
    """folder -> {relative path: sha256} of the files of the stage's local model folders that loading does not read
    (`model_file`), hidden ones left out: earlier code hashed them as inputs too."""
    return {folder: hash_tree(Path(folder), keep=lambda rel: not hidden_path(rel) and not model_file(rel))
            for folder in _folders(recipe, stage.models)}


def _inputs_before_unread_names(inputs: dict, unread: dict[str, dict[str, str]]) -> dict[str, str]:
    """``inputs`` as compress computed them from 2026-12-04 to 2026-12-06: every top-level file of a model folder but
    the hidden ones and ``*.md`` (a LICENSE, a ``.py``, an ``.onnx`` were inputs until `NOT_READ_NAMES` and
    `NOT_READ_SUFFIXES`)."""
    return {**inputs, **{str(Path(folder) / rel): digest for folder, files in unread.items()
                         for rel, digest in files.items()
                         if len(Path(rel).parts) == 1 and not rel.lower().endswith(".md")}}


def _earlier_inputs(recipe: Recipe, stage: Stage, upstream: dict[str, dict], inputs: dict,
                    unread: Optional[dict[str, dict[str, str]]] = None) -> dict[str, str]:
    """``inputs`` (`_inputs`) as compress computed them before: every file of a model folder (not only what loading
    reads, `model_file`: ``unread``, hashed here when not given, the rest taken from ``inputs``), no hub commits (of
    models or a ``hub_dataset``) nor a local ``hub_dataset`` folder's files, every upstream stage's outputs (not only
    those `Stage.reads_only` and `Stage.reads_files` keep)."""
    local_dataset = {str(p) for p in data_files(recipe.task)} if recipe.task.hub_dataset else set()
    earlier = {k: v for k, v in inputs.items() if not k.startswith("hub:") and k not in local_dataset}
    for folder, files in (_unread_model_files(recipe, stage) if unread is None else unread).items():
        earlier.update({str(Path(folder) / rel): digest for rel, digest in files.items()})
    for need in stage.upstream(upstream):
        for rel, digest in upstream[need]["outputs"].items():
            earlier[f"{need}/{rel}"] = digest
    return earlier


# files of a cloned hub repository that transformers' torch loading never reads: the licence and card, images, other
# frameworks' weights and exports, the repository's own code (compress never runs it), sentence-transformers' settings
NOT_READ_NAMES = re.compile(r"(licen[cs]e|notice|copying|authors|citation)([._-].*)?|modules\.json|data_config\.json"
                            r"|sentence_bert_config\.json|config_sentence_transformers\.json", re.IGNORECASE)
NOT_READ_SUFFIXES = (".md", ".cff", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".py", ".onnx", ".ort", ".h5",
                     ".msgpack", ".ot", ".tflite", ".mlmodel")


def model_file(rel: str) -> bool:
    """Whether loading a model folder (``from_pretrained``, model and tokenizer) may read the file at ``rel``: a
    top-level file, not hidden, none of `NOT_READ_NAMES` / `NOT_READ_SUFFIXES`. A subfolder (a Trainer's
    ``checkpoint-500/``, a sentence-transformers module) is not read: adding one, a README or a LICENSE redid the
    stage and all after it. (Manifests recorded with such files among their inputs still match: `_earlier_inputs`,
    `_inputs_before_unread_names`.)"""
    parts = Path(rel).parts
    name = parts[0].lower() if len(parts) == 1 else ""
    return bool(name) and not name.startswith(".") and not name.endswith(NOT_READ_SUFFIXES) \
        and NOT_READ_NAMES.fullmatch(name) is None


def _stage_fingerprint(recipe: Recipe, stage: Stage, inputs: dict, config: dict, unnamed_source: bool = False,
                       before_pick: bool = False) -> str:
    """``unnamed_source``: as before the default source's name was part of it (`_taken_by_default`); ``before_pick``:
    as before the report named the bundle's pick (`_report_variant`)."""
    payload = {"stage": stage.name, "compress": __version__, "seed": recipe.seed, "config": config, "inputs": inputs}
    if stage.revision > 1:
        payload["revision"] = stage.revision
    variant = stage.variant(recipe) if stage.variant is not None else None
    dropped = (("source=",) if unnamed_source else ()) + (("bundle-pick=",) if before_pick else ())
    if variant is not None and dropped:
        variant = _variants(*(w for w in variant.split("+") if not w.startswith(dropped)))
    if variant is not None:
        payload["variant"] = variant
    return fingerprint(payload)


def _accepted_fingerprints(recipe: Recipe, stage: Stage, upstream: dict[str, dict], inputs: dict,
                           recorded: dict, recorded_config: Any = None, recorded_source: Any = None,
                           before_pick: bool = False) -> set[str]:
    """Fingerprints `_reuse` accepts besides the current one, where the stage would make the same outputs:
    - as earlier code computed them: with `RUN_ONLY_KEYS` at their values (before they were left out), with every
      file of a model folder (before `model_file`) or its top-level files but the card (2026-12-04..06), every
      upstream stage's outputs (before `Stage.reads_only`) and every file of the stages it reads (before
      `Stage.reads_files` kept prune and quantize to their source's);
    - with an input file that the stage's manifest (``recorded``: its inputs) lists under another path with the same
      sha256 keyed by that path: a data folder moved, copied, or reached through another spelling or a link (inputs
      are keyed by path) redid every stage, hours of training, for the same bytes;
    - with the local paths of the recipe (``task.data_dir`` and ``task.files``, a local model folder, ``report.compare``
      runs) spelled as the manifest's config (``recorded_config``) has them: ``./tinybert`` for ``tinybert``, the
      default GLUE folder named, are the same inputs when their files are (the inputs above, by sha256);
    - without the default source's name (`_taken_by_default`, 2026-12-05) where the manifest records that same
      source (``recorded_source``): a two-student run's prune stage was redone, hours, for the model it had pruned;
    - in a stage after the teacher's (distill, prune), with the ``teacher`` section as recorded: such a stage reads the
      teacher stage's outputs (among its inputs), never ``teacher.model``, so a model folder respelled or copied (the
      teacher stage reused) redid the distillation for the same teacher;
    - a report made before it named the bundle's pick (``before_pick``: its manifest has no ``ships``), without the
      bundle's pick settings: such a report is kept (it lacks the line until it is redone), not redone with the bundle
      after it (a new manifest sha256 to publish) for a line; once redone, another pick redoes it."""
    configs = [_result_config(_config(recipe, stage)), _config(recipe, stage)]
    unread = _unread_model_files(recipe, stage)  # hashed once for both variants that count them
    variants = [inputs, _earlier_inputs(recipe, stage, upstream, inputs, unread)]
    if stage.reads_files is not None:  # prune's and quantize's before they read their source's files only (2026-12-05)
        variants.append(_inputs(recipe, stage, upstream, every_file=True))
    if any(unread.values()):
        variants.append(_inputs_before_unread_names(inputs, unread))
    variants += [_same_content_keys(v, recorded) for v in variants]
    # path spellings judged on each variant's inputs (a manifest of before `model_file` lists a folder's README too)
    for config in configs[:2]:
        for v in variants[:2]:
            respelled = _recorded_paths(recipe, config, recorded_config, v, recorded)
            if respelled not in configs:
                configs.append(respelled)
    if "teacher" in stage.needs and "teacher" in configs[0] and isinstance(recorded_config, dict) \
            and "teacher" in recorded_config:
        configs += [_result_config({**c, "teacher": recorded_config["teacher"]}) for c in configs[:2]]
    default = _taken_by_default(recipe, stage.name)
    named = recorded_source.get("model") if isinstance(recorded_source, dict) else recorded_source  # quantize's
    legacy = (False, True) if default is not None and named == default else (False,)
    return {_stage_fingerprint(recipe, stage, v, c, unnamed, old) for v in variants for c in configs
            for unnamed in legacy for old in ((False, True) if before_pick else (False,))}


def _recorded_paths(recipe: Recipe, config: dict, recorded: Any, inputs: dict, recorded_inputs: dict) -> dict:
    """``config`` (a stage's sections) with each local path (a leaf of a `config` field marked ``path``: a model
    folder, a data file, a compared run) spelled as ``recorded`` (a manifest's config) spells it where both name the
    same content: the input files under the one (``inputs``) are those under the other (``recorded_inputs``), same
    relative names, same sha256. An unset ``task.data_dir`` is the folder it resolves to. A leaf with no input files
    (a zoo name, a hub id, unset) is never swapped, nor one whose content differs (train and dev files traded)."""
    if not isinstance(recorded, dict):
        return config
    from compress.tasks import data_dir, task_spec

    def under(keys: dict, path: str, names: Optional[set] = None) -> dict:
        """The local files of ``keys`` under the folder ``path``, by their names there (only ``names``, when given).
        Both resolved: an unset ``data_dir`` recorded ``train.csv``, read from the working folder, which ``data_dir:
        .`` names too."""
        root, out = Path(path).resolve(), {}
        for k, v in keys.items():
            if ":" in k or k.split("/", 1)[0] in stage_names():  # a package file, a hub commit, an upstream output
                continue
            file = Path(k).resolve()
            if file == root or root in file.parents:
                rel = file.relative_to(root).as_posix()
                if names is None or rel in names:
                    out[rel] = v
        return out

    def same(now: Any, old: Any, names: Optional[set] = None) -> bool:
        if not (isinstance(now, str) and isinstance(old, str)):
            return False
        here = under(inputs, now, names)
        return bool(here) and here == under(recorded_inputs, old, names)

    def leaf(now: Any, old: Any, default: Optional[str] = None, named: bool = False,
             names: Optional[set] = None) -> Any:
        if isinstance(now, dict) and isinstance(old, dict) and set(now) == set(old):
            return {k: leaf(v, old[k], named=named) for k, v in now.items()}
        if isinstance(now, list) and isinstance(old, list) and len(now) == len(old):
            return [leaf(a, b, named=named) for a, b in zip(now, old)]
        if now != old and same(default if now is None else now, default if old is None else old, names) and not (
                named and Path(now).resolve().name != Path(old).resolve().name):
            return old
        return now

    out = dict(config)
    for name, section in config.items():
        value = getattr(recipe, name, None)
        item = value[0] if isinstance(value, list) and value else value
        if not dataclasses.is_dataclass(item):
            continue
        fields = {f.name for f in dataclasses.fields(item) if f.metadata.get("path")}
        olds = recorded.get(name)
        sections, olds = ([section], [olds]) if not isinstance(section, list) else (section, olds)
        if not isinstance(olds, list) or len(olds) != len(sections):
            continue
        swapped = []
        for sec, old in zip(sections, olds):
            if isinstance(sec, dict) and isinstance(old, dict):
                default = str(data_dir(dataclasses.replace(recipe.task, data_dir=None), task_spec(recipe.task))) \
                    if name == "task" else None  # what an unset data_dir reads
                # the data folder's split files (a model folder may sit in it too); a local hub_dataset's: all
                names = None if name != "task" or recipe.task.hub_dataset \
                    else set(task_spec(recipe.task).files.values())
                # a compared run's table is titled by its folder's name: a copy under another name is a change
                sec = {k: leaf(v, old[k], default if k == "data_dir" else None,
                               named=(name, k) == ("report", "compare"), names=names if k == "data_dir" else None)
                       if k in fields and k in old else v for k, v in sec.items()}
            swapped.append(sec)
        out[name] = swapped if isinstance(section, list) else swapped[0]
    return out


def _same_content_keys(inputs: dict, recorded: dict) -> dict:
    """``inputs`` with each path that ``recorded`` lacks renamed to a path of ``recorded`` (one ``inputs`` lacks) of
    the same file name and sha256, where there is one (the same name: a train.tsv and a dev.tsv whose contents were
    swapped are not the same inputs)."""
    def a_file(key: str) -> bool:  # a path read from disk, not an upstream stage's output, a shipped file, a commit
        return not key.startswith(("package:", "hub:")) and Path(key).parts[:1] != () and \
            Path(key).parts[0] not in stage_names()

    spare: dict[tuple[str, str], list[str]] = {}
    for key, digest in recorded.items():
        if key not in inputs and a_file(key):
            spare.setdefault((Path(key).name, digest), []).append(key)
    out = {}
    for key, digest in inputs.items():
        if key not in recorded and a_file(key) and spare.get((Path(key).name, digest)):
            key = spare[(Path(key).name, digest)].pop(0)
        out[key] = digest
    return out


RUN_ONLY_KEYS = ("checkpoint_every",)  # how a stage runs, not what it makes (a run checkpointing every N steps
# trains the same weights as one that does not: tests/test_teacher.py)


def _result_config(config: Any) -> Any:
    """``config`` (`_config`) with every `RUN_ONLY_KEYS` key, at any depth, at its default (None), for fingerprints
    and for saying what changed: turning checkpoints on in a recipe redid the stage (kept as None, not dropped, so the
    stages of run folders that never set them stay valid). A teacher that is not fine-tuned (``finetune: false``)
    trains nothing: its training settings are None too (changing its lr redid the teacher and every stage after it);
    a student's logit cache flag where it is not read is at its default (`_unread_logit_cache`)."""
    if isinstance(config, dict):
        out = {k: None if k in RUN_ONLY_KEYS else _result_config(v) for k, v in config.items()}
        teacher = out.get("teacher")
        if isinstance(teacher, dict) and teacher.get("finetune") is False:
            unused = {f.name for f in dataclasses.fields(TrainConfig)}
            out["teacher"] = {k: None if k in unused else v for k, v in teacher.items()}
        if isinstance(out.get("students"), list):
            out["students"] = [_unread_logit_cache(s) for s in out["students"]]
        return out
    if isinstance(config, (list, tuple)):
        return [_result_config(v) for v in config]
    return config


def _unread_logit_cache(student: Any) -> Any:
    """A student's section with ``distill.cache_teacher_logits`` at its default where the distill stage never reads
    it (no logit KD, or intermediate matches trained with the logits in one step: the teacher runs on every batch):
    turning it off redid the distillation and every stage after it for the same student."""
    d = student.get("distill") if isinstance(student, dict) else None
    if not isinstance(d, dict) or d.get("cache_teacher_logits", True):
        return student
    try:  # matches as the stage resolves them: those of weight 0 are none, and an explicit one of weight 0 removes
        cfg = from_dict(DistillConfig, d)  # layer_map's match of its pair (which pairs: the models' depths say)
    except CompressError:  # a hand-edited manifest's config: as recorded
        return student
    matched = any(m.weight > 0 for m in cfg.matches) or (cfg.has_matches() and all(m.weight > 0 for m in cfg.matches))
    if d.get("kd_weight") == 0 or (matched and not d.get("two_step")):
        return {**student, "distill": {**d, "cache_teacher_logits": True}}
    return student


def _config(recipe: Recipe, stage: Stage) -> dict:
    """The recipe sections a stage's fingerprint and manifest hold: its own, and those of `Stage.reads` the recipe has
    that no planned stage of their name runs on."""
    read = [r for r in stage.reads if getattr(recipe, r, None) is not None]
    if read:
        planned = {s.name for s in plan(recipe)}
        read = [r for r in read if r not in planned]
    return {sec: recipe.section(sec) for sec in (*stage.sections, *read)}


def _folders(recipe: Recipe, fields: tuple[str, ...], models: bool = True) -> list[str]:
    """The local folders the recipe ``fields`` (`Stage.models` or `Stage.runs`) name; of models, not zoo names,
    "random" or hub ids."""
    from teachers.zoo import ZOO

    return [v for v in _field_values(recipe, fields) if not (models and v in ZOO) and os.path.isdir(v)]


def _field_values(recipe: Recipe, fields: tuple[str, ...]) -> list[str]:
    """The distinct strings the recipe ``fields`` (dotted, ``*`` for every list item) hold, in order."""
    found = []
    for dotted in fields:
        values = [recipe]
        for key in dotted.split("."):
            values = [v for value in values for v in (value or [] if key == "*" else [getattr(value, key, None)])]
        found += [v for v in values if isinstance(v, str) and v not in found]
    return found


def stage_manifest(recipe: Recipe, stage: Stage, fp: str, inputs: dict, folder: Path, result: dict,
                   wall_s: Optional[float] = None, processes: int = 1) -> dict:
    """A stage folder's manifest.json: what ran (recipe, config, seed, fingerprint, inputs' hashes), the hashes of
    ``folder``'s files, the stage's ``result`` fields, timing, versions and host. ``processes``: how many trained it
    (a data-parallel run's; its epochs take that many times fewer steps, and a run of another count reuses it),
    recorded for a stage that trains."""
    manifest = {"stage": stage.name, "recipe": recipe.name, "recipe_path": recipe.path, "fingerprint": fp,
                "config": _config(recipe, stage), "seed": recipe.seed,
                "inputs": inputs, "outputs": hash_tree(folder), **result}
    if stage.trains:
        manifest["processes"] = processes
        manifest["records"] = record_digests(folder, manifest["outputs"])
    if wall_s is not None:
        manifest["timing"] = {"wall_s": round(wall_s, 2), **result.get("timing", {})}
    return {**manifest, "env": {"versions": versions(), "host": host()}, "created": now_utc()}


def _reuse(recipe: Recipe, stage: Stage, folder: Path, fp: str, inputs: dict,
           upstream: Optional[dict[str, dict]] = None) -> tuple[Optional[dict], Optional[str]]:
    """``(manifest, None)`` when ``folder`` holds a complete run with this fingerprint (or one of
    `_accepted_fingerprints`; ``upstream``: the manifests of the stages done before it) and intact outputs; else
    ``(None, why not)`` in a few words (`_what_changed`)."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None, "not run yet"
    try:
        manifest = read_json(path)
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        manifest = None
    if not isinstance(manifest, dict):
        return None, "its manifest.json is unreadable"
    recorded = manifest.get("fingerprint")
    if stage.named and isinstance(manifest.get("recipe"), str) and manifest["recipe"] != recipe.name:
        return None, f"changed: name {manifest['recipe']!r} -> {recipe.name!r}"
    recorded_inputs = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}

    def accepted(r: Recipe) -> set[str]:
        return _accepted_fingerprints(r, stage, upstream or {}, inputs, recorded_inputs, manifest.get("config"),
                                      manifest.get("source"), stage.name == "report" and "ships" not in manifest)

    # `fp`'s recipe (`_as_read`), and the recipe as written (fingerprints before `_as_read`)
    if isinstance(recorded, str) and (recorded == fp or recorded in accepted(read := _as_read(recipe))
                                      or (read is not recipe and recorded in accepted(recipe))):
        if not outputs_intact(folder, manifest.get("outputs"), stage.added):
            return None, "its outputs were edited since they were written"
        elsewhere = other_machine(manifest.get("env")) if stage.timed else None
        return (None, f"timed on another machine ({elsewhere})") if elsewhere else (manifest, None)
    return None, _what_changed(recipe, stage, manifest, inputs)


def run_pipeline(recipe: Recipe, until: Optional[str] = None, force: tuple[str, ...] = ()) -> dict[str, dict]:
    """Run (or reuse) every configured stage up to ``until``; returns stage name -> manifest."""
    force = _check_force(force, plan(recipe, until))
    run_dir = recipe.run_dir
    if os.environ.get("WORLD_SIZE", "1") != "1" or not run_dir.is_dir():
        return _run_pipeline(recipe, run_dir, until, force)
    with run_lock(run_dir):  # held until the end: what is judged here stands (a folder in use: refused before torch)
        judged = {} if force else _judged_up_to_date(recipe, run_dir, until)  # forced: every stage judged as it runs
        if force or len(judged) < len(plan(recipe, until)):
            return _run_pipeline(recipe, run_dir, until, force, judged)
        _remove_orphans(run_dir)
        for name, (_, fp) in judged.items():
            _say_reused(run_dir, name, fp)
        return {name: manifest for name, (manifest, _) in judged.items()}


def _run_pipeline(recipe: Recipe, run_dir: Path, until: Optional[str], force: tuple[str, ...],
                  judged: Optional[dict[str, tuple[dict, str]]] = None) -> dict[str, dict]:
    """`run_pipeline` with torch. ``judged``: given when this process holds the run lock already, the stages it found
    up to date then (`_judged_up_to_date`)."""
    made = missing_folders(run_dir)  # the run folder, and runs/ when it is new too
    # Under `accelerate launch` / torchrun every process runs the training stages (data-parallel), each into its own
    # temporary folder, and only the main process publishes its folder; the other stages run on the main process.
    # The process state on the CPU without a GPU (or under `accelerate launch --cpu`): under torchrun on CPU the
    # (shared, first-created) state must be gloo/MULTI_CPU, or every later Accelerator (fit's) silently trains each
    # process alone on all the data. Imported here, not at the top: validate and --dry-run plan stages without torch.
    from compress.train import from_main_process, process_state, wait_for_everyone

    state = process_state()
    wait_for_everyone()  # every process has seen whether the folder existed before any makes it
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        problem = None
        if state.is_main_process:
            try:
                stack.enter_context(run_lock(run_dir, take=judged is None))
            except CompressError as e:
                problem = str(e)
        problem = from_main_process(problem)  # every process stops on a held lock, not the main one alone
        if problem:  # the folder is another run's (made by it after `made` was read here, maybe): leave it alone
            raise CompressError(problem)
        if not state.is_main_process:  # one copy of the run's output: the main process's (datasets' bars too)
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            import datasets

            datasets.disable_progress_bars()
        try:
            return _run_stages(recipe, run_dir, state, until, force, _stage_waits(state), judged)
        except BaseException:  # still under this run's lock
            if made and state.is_main_process and {p.name for p in run_dir.iterdir()
                                                   if not re.fullmatch(r"\..+\.tmp-\d+", p.name)} <= {".lock"}:
                shutil.rmtree(run_dir, ignore_errors=True)  # failed before any stage wrote: leave no empty run folder
                remove_empty(made[1:])  # nor the empty runs folder it made for it (another run's there stays)
            raise


def _judged_up_to_date(recipe: Recipe, run_dir: Path, until: Optional[str]) -> dict[str, tuple[dict, str]]:
    """(manifest, fingerprint) of the planned stages up to date before the first that is not, judged as `_run_stages`
    judges, without importing torch: its import, with transformers, datasets and accelerate, took ~5 s of a command
    that had nothing to do (a second `make pipeline`, `make report` after a run). One process only, not forced."""
    reused: dict[str, tuple[dict, str]] = {}
    for stage in plan(recipe, until):
        done = {n: m for n, (m, _) in reused.items()}
        if any(n not in done for n in stage.needs):
            break  # `_run_stages` says which
        fp, inputs = _fingerprint(recipe, stage, done)
        manifest, _ = _reuse(recipe, stage, run_dir / stage.name, fp, inputs, done)
        if manifest is None:
            break
        reused[stage.name] = (manifest, fp)
    return reused


def _say_reused(run_dir: Path, name: str, fp: str, main_process: bool = True) -> None:
    """A stage is reused: said, and (by the main process) checkpoints of its fingerprint released."""
    log.info("stage %s: unchanged, reusing %s", name, run_dir / name)
    print(f"[{name}] up to date ({run_dir / name})")
    if main_process:
        _release_checkpoints(run_dir, name, only=fp)


@contextlib.contextmanager
def run_lock(run_dir: Path, take: bool = True):
    """Hold ``<run folder>/.lock`` while a run works in it: a second compress process given the same run folder
    (another terminal, a second `make pipeline`) stops at once with one line naming the holder's pid, instead of
    training everything again and racing the first to publish. The kernel drops the lock when its process ends, so a
    killed run leaves nothing to clean up. Under `accelerate launch` only the main process takes it."""
    if not take:
        yield
        return

    def refuse(holder: str) -> None:
        raise CompressError(f"{run_dir}: in use by another compress run (pid {holder}); wait for it to end, or give "
                            f"this one another runs_dir (--runs-dir)")

    with file_lock(run_dir / ".lock", busy=refuse):
        yield


def compare_problems(recipe: Recipe, stages: list[str]) -> list[str]:
    """``report.compare`` entries that are not run folders, or whose stage records the report cannot read (a torn or
    hand-edited manifest), when the report stage is to run: found before the first stage starts, not after every
    other stage has run."""
    if "report" not in stages or recipe.report is None:
        return []
    import contextlib
    import io

    from compress.report import collect

    problems = []
    for i, run in enumerate(recipe.report.compare):
        if Path(run).resolve() == recipe.run_dir.resolve():  # the run itself: its table is made anyway
            continue
        if not (Path(run) / "teacher" / "manifest.json").is_file():
            problems.append(f"{recipe.path}: report.compare[{i}]: {run!r} is not a run folder (no "
                            f"teacher/manifest.json)")
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # its warnings are the report stage's to give, once
                collect(run)
        except (CompressError, OSError) as e:
            problems.append(f"{recipe.path}: report.compare[{i}]: {e}")
    return problems


STAGE_WAIT_HOURS = 24.0
"""How long the other processes of a distributed run wait for a stage the main process runs alone (quantize, bench,
report, bundle). The process group's own timeout stays for the training collectives (NCCL's default is 10
minutes: a bench or a guarded quantize of a base-size model outlasted it, and the waiting processes were ended)."""


def _stage_waits(state):
    """A barrier for waiting on the main process's single-process stages: a gloo group of its own with a
    `STAGE_WAIT_HOURS` timeout (on the CPU, not a GPU stream) in a distributed run; else
    `compress.train.wait_for_everyone`.
    Every process must call it, at the same point."""
    import torch

    if state.num_processes == 1:
        from compress.train import wait_for_everyone

        return wait_for_everyone
    from datetime import timedelta

    group = torch.distributed.new_group(backend="gloo", timeout=timedelta(hours=STAGE_WAIT_HOURS))

    def wait() -> None:
        import time

        try:
            # polled, not blocking: a process blocked in gloo's barrier runs no Python signal handler, so a waiting
            # process ignored SIGTERM and Ctrl-C until the main process's stage ended (up to STAGE_WAIT_HOURS)
            work = torch.distributed.barrier(group=group, async_op=True)
            while not work.is_completed():
                time.sleep(0.2)
            work.wait()
        except RuntimeError as e:  # gloo: "Connection closed by peer" when the main process failed in its lone stage
            # one line (said by the main process, `compress.cli`), not a traceback from each waiting process
            raise CompressError(f"another process of this run stopped ({str(e).splitlines()[0][:200]})") from None

    return wait


def _run_stages(recipe: Recipe, run_dir: Path, state, until: Optional[str], force: tuple[str, ...],
                wait_long: Callable[[], None], judged: Optional[dict[str, tuple[dict, str]]] = None) -> dict[str, dict]:
    """Run or reuse each planned stage. ``wait_long``: the barrier for a stage that does not train (`_stage_waits`);
    the other processes wait in it while the main process runs the stage alone. ``judged``: stages already found up
    to date (`_judged_up_to_date`, under the lock still held): their outputs are not hashed again."""
    from compress.train import wait_for_everyone

    done: dict[str, dict] = {}
    stages = plan(recipe, until)
    checked = False
    if state.is_main_process:  # under this run's lock: a temporary folder of a dead process is an orphan
        _remove_orphans(run_dir)
    for i, stage in enumerate(stages):
        missing = [n for n in stage.needs if n not in done]
        if missing:
            raise CompressError(f"{recipe.path}: stage {stage.name!r} needs stage {missing[0]!r}, which is not configured")
        folder = run_dir / stage.name
        forced = stage.name in force or "all" in force
        if stage.name in (judged or {}):
            (manifest, fp), why = judged[stage.name], None
        else:
            fp, inputs = _fingerprint(recipe, stage, done)
            manifest, why = (None, "forced") if forced else _reuse(recipe, stage, folder, fp, inputs, done)
        if manifest is not None:
            _say_reused(run_dir, stage.name, fp, state.is_main_process)
            done[stage.name] = manifest
            continue
        if not checked:  # before any work: a model that cannot load stops the run now, not after the teacher trained
            hub.check_recipe(recipe, [s.name for s in stages[i:]])
            for problem in compare_problems(recipe, [s.name for s in stages[i:]]):
                raise CompressError(problem)
            for problem in shape_problems(recipe, [s.name for s in stages[i:]]):
                raise CompressError(problem)
            checked = True
        print(f"[{stage.name}] running -> {folder}{f' ({why})' if why and why != 'not run yet' else ''}")
        if state.is_main_process:  # a checkpoint of another process count would resume on other batches/schedule
            written = _as_written_fingerprint(recipe, stage, inputs)
            _claim_checkpoints(run_dir, stage.name, checkpoint_stamp(fp, state.num_processes),
                               () if written is None else (checkpoint_stamp(written, state.num_processes),))
        wait_for_everyone()
        wait = wait_for_everyone if stage.trains else wait_long
        if not stage.trains and not state.is_main_process:  # nothing data-parallel in it: the main process runs it
            wait()
            wait()
            done[stage.name] = read_json(folder / "manifest.json")
            continue
        tmp = run_dir / f".{stage.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            with Timer() as timer:
                result = stage.function()(recipe, tmp, {n: run_dir / n for n in stage.upstream(done, recipe)},
                                          **({"forced": forced} if stage.takes_forced else {}))
            manifest = stage_manifest(recipe, stage, fp, inputs, tmp, result, wall_s=timer.seconds,
                                      processes=state.num_processes)
            write_json(tmp / "manifest.json", manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            ckpt = run_dir / ".checkpoints" / stage.name
            if state.is_main_process and ckpt.is_dir() and [p.name for p in ckpt.iterdir()] == ["FINGERPRINT"]:
                _release_checkpoints(run_dir, stage.name)  # nothing to resume from: leave no trace
            raise
        wait()
        if state.is_main_process:
            old = run_dir / f".{stage.name}.old-{os.getpid()}"
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
            _release_checkpoints(run_dir, stage.name)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        wait()
        print(f"[{stage.name}] done in {timer.seconds:.0f}s: {_summary(manifest)}")
        done[stage.name] = manifest
    return done


def explain(recipe: Recipe, until: Optional[str] = None, force: tuple[str, ...] = ()) -> list[tuple[str, bool, str]]:
    """What `run_pipeline` would do, without doing it: ``(stage, runs, why)`` per planned stage. A stage runs when
    forced, never run, its outputs were edited, its fingerprint moved (the changed config keys, seed, input files or
    upstream outputs are named), or a stage it reads will run first (its outputs are not known before)."""
    force = _check_force(force, plan(recipe, until))
    run_dir = recipe.run_dir
    done: dict[str, dict] = {}
    runs_first: list[str] = []
    out = []
    for stage in plan(recipe, until):
        upstream = stage.upstream({**done, **dict.fromkeys(runs_first)}, recipe)  # what the stage reads (reads_only)
        after = [u for u in upstream if u in runs_first]
        manifest = None
        if runs_first == after == ["report"] and stage.reads_files is not None and stage.name not in force \
                and "all" not in force and _report_latency_unchanged(recipe, force):
            # the report redoes its tables and keeps its timings (the file this stage reads): judged on it as it is
            report = read_json(run_dir / "report" / "manifest.json")
            fp, inputs = _fingerprint(recipe, stage, {**done, "report": report})
            manifest, why = _reuse(recipe, stage, run_dir / stage.name, fp, inputs, done)
        elif after:
            why = f"after {', '.join(after)} (reads {'its' if len(after) == 1 else 'their'} outputs)"
        elif stage.name in force or "all" in force:
            why = "forced (--force)"
        else:
            fp, inputs = _fingerprint(recipe, stage, done)
            manifest, why = _reuse(recipe, stage, run_dir / stage.name, fp, inputs, done)
            if manifest is None and stage.name == "teacher":
                why += _kept_or_not(run_dir / "teacher", training_key(recipe, "teacher"), why)
        if manifest is not None:
            done[stage.name] = manifest
            out.append((stage.name, False, "up to date"))
        else:
            runs_first.append(stage.name)
            out.append((stage.name, True, why))
    return out


def _report_latency_unchanged(recipe: Recipe, force: tuple[str, ...]) -> bool:
    """Whether a report stage that runs (no stage before it does) would leave its latency.json as it is: keep its
    previous timings (`compress.report.kept_measurement`), or, with ``report.measure`` off, write none where there was
    none."""
    if "report" in force or "all" in force:
        return False
    from compress.report import MEASURED, kept_measurement

    try:
        if not recipe.report.measure:
            return MEASURED not in (read_json(recipe.run_dir / "report" / "manifest.json").get("outputs") or {})
        return kept_measurement(recipe) is not None
    except (OSError, ValueError, AttributeError, CompressError):
        return False


def _what_changed(recipe: Recipe, stage: Stage, old: dict, inputs: dict) -> str:
    """Why a stage's recorded fingerprint differs from this run's: changed config keys (old -> new), seed, input files,
    upstream outputs; else the code (stage revision, compress version)."""
    config = json.loads(json.dumps(_result_config(_config(recipe, stage))))
    reasons = _changes(_result_config(old.get("config", {})), config)
    if old.get("seed") != recipe.seed:
        reasons.append(f"seed: {old.get('seed')} -> {recipe.seed}")
    before = old.get("inputs") if isinstance(old.get("inputs"), dict) else {}  # a hand-edited manifest
    moved = [k for k in sorted(set(before) | set(inputs)) if before.get(k) != inputs.get(k)]
    read = {k.split("/", 1)[0] for k in inputs}  # a stage no longer read (`Stage.reads_only`) did not change
    stages = sorted({k.split("/", 1)[0] for k in moved if k.split("/", 1)[0] in stage_names()} & read)
    files = [k for k in moved if k.split("/", 1)[0] not in stage_names()]
    reasons += [f"{name} outputs changed" for name in stages] + _input_changes(before, inputs, files)
    default, recorded = _taken_by_default(recipe, stage.name), old.get("source")
    recorded = recorded.get("model") if isinstance(recorded, dict) else recorded  # quantize's: {"model": ...}
    if default is not None and isinstance(recorded, str) and recorded != default:
        reasons.append(f"default source (the first student): {recorded} -> {default}")
    if stage.name == "quantize" and isinstance(old.get("metrics"), dict) and "test" not in old["metrics"] \
            and _test_split_word(recipe):
        reasons.append("the labelled test split is scored now")
    if stage.name == "report":  # the model it names as the bundle's (`_report_variant`)
        reasons += _pick_changes(recipe, old)
    if not reasons:  # an upstream file no longer read (report.measure off: the bundle reads no report/latency.json)
        reasons += [f"input {k} no longer read" for k in moved
                    if k.split("/", 1)[0] in stage_names() and k not in inputs]
    if not reasons:
        reasons.append("stage code revision or compress version changed")
    shown = reasons[:4] + ([f"+{len(reasons) - 4} more"] if len(reasons) > 4 else [])
    return "changed: " + "; ".join(shown)


def _pick_changes(recipe: Recipe, old: dict) -> list[str]:
    """The bundle settings that choose the model a report names, as recorded by the last report stage and now; a
    report recorded before they were (2026-12-07): the settings named, not their old values."""
    from compress.report import pick_settings

    now = pick_settings(recipe)
    if "pick" not in old:
        return [] if _report_variant(recipe) is None else ["bundle.pick, max_drop or threads (which that report did "
                                                           "not record), or the stage's code"]
    before = old["pick"] if isinstance(old["pick"], dict) else {}
    if (old["pick"] is None) != (now is None):
        return [f"bundle section: {'added' if now is not None else 'removed'} (the report names the bundle's model)"]
    return [f"bundle.{k}: {_short(before.get(k))} -> {_short(v)}" for k, v in (now or {}).items() if before.get(k) != v]


def _input_changes(before: dict, now: dict, files: list[str]) -> list[str]:
    """Why input files differ: edited in place, read from another path with the same content (a data folder moved or
    copied: inputs are keyed by path), no longer read, or new; the edited and new ones first (the reason shows four:
    an edited tokenizer file was one of "+4 more" after three files read elsewhere with the same content)."""
    gone = {before[k]: k for k in files if k not in now}
    edited, moved, said = [], [], set()
    for k in files:
        if k in before and k in now:
            edited.append(f"input {k} changed")
        elif k in now and now[k] in gone:  # same bytes, new path
            moved.append(f"input {gone[now[k]]} now read from {k} (same content)")
            said.add(gone[now[k]])
        elif k in now:
            edited.append(f"new input {k}")
    return edited + moved + [f"input {k} no longer read" for k in files if k not in now and k not in said]


def _changes(old, new, key: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs: ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            sub = f"{key}.{k}" if key else str(k)
            if k not in new:
                out.append(f"{sub}: {_short(old[k])} -> (default)")
            elif k not in old:
                out.append(f"{sub}: (default) -> {_short(new[k])}")
            else:
                out += _changes(old[k], new[k], sub)
        return out
    names = [[x.get("name") if isinstance(x, dict) else None for x in v] for v in (old, new)] \
        if isinstance(old, list) and isinstance(new, list) else None
    if names and all(isinstance(n, str) for n in names[0] + names[1]) and names[0] != names[1]:
        # a list of named sections (students) that gained, lost or reordered some: said by name (a student added
        # was "students: [{"name": "s1", ... -> [{"name": "s1", ...", the two lists cut to the same 40 characters)
        out = [f"{key}: {name!r} added" for name in names[1] if name not in names[0]]
        out += [f"{key}: {name!r} removed" for name in names[0] if name not in names[1]]
        for i, name in enumerate(names[1]):
            if name in names[0]:
                out += _changes(old[names[0].index(name)], new[i], f"{key}.{i}")
        return out or [f"{key}: order {', '.join(names[0])} -> {', '.join(names[1])}"]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in _changes(a, b, f"{key}.{i}")]
    return [] if old == new else [f"{key}: {_short(old)} -> {_short(new)}"]


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_force(force, stages: list[Stage]) -> tuple[str, ...]:
    """The stage names ``force`` gives (one name, or several), each checked against ``stages``."""
    force = (force,) if isinstance(force, str) else tuple(force)  # force="teacher" was the stages t, e, a...
    unknown = [f for f in force if f not in stage_names() and f != "all"]
    if unknown:
        raise CompressError(f"--force {unknown[0]}: unknown stage (stages: {', '.join(stage_names())})")
    names = [s.name for s in stages]
    absent = [f for f in force if f not in names and f != "all"]
    if absent:  # not configured, or after --stage: it would silently not be redone
        raise CompressError(f"--force {absent[0]}: not a stage of this run ({', '.join(names)})")
    return force


def _remove_orphans(run_dir: Path) -> None:
    """Delete the temporary folders of stages left by killed runs (their process is gone; never trusted anyway), and
    their scratch folders in the system's temporary folder."""
    remove_dead_scratch()
    remove_dead(run_dir, ".*", r"\..+\.(?:tmp|old)-(\d+)")


CHECKPOINT_REVISION = 4
"""Raised when what a resumable checkpoint holds changes for the same stage config (2: distillation matches of
weight 0 lost their projection, so a distiller checkpoint of an earlier version no longer loads; 3: fractional
epochs count one step less where float noise rounded them up, so a resumed schedule would differ; 4: pruning ratios
count the units of the model pruned, not those of its unpruned ancestor, so a pruned source's steps cut otherwise):
an interrupted stage's checkpoints of an earlier revision are discarded, not resumed from. Finished stages are not
redone for it."""


def checkpoint_stamp(fp: str, processes: int) -> str:
    """What a stage's checkpoint folder is stamped with: they resume only a run of the same fingerprint, process
    count and `CHECKPOINT_REVISION`."""
    return f"{fp} processes={processes} checkpoints={CHECKPOINT_REVISION}"


def _as_written_fingerprint(recipe: Recipe, stage: Stage, inputs: dict) -> Optional[str]:
    """The stage's fingerprint as computed before `_as_read` (from the recipe as written), where it differs."""
    if _as_read(recipe) is recipe:
        return None
    return _stage_fingerprint(recipe, stage, inputs, _result_config(_config(recipe, stage)))


def _claim_checkpoints(run_dir: Path, stage: str, fp: str, also: tuple[str, ...] = ()) -> None:
    """Resumable checkpoints (``<run>/.checkpoints/<stage>``, written when a train section sets checkpoint_every)
    belong to one stage fingerprint: those of another config or other inputs are discarded before the stage runs,
    so a changed recipe never resumes from an earlier one's steps, optimizer and schedule. ``also``: stamps of the
    same stage as earlier code wrote them (`_as_written_fingerprint`): resumed, stamped anew."""
    folder = run_dir / ".checkpoints" / stage
    stamp = folder / "FINGERPRINT"
    if folder.exists() and not (stamp.is_file() and stamp.read_text().strip() in (fp, *also)):
        if any(p.name != "FINGERPRINT" for p in folder.iterdir()):  # a killed stage's stamp alone: nothing to say
            print(f"[{stage}] discarding the checkpoints of an earlier config, input, process count or compress "
                  f"version ({folder})")
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fp + "\n")


def _release_checkpoints(run_dir: Path, stage: str, only: Optional[str] = None) -> None:
    """The stage is done: its checkpoints can never be resumed from again (its output is reused instead). ``only``:
    the fingerprint of a reused stage; checkpoints of that fingerprint (an interrupted ``--force`` run's: model and
    optimizer state, gigabytes for bert-large) are removed, not those of another config a user may come back to."""
    folder = run_dir / ".checkpoints" / stage
    if only is not None:
        stamp = folder / "FINGERPRINT"
        if not stamp.is_file() or stamp.read_text().split(" ")[0].strip() != only:
            return
    shutil.rmtree(folder, ignore_errors=True)
    try:
        (run_dir / ".checkpoints").rmdir()  # only when empty
    except OSError:
        pass


def _summary(manifest: dict) -> str:
    metrics = manifest.get("metrics", {})
    dev = metrics.get("dev", metrics)
    return ", ".join(f"{k}={v:.4f}" for k, v in dev.items() if isinstance(v, float)) or "ok"
