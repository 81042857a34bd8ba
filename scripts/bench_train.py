"""Training throughput: real tokens/s of teacher fine-tuning, fp32 vs bf16 autocast, and length-grouped vs random batches.

    .venv/bin/python scripts/bench_train.py [--model minilm-l6] [--steps 40] [--batch-size 32]

Same model, same data (SST-2 train rows), same number of optimizer steps for each variant; the first steps are
warm-up and excluded. "Real" tokens are non-padding tokens: padding is work that teaches nothing. Prints one line
per variant and the ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from compress.config import TaskConfig
from compress.data import Collator, load_task, tokenize, train_loader
from compress.manifest import cpu_model
from compress.modeling import load_for_task


def measure(model_name: str, train, tok, spec, batch_size: int, steps: int, warmup: int, precision: str,
            grouped: bool) -> dict:
    torch.manual_seed(0)
    model, _ = load_for_task(model_name, spec)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    loader = iter(train_loader(train, Collator({"": tok}), batch_size, seed=0, epoch=0, group_by_length=grouped))
    real = padded = 0
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            t0, real, padded = time.perf_counter(), 0, 0
        batch = next(loader)
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    seconds = time.perf_counter() - t0
    return {"precision": precision, "grouped": grouped, "real_tok_s": real / seconds, "processed_tok_s": padded / seconds,
            "steps_s": steps / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()
    data = load_task(TaskConfig(name="sst2", max_train_samples=20000), seed=0)
    model, tok = load_for_task(args.model, data.spec)
    del model
    train = tokenize(data.train, tok, args.max_length)
    print(f"model {args.model}, batch {args.batch_size}, {args.steps} steps after {args.warmup} warm-up; "
          f"CPU {cpu_model()}, torch threads {torch.get_num_threads()}")
    rows = []
    for precision, grouped in [("fp32", True), ("bf16", True), ("fp32", False)]:
        r = measure(args.model, train, tok, data.spec, args.batch_size, args.steps, args.warmup, precision, grouped)
        rows.append(r)
        print(f"  {precision} {'length-grouped' if grouped else 'random        '}: {r['real_tok_s']:8.0f} real tok/s "
              f"({r['processed_tok_s']:8.0f} processed, {r['steps_s']:.2f} steps/s)")
    fp32, bf16, rand = rows
    print(f"bf16 / fp32 (real tok/s): {bf16['real_tok_s'] / fp32['real_tok_s']:.2f}x")
    print(f"length-grouped / random (real tok/s): {fp32['real_tok_s'] / rand['real_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
