"""Stage `distill`: turn the fine-tuned teacher into each student of the recipe's ``students:`` list.

For every student: build it (`students.build_student`, model surgery only), tokenize the data once per model (the
teacher's columns carry the ``t_`` prefix when its tokenizer differs), cache the teacher's logits ahead of training
when only logit KD needs the teacher, and train with `compress.train.fit` on the `KDObjective` (TinyBERT's two steps
when asked: intermediate matches first, then the prediction layer). Checkpoints go to
``<run>/.checkpoints/distill/<student>/``, so rerunning the same command after a crash resumes.

Writes ``<student>/model/`` (safetensors + config + tokenizer) and ``<student>/metrics.json`` per student, and
``metrics.json`` for all of them (dev metrics, retention of the teacher's dev metric, alignment counts, timings).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compress.config import AugmentConfig, Recipe, StudentConfig, TrainConfig, transfer_folder
from compress.data import Collator, TaskData, load_task, rows_digest, tokenize
from compress.distill.align import aligned_rows, id_map, same_tokenizer
from compress.distill.augment import augment_rows
from compress.distill.objective import AlignStats, Distiller, KDObjective, resolve_matches
from compress.errors import CompressError
from compress.tasks import retention, round_down
from compress.evaluate import evaluate, predict_shared
from compress.manifest import fingerprint, hash_tree, part_intact, published_manifest, read_json, scores, write_json
from compress.metrics import warn_undefined
from compress.bundle_predict import first_line, sha256_file
from compress.modeling import count_params, freeze_head, load_trained, save
from compress.train import (FitResult, best_scores, fit, main_process_writes, process_device, resolve_precision,
                            set_seed)
from students import build_student
from students.build import Student

log = logging.getLogger(__name__)


class KDCollator:
    """The task collator plus the cached teacher logits of each row (when the dataset carries them)."""

    def __init__(self, base: Collator):
        self.base = base

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.base(rows)
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.tensor([r["teacher_logits"] for r in rows], dtype=torch.float32)
        return batch


@dataclass
class DistillResult:
    model: torch.nn.Module
    tokenizer: object
    fits: dict[str, FitResult]
    align: AlignStats
    matches: list[str]
    same_tokenizer: bool
    timing: dict = field(default_factory=dict)
    augment: Optional[dict] = None
    """The transfer set's summary (`augment_rows`) when the student trained on augmented copies."""
    holdout: Optional[dict] = None
    """The held-out scores of the weights kept (the last step's `fit` scored them); None: none selected."""


def augment_key(augment: AugmentConfig, student: str) -> str:
    """``logit_cache``'s key for the transfer set of one augment setting (``key + ":rows"``: its rows, summary); with
    ``embeddings: student`` one per student (its embedding table picks the neighbours: every student trained on the
    first one's copies)."""
    return f"train+augment:{dataclasses.astuple(augment)}" + (f":{student}" if augment.embeddings == "student" else "")


def _steps(spec: StudentConfig, has_matches: bool) -> list[tuple[str, bool, bool]]:
    """(name, logits, intermediate) per training step."""
    if spec.distill.two_step:
        return [("intermediate", False, True), ("prediction", True, False)]
    return [("joint", True, has_matches)]


