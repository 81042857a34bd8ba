"""An int8 model as .onnx against its ORT-format copy (compress.ort_session.to_ort_format): p50 ms a run and the
largest logit difference, one thread, the same 20-token input every run.

    python scripts/ort_format_speed.py runs/quickstart/quantize/int8_static.onnx [OTHER.ort ...]

The .ort is written next to a temporary copy; further arguments are other .ort files to time beside it (an older
conversion, say)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.ort_session import to_ort_format


def timed(path: Path, runs: int) -> tuple[float, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((1, 20), dtype=np.int64) for i in sess.get_inputs()}
    feed["input_ids"] = np.arange(1000, 1020, dtype=np.int64)[None]
    for _ in range(10):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = sess.run(None, feed)[0]
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("others", type=Path, nargs="*")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        converted = to_ort_format(args.onnx, Path(tmp) / "model.ort")
        base_ms, base = timed(args.onnx, args.runs)
        print(f"{args.onnx}: p50 {base_ms:.3f} ms")
        for path in [converted, *args.others]:
            ms, out = timed(path, args.runs)
            print(f"{path}: p50 {ms:.3f} ms ({ms / base_ms:.2f}x the .onnx), max |logit diff| "
                  f"{float(np.abs(out - base).max()):.2g}")


if __name__ == "__main__":
    main()
