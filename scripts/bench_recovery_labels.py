"""What prune recovery's teacher labelling costs: all training rows (before 2026-12-06) vs the rows the recovery
steps read (`compress.prune_stage.recovery_rows`), for a recipe whose distill stage has run.

    .venv/bin/python scripts/bench_recovery_labels.py [--recipe pipelines/quickstart.yaml] [--threads 2]

Labels with the model the prune stage starts from (``prune.recover.teacher: unpruned``, the quickstart's) in the
precision its ``recover.precision`` resolves to, and prints both times, the rows each labels and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from compress.config import load_recipe, newest_source
from compress.data import Collator, load_task, tokenize
from compress.modeling import load_trained
from compress.prune_stage import logits_of, recovery_rows
from compress.train import resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="pipelines/quickstart.yaml")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    distill = recipe.run_dir / "distill"
    source = recipe.prune.source or newest_source(recipe, {"teacher": recipe.run_dir / "teacher", "distill": distill})
    model, tokenizer = load_trained(recipe.run_dir / "teacher" / "model" if source == "teacher"
                                    else distill / source / "model")
    data = load_task(recipe.task, seed=recipe.seed)
    train = tokenize(data.train, tokenizer, recipe.task.max_length)
    train = train.add_column("index", list(range(len(train))))
    collator, precision = Collator({"": tokenizer}), resolve_precision(recipe.prune.recover.precision)
    t0 = time.perf_counter()
    rows = recovery_rows(train, recipe.prune, recipe.seed, recipe.task.group_by_length)
    listed = time.perf_counter() - t0
    times = {}
    for name, ds in (("all rows", train), ("rows read", train.select(rows))):
        t0 = time.perf_counter()
        logits_of(model, ds, collator, precision=precision)
        times[name] = time.perf_counter() - t0
        print(f"{name}: {len(ds)} rows labelled in {times[name]:.1f} s ({precision}, {args.threads} threads)")
    print(f"rows listed in {listed:.2f} s; labelling {times['all rows'] / times['rows read']:.2f}x faster, "
          f"{times['all rows'] - times['rows read']:.1f} s less")


if __name__ == "__main__":
    main()
