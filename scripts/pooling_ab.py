"""Does the sentence-embedding MiniLM student classify better from the mean of its tokens than from [CLS]?

    .venv/bin/python scripts/pooling_ab.py mean 2,4,5,6 [EPOCHS]     # then: ... cls 2,4,5,6

all-MiniLM-L6-v2 (the offline student init) was trained for mean-pooled sentence embeddings, not for its [CLS]
token. This plain A/B fine-tunes the zoo MiniLM cut to the given (1-based) layers on SST-2's gold labels only (no
teacher), AdamW lr 1e-4, batch 64, 6% warmup then linear decay, bf16 autocast, and prints dev accuracy for one
pooling: ``mean`` (mask-weighted mean of the last hidden states) or ``cls`` (the [CLS] hidden state), each followed
by dropout 0.1 and a linear layer. Seeded; ~9 min per arm on the 2-core CPU.
"""

import csv
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from teachers.zoo import resolve

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "SST-2"


def read(path: Path) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[0] for r in rows[1:]], [int(r[1]) for r in rows[1:]]


def main() -> None:
    pool, layers = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    epochs = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    torch.manual_seed(0)
    random.seed(0)
    folder = resolve("minilm-l6")
    tok = AutoTokenizer.from_pretrained(folder)
    tr_x, tr_y = read(GLUE / "train.tsv")
    dv_x, dv_y = read(GLUE / "dev.tsv")
    enc = AutoModel.from_pretrained(folder)
    enc.encoder.layer = torch.nn.ModuleList([enc.encoder.layer[i - 1] for i in layers])
    enc.config.num_hidden_layers = len(layers)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(enc.config.hidden_size, 2))
    params = list(enc.parameters()) + list(head.parameters())

    def forward(texts: list[str]) -> torch.Tensor:
        batch = tok(texts, padding=True, truncation=True, max_length=66, return_tensors="pt")
        h = enc(**batch).last_hidden_state
        if pool == "cls":
            return head(h[:, 0])
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return head((h * m).sum(1) / m.sum(1))

    bs = 64
    steps = int(len(tr_x) / bs * epochs)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / (0.06 * steps), max(0.0, (steps - s) / (steps * 0.94))))
    order = np.random.RandomState(0).permutation(len(tr_x)).tolist() * 3
    t0 = time.time()
    enc.train()
    head.train()
    for s in range(steps):
        idx = order[s * bs:(s + 1) * bs]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = forward([tr_x[i] for i in idx])
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([tr_y[i] for i in idx]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if s % 200 == 0:
            print(f"step {s}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    enc.eval()
    head.eval()
    pred: list[int] = []
    with torch.no_grad():
        for i in range(0, len(dv_x), 128):
            pred += forward(dv_x[i:i + 128]).argmax(-1).tolist()
    acc = 100 * np.mean(np.array(pred) == np.array(dv_y))
    print(f"RESULT pooling {pool} layers {layers} epochs {epochs}: dev accuracy {acc:.2f} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
