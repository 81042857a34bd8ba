"""A run folder as the stages write it (teacher, quantize, bench manifests), with real int8 ONNX files, for the
report and bundle tests. Numbers are chosen by the test; the files follow the stages' schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def make_run(root: Path, name: str, *, int8_model: Path, fp32_model: Path, tokenizer_json: Path,
             teacher_acc: float = 0.90, fp32_acc: float = 0.89, int8: Optional[dict] = None,
             latency: Optional[dict] = None, seed: int = 42, student: Optional[str] = None,
             student_acc: float = 0.87, scored_batch: Optional[int] = 1) -> Path:
    """``int8``: mode -> (accuracy, shippable). ``latency``: bench artifact name -> {threads: p50_ms} (p90 = 1.2 x
    p50). ``student``: a distill stage with that student, which is then the quantized model. ``scored_batch``: None
    for a quantize record made before int8 models were scored one text at a time."""
    int8 = int8 or {"dynamic": (0.885, True), "static": (0.87, True)}
    run = root / name
    env = {"versions": {"python": "3.11.7", "onnxruntime": "1.32.0", "compress": "0.1.0"},
           "host": {"cpu": "Test CPU", "cores": 2}}
    _write(run / "teacher" / "manifest.json", {
        "stage": "teacher", "recipe": name, "recipe_path": f"pipelines/{name}.yaml", "seed": seed,
        "metrics": {"dev": {"accuracy": teacher_acc}, "holdout": {"accuracy": 0.9}}, "params": 22_700_000,
        "env": env, "created": "2026-11-26T08:00:00+00:00"})
    (run / "teacher" / "model").mkdir(parents=True)
    (run / "teacher" / "model" / "model.safetensors").write_bytes(b"\0" * 4096)
    if student:
        model = run / "distill" / student / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        (model / "model.safetensors").write_bytes(b"\0" * 2048)
        _write(run / "distill" / "manifest.json", {
            "stage": "distill", "recipe": name, "seed": seed, "params": {student: 11_000_000},
            "students": {student: {"metrics": {"dev": {"accuracy": student_acc}}}}, "env": env,
            "created": "2026-11-26T08:05:00+00:00"})
    q = run / "quantize"
    (q / "tokenizer").mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        src = Path(tokenizer_json).with_name(name) if name != "tokenizer.json" else Path(tokenizer_json)
        if src.is_file():  # the whole tokenizer when it has a folder (AutoTokenizer can load it)
            shutil.copyfile(src, q / "tokenizer" / name)
    shutil.copyfile(fp32_model, q / "model.onnx")
    record = {**({"scored_batch": scored_batch} if scored_batch else {}),
              "fp32": {"file": "model.onnx", "metrics": {"accuracy": fp32_acc}}, "int8": {},
              "source": {"model": student or "teacher",
                         "folder": str(run / ("distill/" + student if student else "teacher") / "model")}}
    for mode, (acc, ok) in int8.items():
        shutil.copyfile(int8_model, q / f"int8_{mode}.onnx")
        record["int8"][mode] = {"file": f"int8_{mode}.onnx", "metrics": {"accuracy": acc},
                                "drop_points": round(100 * (fp32_acc - acc), 4), "shippable": ok}
    _write(q / "quantize.json", record)
    _write(q / "manifest.json", {"stage": "quantize", "recipe": name, "seed": seed, "params": 22_700_000,
                                 "metrics": {"dev": {"accuracy": fp32_acc}}, "env": env,
                                 "created": "2026-11-26T08:10:00+00:00", **record})
    if latency is not None:
        write_bench(run, latency, record, env)
    return run


def bench_artifact(p50: dict, metrics: Optional[dict] = None, **extra) -> dict:
    """One artifact of bench.json (compress/bench.py): a dev series per thread count plus a fixed shape."""
    results = []
    for threads, ms in p50.items():
        results.append({"input": "dev", "threads": threads, "batch": 1, "seq": "real (mean 25.0)", "p50_ms": ms,
                        "p90_ms": round(1.2 * ms, 4), "p99_ms": 1.5 * ms, "mean_ms": 1.1 * ms, "runs": 200,
                        "throughput_seq_s": round(1000 / (1.1 * ms), 2)})
        results.append({"input": "b8xs32", "threads": threads, "batch": 8, "seq": 32, "p50_ms": 6 * ms,
                        "p90_ms": 7 * ms, "p99_ms": 8 * ms, "mean_ms": 6.5 * ms, "runs": 20,
                        "throughput_seq_s": round(8000 / (6.5 * ms), 2)})
    return {"results": results, "metrics": metrics, "size_bytes": 1_000_000, "params": 22_700_000,
            "peak_rss_mb": 300.0, "load_s": 0.2, **extra}


def write_bench(run: Path, latency: dict, record: dict, env: dict) -> None:
    """bench/bench.json and its manifest, as the bench stage writes them, for the artifacts named in ``latency``
    (torch_fp32, onnx_fp32, int8_<mode>, peers) -> {threads: p50_ms}."""
    artifacts = {}
    for name, p50 in latency.items():
        extra = {"kind": "torch_fp32" if name.startswith("torch") else "onnx"}
        if name.startswith("int8_"):
            entry = record["int8"][name[5:]]
            extra.update(ours=True, shippable=entry["shippable"], path=str(run / "quantize" / entry["file"]))
            metrics = entry["metrics"]
        elif name == "onnx_fp32":
            metrics = record["fp32"]["metrics"]
            extra["path"] = str(run / "quantize" / "model.onnx")
        else:
            metrics = {"accuracy": 0.80}
            extra["peer"] = True
        artifacts[name] = bench_artifact(p50, metrics, **extra)
    protocol = {"cpu": "Test CPU", "cores": 2, "threads": sorted({t for p in latency.values() for t in p}),
                "inter_op_threads": 1, "dev_rows": 200, "warmup": 2,
                "dev": "first 200 dev rows, batch 1, unpadded, one timed run each",
                "timer": "time.perf_counter around one forward; warm-up runs excluded",
                "spin": "idle threads sleep (OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0)", "rounds": 3}
    _write(run / "bench" / "bench.json", {"protocol": protocol, "artifacts": artifacts, "ours": None, "ratios": {}})
    _write(run / "bench" / "manifest.json", {"stage": "bench", "recipe": run.name, "seed": 42, "env": env,
                                             "created": "2026-11-26T08:20:00+00:00"})