def distill(teacher: torch.nn.Module, teacher_tokenizer, student: Student, spec: StudentConfig, data: TaskData, *,
            max_length: int, seed: int, group_by_length: bool = True, checkpoint_dir: Optional[Path] = None,
            where: str = "students[0]", logit_cache: Optional[dict] = None, teacher_sha: Optional[str] = None,
            previous: Optional[Path] = None) -> DistillResult:
    """Train ``student.model`` from ``teacher`` as ``spec`` says; the best held-out state is kept.

    ``logit_cache``: a dict shared by the students of one stage (same teacher, training rows and max_length): the
    teacher's logits on the training rows (and on each transfer set) are computed by the first student that needs
    them and reused by the rest that label them alike (`labelling`: keys `logits_key`).

    ``spec.distill.augment``: the student trains on the training rows plus augmented copies (`augment_rows`) that
    only the KD term sees; the copies are made once per augment setting and shared through ``logit_cache`` too.
    ``teacher_sha`` (`teacher_digest`) names the teacher's logits on disk: with it, the logits are written to the
    checkpoint folder as soon as they are computed (a resumed run does not label again), and ``previous`` (a previous
    distill run's folder) serves the logits of a transfer set that run saved (`save_transfer_set`) when the rows,
    max_length, teacher and labelling are the same."""
    dcfg = spec.distill
    s_tok = student.tokenizer
    how = labelling(spec.train)
    same = same_tokenizer(teacher_tokenizer, s_tok)
    prefix = "" if same else "t_"
    regression = data.spec.is_regression
    timing = {"teacher_cache_s": 0.0, "train_s": 0.0}
    rows, cache_key, aug_summary = data.train, "train", None
    if dcfg.augment is not None:
        t0 = time.perf_counter()
        cache_key = augment_key(dcfg.augment, spec.name)
        if logit_cache is not None and cache_key + ":rows" in logit_cache:
            rows, aug_summary = logit_cache[cache_key + ":rows"]
        else:
            owner, owner_tok = (teacher, teacher_tokenizer) if dcfg.augment.embeddings == "teacher" else (
                student.model, s_tok)
            rows, aug_summary = augment_rows(data.train, owner_tok, owner.get_input_embeddings().weight,
                                             dcfg.augment)
            if logit_cache is not None:
                logit_cache[cache_key + ":rows"] = (rows, aug_summary)
        if previous is not None and teacher_sha and logit_cache is not None \
                and logits_key(cache_key, how) not in logit_cache:
            saved = load_transfer_set(previous / transfer_folder(dcfg.augment, spec.name), max_length, teacher_sha,
                                      rows, how)
            if saved is not None:
                logit_cache[logits_key(cache_key, how)] = saved[1]
                logit_cache.setdefault(logits_key("train", how), saved[1][:len(data.train)])  # the originals first
                timing["teacher_cache_reused"] = "previous distill run"
                log.info("%s: the teacher's logits on the %d transfer rows reused from the previous distill run",
                         spec.name, len(rows))
        timing["augment_s"] = time.perf_counter() - t0
        log.info("%s: %d training rows + %d augmented copies", spec.name, aug_summary["rows"], aug_summary["copies"])
    train = tokenize(rows, s_tok, max_length)
    if not same:
        train = tokenize(train, teacher_tokenizer, max_length, prefix=prefix)
    holdout = tokenize(data.holdout, s_tok, max_length) if len(data.holdout) else None
    collator = Collator({"": s_tok} if same else {"": s_tok, prefix: teacher_tokenizer}, regression)
    eval_collator = Collator({"": s_tok}, regression)
    matches = resolve_matches(dcfg, teacher.config, student.model.config, where=f"{where}.distill")
    table = None if same else id_map(teacher_tokenizer, s_tok)
    why = ("sentence pairs, joined differently: MPNet with </s></s>, BERT with one [SEP]"
           if data.spec.text_pair is not None else "different special tokens or splits")
    probe = train.select(range(min(PROBE_ROWS, len(train)))) if table is not None and matches else None
    if probe is not None and len(probe) and not bool(_aligned(collator, probe, prefix, table).any()):
        # said before the training time is spent (a pair task of two families: certain), and again after it
        log.warning("%s: none of the first %d training rows' tokenizations align between teacher and student (%s): "
                    "the position-wise matches (%s) will teach nothing, only the logit losses train it. Leave the "
                    "matches out, or distill from a teacher of the student's tokenizer family", spec.name,
                    len(probe), why, ", ".join(m.key for m in matches))
    teacher.eval().requires_grad_(False).to(process_device())  # where fit will put the student
    align = AlignStats()
    fits: dict[str, FitResult] = {}
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    for name, use_logits, use_matches in _steps(spec, bool(matches)):
        cfg = spec.train
        if name == "intermediate" and dcfg.intermediate_max_steps is not None:  # exactly that many: as many epochs
            n = dcfg.intermediate_max_steps  # as steps (one has a step at least), never fewer than the epochs gave
            cfg = dataclasses.replace(cfg, max_steps=n, epochs=float(n))
        step_matches = matches if use_matches else []
        # intermediate matches alone: the student keeps its trained head (a new one is refused: config,
        # students.narrow), and the layers no match reaches get no gradient (DDP told to expect that)
        alone = use_logits and dcfg.kd_weight == 0 and dcfg.hard_label_weight == 0
        if alone:
            log.info("%s: no logit loss: %s kept as they are", spec.name, ", ".join(freeze_head(student.model)))
        distiller = Distiller(student.model, step_matches, teacher.config.hidden_size)
        done_marker = ckdir / f"{name}-done.safetensors" if ckdir is not None else None
        if done_marker is not None and done_marker.is_file():  # resumed after this step had finished
            distiller.load_state_dict(load_file(done_marker))
            with safe_open(done_marker, "pt") as f:  # the step's alignment counts (markers before 2026-12-05: none)
                meta = f.metadata() or {}
            align.restore(json.loads(meta.get("align", "null")))
            if meta.get("fit"):  # its record for metrics.json (markers before 2026-12-06: none, the step left out)
                fits[name] = FitResult(**json.loads(meta["fit"]))
                timing["train_s"] += fits[name].wall_s
            log.info("%s: step %s already done (%s)", spec.name, name, done_marker)
            continue
        if (use_logits and not use_matches and dcfg.kd_weight > 0 and dcfg.cache_teacher_logits
                and "teacher_logits" not in train.column_names):
            t0 = time.perf_counter()

            def label(ds, what: str) -> np.ndarray:
                timing["teacher_logits_precision"] = how["precision"]
                return predict_shared(teacher, ds, collator, batch_size=how["batch_size"], prefix=prefix,
                                      desc=f"teacher logits ({len(ds)} {what})", precision=how["precision"])

            known = (logit_cache or {}).get(logits_key("train", how)) if cache_key != "train" else None
            resume = ckdir / "teacher_logits" if ckdir is not None and teacher_sha else None
            cached = logit_cache is not None and logits_key(cache_key, how) in logit_cache
            saved = (saved_teacher_logits(resume, rows, max_length, teacher_sha, how) if resume and not cached
                     else None)
            if cached:
                logits = logit_cache[logits_key(cache_key, how)]
                timing.setdefault("teacher_cache_reused", True)
            elif saved is not None:  # labelled before an interruption
                logits, timing["teacher_cache_reused"] = saved, "checkpoint"
            elif known is not None and len(known) == len(data.train):
                # augment_rows puts the original rows first: the teacher labels only the copies (none made: nothing;
                # an empty slice was an IndexError that ended the stage)
                copies = ([label(train.select(range(len(known), len(train))), "copies")] if len(train) > len(known)
                          else [])
                logits = np.concatenate([known, *copies])
                timing["teacher_cache_reused"] = "original rows"
            else:
                logits = label(train, "rows")
            if logit_cache is not None:
                logit_cache[logits_key(cache_key, how)] = logits
                if cache_key != "train":  # the original rows come first: their logits serve plain students too
                    logit_cache.setdefault(logits_key("train", how), logits[:len(data.train)])
            if resume is not None and not cached and saved is None:  # a crash in training costs no new labelling
                main_process_writes(lambda: (resume.mkdir(parents=True, exist_ok=True),
                                             save_teacher_logits(resume, logits, rows, max_length, teacher_sha, how)))
            train = train.add_column("teacher_logits", logits.tolist())
            timing["teacher_cache_s"] += time.perf_counter() - t0
        objective = KDObjective(teacher, dcfg, step_matches, regression, prefix, table, logits=use_logits,
                                intermediate=use_matches, stats=align)
        evaluate_fn = None
        if holdout is not None and use_logits:
            evaluate_fn = lambda d: evaluate(d.student, holdout, eval_collator, data.spec)  # noqa: E731
        t0 = time.perf_counter()
        fits[name] = fit(distiller, train, KDCollator(collator), cfg, seed=seed, objective=objective,
                         evaluate=evaluate_fn, group_by_length=group_by_length,
                         checkpoint_dir=ckdir / name if ckdir is not None else None,
                         desc=f"distill {spec.name}" + (f" ({name})" if name != "joint" else ""),
                         unused_parameters=alone or not use_logits)
        timing["train_s"] += time.perf_counter() - t0
        if done_marker is not None and len(_steps(spec, bool(matches))) > 1:
            counts = json.dumps(align.summed().as_dict())  # every process: a collective call
            record = json.dumps(dataclasses.asdict(fits[name]))  # a resumed stage reports the step as run

            def write_marker(marker=done_marker):
                marker.parent.mkdir(parents=True, exist_ok=True)
                tmp = marker.with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in distiller.state_dict().items()}, tmp,
                          metadata={"align": counts, "fit": record})
                tmp.rename(marker)

            main_process_writes(write_marker)
    if ckdir is not None:  # shared by every process: removed by the main one, which wrote the step markers in it
        main_process_writes(lambda: shutil.rmtree(ckdir, ignore_errors=True))
    align = align.summed()
    if align.rows and align.misaligned_rows == align.rows:
        log.warning("%s: no training row's tokenizations align between teacher and student (%d rows; %s), so the "
                    "position-wise matches (%s) taught nothing: only the logit losses trained it. Leave the matches "
                    "out, or distill from a teacher of the student's tokenizer family", spec.name, align.rows, why,
                    ", ".join(m.key for m in matches))
    elif align.misaligned_batches:
        log.warning("%s: %d of %d batches had rows whose tokenizations do not align (%d of %d rows); "
                    "position-wise losses skipped those rows", spec.name, align.misaligned_batches, align.batches,
                    align.misaligned_rows, align.rows)
    final = fits.get(_steps(spec, bool(matches))[-1][0])  # not run here when resumed after it had finished
    return DistillResult(student.model, s_tok, fits, align, [m.key for m in matches], same,
                         {k: round(v, 2) if isinstance(v, float) else v for k, v in timing.items()}, aug_summary,
                         best_scores(final) if final is not None else None)


