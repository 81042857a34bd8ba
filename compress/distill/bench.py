"""`make bench-distill`: our distillation loop against a naive one, same teacher, student, rows and losses, same run.

Ours: length-grouped batches padded to their longest row; with logit-only KD the teacher's logits are computed once
ahead of training (that time is counted) and never again; with intermediate losses the teacher runs per batch
under inference mode. Naive: random batches padded to max_length, the teacher recomputed every step. Both train
one pass over the same rows with the same `KDObjective`; speed is real (non-padding) tokens per second. Each is
timed ``--repeats`` times, alternating, and its fastest time kept (other work on a shared CPU only slows runs down).

Defaults: 2,000 SST-2 rows, 3 epochs, as a distillation runs. Fewer rows understate ours: length grouping sorts
megabatches of min(50, rows / 128) batches (transformers' LengthGroupedSampler), so 256 rows make megabatches of two
batches (1.5x the real tokens padded where 2,000 rows make fifteen) and the run's fixed start-up is a larger share;
one epoch never reuses the cached teacher logits.

    python -m compress.distill.bench [--teacher runs/quickstart/teacher/model] [--rows 2000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from compress.config import StudentConfig, TaskConfig, from_dict
from compress.data import load_task, tokenize
from compress.distill.objective import Distiller, KDObjective, resolve_matches
from compress.distill.stage import distill
from compress.modeling import load_for_task, load_trained
from compress.train import process_device
from students import build_student

MODES = {
    "logits": {"temperature": 2.0, "hard_label_weight": 0.5},
    "intermediate": {"temperature": 2.0, "hard_label_weight": 0.5, "layer_map": "uniform",
                     "layer_map_features": ["hidden", "attention"]},
}


def _spec(mode: str, layers: int, batch_size: int, epochs: int = 1, precision: str = "fp32") -> StudentConfig:
    return from_dict(StudentConfig, {"name": f"bench-{mode}", "layers": layers, "distill": MODES[mode],
                                     "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-4,
                                               "precision": precision}})


def ours(teacher, tok, data, spec, max_length: int) -> float:
    """Seconds for one pass with `distill` (teacher-logit caching included)."""
    student = build_student(spec, teacher, tok, data.spec)
    res = distill(teacher, tok, student, spec, data, max_length=max_length, seed=0)
    print(f"  ours {spec.name}: {res.timing}", flush=True)
    return res.timing["teacher_cache_s"] + res.timing["train_s"]


def naive(teacher, tok, data, spec, max_length: int) -> float:
    """Seconds for one pass: random batches padded to max_length, teacher forward every step, plain AdamW loop."""
    device = process_device()  # where `ours` trains (and leaves the teacher: a student copied from it starts there)
    student = build_student(spec, teacher, tok, data.spec)
    matches = resolve_matches(spec.distill, teacher.config, student.model.config)
    model = Distiller(student.model, matches, teacher.config.hidden_size).train().to(device)
    # no cached logits: the teacher runs every step
    objective = KDObjective(teacher.eval().to(device), spec.distill, matches, data.spec.is_regression)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr)
    rows = data.train
    g = torch.Generator().manual_seed(0)
    order = [i for _ in range(int(spec.train.epochs)) for i in torch.randperm(len(rows), generator=g).tolist()]
    bs = spec.train.batch_size
    t0 = time.perf_counter()
    for start in range(0, len(order), bs):
        chunk = rows.select(order[start:start + bs])
        batch = dict(tok(list(chunk["text"]), padding="max_length", truncation=True, max_length=max_length,
                         return_tensors="pt"))
        batch["labels"] = torch.tensor(list(chunk["label"]))
        loss, _ = objective(model, {k: v.to(device) for k, v in batch.items()})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/quickstart/teacher/model",
                    help="fine-tuned teacher folder (default: the quickstart's; else MiniLM-L6 with a fresh head)")
    ap.add_argument("--rows", type=int, default=2000, help="SST-2 training rows per measurement")
    ap.add_argument("--repeats", type=int, default=1,
                    help="alternate naive/ours this many times and keep each one's fastest (a shared CPU is noisy)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3,
                    help="passes over the rows (cached teacher logits are reused from the second pass on)")
    ap.add_argument("--layers", type=int, default=3, help="student layers (layer-drop of the teacher)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                    help="our loop's train.precision (bf16: autocast; the naive loop always runs fp32)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    data = load_task(TaskConfig(name="sst2", max_train_samples=args.rows, holdout=0.0, max_eval_samples=8), seed=0)
    if Path(args.teacher, "config.json").is_file():
        teacher, tok = load_trained(args.teacher)
        print(f"teacher: {args.teacher}", flush=True)
    else:
        teacher, tok = load_for_task("minilm-l6", data.spec)
        print(f"teacher: MiniLM-L6 with a fresh head ({args.teacher} holds no model: `make teacher` makes the "
              f"quickstart's); tokens/s do not depend on what the head learned", flush=True)
    tokens = sum(tokenize(data.train, tok, args.max_length)["length"]) * args.epochs
    padded = len(data.train) * args.max_length * args.epochs  # what the naive loop feeds the models
    print(f"real tokens {tokens:,}; the naive loop processes {padded:,} ({padded / tokens:.1f}x: padding to "
          f"max_length), and reruns the teacher every epoch", flush=True)
    results = {"rows": len(data.train), "real_tokens": tokens, "naive_processed_tokens": padded,
               "batch_size": args.batch_size, "repeats": args.repeats, "epochs": args.epochs,
               "max_length": args.max_length, "precision_ours": args.precision, "threads": torch.get_num_threads(),
               "modes": {}}
    for mode in MODES:
        spec = _spec(mode, args.layers, args.batch_size, args.epochs, args.precision)
        t_naive, t_ours = float("inf"), float("inf")
        for _ in range(args.repeats):
            t_naive = min(t_naive, naive(teacher, tok, data, spec, args.max_length))
            t_ours = min(t_ours, ours(teacher, tok, data, dataclasses.replace(spec), args.max_length))
        r = {"ours_tokens_per_s": round(tokens / t_ours, 1), "naive_tokens_per_s": round(tokens / t_naive, 1),
             "ours_s": round(t_ours, 2), "naive_s": round(t_naive, 2), "speedup": round(t_naive / t_ours, 2)}
        results["modes"][mode] = r
        print(f"{mode:>12}: ours {r['ours_tokens_per_s']:8.1f} tok/s ({r['ours_s']:.1f}s)  naive "
              f"{r['naive_tokens_per_s']:8.1f} tok/s ({r['naive_s']:.1f}s)  -> {r['speedup']:.2f}x", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
