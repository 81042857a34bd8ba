"""Score a run folder's int8 models one dev text at a time, next to what its quantize record says.

    .venv/bin/python scripts/rescore_int8.py runs/sst2-cpu [more run folders]

Quantize records written before `compress.export.SHIPPED_BATCH` (no ``scored_batch`` key) scored their int8 models in
length-sorted batches of 32. An int8 *dynamic* model's activation scales cover its whole input batch, so those numbers
are not the ones a bundle, which runs one text at a time, gives. This prints both per model: recorded and alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from compress.config import TaskConfig, from_dict
from compress.data import Collator, load_task, tokenize
from compress.export import SHIPPED_BATCH, onnx_predict, session
from compress.manifest import scores
from compress.metrics import compute_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each with quantize/manifest.json)")
    args = ap.parse_args()
    for run in args.runs:
        q = run / "quantize"
        manifest = json.loads((q / "manifest.json").read_text())
        task = from_dict(TaskConfig, manifest["config"]["task"])
        data = load_task(task, seed=manifest.get("seed", 42))
        tok = AutoTokenizer.from_pretrained(q / "tokenizer")
        dev = tokenize(data.dev, tok, task.max_length)
        collator, labels = Collator({"": tok}), np.asarray(dev["label"])
        print(f"{run} ({len(dev)} dev rows; record scored at batch {manifest.get('scored_batch', 32)})")
        for mode, entry in manifest["int8"].items():
            logits = onnx_predict(session(q / entry["file"]), dev, collator, SHIPPED_BATCH)
            alone = compute_metrics(data.spec.metrics, logits, labels)
            first = data.spec.metrics[0]
            recorded = scores(entry["metrics"])[first]
            print(f"  int8 {mode:8s} recorded {recorded:.4f}  alone {alone[first]:.4f}  "
                  f"({100 * (alone[first] - recorded):+.2f} points)")


if __name__ == "__main__":
    main()