TEACHER_LOGITS = "teacher_logits.npy"


def teacher_digest(teacher_dir: Path) -> str:
    """One sha256 over the teacher's saved files (``teacher_dir/model``: weights, config, tokenizer): which teacher
    made some logits. Taken from the teacher stage's manifest, whose outputs the pipeline has hashed already; a
    folder without one is hashed here (the same digest either way)."""
    teacher_dir = Path(teacher_dir)
    manifest = teacher_dir / "manifest.json"
    if manifest.is_file():
        model = {k[len("model/"):]: v for k, v in read_json(manifest).get("outputs", {}).items()
                 if k.startswith("model/")}
        if model:
            return fingerprint(model)
    return fingerprint(hash_tree(teacher_dir / "model"))


def student_problems(recipe: Recipe, built: Optional[dict] = None) -> list[str]:
    """The students this stage would refuse to build (a checkpoint of another width, a tokenizer larger than the
    checkpoint's embedding table, a random student's vocab_size not its tokenizer's...), in the stage's words, found
    before any stage runs from the recipe's shapes (`students.build.teacher_shape`): not once the teacher trained.
    ``built``: filled with the shapes made ("teacher" and each student's name), for the prune stage's check."""
    from students.build import student_shape, teacher_shape

    shape = teacher_shape(recipe)
    if shape is None:
        return []
    built = {} if built is None else built
    built["teacher"] = shape[0]
    out = []
    for i, spec in enumerate(recipe.students or []):
        try:
            built[spec.name] = student_shape(spec, *shape).model
        except CompressError as e:
            out.append(f"{recipe.path}: students[{i}] ({spec.name}): {e}")
    return out


