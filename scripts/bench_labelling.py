"""How fast can a teacher label training rows for distillation on this machine, and how close are the labels?

    .venv/bin/python scripts/bench_labelling.py --teacher runs/sst2-cpu/teacher/model [--rows 2048] [--threads 2]

Labels the first ``--rows`` SST-2 training sentences (max_length 66, as pipelines/sst2-cpu.yaml) with the teacher in
torch fp32 (what the distill stage did before), torch under bf16 autocast (what it does now for a bf16 student),
ORT fp32 (the exported, fused graph) and ORT int8 dynamic, and prints rows/s plus the largest logit difference and
argmax agreement against torch fp32. The labels are KD targets: an int8 teacher that flips predictions is no use.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compress.config import QuantizeConfig, TaskConfig, from_dict
from compress.data import Collator, load_task, tokenize
from compress.evaluate import predict
from compress.export import export_onnx, fused_if_exact, onnx_predict, session
from compress.modeling import load_trained
from compress.quantize import quantize_dynamic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True, help="a saved model folder (a teacher stage's model/)")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_trained(args.teacher)
    data = load_task(from_dict(TaskConfig, {"name": "sst2", "max_length": 66, "holdout": 0.03}), seed=42)
    ds = tokenize(data.train.select(range(min(args.rows, len(data.train)))), tok, 66)
    collator = Collator({"": tok})
    results = []

    def timed(name: str, fn) -> np.ndarray:
        t0 = time.perf_counter()
        out = fn()
        results.append((name, len(ds) / (time.perf_counter() - t0), out))
        return out

    ref = timed("torch fp32", lambda: predict(model, ds, collator, batch_size=args.batch_size))
    timed("torch bf16 autocast", lambda: predict(model, ds, collator, batch_size=args.batch_size, precision="bf16"))
    with tempfile.TemporaryDirectory() as tmp:
        plain = export_onnx(model, Path(tmp) / "teacher.onnx")
        fp32 = fused_if_exact(plain, model.config.model_type, ds.select(range(64)), collator)
        sess = session(fp32, args.threads)
        timed("ORT fp32", lambda: onnx_predict(sess, ds, collator, batch_size=32))
        int8 = quantize_dynamic(fp32, Path(tmp) / "teacher_int8.onnx", from_dict(QuantizeConfig, {"per_channel": True}))
        sess8 = session(int8, args.threads)
        timed("ORT int8 dynamic", lambda: onnx_predict(sess8, ds, collator, batch_size=32))
    print(f"{len(ds)} SST-2 training rows, {args.threads} threads, teacher {args.teacher}")
    print("| teacher run as | rows/s | vs torch fp32 | max abs logit diff | argmax agreement |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, out in results:
        print(f"| {name} | {rate:.1f} | {rate / results[0][1]:.2f}x | {np.abs(out - ref).max():.4f} "
              f"| {(out.argmax(1) == ref.argmax(1)).mean():.4f} |")


if __name__ == "__main__":
    main()
