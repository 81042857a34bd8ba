"""The bench's memory probe: the peak RSS of one artifact alone in a fresh process (``python -m compress.probe SPEC
OUT``, started by `compress.bench.run_isolated`). Light on purpose: an ONNX file's process imports onnxruntime, numpy
and this module (with `compress.ort_session`, standard library only), as a user's process would; the torch peers',
torch and transformers. The ONNX runner and the inputs it is fed live here too, so the bench times the models it
probes through the same code."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from compress.errors import CompressError
from compress.ort_session import example_id_range


def fixed_inputs(names: list[str], batch: int, seq: int, seed: int = 0,
                 vocab_size: Optional[int] = None) -> dict[str, np.ndarray]:
    """Random token ids (within ``vocab_size``: a small vocabulary's model failed at ids up to 20000)."""
    vocab_size = vocab_size or 20000
    rng = np.random.default_rng(seed)
    ids = rng.integers(*example_id_range(vocab_size, 20000), size=(batch, seq), dtype=np.int64)
    if vocab_size > 102:
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP] of BERT's vocabulary
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: feeds[n] for n in names}


def dev_feeds(rows, names: list[str]) -> list[dict[str, np.ndarray]]:
    return [{n: np.asarray([r[n]] if n in r else [[0] * len(r["input_ids"])], dtype=np.int64) for n in names}
            for r in rows]


class OnnxRunner:
    def __init__(self, path: Path, threads: int, spin: bool = True, stock: bool = False):
        from compress.ort_session import session

        self.sess = session(path, threads=threads, spin=spin, stock=stock)
        self.names = [i.name for i in self.sess.get_inputs()]

    def __call__(self, feeds: dict[str, np.ndarray]):
        return self.sess.run(["logits"], feeds)[0]


def make_runner(art: dict, threads: int, models: dict, spin: bool = True):
    """An ONNX file's runner, or a torch peer's (``models``: the loaded torch peers by kind)."""
    if art["kind"].startswith("torch"):
        from compress.bench import TorchRunner  # torch's process imports torch all the same

        return TorchRunner(models[art["kind"]], threads)
    return OnnxRunner(Path(art["path"]), threads, spin, stock=art.get("stock", False))


def probe_memory(spec: dict) -> dict:
    """Peak RSS (MiB) of one artifact in this (fresh) process: load it, run the largest fixed shape and a few dev rows
    (``spec["dev_rows"]``: token columns as lists). Also, at the end, the RSS's two parts (Linux): anonymous memory
    (the weights, onnxruntime's arena, the interpreter's objects) and file pages mapped (the shared libraries' code:
    how much of it the process maps depends on what the page cache holds: 38.3 vs 51.8 MiB here for one int8 model
    from an older and a just-installed .venv; the anonymous part, 65.5 MiB, did not move)."""
    rss0 = _status_mb("VmRSS")
    t0 = time.perf_counter()
    models = {}
    if spec["kind"].startswith("torch"):
        from compress.bench import load_torch

        models[spec["kind"]] = load_torch(spec["kind"], spec["model_dir"])
    run = make_runner(spec, max(spec["threads"]), models, spec.get("spin", True))
    load_s = time.perf_counter() - t0
    for f in dev_feeds(spec["dev_rows"], run.names):
        run(f)
    if spec["largest"]:
        run(fixed_inputs(run.names, *spec["largest"], vocab_size=spec.get("vocab_size")))
    parts = {f"rss_{part.lower()}_end_mb": round(mb, 1) for part in ("Anon", "File")
             if (mb := _status_mb(f"Rss{part}", fallback=False)) is not None}
    return {"load_s": round(load_s, 3), "rss_before_load_mb": round(rss0, 1),
            "peak_rss_mb": round(_status_mb("VmHWM"), 1), **parts}


def _status_mb(field: str, fallback: bool = True) -> Optional[float]:
    """This process's ``VmRSS`` (now), ``VmHWM`` (its high-water mark; unlike ru_maxrss it is not inherited across
    exec from the parent), ``RssAnon`` or ``RssFile`` in MiB, from /proc; elsewhere psutil's RSS and ru_maxrss (None
    without ``fallback``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if not fallback:
        return None
    if field == "VmRSS":
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    from compress.bundle_predict import peak_rss_mb  # getrusage in each system's unit (stdlib only: read at the end)

    return peak_rss_mb()


def _main(spec_path: str, out_path: str) -> int:
    try:
        result, status = probe_memory(json.loads(Path(spec_path).read_text())), 0
    except CompressError as e:
        result, status = {"error": str(e)}, 2
    from compress.manifest import write_json  # imported once measured: its imports are not the model's memory

    write_json(Path(out_path), result)
    return status


if __name__ == "__main__":  # worker: python -m compress.probe SPEC.json OUT.json
    try:
        sys.exit(_main(sys.argv[1], sys.argv[2]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent says "interrupted", once
        sys.exit(130)