def labelling(train: TrainConfig) -> dict:
    """How the teacher labels a student's training rows: at the student's precision (bf16 labels 2.1x faster on this
    CPU), in batches of at least 64. Logits labelled otherwise differ in their last bits, so they are not served to
    that student: a rerun trains on what a fresh run would."""
    return {"precision": resolve_precision(train.precision), "batch_size": max(64, train.batch_size)}


def logits_key(key: str, how: dict) -> str:
    """``logit_cache``'s key of the teacher's logits on rows ``key`` ("train", or an `augment_key`) labelled ``how``."""
    return f"{key}@{how['precision']}/{how['batch_size']}"


def save_teacher_logits(out: Path, logits: np.ndarray, rows, max_length: int, teacher: str, how: dict) -> None:
    """The teacher's logits on the training rows (row order), with what they were computed on: the rows' digest,
    ``max_length``, the teacher's digest (`teacher_digest`) and how they were labelled (`labelling`)."""
    np.save(out / TEACHER_LOGITS, np.asarray(logits, dtype=np.float32))
    write_json(out / "teacher_logits.json", {"rows": len(rows), "rows_sha256": rows_digest(rows),
                                            "max_length": max_length, "teacher_sha256": teacher, "labelling": how,
                                            "file": TEACHER_LOGITS, "sha256": sha256_file(out / TEACHER_LOGITS)})


