"""TinyBERT-style students: a narrower and/or shallower BERT.

- ``init: random``: a fresh `BertForSequenceClassification` of the given shape (layers / hidden / heads / ffn) using
  the teacher's tokenizer (or the student's own ``tokenizer``); its vocabulary must match that tokenizer.
- ``init: <checkpoint>`` (zoo name such as ``minilm-l6``, or a folder): a general-distilled model with a fresh task
  head, truncated to its first ``layers`` layers (or exactly ``keep_layers``). A checkpoint keeps its own width, heads
  and tokenizer: asking for another width is an error, not a silent re-initialisation.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import BertConfig, BertForSequenceClassification

from compress import hub
from compress.config import StudentConfig, layer_widths
from compress.data import TaskSpec
from compress.errors import CompressError
from compress.modeling import check_vocab, load_for_task, load_tokenizer, one_token_type, task_kwargs
from students.layer_drop import drop_layers
from teachers.zoo import resolve


def _tokenizer(name: str):
    hub.check(name, f"tokenizer {name!r}", weights=False, tokenizer=True)
    return load_tokenizer(resolve(name), hub.load_kwargs(name), f"tokenizer {name!r}: cannot load",
                          "save a tokenizer there")


def random_bert(spec: StudentConfig, tokenizer, task: TaskSpec, max_positions: int = 512) -> torch.nn.Module:
    """A randomly initialised BERT classifier of the spec's shape."""
    if spec.layers is None and spec.keep_layers is None:
        raise CompressError(f"student {spec.name}: layers is required for a random narrow student")
    layers = spec.layers or len(spec.keep_layers)
    if spec.hidden is None:
        raise CompressError(f"student {spec.name}: hidden is required for a random narrow student")
    heads = spec.heads or max(1, spec.hidden // 64)
    if spec.hidden % heads:
        raise CompressError(f"student {spec.name}: hidden {spec.hidden} is not divisible by heads {heads}")
    vocab = len(tokenizer)
    if spec.vocab_size is not None and spec.vocab_size != vocab:
        raise CompressError(
            f"student {spec.name}: vocab_size {spec.vocab_size} does not match its tokenizer's {vocab} tokens; "
            "give the student a tokenizer of its own (tokenizer: <zoo name or folder>) or drop vocab_size")
    config = BertConfig(vocab_size=vocab, hidden_size=spec.hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=spec.ffn or 4 * spec.hidden,
                        max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id or 0,
                        **task_kwargs(task))
    return BertForSequenceClassification(config)


def from_checkpoint(spec: StudentConfig, task: TaskSpec) -> tuple[torch.nn.Module, object, Optional[list[int]]]:
    """A general-distilled checkpoint with a fresh head, truncated as asked; its tokenizer; the layers kept."""
    loading: dict = {}
    model, tokenizer = load_for_task(spec.init, task, tokenizer=spec.tokenizer is None, loading=loading)
    if loading.get("new_head") and spec.distill.kd_weight == 0 and spec.distill.hard_label_weight == 0:
        raise CompressError(f"student {spec.name}: distill.kd_weight and hard_label_weight are both 0, and "
                            f"{spec.init!r} has no trained head for this task: its new prediction layer would stay "
                            f"as initialised; give one of them a weight > 0")
    cfg = model.config
    widths = layer_widths(cfg)  # a pruned checkpoint's layers' own, as `compress validate` reads them
    for key, have in (("hidden", cfg.hidden_size), ("heads", widths["heads"]), ("ffn", widths["ffn"]),
                      ("vocab_size", cfg.vocab_size)):
        want = getattr(spec, key)
        if want is not None and want != have:
            raise CompressError(f"student {spec.name}: {key} {want}: checkpoint {spec.init!r} has {key} {have}; a "
                                f"checkpoint keeps its shape (leave {key} out, or use init: random)")
    total = cfg.num_hidden_layers
    keep = spec.keep_layers
    if keep is None and spec.layers is not None:
        if spec.layers > total:
            raise CompressError(f"student {spec.name}: layers {spec.layers}: checkpoint {spec.init!r} has only "
                                f"{total} layers")
        keep = list(range(1, spec.layers + 1))  # truncation: the bottom layers
    if keep is not None and keep != list(range(1, total + 1)):
        model = drop_layers(model, keep, what=f"checkpoint {spec.init!r}")
    if spec.tokenizer is not None:
        tokenizer = _tokenizer(spec.tokenizer)
        one_token_type(tokenizer, model.config)
        check_vocab(tokenizer, model.config, f"student {spec.name}: checkpoint {spec.init!r} with tokenizer "
                                             f"{spec.tokenizer!r}")
    return model, tokenizer, keep


def narrow_student(spec: StudentConfig, teacher_tokenizer, task: TaskSpec,
                   max_positions: int = 512) -> tuple[torch.nn.Module, object, dict]:
    """``max_positions``: a random student's position table (as many tokens as the teacher takes, 512 at least)."""
    if spec.init == "random":
        tokenizer = _tokenizer(spec.tokenizer) if spec.tokenizer else teacher_tokenizer
        model = random_bert(spec, tokenizer, task, max_positions)
        return model, tokenizer, {"init": "random"}
    model, tokenizer, keep = from_checkpoint(spec, task)
    return model, tokenizer, {"init": spec.init, "kept_layers": keep}
