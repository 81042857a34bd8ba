"""Peak RSS of ONNX models as the bench's memory probe measures it, and its two parts (anonymous memory, file pages).

    python scripts/probe_rss.py MODEL.onnx...                      # 3 fresh processes per model, this interpreter
    python scripts/probe_rss.py --preimport compress.bench MODEL.onnx...   # what the probe read before 2026-12-06

Each model runs in a fresh process of this Python (so a comparison of two installs runs this script with each
install's python, PYTHONPATH at this checkout): `compress.probe.probe_memory` on 8 dev-length rows of random token ids
(seed 0) and the b8xs128 shape, 2 threads, idle threads sleeping. Prints peak RSS, and RSS's anonymous and
file-backed parts at the end (MiB). The file part depends on what the page cache holds (docs/quantization.md,
the bench stage).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--preimport", help="a module the probe process imports first (e.g. compress.bench)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from compress.bench import omp_env

    rng = np.random.default_rng(0)
    rows = [{"input_ids": [101] + rng.integers(1000, 20000, size=n).tolist() + [102], "attention_mask": [1] * (n + 2),
             "token_type_ids": [0] * (n + 2)} for n in (20, 30, 12, 25, 40, 18, 22, 28)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", **omp_env(False), "PYTHONPATH": str(ROOT)}
    code = ((f"import {args.preimport}; " if args.preimport else "") + "import json, sys; from compress.probe import "
            "probe_memory; print(json.dumps(probe_memory(json.load(open(sys.argv[1])))))")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        for model in args.models:
            spec_path.write_text(json.dumps({"kind": "onnx", "path": str(model.resolve()), "dev_rows": rows,
                                             "threads": [1, 2], "largest": [8, 128], "vocab_size": 30522,
                                             "spin": False, "model_dir": None}))
            for _ in range(args.repeats):
                done = subprocess.run([sys.executable, "-P", "-c", code, str(spec_path)], env=env, capture_output=True,
                                      text=True, check=True)
                out = json.loads(done.stdout)
                print(f"{model}: peak {out['peak_rss_mb']:.1f} MiB; at the end anonymous "
                      f"{out.get('rss_anon_end_mb', float('nan')):.1f}, file pages "
                      f"{out.get('rss_file_end_mb', float('nan')):.1f}")


if __name__ == "__main__":
    main()