def saved_teacher_logits(folder: Path, rows, max_length: int, teacher: str,
                         how: Optional[dict] = None) -> Optional[np.ndarray]:
    """The logits `save_teacher_logits` wrote in ``folder``, if the teacher with digest ``teacher`` computed them on
    exactly ``rows`` at ``max_length`` (labelled ``how``, when given: a file of before 2026-12-06 says not how, and
    is taken as it is); else None, also for files that do not read back (a damaged one is computed again, not a
    traceback on every rerun)."""
    meta_path, path = folder / "teacher_logits.json", folder / TEACHER_LOGITS
    if not (meta_path.is_file() and path.is_file()):
        return None
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as e:
        meta = e
    if not isinstance(meta, dict):
        why = first_line(meta) if isinstance(meta, Exception) else f"a JSON {type(meta).__name__}, not an object"
        log.warning("%s: unreadable (%s): the teacher's logits are computed again", meta_path, why)
        return None
    if meta.get("rows") != len(rows) or meta.get("max_length") != max_length \
            or meta.get("teacher_sha256") != teacher or meta.get("rows_sha256") != rows_digest(rows):
        return None
    if how is not None and meta.get("labelling", how) != how:
        return None
    if "sha256" in meta and meta["sha256"] != sha256_file(path):  # edited since (a file of before: taken as it is)
        log.warning("%s: edited since it was written (sha256 differs): the teacher's logits are computed again", path)
        return None
    try:
        logits = np.load(path)
    except (OSError, ValueError) as e:  # a file of before (no sha256 in its record) cut short
        log.warning("%s: unreadable (%s): the teacher's logits are computed again", path, first_line(e))
        return None
    return logits if logits.ndim == 2 and logits.shape[0] == len(rows) else None


PROBE_ROWS = 256
"""Training rows whose alignment is checked before a cross-tokenizer student trains (`_aligned`)."""


def _aligned(collator: Collator, rows: Dataset, prefix: str, table: torch.Tensor) -> torch.Tensor:
    """Which of ``rows`` (tokenized by the student and, under ``prefix``, by the teacher) align position by
    position, as the position-wise losses see them in training."""
    batch = collator([rows[i] for i in range(len(rows))])
    return aligned_rows(batch["input_ids"], batch["attention_mask"], batch[prefix + "input_ids"],
                        batch[prefix + "attention_mask"], table)


def _save_finished(out: Path, name: str, transfer: Optional[str], n_params: int, root: Path,
                   train_logits: Optional[tuple[np.ndarray, dict]], train_rows, max_length: int, teacher: str) -> None:
    """A copy of one finished student's output (model, metrics, its transfer set) beside the stage's checkpoints
    (``root/<name>.done``), written aside and renamed, and the teacher's logits on the training rows when a student
    computed them (``root/teacher-logits``; ``train_logits``: with how they were labelled); the pipeline drops them
    with the other checkpoints once the stage is done, or when the config or inputs change (the folder carries the
    stage's fingerprint)."""
    if train_logits is not None and not (root / "teacher-logits" / "teacher_logits.json").is_file():
        (root / "teacher-logits").mkdir(parents=True, exist_ok=True)
        save_teacher_logits(root / "teacher-logits", train_logits[0], train_rows, max_length, teacher,
                            train_logits[1])
    folder = root / f"{name}.done"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / name, tmp / "student")
    if transfer:
        shutil.copytree(out / transfer, tmp / "transfer")
    write_json(tmp / "done.json", {"params": n_params, "transfer_set": transfer})
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _student_keys(recipe: Recipe, teacher_dir: Path, training: bool = False) -> dict[str, str]:
    """Each student's `compress.pipeline.student_key` (``training``: of its weights alone; none without the teacher
    stage's manifest: a teacher folder made by hand)."""
    from compress.pipeline import student_key

    try:
        teacher = read_json(Path(teacher_dir) / "manifest.json")
    except (OSError, ValueError):
        return {}
    if not isinstance(teacher, dict) or not isinstance(teacher.get("outputs"), dict):
        return {}
    return {spec.name: student_key(recipe, i, teacher, training) for i, spec in enumerate(recipe.students)}


