"""Wall time of `compress search` rerun with another --threads on a finished search folder (tiny random 3-layer BERT
teacher, real SST-2: 400 training rows, all 872 dev sentences scored). Usage: PYTHONPATH=<checkout> python
scripts/search_retime_bench.py OUT_DIR"""
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from compress.config import load_recipe  # noqa: E402
from compress.search import run_search  # noqa: E402
from teachers.zoo import resolve  # noqa: E402

GLUE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "glue"
out = Path(sys.argv[1])
runs = out / "runs"
torch.manual_seed(0)
folder = runs / "tiny" / "teacher" / "model"
BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=128)).save_pretrained(folder)
AutoTokenizer.from_pretrained(resolve("minilm-l6")).save_pretrained(folder)
path = out / "tiny.yaml"
path.write_text(yaml.safe_dump({
    "name": "tiny", "runs_dir": str(runs),
    "task": {"name": "sst2", "data_dir": str(GLUE / "SST-2"), "max_length": 64, "max_train_samples": 400,
             "holdout": 0.05},
    "teacher": {"model": "minilm-l6"},
    "search": {"depths": [1, 2, 3], "keep_macs": [1.0, 0.5], "modes": ["dynamic", "static"], "train_steps": 20,
               "recover_steps": 10, "batch_size": 8, "dev_rows": 100, "time_limit_min": 30.0}}))
recipe = load_recipe(path)
t0 = time.perf_counter()
first = run_search(recipe, budget_ms=1000.0, threads=1)
t1 = time.perf_counter()
again = run_search(recipe, budget_ms=1000.0, threads=2)
t2 = time.perf_counter()
print(f"first search (1 thread): {t1 - t0:.1f} s, counts {first['counts']}")
print(f"rerun at 2 threads: {t2 - t1:.1f} s, counts {again['counts']}")
