"""`make bench-prune`: structured pruning on the quickstart model, at several levels, measured end to end.

For the quickstart's distilled student (``runs/quickstart/distill/<first student>/model``) when it exists, else its
fine-tuned teacher (``runs/quickstart/teacher/model``), and for each pruning level: parameters, MACs (one sequence of
the task's max_length), ONNX Runtime fp32 latency (batch 1, real SST-2 dev sentences, one intra-op thread) and SST-2
dev accuracy before pruning, right after the cut, and after a short logit-KD recovery from the unpruned model.

The machine is shared: latencies are medians over many sentences but still noisy; MACs are the stable measure.
Published reference (CoFi, Xia et al. 2022, BERT-base): 93.0 SST-2 at 2.1x speedup, 90.4 at 12x.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress import prune as P  # noqa: E402
from compress.config import PruneConfig, RecoverConfig, from_dict, load_recipe  # noqa: E402
from compress.data import Collator, load_task, tokenize  # noqa: E402
from compress.evaluate import evaluate, predict  # noqa: E402
from compress.export import check_parity, export_onnx, onnx_predict, session  # noqa: E402
from compress.modeling import count_params, load_trained  # noqa: E402
from compress.prune_stage import calibration_batches, logits_of, recovery_objective  # noqa: E402
from compress.train import fit  # noqa: E402


def default_model(recipe) -> Path:
    students = [s.name for s in (recipe.students or [])]
    for name in students:
        folder = recipe.run_dir / "distill" / name / "model"
        if (folder / "config.json").is_file():
            return folder
    folder = recipe.run_dir / "teacher" / "model"
    if not (folder / "config.json").is_file():
        sys.exit(f"{folder}: no model; run `.venv/bin/compress run {recipe.path} --stage teacher` first")
    return folder


def parse_level(text: str) -> dict:
    """``macs:0.5`` / ``params:0.3`` (fraction of the encoder kept) or ``heads:0.5,ffn:0.5`` (fractions removed)."""
    out = {}
    for part in text.split("+"):
        key, value = part.split(":")
        out[{"macs": "keep_macs", "params": "keep_params"}.get(key, key)] = float(value)
    return out


def onnx_session(model, folder: Path, name: str, threads: int, dev, collator):
    """fp32 ONNX export of ``model`` and its ORT session; parity with torch checked on the dev rows."""
    sess = session(export_onnx(model, folder / f"{name}.onnx"), threads=threads)
    parity = check_parity(predict(model, dev, collator), onnx_predict(sess, dev, collator), atol=1e-3)
    return sess, parity.max_abs_diff


def latencies_ms(sessions: list, tokenizer, sentences: list[str], max_length: int, rounds: int = 3) -> list[dict]:
    """Median / p90 ms per sentence (batch 1) for every session, measured round-robin (sentence by sentence, all
    models in turn) so that the load of the shared machine hits every model alike."""
    feeds = [tokenizer(s, truncation=True, max_length=max_length, return_tensors="np") for s in sentences]
    times = [[] for _ in sessions]
    for r in range(rounds):
        for enc in feeds:
            for k, sess in enumerate(sessions):
                names = [i.name for i in sess.get_inputs()]
                feed = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"]) for n in names}
                t0 = time.perf_counter()
                sess.run(["logits"], feed)
                if r:  # the first round warms up
                    times[k].append((time.perf_counter() - t0) * 1000)
    out = []
    for t in times:
        t.sort()
        out.append({"p50_ms": statistics.median(t), "p90_ms": t[int(0.9 * (len(t) - 1))]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "pipelines" / "quickstart.yaml"))
    ap.add_argument("--model", help="model folder (default: the quickstart student, else its teacher)")
    ap.add_argument("--levels", nargs="+", default=["macs:0.5", "macs:0.2"],
                    help="pruning levels: macs:F / params:F (fraction of encoder kept) or heads:R+ffn:R (removed)")
    ap.add_argument("--importance", default="taylor", choices=["l1", "l2", "taylor"])
    ap.add_argument("--recover-steps", type=int, default=60, help="optimizer steps of KD recovery per level")
    ap.add_argument("--calibration-batches", type=int, default=4, help="taylor: batches of 32 training rows")
    ap.add_argument("--latency-sentences", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for latency")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    recipe = load_recipe(args.recipe)
    folder = Path(args.model) if args.model else default_model(recipe)
    base, tokenizer = load_trained(folder)
    ml = recipe.task.max_length
    data = load_task(recipe.task, seed=recipe.seed)
    spec = data.spec
    collator = Collator({"": tokenizer}, regression=spec.is_regression)
    dev = tokenize(data.dev, tokenizer, ml)
    rows = args.recover_steps * 32
    train = tokenize(data.train.select(range(min(rows, len(data.train)))), tokenizer, ml)
    train = train.add_column("index", list(range(len(train))))
    sentences = list(data.dev["text"][: args.latency_sentences])
    print(f"model: {folder}  ({count_params(base):,} params); dev rows {len(dev)}; recovery rows {len(train)}; "
          f"MACs at {ml} tokens", flush=True)

    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory()
    logits = logits_of(base, train, collator)  # the unpruned model teaches
    sess, parity = onnx_session(base, Path(tmp.name), "unpruned", args.threads, dev, collator)
    sessions = [sess]
    results = [{"level": "unpruned", "params": count_params(base), "macs": P.model_macs(base, ml),
                "acc_before": evaluate(base, dev, collator, spec)["accuracy"], "onnx_parity_max_abs": parity}]
    results[0]["acc_pruned"] = results[0]["acc_recovered"] = results[0]["acc_before"]
    print(f"unpruned measured ({time.perf_counter() - t_start:.0f}s)", flush=True)
    recover = RecoverConfig(epochs=1.0, max_steps=args.recover_steps, lr=1.0e-4, batch_size=32, warmup_ratio=0.1,
                            temperature=2.0, kd_weight=1.0, hard_label_weight=0.5)
    for text in args.levels:
        t0 = time.perf_counter()
        cfg = from_dict(PruneConfig, {**parse_level(text), "importance": args.importance, "calibration_batch_size": 32,
                                      "calibration_batches": args.calibration_batches}, file="bench", where="prune")
        model = copy.deepcopy(base)
        batches = calibration_batches(train, collator, cfg, recipe.seed, 0) if cfg.importance == "taylor" else None
        P.prune(model, cfg, batches=batches, seq_len=ml)
        row = {"level": text, "params": count_params(model), "macs": P.model_macs(model, ml),
               "layers": [f"{len(s.heads)}h/{len(s.ffn)}" for s in P.provenance(model).layers],
               "acc_before": results[0]["acc_before"], "acc_pruned": evaluate(model, dev, collator, spec)["accuracy"]}
        result = fit(model, train, collator, recover, seed=recipe.seed, objective=recovery_objective(logits, recover,
                     spec.is_regression), desc=f"recover {text}")
        row["recover_steps"] = result.steps
        row["acc_recovered"] = evaluate(model, dev, collator, spec)["accuracy"]
        sess, row["onnx_parity_max_abs"] = onnx_session(model, Path(tmp.name), f"level{len(sessions)}", args.threads,
                                                        dev, collator)
        sessions.append(sess)
        results.append(row)
        print(f"{text} measured ({time.perf_counter() - t0:.0f}s)", flush=True)
    t0 = time.perf_counter()
    for row, lat in zip(results, latencies_ms(sessions, tokenizer, sentences, ml)):
        row.update(lat)
    print(f"latency measured ({time.perf_counter() - t0:.0f}s)", flush=True)

    ref = results[0]
    print()
    print(f"| level | params | MACs ({ml} tok) | MAC speedup | ORT fp32 p50 ms (b=1, {args.threads} thr) | latency speedup "
          f"| dev acc before | right after | after recovery | layers (heads/FFN) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['level']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.1f}M | {ref['macs'] / r['macs']:.2f}x "
              f"| {r['p50_ms']:.2f} | {ref['p50_ms'] / r['p50_ms']:.2f}x | {100 * r['acc_before']:.2f} "
              f"| {100 * r['acc_pruned']:.2f} | {100 * r['acc_recovered']:.2f} | {' '.join(r.get('layers', [])) or '-'} |")
    print(f"\nrecovery: {args.recover_steps} steps x 32 rows of logit KD (T=2) + 0.5 CE from the unpruned model; "
          f"importance {args.importance}; total {time.perf_counter() - t_start:.0f}s. Shared CPU: latencies are noisy.")
    print("Reference (CoFi, BERT-base): SST-2 93.0 at 2.1x, 90.4 at 12x.")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": str(folder), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
