"""How many augmented copies are identical to their original sentence once whitespace is normalised: the transfer
set of the first N SST-2 training rows, MiniLM-L6's input embeddings as the neighbour source, the default augment
setting (copies 4, p 0.4, 15 neighbours) unless given.

    python scripts/augment_duplicates.py [--rows 2000]

Run it against an older checkout (PYTHONPATH=<checkout>) to count the duplicates that checkout kept."""

from __future__ import annotations

import argparse

from transformers import AutoModel, AutoTokenizer

from compress.config import AugmentConfig, TaskConfig
from compress.data import load_split
from compress.distill.augment import augment_rows
from teachers.zoo import resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    rows = load_split(TaskConfig(name="sst2"), "train").select(range(args.rows))
    folder = resolve("minilm-l6")
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    out, _ = augment_rows(rows, tokenizer, model.get_input_embeddings().weight.detach(), AugmentConfig())
    copies = [r for r in out if r["gold"] == 0]
    same = sum(" ".join(r["text"].split()) == " ".join(rows[r["source"]]["text"].split()) for r in copies)
    print(f"{args.rows} rows: {len(copies)} copies, {same} identical to their original ({same / max(len(copies), 1):.1%})")


if __name__ == "__main__":
    main()
