"""predict.mjs (Node.js, onnxruntime-web) against predict.py on a bundle and SST-2's dev split:
label agreement, accuracy of each, largest score difference, and the Node run's wall time.

    python scripts/js_parity.py runs/quickstart/bundle/quickstart-sst2-int8 [--data-dir ../shared/data/glue/SST-2]

Needs `node` and the npm packages `make test` installs into .node/ (linked beside a temporary copy of the bundle).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.bundle_predict import Predictor  # noqa: E402
from compress.config import TaskConfig  # noqa: E402
from compress.data import DEFAULT_GLUE_DIR, load_split  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_GLUE_DIR / "SST-2", help="an SST-2 folder (dev.tsv)")
    args = parser.parse_args()
    if not (ROOT / ".node" / "node_modules").is_dir():
        parser.error(f"{ROOT / '.node' / 'node_modules'}: the npm packages predict.mjs needs are not installed: run "
                     f"`make test` (or `make .node/.installed`) first")
    dev = load_split(TaskConfig(name="sst2", data_dir=str(args.data_dir)), "dev")  # the stages' own reader
    texts, gold = list(dev["text"]), list(dev["label"])
    with tempfile.TemporaryDirectory() as tmp:
        copy = shutil.copytree(args.bundle, Path(tmp) / "bundle", ignore=shutil.ignore_patterns("node_modules"))
        (Path(tmp) / "node_modules").symlink_to(ROOT / ".node" / "node_modules")
        (Path(tmp) / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        start = time.perf_counter()
        proc = subprocess.run(["node", str(copy / "predict.mjs"), "--json", "--file", str(Path(tmp) / "texts.txt")],
                              capture_output=True, text=True)
        if proc.returncode != 0:  # node's own error, not a CalledProcessError traceback that hides it
            print(f"predict.mjs failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}", file=sys.stderr)
            return 1
        node_s = time.perf_counter() - start
    js = [json.loads(line) for line in proc.stdout.splitlines()]
    predictor = Predictor(args.bundle)
    py = [predictor.predict([t])[0] for t in texts]
    labels = predictor.labels
    accuracy = lambda res: sum(labels.index(r["label"]) == g for r, g in zip(res, gold)) / len(gold)  # noqa: E731
    agree = sum(a["label"] == b["label"] for a, b in zip(js, py))
    diff = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(js, py) for k in labels)
    print(f"{len(texts)} texts: same label {agree}/{len(texts)}; accuracy node {accuracy(js):.4f}, python "
          f"{accuracy(py):.4f}; max score difference {diff:.4f}; node wall {node_s:.1f} s (load included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
