"""Stage `teacher`: fine-tune a pretrained encoder on the task (or, with ``finetune: false``, take a classifier
already fine-tuned on it as it is: scored and saved, not trained).

Any `AutoModelForSequenceClassification` works (BERT, MPNet, RoBERTa, MiniLM...), from the offline zoo, a local
folder or a hub id. The best checkpoint is chosen on a held-out slice of train; dev (and MRPC's labelled test) is
measured once at the end and reported.

Writes ``model/`` (safetensors + config + tokenizer) and ``metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compress.config import Recipe
from compress.data import Collator, load_task, tokenize
from compress.evaluate import constant_label, evaluate
from compress.manifest import write_json
from compress.metrics import warn_undefined
from compress.tasks import constant_score
from compress.modeling import check_length, count_params, load_for_task, save
from compress.errors import CompressError
from compress.train import FitResult, best_scores, fit, process_device, set_seed

log = logging.getLogger(__name__)


def run(recipe: Recipe, out: Path, inputs: dict[str, Path]) -> dict:
    cfg = recipe.teacher
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    data = load_task(recipe.task, seed=recipe.seed)  # one train/holdout split for every stage: the recipe's seed
    spec = data.spec
    set_seed(seed)  # the new classifier head's init too, whatever ran before in this process
    try:
        model, tokenizer = load_for_task(cfg.model, spec, keep_head=not cfg.finetune)
    except CompressError as e:
        raise CompressError(f"{recipe.path}: teacher.model: {e}") from None
    ml = recipe.task.max_length
    check_length(model.config, ml, f"{recipe.path}: task.max_length", f"teacher {cfg.model!r}")
    train, holdout, dev = (tokenize(ds, tokenizer, ml) for ds in (data.train, data.holdout, data.dev))
    collator = Collator({"": tokenizer}, regression=spec.is_regression)

    if cfg.finetune:
        result = fit(model, train, collator, cfg, seed=seed, group_by_length=recipe.task.group_by_length,
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
    if len(holdout):  # fit scored the weights it kept on these rows already
        metrics["holdout"] = (cfg.finetune and best_scores(result)) or evaluate(model, holdout, collator, spec,
                                                                               desc="teacher: scoring holdout")
    if data.test is not None:
        metrics["test"] = evaluate(model, tokenize(data.test, tokenizer, ml), collator, spec,
                                   desc="teacher: scoring test")
    warn_undefined("teacher", metrics, "no retention or int8 accuracy guard can be measured against it; train it "
                   "longer or harder (teacher.epochs, teacher.lr, task.max_train_samples)")
    save(model, tokenizer, out / "model")
    train_info = {"steps": result.steps, "best_step": result.best_step, "history": result.history,
                  "tokens_per_s": round(result.tokens_per_s, 1), "resumed_from": result.resumed_from,
                  "precision": result.precision,
                  "train_rows": len(train), "holdout_rows": len(holdout), "dev_rows": len(dev),
                  "dev_split_rows": data.dev_split_rows,
                  **({} if data.test is None else {"test_rows": len(data.test),
                                                   "test_split_rows": data.test_split_rows}),
                  **({} if cfg.finetune else {"finetuned": False}),
                  **({} if constant is None else {"dev_constant_label": constant})}
    write_json(out / "metrics.json", {"metrics": metrics, "train": train_info})
    return {"metrics": metrics, "params": count_params(model), "model": cfg.model, "train": train_info,
            "timing": {"train_s": round(result.wall_s, 2)}}
