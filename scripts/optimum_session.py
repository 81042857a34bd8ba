"""How much of our int8's lead over Optimum's int8 preset is the session option: Optimum's file of a run timed with
ORT's stock session (as the bench stage times the peer, as its users run it) and with ours (SkipLayerNormFusion
off, see compress.export), beside our int8 dynamic file.

    .venv/bin/python scripts/optimum_session.py runs/quickstart --threads 1 2

Batch 1, the first ``--rows`` dev sentences of the run's task one at a time, idle threads sleeping, the three
sessions taking turns over ``--rounds`` rounds (two untimed runs each per round first); p50 per sentence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from compress.config import TaskConfig, from_dict
from compress.data import load_split
from compress.ort_session import session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder whose bench stage made the Optimum peer")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    quantize = json.loads((args.run / "quantize" / "manifest.json").read_text())
    task = from_dict(TaskConfig, quantize["config"]["task"])
    dev = load_split(task, "dev")
    rows = range(min(args.rows, len(dev)))
    tok = AutoTokenizer.from_pretrained(args.run / "quantize" / "tokenizer")
    pairs = dev["text_pair"] if "text_pair" in dev.column_names else None
    feeds = [dict(tok(dev["text"][i], *([pairs[i]] if pairs else []), truncation=True, max_length=task.max_length,
                      return_tensors="np")) for i in rows]
    files = {"optimum, stock session": (next((args.run / "bench" / "peers").rglob("*quantized*.onnx")), True),
             "optimum, our session": (next((args.run / "bench" / "peers").rglob("*quantized*.onnx")), False),
             "ours, int8 dynamic": (args.run / "quantize" / quantize["int8"]["dynamic"]["file"], False)}
    for threads in args.threads:
        sessions = {name: session(path, threads=threads, spin=False, stock=stock) for name, (path, stock) in
                    files.items()}
        times = {name: [] for name in sessions}
        for r in range(args.rounds):
            for name in list(sessions)[r % 3:] + list(sessions)[:r % 3]:
                s = sessions[name]
                inputs = [{n.name: f[n.name].astype(np.int64) for n in s.get_inputs()} for f in feeds]
                for feed in inputs[:2]:
                    s.run(None, feed)
                for feed in inputs:
                    start = time.perf_counter()
                    s.run(None, feed)
                    times[name].append(time.perf_counter() - start)
        ours = statistics.median(times["ours, int8 dynamic"])
        for name, t in times.items():
            p50 = statistics.median(t)
            print(f"{threads} thread{'s' if threads != 1 else ''}: {name}: p50 {p50 * 1000:.3f} ms "
                  f"({p50 / ours:.2f}x ours)")


if __name__ == "__main__":
    main()