def _reuse_unchanged(previous: Path, manifest: dict, out: Path, name: str, key: Optional[str],
                     training_key: Optional[str] = None) -> Optional[tuple[dict, int, bool]]:
    """Put student ``name`` of the previous published distill folder (``previous``, its ``manifest``) into ``out``
    when its key there (``student_keys``) is ``key``, or its ``training_keys`` one ``training_key`` (then it is to be
    scored again: its dev rows changed), and its files (and its transfer set's) are as that manifest hashed them; (its
    summary, its parameter count, whether to score it again), or None: a recipe that changed one student retrained
    every one."""
    same = key is not None and (manifest.get("student_keys") or {}).get(name) == key
    if not same and (training_key is None or (manifest.get("training_keys") or {}).get(name) != training_key):
        return None
    outputs, n_params = manifest.get("outputs") or {}, (manifest.get("params") or {}).get(name)
    if not isinstance(n_params, int) or f"{name}/metrics.json" not in outputs \
            or not part_intact(previous, manifest, name):  # as the stage wrote it (an edit since: trained again)
        return None
    transfer = read_json(previous / name / "metrics.json").get("transfer_set")
    if transfer and not part_intact(previous, manifest, transfer):
        return None
    log.info("%s: reused from %s (its %skey is unchanged)", name, previous, "" if same else "training ")
    return (_put_student(previous / name, previous / transfer if transfer else None, out, name, transfer), n_params,
            not same)


def _put_student(student: Path, transfer: Optional[Path], out: Path, name: str, transfer_set: Optional[str]) -> dict:
    """Copy a finished student's folder into ``out/name`` and its transfer set (when not there yet) into
    ``out/transfer_set``; its metrics.json (the stage's summary of it)."""
    shutil.copytree(student, out / name)
    if transfer_set and not (out / transfer_set).is_dir():
        shutil.copytree(transfer, out / transfer_set)
    return read_json(out / name / "metrics.json")


def _restore_finished(folder: Path, out: Path, name: str) -> Optional[tuple[dict, int, bool]]:
    """Put a student saved by `_save_finished` back into ``out``; (its summary, its parameter count, False: scored on
    this run's rows), or None."""
    if not (folder / "done.json").is_file() or not (folder / "student" / "metrics.json").is_file():
        return None
    done = read_json(folder / "done.json")
    log.info("%s: restored from %s", name, folder)
    summary = _put_student(folder / "student", folder / "transfer", out, name, done.get("transfer_set"))
    return summary, int(done["params"]), False


def save_transfer_set(folder: Path, rows: Dataset, logits: np.ndarray, max_length: int, teacher: str,
                      how: dict) -> None:
    """A transfer set (`augment_rows`: the training rows, then their copies) and the teacher's logits on it: the
    prune stage's recovery can train on it (``prune.recover.data: transfer``), a distill rerun reuses the logits."""
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(str(folder / "rows.parquet"))
    save_teacher_logits(folder, logits, rows, max_length, teacher, how)


def load_transfer_set(folder: Path, max_length: int, teacher: str, rows: Optional[Dataset] = None,
                      how: Optional[dict] = None) -> Optional[tuple[Dataset, np.ndarray]]:
    """The rows and logits `save_transfer_set` wrote in ``folder``, if computed by the teacher with digest
    ``teacher`` at ``max_length`` (on exactly ``rows``, and labelled ``how``, when given); else None."""
    if not (folder / "rows.parquet").is_file():
        return None
    if rows is None:
        rows = Dataset.from_parquet(str(folder / "rows.parquet"))
    logits = saved_teacher_logits(folder, rows, max_length, teacher, how)
    return None if logits is None else (rows, logits)


def _teacher_dev(teacher_dir: Path, teacher, tokenizer, data: TaskData, max_length: int) -> dict:
    path = teacher_dir / "metrics.json"
    if path.is_file():
        dev = read_json(path).get("metrics", {}).get("dev")
        if dev:
            return scores(dev)
    collator = Collator({"": tokenizer}, data.spec.is_regression)
    return evaluate(teacher, tokenize(data.dev, tokenizer, max_length), collator, data.spec)


