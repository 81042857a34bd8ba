"""Data augmentation for distillation (TinyBERT's transfer set), offline: nearest-neighbour word swaps.

TinyBERT replaces each word, with probability p, by a masked-LM prediction (one-piece words) or a GloVe neighbour
(others), makes N copies of every training sentence and distils on the lot. Neither a masked-LM head nor GloVe
ships with the offline models, so here the candidates of a word are its K nearest whole-word tokens in a model's
input-embedding table (cosine similarity): for the real MiniLM, "good" -> excellent, bad, great, better, ...;
"movie" -> movies, film, films, cinema, ... Antonyms are close too, which is why the copies keep no gold label:
the teacher's logits label them (`AugmentConfig`).

`neighbour_table` builds the word -> candidates map for the words of the training text; `augment_rows` makes the
copies: the original rows first (``gold`` = 1), then the copies (``gold`` = 0, their ``label`` is the original's
and is never trained on); ``source`` is the index of each row's original.
"""

from __future__ import annotations

import logging
import random
from typing import Iterable, Optional

import torch
from datasets import Dataset, concatenate_datasets

from compress.config import AugmentConfig
from compress.errors import CompressError

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "text_pair")


def _lookup(tokenizer) -> tuple[dict[str, int], bool]:
    """Whole-word vocabulary (alphabetic, 2+ characters, no continuation pieces, no specials) and whether the
    tokenizer lower-cases its input."""
    specials = set(tokenizer.all_special_tokens)
    vocab = {w: i for w, i in tokenizer.get_vocab().items() if w.isalpha() and len(w) > 1 and w not in specials}
    lower = bool(getattr(tokenizer, "do_lower_case", False)) or tokenizer("A", add_special_tokens=False)[
        "input_ids"] == tokenizer("a", add_special_tokens=False)["input_ids"]
    return vocab, lower


def neighbour_table(words: Iterable[str], tokenizer, embeddings: torch.Tensor, k: int,
                    chunk: int = 2048) -> dict[str, list[str]]:
    """For every word of ``words`` that is one whole-word token of ``tokenizer``: its ``k`` nearest other whole-word
    tokens by cosine similarity of ``embeddings`` (the model's input-embedding matrix, indexed by token id), nearest
    first. Lookups are lower-cased when the tokenizer lower-cases."""
    vocab, lower = _lookup(tokenizer)
    cand_words = sorted(vocab)
    if len(cand_words) < 2:
        return {}
    cand_ids = torch.tensor([vocab[w] for w in cand_words])
    # on the CPU wherever the model is: a GPU's sums can break near-ties in topk otherwise, and a rerun whose teacher
    # sits elsewhere (restored students leave it on the CPU) would draw other rows than the interrupted run
    table = torch.nn.functional.normalize(embeddings.detach().float().cpu()[cand_ids], dim=1)
    queries = sorted({(w.lower() if lower else w) for w in words} & vocab.keys())
    pos = {w: i for i, w in enumerate(cand_words)}
    k = min(k, len(cand_words) - 1)
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), chunk):
        batch = queries[start:start + chunk]
        rows = torch.tensor([pos[w] for w in batch])
        sim = table[rows] @ table.T
        sim[torch.arange(len(batch)), rows] = -float("inf")  # never the word itself
        top = sim.topk(k, dim=1).indices.tolist()
        for w, idx in zip(batch, top):
            out[w] = [cand_words[j] for j in idx]
    return out


def swap_words(text: str, table: dict[str, list[str]], p: float, rng: random.Random, lower: bool) -> str:
    """``text`` with each word that has candidates replaced by a random one of them with probability ``p`` (a
    capitalised word stays capitalised)."""
    words = text.split()
    for i, w in enumerate(words):
        cands = table.get(w.lower() if lower else w)
        if cands and rng.random() < p:
            new = rng.choice(cands)
            words[i] = new.capitalize() if w[:1].isupper() and not new[:1].isupper() else new
    return " ".join(words)


def augment_rows(ds: Dataset, tokenizer, embeddings: torch.Tensor, cfg: AugmentConfig,
                 table: Optional[dict[str, list[str]]] = None) -> tuple[Dataset, dict]:
    """The rows of ``ds`` (``gold`` = 1) followed by up to ``cfg.copies`` augmented copies of each row of at least
    ``cfg.min_words`` words (``gold`` = 0, every other column copied from the original); copies identical to their
    original or to an earlier copy are dropped. Returns the dataset and a summary (counts, a few examples)."""
    columns = [c for c in TEXT_COLUMNS if c in ds.column_names]
    if not columns:
        raise CompressError(f"distill.augment: no text column ({', '.join(TEXT_COLUMNS)}) in {ds.column_names}")
    if table is None:
        words = (w for c in columns for text in ds[c] for w in text.split())
        table = neighbour_table(words, tokenizer, embeddings, cfg.neighbours)
    _, lower = _lookup(tokenizer)
    rng = random.Random(cfg.seed)
    texts = [ds[c] for c in columns]
    sources: list[int] = []
    new_texts: list[list[str]] = [[] for _ in columns]
    eligible = 0
    for i in range(len(ds)):
        if sum(len(t[i].split()) for t in texts) < cfg.min_words:
            continue
        eligible += 1
        seen = {tuple(" ".join(t[i].split()) for t in texts)}  # as swap_words rebuilds text (SST-2's trailing space)
        for _ in range(cfg.copies):
            new = tuple(swap_words(t[i], table, cfg.replace_prob, rng, lower) for t in texts)
            if new in seen:
                continue
            seen.add(new)
            sources.append(i)
            for col, text in zip(new_texts, new):
                col.append(text)
    out = ds.add_column("gold", [1.0] * len(ds)).add_column("source", list(range(len(ds))))
    if sources:
        extra = ds.select(sources).remove_columns(columns)
        for c, values in zip(columns, new_texts):
            extra = extra.add_column(c, values)
        extra = extra.add_column("gold", [0.0] * len(sources)).add_column("source", sources).cast(out.features)
        out = concatenate_datasets([out, extra.select_columns(out.column_names)])
    if cfg.copies and not sources:
        log.warning("augment: no copies made (%d of %d rows have min_words %d or more; %d words have neighbours)",
                    eligible, len(ds), cfg.min_words, len(table))
    summary = {"rows": len(ds), "rows_augmented": eligible, "copies": len(sources),
               "words_with_neighbours": len(table),
               "config": {"copies": cfg.copies, "replace_prob": cfg.replace_prob, "neighbours": cfg.neighbours,
                          "min_words": cfg.min_words, "seed": cfg.seed, "embeddings": cfg.embeddings},
               # a pair's second text too (only the first was shown)
               "examples": [{"original": texts[0][i], "copy": new_texts[0][j],
                             **({"original_pair": texts[1][i], "copy_pair": new_texts[1][j]} if len(texts) > 1 else {})}
                            for j, i in enumerate(sources[:3])]}
    return out, summary
