"""SST-2 acceptance: a distilled student's int8 model against the MPNet-base teacher, on this CPU.

    .venv/bin/python scripts/sst2_acceptance.py --student runs/sst2/distill/minilm-l6-kd/model \
        --teacher-manifest runs/sst2/teacher/manifest.json [--out runs/sst2-ship]

For when the teacher and students were trained elsewhere (a GPU machine: `compress run pipelines/sst2.yaml
--stage distill`) and only the student folder and the teacher's manifest came back. It
1. quantizes the student with the quantize stage's own code (ONNX export + parity, fusions, int8 dynamic and static
   with the accuracy guard) on all of SST-2 dev;
2. exports MPNet-base (the teacher's architecture, from the offline zoo, with a fresh 2-label head: the latency of a
   network does not depend on its weights) to ONNX fp32, fused when the fused graph's logits match (as the report's
   reference, `compress.export.fused_if_exact`);
3. times teacher ONNX fp32, student ONNX fp32 and the int8 models with the bench's protocol (series order, batch 1,
   real dev sentences one at a time; MPNet and BERT tokenizations of SST-2 align position by position, so the
   sequence lengths are the same);
4. prints accuracy, retention vs the teacher's dev accuracy (from its manifest) and speedup vs teacher ONNX fp32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from compress.bench import measure_in_fresh_process
from compress.config import BenchConfig, CalibrationConfig, QuantizeConfig, TaskConfig
from compress.data import Collator, load_task, tokenize
from compress.export import export_onnx, fused_if_exact
from compress.manifest import cpu_model, write_json
from compress.modeling import load_for_task, load_trained
from compress.quantize import quantize_model
from compress.tasks import round_down


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True, help="student model folder (save_pretrained)")
    ap.add_argument("--teacher-manifest", required=True, help="the teacher stage's manifest.json (dev accuracy)")
    ap.add_argument("--teacher-arch", default="mpnet-base", help="teacher architecture for the latency reference")
    ap.add_argument("--out", default="runs/sst2-ship")
    ap.add_argument("--max-length", type=int, default=66)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dev-rows", type=int, default=872, help="dev sentences timed per artifact")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "quantize").mkdir(parents=True, exist_ok=True)

    teacher_acc = json.loads(Path(args.teacher_manifest).read_text())["metrics"]["dev"]["accuracy"]
    data = load_task(TaskConfig(name="sst2", max_length=args.max_length, holdout=0.03), seed=42)
    student, tok = load_trained(args.student)
    dev = tokenize(data.dev, tok, args.max_length)
    collator = Collator({"": tok})
    qcfg = QuantizeConfig(modes=["dynamic", "static"], calibration=CalibrationConfig(method="minmax", samples=256),
                          max_drop=1.0)
    done = out / "quantize" / "quantize.json"
    if done.is_file():  # quantized by an earlier run of this script: reuse (delete the folder to redo)
        record = json.loads(done.read_text())
    else:
        record = quantize_model(student, dev, np.asarray(dev["label"]), ["accuracy"], collator, qcfg,
                                out / "quantize",
                                calib_rows=tokenize(data.train.select(range(256)), tok, args.max_length),
                                sens_rows=tokenize(data.holdout.select(range(128)), tok, args.max_length))
        tok.save_pretrained(out / "quantize" / "tokenizer")
        write_json(done, record)

    teacher, t_tok = load_for_task(args.teacher_arch, data.spec)
    t_ref = fused_if_exact(export_onnx(teacher.eval(), out / "teacher_model.onnx"), teacher.config.model_type,
                           tokenize(data.dev.select(range(64)), t_tok, args.max_length), Collator({"": t_tok}))

    q = out / "quantize"
    artifacts = {"teacher_onnx_fp32": {"kind": "onnx", "path": str(t_ref)},
                 "student_onnx_fp32": {"kind": "onnx", "path": str(q / record.get("fp32_opt", record["fp32"])["file"])}}
    for mode, entry in record["int8"].items():
        artifacts[f"student_int8_{mode}"] = {"kind": "onnx", "path": str(q / entry["file"])}
    cfg = BenchConfig(threads=args.threads, batch_sizes=[], seq_lengths=[], dev_rows=args.dev_rows)
    timing = measure_in_fresh_process(artifacts, dev, cfg, {})["results"]

    lines = [f"CPU {cpu_model()}; batch 1, {min(args.dev_rows, len(dev))} SST-2 dev sentences one at a time, "
             f"order {cfg.order}; teacher dev accuracy {teacher_acc:.4f} (from {args.teacher_manifest})"]
    summary = {"teacher_dev_accuracy": teacher_acc, "artifacts": {}}
    for name in artifacts:
        acc = None
        if name == "student_onnx_fp32":
            acc = record["fp32"]["metrics"]["accuracy"]
        elif name.startswith("student_int8_"):
            acc = record["int8"][name.removeprefix("student_int8_")]["metrics"]["accuracy"]
        elif name == "teacher_onnx_fp32":
            acc = teacher_acc
        row = {"accuracy": acc, "retention": acc / teacher_acc if acc is not None else None, "latency": {}}
        for r in timing[name]:
            ref = next(x for x in timing["teacher_onnx_fp32"] if x["threads"] == r["threads"])
            row["latency"][r["threads"]] = {"p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"],
                                            "speedup_vs_teacher_p50": ref["p50_ms"] / r["p50_ms"]}
        summary["artifacts"][name] = row
        lat = "; ".join(f"{t} thr p50 {v['p50_ms']:.2f} ms ({round_down(v['speedup_vs_teacher_p50'], 1):.1f}x)"
                        for t, v in row["latency"].items())
        lines.append(f"  {name:22s} acc {acc:.4f} retention {round_down(row['retention'], 3) * 100:.1f}%  {lat}")
    write_json(out / "acceptance.json", summary)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
