"""Which MiniLM-based student shapes are fast enough for a speedup target on SST-2? Latency only, no training.

    .venv/bin/python scripts/sst2_latency_sweep.py [--shapes L6 L6-k50 L4 L3 L3-k50 ...] [--out runs/sst2-sweep]

The latency of a network does not depend on its weights, so each shape is the real MiniLM-L6 (zoo) truncated to
its bottom ``L`` layers (`students.narrow`, what a recipe's ``init: minilm-l6, layers: L`` builds) and, for
``-kNN``, pruned (heads and FFN neurons, L1 importance, no data) to NN% of its encoder MACs at max_length, exactly
as the prune stage cuts. Each is exported, fused and quantized to int8 dynamic by the quantize stage's code (the
guard off: accuracy is not the question here), then timed with the bench's loop on real SST-2 dev sentences one at
a time, in one pass with the MPNet-base teacher's ONNX fp32 model (fused when exact; random head), at 1 and 2 threads.
Prints p50 and the speedup vs the teacher per shape: the shapes a distillation recipe may aim at for a target.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from compress import prune as P
from compress.bench import measure_in_fresh_process
from compress.config import BenchConfig, PruneConfig, QuantizeConfig, StudentConfig, TaskConfig, from_dict
from compress.data import Collator, load_task, tokenize
from compress.export import export_onnx, fused_if_exact
from compress.manifest import cpu_model, write_json
from compress.modeling import count_params, load_for_task
from compress.quantize import quantize_model
from compress.tasks import round_down
from students.narrow import narrow_student

SHAPE = re.compile(r"^L(\d+)(?:-k(\d+))?$")


def build(shape: str, spec, max_length: int):
    m = SHAPE.match(shape)
    if not m:
        raise SystemExit(f"--shapes: {shape!r} is not L<layers> or L<layers>-k<percent of MACs kept>")
    layers, keep = int(m.group(1)), m.group(2)
    model, tok, _ = narrow_student(from_dict(StudentConfig, {"name": shape, "kind": "narrow", "init": "minilm-l6",
                                                            "layers": layers}), None, spec)
    if keep is not None:
        P.prune(model, PruneConfig(keep_macs=int(keep) / 100, importance="l1"), seq_len=max_length)
    return model.eval(), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["L6", "L6-k50", "L4", "L4-k50", "L3", "L3-k50", "L2"])
    ap.add_argument("--out", default="runs/sst2-sweep")
    ap.add_argument("--max-length", type=int, default=66)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dev-rows", type=int, default=872, help="dev sentences timed per model")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_task(TaskConfig(name="sst2", max_length=args.max_length, holdout=0.03), seed=42)

    teacher, t_tok = load_for_task("mpnet-base", data.spec)
    ref = fused_if_exact(export_onnx(teacher.eval(), out / "teacher_fp32.onnx"), teacher.config.model_type,
                         tokenize(data.dev.select(range(64)), t_tok, args.max_length), Collator({"": t_tok}))
    artifacts = {"teacher_onnx_fp32": {"kind": "onnx", "path": str(ref)}}
    info = {}
    dev = None
    for shape in args.shapes:
        model, tok = build(shape, data.spec, args.max_length)
        dev = tokenize(data.dev, tok, args.max_length)
        work = out / shape
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        qcfg = QuantizeConfig(modes=["dynamic"], max_drop=100.0, sensitivity_rows=1, ort_format=False)
        few = dev.select(range(16))
        record = quantize_model(model, few, np.asarray(few["label"]), ["accuracy"], Collator({"": tok}), qcfg,
                                work, calib_rows=few, sens_rows=few.select(range(1)), label=f"sweep {shape}",
                                verdicts=False)  # latency only: no accuracy guard (max_drop 100)
        path = work / record["int8"]["dynamic"]["file"]
        artifacts[shape] = {"kind": "onnx", "path": str(path)}
        info[shape] = {"params": count_params(model), "layers": model.config.num_hidden_layers,
                       "encoder_macs": P.model_macs(model, args.max_length), "file_mb": path.stat().st_size / 2**20}
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    cfg = BenchConfig(threads=args.threads, batch_sizes=[], seq_lengths=[], dev_rows=args.dev_rows)
    timing = measure_in_fresh_process(artifacts, dev, cfg, {})["results"]
    ref_ms = {r["threads"]: r["p50_ms"] for r in timing["teacher_onnx_fp32"]}
    lines = [f"CPU {cpu_model()}; int8 dynamic (fused, per channel); batch 1, {min(args.dev_rows, len(dev))} SST-2 dev "
             f"sentences one at a time; order {cfg.order}; teacher = MPNet-base ONNX fp32 ({'fused' if ref.stem.endswith('_fused') else 'plain'})",
             "| shape | params (M) | encoder MACs (M) | file (MiB) | " + " | ".join(
                 f"p50 {t}t (ms) | speedup {t}t" for t in args.threads) + " |",
             "|---|---:|---:|---:|" + "---:|---:|" * len(args.threads)]
    summary = {"teacher_p50_ms": ref_ms, "shapes": {}}
    for shape in ["teacher_onnx_fp32", *args.shapes]:
        rows = {r["threads"]: r for r in timing[shape]}
        meta = info.get(shape, {})
        cells = " | ".join(f"{rows[t]['p50_ms']:.2f} | {round_down(ref_ms[t] / rows[t]['p50_ms'], 1):.1f}x"
                           for t in args.threads)
        macs = f"{meta['encoder_macs'] / 1e6:.0f}" if meta else "-"
        lines.append(f"| {shape} | {meta.get('params', count_params(teacher)) / 1e6:.1f} | {macs} | "
                     f"{meta.get('file_mb', ref.stat().st_size / 2**20):.1f} | {cells} |")
        summary["shapes"][shape] = {**meta, "latency": {t: {"p50_ms": rows[t]["p50_ms"], "p90_ms": rows[t]["p90_ms"],
                                                            "speedup": ref_ms[t] / rows[t]["p50_ms"]}
                                                        for t in args.threads}}
    write_json(out / "sweep.json", summary)
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
