"""Stage `teacher`: fine-tune a pretrained encoder on the task (or, with ``finetune: false``, take a classifier
already fine-tuned on it as it is: scored and saved, not trained).

Any `AutoModelForSequenceClassification` works (BERT, MPNet, RoBERTa, MiniLM...), from the offline zoo, a local
folder or a hub id. The best checkpoint is chosen on a held-out slice of train; dev (and MRPC's labelled test) is
measured once at the end and reported. So a run redone for its dev rows alone (another dev file,
``task.max_eval_samples``) keeps the model of the previous run (its `compress.pipeline.training_key` unchanged) and
scores it again, unless forced.

Writes ``model/`` (safetensors + config + tokenizer) and ``metrics.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from compress.config import Recipe
from compress.data import Collator, load_task, tokenize
from compress.evaluate import constant_label, evaluate
from compress.manifest import read_json, write_json
from compress.metrics import warn_undefined
from compress.tasks import constant_score
from compress.modeling import check_length, count_params, load_for_task, load_trained, save
from compress.errors import CompressError
from compress.train import FitResult, best_scores, fit, process_device, set_seed

log = logging.getLogger(__name__)


def kept_training(previous: Path, key: str) -> Optional[dict]:
    """The previous teacher folder's metrics.json when its model was trained as ``key`` (`training_key`) says and it
    and the model are as that run wrote them (`trained_alike`); else None."""
    from compress.pipeline import trained_alike

    return read_json(previous / "metrics.json") if trained_alike(previous, key) else None


def run(recipe: Recipe, out: Path, inputs: dict[str, Path], forced: bool = False) -> dict:
    """``forced`` (--force teacher): trained again even when only its dev rows changed."""
    from compress.pipeline import training_key

    cfg = recipe.teacher
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    data = load_task(recipe.task, seed=recipe.seed)  # one train/holdout split for every stage: the recipe's seed
    spec = data.spec
    key = training_key(recipe, "teacher")
    kept = None if forced else kept_training(recipe.run_dir / "teacher", key)
    set_seed(seed)  # the new classifier head's init too, whatever ran before in this process
    try:
        if kept is not None:
            model, tokenizer = load_trained(recipe.run_dir / "teacher" / "model")
        else:
            model, tokenizer = load_for_task(cfg.model, spec, keep_head=not cfg.finetune)
    except CompressError as e:
        raise CompressError(f"{recipe.path}: teacher.model: {e}") from None
    ml = recipe.task.max_length
    check_length(model.config, ml, f"{recipe.path}: task.max_length", f"teacher {cfg.model!r}")
    holdout, dev = (tokenize(ds, tokenizer, ml) for ds in (data.holdout, data.dev))  # train: only where fit reads it
    collator = Collator({"": tokenizer}, regression=spec.is_regression)

    if kept is not None:  # only its dev rows changed: trained as before, scored again
        print(f"[teacher] trained as in {recipe.run_dir / 'teacher'} (only what it is scored on changed): its model "
              f"is kept and scored again (--force teacher trains it again)")
        result = FitResult(steps=0, best_metric=None, best_step=None)
        model.to(process_device())
    elif cfg.finetune:
        result = fit(model, tokenize(data.train, tokenizer, ml), collator, cfg, seed=seed,
                     group_by_length=recipe.task.group_by_length,
                     evaluate=(lambda m: evaluate(m, holdout, collator, spec)) if len(holdout) else None,
                     checkpoint_dir=recipe.run_dir / ".checkpoints" / "teacher" if cfg.checkpoint_every else None,
                     desc=f"teacher {cfg.model}")
    else:  # already fine-tuned on the task: scored (where training would have run it) and saved as it is
        result = FitResult(steps=0, best_metric=None, best_step=None)
        model.to(process_device())

    metrics, dev_logits = evaluate(model, dev, collator, spec, desc="teacher: scoring dev", with_logits=True)
    metrics = {"dev": metrics}
    constant = constant_label(dev_logits, spec)
    if constant is not None:
        log.warning("teacher: predicts %r for every one of the %d dev rows (a constant model): its dev %s is %s, "
                    "and a student's retention against it means little; train it longer or harder (teacher.epochs, "
                    "teacher.lr, task.max_train_samples)", constant, len(dev), spec.metrics[0],
                    constant_score(spec.metrics[0]))
    if len(holdout):  # fit scored the weights it kept on these rows already (a kept model: its own run did)
        scored = (kept or {}).get("metrics", {}).get("holdout") or (cfg.finetune and best_scores(result))
        metrics["holdout"] = scored or evaluate(model, holdout, collator, spec, desc="teacher: scoring holdout")
    if data.test is not None:
        metrics["test"] = evaluate(model, tokenize(data.test, tokenizer, ml), collator, spec,
                                   desc="teacher: scoring test")
    warn_undefined("teacher", metrics, "no retention or int8 accuracy guard can be measured against it; train it "
                   "longer or harder (teacher.epochs, teacher.lr, task.max_train_samples)")
    if kept is not None:  # the same bytes: the stages after it see the same model
        shutil.copytree(recipe.run_dir / "teacher" / "model", out / "model")
        trained = {k: kept["train"].get(k) for k in TRAINED}
        train_s = kept["train"].get("train_s", 0.0)
    else:
        save(model, tokenizer, out / "model")
        trained = {"steps": result.steps, "best_step": result.best_step, "history": result.history,
                   "tokens_per_s": round(result.tokens_per_s, 1), "resumed_from": result.resumed_from,
                   "precision": result.precision}
        train_s = round(result.wall_s, 2)
    train_info = {**trained, "train_s": train_s, **({"kept_from_previous_run": True} if kept is not None else {}),
                  "train_rows": len(data.train), "holdout_rows": len(holdout), "dev_rows": len(dev),
                  "dev_split_rows": data.dev_split_rows,
                  **({} if data.test is None else {"test_rows": len(data.test),
                                                   "test_split_rows": data.test_split_rows}),
                  **({} if cfg.finetune else {"finetuned": False}),
                  **({} if constant is None else {"dev_constant_label": constant})}
    write_json(out / "metrics.json", {"metrics": metrics, "train": train_info})
    return {"metrics": metrics, "params": count_params(model), "model": cfg.model, "train": train_info,
            "training_key": key, "timing": {"train_s": 0.0 if kept is not None else train_s}}


# what metrics.json's ``train`` says of the training itself (a kept model's: its own run's)
TRAINED = ("steps", "best_step", "history", "tokens_per_s", "resumed_from", "precision")