def _scores(model, tokenizer, data: TaskData, max_length: int, teacher_dev: dict, holdout: Optional[dict]) -> dict:
    """A trained student's metrics: dev, held-out (``holdout``: as the last step's fit scored the weights it kept,
    with the same rows and collator), MRPC's labelled test, and its retention of the teacher's dev score."""
    collator = Collator({"": tokenizer}, data.spec.is_regression)
    metrics = {"dev": evaluate(model, tokenize(data.dev, tokenizer, max_length), collator, data.spec)}
    if len(data.holdout):
        metrics["holdout"] = holdout or evaluate(model, tokenize(data.holdout, tokenizer, max_length), collator,
                                                 data.spec)
    if data.test is not None:
        metrics["test"] = evaluate(model, tokenize(data.test, tokenizer, max_length), collator, data.spec)
    main_metric = data.spec.metrics[0]
    share = retention(metrics["dev"][main_metric], teacher_dev.get(main_metric))
    metrics["retention"] = None if share is None else round_down(share, 4)  # 0.98996 is no 0.99
    return metrics


def run(recipe: Recipe, out: Path, inputs: dict[str, Path], forced: bool = False) -> dict:
    """``forced`` (--force distill): every student trained again, none copied from the previous distill run."""
    names = [s.name for s in recipe.students]  # non-empty and distinct (the recipe's validation)
    teacher_dir = Path(inputs["teacher"])
    teacher, t_tok = load_trained(teacher_dir / "model")
    data = load_task(recipe.task, seed=recipe.seed)  # the split every stage uses (the teacher's too)
    ml = recipe.task.max_length
    teacher_dev = _teacher_dev(teacher_dir, teacher, t_tok, data, ml)
    main_metric = data.spec.metrics[0]
    summary, params = {}, {}
    logit_cache: dict = {}  # the teacher's logits on the training rows, computed once for the students labelling alike
    t_digest = teacher_digest(teacher_dir)
    hows = {logits_key("train", labelling(s.train)): labelling(s.train) for s in recipe.students}
    previous, finished_root = None, recipe.run_dir / ".checkpoints" / "distill"
    for key, how in hows.items():
        previous = saved_teacher_logits(recipe.run_dir / "distill", data.train, ml, t_digest, how)
        if previous is not None:  # this stage reruns (a student changed), the teacher and its rows did not
            logit_cache[key] = previous
            log.info("the teacher's logits on %d training rows reused from the previous distill run", len(previous))
            break
    for key, how in hows.items():
        interrupted = saved_teacher_logits(finished_root / "teacher-logits", data.train, ml, t_digest, how)
        if interrupted is not None:  # an interrupted run of this stage had computed them
            logit_cache.setdefault(key, interrupted)
            break

    def train_logits() -> Optional[tuple[np.ndarray, dict]]:
        """The teacher's logits on the training rows and how they were labelled (the first labelling of the recipe's
        students that has them)."""
        return next(((logit_cache[k], how) for k, how in hows.items() if k in logit_cache), None)

    keys, training_keys = _student_keys(recipe, teacher_dir), _student_keys(recipe, teacher_dir, training=True)
    published = published_manifest(recipe.run_dir / "distill") if not forced else {}
    for i, spec in enumerate(recipe.students):
        where = f"students[{i}]"
        restored = _restore_finished(finished_root / f"{spec.name}.done", out, spec.name)
        why = "finished before the interruption"
        if restored is None and not forced:
            restored = _reuse_unchanged(recipe.run_dir / "distill", published, out, spec.name, keys.get(spec.name),
                                        training_keys.get(spec.name))
            why = "unchanged since the previous distill run"
        if restored is not None:  # finished before a crash or kill -9 of this stage, or before: not trained again
            summary[spec.name], params[spec.name], rescore = restored
            if rescore:  # trained alike, its dev rows (or the teacher's scores on them) changed
                model, tokenizer = load_trained(out / spec.name / "model")
                summary[spec.name]["metrics"] = _scores(model.to(process_device()), tokenizer, data, ml, teacher_dev,
                                                        summary[spec.name]["metrics"].get("holdout"))
                write_json(out / spec.name / "metrics.json", summary[spec.name])
                why = ("trained as in the previous distill run (only what it is scored on changed): its model is kept "
                       "and scored again (--force distill trains it again)")
            transfer, how = summary[spec.name].get("transfer_set"), labelling(spec.train)
            rows_key = augment_key(spec.distill.augment, spec.name) if transfer else None
            key = logits_key(rows_key, how) if rows_key else None
            saved = load_transfer_set(out / transfer, ml, t_digest, how=how) if key and key not in logit_cache else None
            if saved is not None:  # a later student of the same augment setting trains on it, not relabelled
                logit_cache[rows_key + ":rows"] = (saved[0], summary[spec.name]["augment"])
                logit_cache[key] = saved[1]
                logit_cache.setdefault(logits_key("train", how), saved[1][:len(data.train)])  # the originals first
            print(f"[distill] {spec.name}: {why}{'' if rescore else ', not trained again'}")
            continue
        seed = spec.train.seed if spec.train.seed is not None else recipe.seed
        set_seed(seed)  # a new head's (and projection's) init follows the student's seed, not what ran before it
        try:
            student = build_student(spec, teacher, t_tok, data.spec)
        except CompressError as e:
            raise CompressError(f"{recipe.path}: {where} ({spec.name}): {e}") from None
        try:
            res = distill(teacher, t_tok, student, spec, data, max_length=ml, seed=seed,
                          group_by_length=recipe.task.group_by_length,
                          checkpoint_dir=recipe.run_dir / ".checkpoints" / "distill" / spec.name, where=where,
                          logit_cache=logit_cache, teacher_sha=t_digest, previous=recipe.run_dir / "distill")
        except CompressError as e:
            raise CompressError(f"{recipe.path}: {e}") from None
        metrics = _scores(res.model, res.tokenizer, data, ml, teacher_dev, res.holdout)
        warn_undefined(f"distill: student {spec.name}", metrics)
        save(res.model, res.tokenizer, out / spec.name / "model")
        transfer = None
        if spec.distill.augment is not None:
            rows_key, how = augment_key(spec.distill.augment, spec.name), labelling(spec.train)
            if logits_key(rows_key, how) in logit_cache:  # logit KD cached the teacher's logits on it: keep both
                transfer = transfer_folder(spec.distill.augment, spec.name)  # for prune and reruns
                if not (out / transfer).is_dir():
                    save_transfer_set(out / transfer, logit_cache[rows_key + ":rows"][0],
                                      logit_cache[logits_key(rows_key, how)], ml, t_digest, how)
        info = {"student": student.info, "matches": res.matches, "same_tokenizer": res.same_tokenizer,
                **({"augment": res.augment} if res.augment is not None else {}),
                **({"transfer_set": transfer} if transfer else {}),
                "alignment": res.align.as_dict(), "timing": res.timing,
                "train": {k: {"steps": f.steps, "best_step": f.best_step, "history": f.history,
                              "tokens_per_s": round(f.tokens_per_s, 1), "resumed_from": f.resumed_from,
                              "precision": f.precision}
                          for k, f in res.fits.items()}}
        write_json(out / spec.name / "metrics.json", {"metrics": metrics, **info})
        summary[spec.name] = {"metrics": metrics, **info}
        params[spec.name] = count_params(res.model)
        if i + 1 < len(recipe.students):  # a later student's crash must not cost this one's training again
            main_process_writes(lambda: _save_finished(out, spec.name, transfer, params[spec.name], finished_root,
                                                       train_logits(), data.train, ml, t_digest))
        print(f"[distill] {spec.name}: dev {main_metric}={metrics['dev'][main_metric]:.4f} "
              f"(teacher {teacher_dev.get(main_metric, float('nan')):.4f}, retention {metrics['retention']}), "
              f"{params[spec.name] / 1e6:.1f}M params")
    write_json(out / "metrics.json", {"teacher": {"dev": teacher_dev}, "students": summary})
    if train_logits() is not None:  # the prune stage's recovery reuses them (`saved_teacher_logits`)
        logits, how = train_logits()
        save_teacher_logits(out, logits, data.train, ml, t_digest, how)
    first = recipe.students[0].name
    return {"metrics": {"dev": summary[first]["metrics"]["dev"], "teacher_dev": teacher_dev,
                        "students": {n: s["metrics"] for n, s in summary.items()}},
            "params": params, "models": {n: f"{n}/model" for n in names}, "students": summary,
            "teacher_logits": ("previous distill run" if previous is not None
                               else "computed" if train_logits() is not None else None),
            "student_keys": keys, "training_keys": training_keys,
            "timing": {n: s["timing"] for n, s in summary.items()}}
