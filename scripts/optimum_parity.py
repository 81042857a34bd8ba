"""A bundle loaded in Optimum and a transformers pipeline, as its model card shows, against predict.py on SST-2's
dev split: accuracy, label agreement and largest score difference of the card's way (the session from
the bundle's Predictor), of `ORTModelForSequenceClassification.from_pretrained` (onnxruntime's default fusions) and
of the card's way with ``--batch-size`` inputs a call.

    python scripts/optimum_parity.py runs/quickstart/bundle/quickstart-sst2-int8 [--batch-size 8]
        [--data-dir ../shared/data/glue/SST-2]

Runs on a temporary copy of the bundle (importing its predict.py writes __pycache__ there).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.config import TaskConfig  # noqa: E402
from compress.data import DEFAULT_GLUE_DIR, load_split  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_GLUE_DIR / "SST-2", help="an SST-2 folder (dev.tsv)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoConfig, AutoTokenizer, pipeline

    dev = load_split(TaskConfig(name="sst2", data_dir=str(args.data_dir)), "dev")  # the stages' own reader
    texts, gold = list(dev["text"]), list(dev["label"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = shutil.copytree(args.bundle, Path(tmp) / "bundle", ignore=shutil.ignore_patterns("node_modules"))
        spec = importlib.util.spec_from_file_location("predict", folder / "predict.py")
        predict = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(predict)
        runner = predict.Predictor(folder)
        names = runner.labels
        want = runner.predict(texts)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        card = ORTModelForSequenceClassification(config=AutoConfig.from_pretrained(folder), session=runner.session)
        plain = ORTModelForSequenceClassification.from_pretrained(folder)
        for way, model, batch in (("card (Predictor's session)", card, 1), ("from_pretrained", plain, 1),
                                  (f"card, batch_size={args.batch_size}", card, args.batch_size)):
            classify = pipeline("text-classification", model=model, tokenizer=tokenizer, truncation=True)
            t0 = time.perf_counter()
            got = classify(texts, batch_size=batch)
            wall = time.perf_counter() - t0
            correct = sum(names.index(g["label"]) == y for g, y in zip(got, gold))
            same = sum(g["label"] == w["label"] for g, w in zip(got, want))
            diff = max(abs(g["score"] - w["scores"][g["label"]]) for g, w in zip(got, want))
            print(f"{way}: accuracy {correct / len(gold):.4f} on {len(gold)} rows; labels as predict.py {same}/"
                  f"{len(gold)}; largest score difference {diff:.2e}; {wall:.1f} s")
    print(f"predict.py: accuracy {sum(names.index(w['label']) == y for w, y in zip(want, gold)) / len(gold):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
