"""Stage `prune`: iterative structured pruning (heads and FFN neurons) with distillation recovery.

The model pruned is a distilled student (``prune.source``, default the recipe's first student) when the recipe has a
distill stage, otherwise the fine-tuned teacher. ``prune.steps`` times: score heads and neurons (Taylor over
calibration batches of training rows, or weight magnitude), cut ``k/steps`` of the way to the target
(`compress.prune`), then recover through `compress.train.fit` with logit KD (``kd_loss`` at T, scaled by T^2) plus
the gold labels. The recovery teacher is the unpruned source model or the original teacher (``prune.recover.teacher``);
its logits on the training rows the recovery steps will read (`recovery_rows`) are computed once, before the first
step (or taken from the distill stage, which saved them for every row), and looked up by row index.
``prune.recover.data: transfer`` trains recovery on the transfer set the student was distilled on (training rows +
augmented copies, KD only on the copies) instead of the training rows.

Writes ``model/`` (safetensors, config with the pruning record, tokenizer), ``pruning.json`` (what every layer kept,
original numbering; per-step metrics), ``layers.md`` / ``layers.json`` (per-layer heads, FFN, params and MACs before
and after) and ``metrics.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from compress import prune as P
from compress.bundle_predict import first_line
from compress.config import PruneConfig, Recipe, RecoverConfig, newest_source
from compress.data import Collator, TaskSpec, bar_off, load_task, tokenize, train_loader
from compress.distill.losses import hard_label_loss, kd_loss, logits_mse
from compress.distill.stage import saved_teacher_logits, teacher_digest
from compress.errors import CompressError
from compress.evaluate import MODEL_INPUTS, evaluate, predict_shared
from compress.manifest import published_manifest, read_json, write_atomic, write_json
from compress.metrics import warn_undefined
from compress.modeling import count_params, load_trained, save, save_atomic
from compress.train import (best_scores, fit, from_main_process, main_process_writes, process_device, resolve_precision,
                            rows_read)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- which model
def source_model(recipe: Recipe, inputs: dict[str, Path]) -> tuple[str, Path]:
    """(name, folder) of the model to prune: ``prune.source``, else the first student, else the teacher."""
    students = [s.name for s in (getattr(recipe, "students", None) or [])]
    source = recipe.prune.source or newest_source(recipe, inputs)
    if source == "teacher":
        folder = inputs["teacher"] / "model"
    elif source in students:
        if "distill" not in inputs:
            raise CompressError(f"{recipe.path}: prune.source: student {source!r} needs the distill stage")
        folder = inputs["distill"] / source / "model"
    else:
        raise CompressError(f"{recipe.path}: prune.source: {source!r} is neither teacher nor a student "
                            f"({', '.join(students) or 'no students'})")
    if not (folder / "config.json").is_file():
        raise CompressError(f"{folder}: no saved model for prune.source {source!r}")
    return source, folder


def plan_problem(recipe: Recipe, built: Optional[dict] = None) -> Optional[str]:
    """Why the prune target cannot be met by the prune source's shape, or None: a ``keep_params``/``keep_macs``
    budget below its smallest model (one head and one FFN neuron per layer), ratios that remove every head or neuron
    of every layer, a ``layers`` override naming a layer it does not have; found before any stage runs, not once the
    teacher and the students have trained. The shape is the recipe's: the teacher's config built on the meta
    device (no weights), a student cut from it by the distill stage's own surgery (`students.build_student`). Equal
    importances stand in for the trained ones: the smallest model costs the same with any scores (one head and one
    neuron per layer; a layer's cost is linear in them), and with ``drop_empty_layers`` equal scores give the
    smallest any scores can (the units left all in the first layers, the others dropped), so what is refused here is
    refused at the stage too (there, a budget passed here may still be). None as well where the shape is not known
    beforehand (a teacher pruned earlier, a model that does not load: its stage says why). ``built``: shapes the
    distill stage's check made (`student_problems`), not built again."""
    cfg = recipe.prune
    if cfg is None:
        return None
    students = {s.name: s for s in (getattr(recipe, "students", None) or [])}
    source = cfg.source or newest_source(recipe, ("teacher", "distill") if students else ("teacher",))
    if source != "teacher" and source not in students:
        return None  # the stage's own error (`source_model`)
    model = (built or {}).get(source) or _source_shape(recipe, students.get(source))
    if model is None:
        return None
    prov = P.provenance(model)
    ones = P.Scores([torch.ones(len(s.heads)) for s in prov.layers], [torch.ones(len(s.ffn)) for s in prov.layers])
    try:
        P.plan(prov, ones, cfg, hidden=model.config.hidden_size, seq_len=recipe.task.max_length)
    except CompressError as e:
        what = "the teacher" if source == "teacher" else f"student {source!r}"
        return f"{recipe.path}: {e} (the shape of {what}, found before any stage ran)"
    return None


def _source_shape(recipe: Recipe, student) -> Optional[torch.nn.Module]:
    """The model the prune stage will receive, weights left out: the teacher (``student`` None) or that student."""
    from students.build import student_shape, teacher_shape

    shape = teacher_shape(recipe)
    if shape is None or student is None:
        return shape and shape[0]
    try:
        return student_shape(student, *shape).model
    except Exception:  # noqa: BLE001 - the distill stage's check before any stage runs (`student_problems`) says why
        return None


def transfer_set(recipe: Recipe, inputs: dict[str, Path], source: str) -> tuple[Path, Dataset]:
    """(folder, rows) of the transfer set the distill stage saved for student ``source`` (``recover.data:
    transfer``); a one-line error when it has none."""
    where = f"{recipe.path}: prune.recover.data: transfer"
    if source == "teacher" or "distill" not in inputs:
        raise CompressError(f"{where}: needs a distilled student as prune.source (got {source!r})")
    name = read_json(inputs["distill"] / source / "metrics.json").get("transfer_set")
    if not name or not (inputs["distill"] / name / "rows.parquet").is_file():
        raise CompressError(f"{where}: student {source!r} was not distilled on a transfer set with cached teacher "
                            "logits (set its distill.augment)")
    folder = inputs["distill"] / name
    return folder, Dataset.from_parquet(str(folder / "rows.parquet"))


# ------------------------------------------------------------------------------------------------ recovery
def recovery_objective(teacher_logits: torch.Tensor, cfg: RecoverConfig, regression: bool) -> Callable:
    """``objective(model, batch)`` for `fit`: logit KD against precomputed teacher logits (rows looked up by the
    batch's ``index``) plus the gold labels."""

    def objective(model, batch):
        out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        index = batch["index"].cpu()
        teacher = teacher_logits[index]
        if torch.isnan(teacher).any():  # `recovery_rows` left these out: training on nan targets would hide it
            raise CompressError(f"prune recovery: training rows {index[teacher.isnan().any(-1)].tolist()[:5]} have no "
                                f"teacher logits (the rows labelled ahead of training missed them; please report this)")
        teacher = teacher.to(out.logits.device)
        kd = logits_mse(out.logits, teacher) if regression else kd_loss(out.logits, teacher, cfg.temperature)
        hard = hard_label_loss(out.logits, batch["labels"], batch.get("gold"))  # copies (gold 0): KD only
        loss = cfg.kd_weight * kd + cfg.hard_label_weight * hard
        return loss, {"kd": kd.item(), "hard": hard.item()}

    return objective


def recovery_seed(cfg: RecoverConfig, seed: int, step: int) -> int:
    """The seed of step ``step``'s recovery (0-based): ``recover.seed``, else the run's seed + step."""
    return cfg.seed if cfg.seed is not None else seed + step


def recovery_rows(train, cfg: PruneConfig, seed: int, group_by_length: bool) -> list[int]:
    """The training rows some step's recovery trains on (`rows_read`), in index order: the only ones its teacher has
    to label. A capped recovery (the quickstart's 2 x 150 steps of 32) reads 8,415 of its 20,000 rows."""
    rows: set[int] = set()
    for step in range(cfg.steps):
        rows.update(rows_read(train, cfg.recover, recovery_seed(cfg.recover, seed, step), group_by_length))
    return sorted(rows)


def spread(logits: torch.Tensor, rows: list[int], n: int) -> torch.Tensor:
    """The logits of ``rows`` (in that order) placed in a tensor for all ``n`` rows; nan in the rows not given."""
    if len(rows) == n:
        return logits
    full = torch.full((n, logits.shape[1]), float("nan"), dtype=logits.dtype)
    full[torch.tensor(rows, dtype=torch.long)] = logits
    return full


def _rows(ds, rows: list[int]):
    """``ds`` itself when ``rows`` are all of it, else those rows."""
    return ds if len(rows) == len(ds) else ds.select(rows)


def teacher_logits(model, tokenizer, rows, max_length: int, precision: str = "fp32") -> torch.Tensor:
    """The recovery teacher's logits on the (untokenized) training rows, in row order."""
    return logits_of(model, tokenize(rows, tokenizer, max_length), Collator({"": tokenizer}), precision=precision)


def logits_of(model, ds, collator: Collator, chunk: int = 2048, precision: str = "fp32") -> torch.Tensor:
    """`predict_shared` over ``ds`` in chunks (rows shared out between the processes of a distributed run; every
    process gets all the logits), with a progress bar (row order kept; the main process's only)."""
    from compress.train import process_state

    parts = [predict_shared(model, ds.select(range(i, min(i + chunk, len(ds)))), collator, batch_size=128,
                            precision=precision)
             for i in tqdm(range(0, len(ds), chunk), desc="recovery teacher logits", unit="chunk",
                           **bar_off(not process_state().is_local_main_process))]
    return torch.from_numpy(np.concatenate(parts)).float()


def calibration_batches(train, collator: Collator, cfg: PruneConfig, seed: int, step: int) -> list[dict]:
    """The first ``calibration_batches`` shuffled batches of training rows (a different draw at each step)."""
    loader = train_loader(train, collator, cfg.calibration_batch_size, seed + 7919 * (step + 1), 0,
                          group_by_length=False)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= cfg.calibration_batches:
            break
    return batches


def prune_with_recovery(model, cfg: PruneConfig, *, train, holdout, dev, collator: Collator, spec: TaskSpec,
                        logits: Optional[torch.Tensor], seed: int, seq_len: int, group_by_length: bool = True,
                        checkpoint_root: Optional[Path] = None, tokenizer=None, calibration=None):
    """Run the iterative schedule on ``model``. ``train`` must carry an ``index`` column (row -> teacher logit).
    ``calibration``: the labelled rows Taylor importance is scored on (default ``train``; not a transfer set, whose
    copies have no label of their own). Returns (the pruned model, one record per step: sizes, dev metrics right after
    the cut and after recovery).

    With ``checkpoint_root`` (and ``tokenizer``), each recovered step but the last is saved there
    (``done-step-K/``): a rerun after a crash or kill -9 starts after the newest one instead of retraining it. Every
    step is seeded on its own (calibration draw, recovery seed), so a resumed run ends where an uninterrupted one
    does."""
    history, start = [], 0
    base = P.provenance(model)  # what the ratios count, at every step (a resumed one included)
    done = _finished_step(checkpoint_root, cfg.steps) if cfg.recover is not None and logits is not None else None
    if done is not None:
        start, folder = done
        try:
            loaded = P.load_pruned_model(folder).to(process_device())  # on the CPU: to where it is scored and cut
            history = read_json(folder / "history.json")["steps"]
        except Exception as e:  # a file read back short or altered: a traceback on every rerun
            print(f"[prune] skipping the damaged {folder} ({first_line(e)}): pruning from step 1")
            start, history = 0, []
        else:
            model = loaded
            print(f"[prune] resuming after step {start}/{cfg.steps} ({folder})")
    for step in range(start, cfg.steps):
        fraction = (step + 1) / cfg.steps
        # the step's recovery checkpoints and, beside them, the scores its units were cut by
        recovery_dir = (checkpoint_root / f"step-{step + 1}" if checkpoint_root is not None
                        and cfg.recover is not None and logits is not None and cfg.recover.checkpoint_every else None)
        scores_file = recovery_dir.with_name(f"{recovery_dir.name}.scores.pt") if recovery_dir else None
        saved = _saved_scores(scores_file, recovery_dir)
        batches = (calibration_batches(train if calibration is None else calibration, collator, cfg, seed, step)
                   if cfg.importance == "taylor" and saved is None else None)
        # every process cuts the same units; a step resumed mid-recovery cuts the ones its checkpoint was trained with
        scores = from_main_process(saved if saved is not None else P.score(model, cfg.importance, batches))
        if scores_file is not None and saved is None:
            main_process_writes(lambda: _save_scores(scores, scores_file))
        P.prune(model, cfg, scores=scores, fraction=fraction, seq_len=seq_len, base=base)
        record = {"step": step + 1, "fraction": fraction, "params": count_params(model),
                  "macs": P.model_macs(model, seq_len),
                  "layers": [{"heads": len(s.heads), "ffn": len(s.ffn)} for s in P.provenance(model).layers],
                  "dev_pruned": evaluate(model, dev, collator, spec)}
        if cfg.recover is not None and logits is not None:
            rcfg = cfg.recover
            result = fit(model, train, collator, rcfg, seed=recovery_seed(rcfg, seed, step),
                         objective=recovery_objective(logits, rcfg, spec.is_regression),
                         evaluate=(lambda m: evaluate(m, holdout, collator, spec)) if len(holdout) else None,
                         group_by_length=group_by_length, desc=f"prune step {step + 1}/{cfg.steps} recovery",
                         checkpoint_dir=recovery_dir)
            record["recovery"] = {"steps": result.steps, "best_step": result.best_step,
                                  "train_s": round(result.wall_s, 1), "resumed_from": result.resumed_from,
                                  "holdout": best_scores(result)}  # the kept weights' scores (None: none selected)
            record["dev_recovered"] = evaluate(model, dev, collator, spec)
        log.info("prune step %d: %s", step + 1, record)
        history.append(record)
        if (checkpoint_root is not None and tokenizer is not None and cfg.recover is not None and logits is not None
                and step + 1 < cfg.steps):
            main_process_writes(lambda: _save_finished_step(model, tokenizer, history,
                                                            checkpoint_root / f"done-step-{step + 1}"))
    return model, history


def _save_finished_step(model, tokenizer, history: list[dict], folder: Path) -> None:
    """The model after a step's recovery and the records so far; written aside and renamed (never half-written)."""
    save_atomic(model, tokenizer, folder, {"history.json": {"steps": history}})
    for older in folder.parent.glob("done-step-*"):  # only the newest is ever resumed from
        if older != folder:
            shutil.rmtree(older, ignore_errors=True)
    for scores in folder.parent.glob("step-*.scores.pt"):  # the finished steps' scores: never read again
        number = scores.name[len("step-"):-len(".scores.pt")]
        if number.isdigit() and int(number) <= len(history):
            scores.unlink(missing_ok=True)


def _save_scores(scores: P.Scores, path: Path) -> None:
    """A step's importance scores beside its recovery checkpoints (written aside and renamed): a rerun after a crash
    in that step's recovery cuts the same units again, whatever scoring on other kernels or thread counts would rank
    now (near-ties), so the checkpoint's weights fit the model and the record names the units they belong to."""
    data = {"heads": [t.detach().cpu() for t in scores.heads], "ffn": [t.detach().cpu() for t in scores.ffn]}
    write_atomic(path, lambda tmp: torch.save(data, tmp))


def _saved_scores(path: Optional[Path], recovery_dir: Optional[Path] = None) -> Optional[P.Scores]:
    """The scores `_save_scores` wrote for this step, if any. Unreadable (read back short or altered: a traceback on
    every rerun), they are dropped with the step's recovery checkpoints (``recovery_dir``), which were trained on the
    units they cut: the step is scored and recovered anew."""
    if path is None or not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
        return P.Scores(heads=data["heads"], ffn=data["ffn"])
    except Exception as e:
        print(f"[prune] skipping the damaged {path} ({first_line(e)}): the step is scored and recovered anew")

        def drop() -> None:  # before every process's from_main_process (a collective), so before any resumes
            path.unlink(missing_ok=True)
            if recovery_dir is not None:
                shutil.rmtree(recovery_dir, ignore_errors=True)
        main_process_writes(drop)
        return None


def _finished_step(checkpoint_root: Optional[Path], steps: int) -> Optional[tuple[int, Path]]:
    """(K, folder) of the newest finished step K < ``steps`` saved under ``checkpoint_root``, if any."""
    if checkpoint_root is None or not Path(checkpoint_root).is_dir():
        return None
    found = []
    for folder in Path(checkpoint_root).glob("done-step-*"):
        number = folder.name[len("done-step-"):]
        if number.isdigit() and 0 < int(number) < steps and (folder / "history.json").is_file():
            found.append((int(number), folder))
    return max(found) if found else None


# ------------------------------------------------------------------------------------------------- report
def layer_report(before: list[dict], after_model, seq_len: int) -> list[dict]:
    """Rows per layer of the unpruned model: heads, FFN, params, MACs before and after (a dropped layer: 0)."""
    after = {r["layer"]: r for r in P.layer_table(after_model, seq_len)}
    rows = []
    for b in before:
        a = after.get(b["layer"], {"heads": 0, "ffn": 0, "params": 0, "macs": 0})
        rows.append({"layer": b["layer"], **{f"{k}_before": b[k] for k in ("heads", "ffn", "params", "macs")},
                     **{f"{k}_after": a[k] for k in ("heads", "ffn", "params", "macs")}})
    return rows


def layer_markdown(rows: list[dict], totals: dict, seq_len: int) -> str:
    lines = [f"MACs per sequence of {seq_len} tokens (encoder layers); totals include embeddings, pooler and head.", "",
             "| layer | heads | FFN | params | MACs |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']}{' (dropped)' if r['heads_after'] == 0 else ''} "
                     f"| {r['heads_before']} -> {r['heads_after']} | {r['ffn_before']} -> {r['ffn_after']} "
                     f"| {r['params_before']:,} -> {r['params_after']:,} | {r['macs_before']:,} -> {r['macs_after']:,} |")
    lines.append(f"| total | {sum(r['heads_before'] for r in rows)} -> {sum(r['heads_after'] for r in rows)} "
                 f"| {sum(r['ffn_before'] for r in rows)} -> {sum(r['ffn_after'] for r in rows)} "
                 f"| {totals['params_before']:,} -> {totals['params_after']:,} "
                 f"| {totals['macs_before']:,} -> {totals['macs_after']:,} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- stage
def run(recipe: Recipe, out: Path, inputs: dict[str, Path], forced: bool = False) -> dict:
    """``forced`` (--force prune): pruned and recovered again even when only its dev rows changed."""
    from compress.pipeline import trained_alike, training_key

    source, folder = source_model(recipe, inputs)
    upstream = {n: published_manifest(f) for n, f in inputs.items()}  # none: folders made by hand, no key
    key = training_key(recipe, "prune", upstream) if all(isinstance(m.get("outputs"), dict)
                                                         for m in upstream.values()) else None
    kept = recipe.run_dir / "prune"
    if key is not None and not forced and trained_alike(kept, key, KEPT_RECORDS):
        return {**_score_kept(recipe, out, source, folder, read_json(kept / "metrics.json")["metrics"],
                              read_json(kept / "pruning.json")), "training_key": key}
    return {**_prune(recipe, out, inputs, source, folder), **({"training_key": key} if key else {})}


KEPT_RECORDS = ("metrics.json", "pruning.json", "layers.json", "layers.md")
"""What a kept pruned model's folder must hold as written, besides ``model/`` (`_score_kept` reads or copies them)."""


def _score_kept(recipe: Recipe, out: Path, source: str, folder: Path, previous: dict, pruning: dict) -> dict:
    """The previous prune folder's model, pruned and recovered as this run would (its `training_key`), copied into
    ``out`` and scored again: only the rows it is scored on changed. Its per-step dev scores (of models not kept) are
    left out of the steps' records, not passed off as scores on these rows."""
    kept = recipe.run_dir / "prune"
    print(f"[prune] pruned and recovered as in {kept} (only what it is scored on changed): its model is kept and "
          f"scored again (--force prune prunes it again)")
    for name in ("model", "layers.json", "layers.md"):
        (shutil.copytree if (kept / name).is_dir() else shutil.copy2)(kept / name, out / name)
    data = load_task(recipe.task, seed=recipe.seed)
    spec, ml = data.spec, recipe.task.max_length
    history = [{k: v for k, v in step.items() if k not in ("dev_pruned", "dev_recovered")}
               for step in pruning["steps"]]
    write_json(out / "pruning.json", {**pruning, "steps": history, "kept_from_previous_run": True})

    def scores(where: Path, rows) -> dict:
        model, tokenizer = load_trained(where)
        return evaluate(model.to(process_device()), tokenize(rows, tokenizer, ml),
                        Collator({"": tokenizer}, regression=spec.is_regression), spec)

    metrics = {"dev": scores(out / "model", data.dev), "dev_before": scores(folder, data.dev)}
    if "holdout" in previous:  # scored on the held-out rows of train as before
        metrics["holdout"] = previous["holdout"]
    if data.test is not None:
        metrics["test"] = scores(out / "model", data.test)
    warn_undefined("prune: the pruned model", metrics)
    write_json(out / "metrics.json", {"metrics": metrics, "steps": history, "kept_from_previous_run": True})
    layers = read_json(out / "layers.json")
    return {**_result(metrics, source, layers["totals"], layers["layers"], pruning.get("recovery_logits"),
                      pruning.get("recovery_rows"), history), "kept_from_previous_run": True}


def _result(metrics: dict, source: str, totals: dict, layer_rows: list[dict], logits_from: Optional[str],
            trained_on: Optional[int], history: list[dict]) -> dict:
    """The stage's record (its manifest's fields)."""
    return {"metrics": metrics, "params": totals["params_after"], "source": source,
            "pruning": {"params_before": totals["params_before"], "macs_before": totals["macs_before"],
                        "macs_after": totals["macs_after"], "mac_seq_len": totals["seq_len"],
                        "speedup_macs": round(totals["macs_before"] / totals["macs_after"], 3),
                        "layers": layer_rows, "recovery_logits": logits_from,
                        "recovery_rows": trained_on, "steps": history}}


def _prune(recipe: Recipe, out: Path, inputs: dict[str, Path], source: str, folder: Path) -> dict:
    cfg = recipe.prune
    seed = recipe.seed
    model, tokenizer = load_trained(folder)
    model.to(process_device())  # scored, cut and measured where it trains (a GPU's under accelerate launch)
    data = load_task(recipe.task, seed=seed)
    spec, ml = data.spec, recipe.task.max_length
    rows, transfer = data.train, None
    if cfg.recover is not None and cfg.recover.data == "transfer":
        transfer, rows = transfer_set(recipe, inputs, source)
    train = tokenize(rows, tokenizer, ml)
    train = train.add_column("index", list(range(len(train))))
    calibration = tokenize(data.train, tokenizer, ml) if transfer is not None else None
    holdout, dev = tokenize(data.holdout, tokenizer, ml), tokenize(data.dev, tokenizer, ml)
    collator = Collator({"": tokenizer}, regression=spec.is_regression)

    try:
        # a bad request fails now, not after minutes of work; a ratio the one-unit-a-layer floor exceeds is said
        P.plan(model, P.score(model, "l1"), cfg, seq_len=ml, warn=True)
    except CompressError as e:
        raise CompressError(f"{recipe.path}: {e}") from None

    logits, logits_from = None, None
    if cfg.recover is not None:
        precision = resolve_precision(cfg.recover.precision)
        # the run's teacher teaches (also when it is the model pruned: then it is the unpruned source as well)
        teacher_teaches = cfg.recover.teacher == "teacher" or source == "teacher"
        saved = None
        if teacher_teaches and "distill" in inputs:  # the distill stage's pass over the same rows
            saved = saved_teacher_logits(transfer if transfer is not None else inputs["distill"], rows, ml,
                                         teacher_digest(inputs["teacher"]))
        if saved is not None:
            logits, logits_from = torch.from_numpy(saved).float(), "distill stage"
            log.info("recovery: the teacher's logits on %d %s rows reused from the distill stage",
                     len(saved), "transfer" if transfer is not None else "training")
        else:  # labelled now: only the rows recovery will read
            labelled = recovery_rows(train, cfg, seed, recipe.task.group_by_length)
            log.info("recovery: the teacher labels the %d of %d %s rows that %d recovery step(s) read", len(labelled),
                     len(train), "transfer" if transfer is not None else "training", cfg.steps)
            if teacher_teaches and source != "teacher":
                t_model, t_tok = load_trained(inputs["teacher"] / "model")
                t_model.to(process_device())  # on a GPU machine the teacher labels there (it did so on the CPU)
                some = teacher_logits(t_model, t_tok, _rows(rows, labelled), ml, precision)
                del t_model
            else:  # the unpruned source teaches: same tokenization as the rows it trains on
                some = logits_of(model, _rows(train, labelled), collator, precision=precision)
            logits, logits_from = spread(some, labelled, len(train)), "computed"

    before_rows = P.layer_table(model, ml)
    params_before, macs_before = count_params(model), P.model_macs(model, ml)
    dev_before = evaluate(model, dev, collator, spec)
    try:
        model, history = prune_with_recovery(
            model, cfg, train=train, holdout=holdout, dev=dev, collator=collator, spec=spec, logits=logits, seed=seed,
            seq_len=ml, group_by_length=recipe.task.group_by_length,
            checkpoint_root=recipe.run_dir / ".checkpoints" / "prune", tokenizer=tokenizer, calibration=calibration)
    except CompressError as e:
        raise CompressError(f"{recipe.path}: {e}") from None

    save(model, tokenizer, out / "model")
    layer_rows = layer_report(before_rows, model, ml)
    totals = {"params_before": params_before, "params_after": count_params(model), "macs_before": macs_before,
              "macs_after": P.model_macs(model, ml), "seq_len": ml}
    write_json(out / "layers.json", {"layers": layer_rows, "totals": totals})
    (out / "layers.md").write_text(layer_markdown(layer_rows, totals, ml), encoding="utf-8")
    prov = P.provenance(model)
    trained_on = len(rows) if cfg.recover is not None else 0  # recover: null trains on nothing
    labelled = 0 if logits is None else int((~logits.isnan().any(-1)).sum())  # the rows that have teacher logits
    write_json(out / "pruning.json", {"source": source, "source_folder": str(folder), "provenance": prov.to_dict(),
                                      "recovery_logits": logits_from, "recovery_rows": trained_on,
                                      "recovery_labelled": labelled,
                                      "steps": history})
    # the last step scored the final weights on dev, and its recovery on the held-out rows: not scored again
    last = history[-1]
    metrics = {"dev": last.get("dev_recovered", last["dev_pruned"]), "dev_before": dev_before}
    if len(holdout):
        metrics["holdout"] = last.get("recovery", {}).get("holdout") or evaluate(model, holdout, collator, spec)
    if data.test is not None:  # MRPC's labelled test split, as the teacher and the students are scored on it
        metrics["test"] = evaluate(model, tokenize(data.test, tokenizer, ml), collator, spec)
    warn_undefined("prune: the pruned model", metrics)
    write_json(out / "metrics.json", {"metrics": metrics, "steps": history})
    return _result(metrics, source, totals, layer_rows, logits_from, trained_on, history)
