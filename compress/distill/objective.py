"""The KD objective passed to `compress.train.fit`: the recipe's matches turned into losses on one batch.

`Distiller` wraps the student and the learned projections in one module, so `fit` trains, checkpoints and (with
DDP) synchronises both, and the projections run inside the wrapped forward. The teacher is not part of it: it runs
under ``torch.inference_mode`` (for intermediate losses, and for logit KD when the batch carries no cached teacher
logits: ``cache_teacher_logits: false``), and its outputs are cloned into ordinary tensors before they meet the
student's graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from compress.config import DistillConfig
from compress.distill.align import aligned_rows
from compress.distill.losses import attention_loss, combine, hard_label_loss, hidden_mse, kd_loss, logits_mse
from compress.distill.matches import Match, resolve_matches  # noqa: F401  (re-exported: the stage and tests use them here)
from compress.train import process_device

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _NoAttentionFallbackNotice(logging.Filter):
    """Drops transformers' "BertSdpaSelfAttention is used but ... Falling back to the manual attention implementation"
    notice: attention matches ask for the attention maps on purpose, and the manual path is the one that returns them
    (the models, their export and their inference are untouched)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to the manual attention implementation" not in record.getMessage()


def expect_attention_maps(model: torch.nn.Module) -> None:
    """Say, once per model class's module, that asking ``model`` for attention maps is intended."""
    logger = logging.getLogger(type(model).__module__)
    if not any(isinstance(f, _NoAttentionFallbackNotice) for f in logger.filters):
        logger.addFilter(_NoAttentionFallbackNotice())


def no_attention_dropout(model: torch.nn.Module) -> None:
    """Turn off dropout on the attention probabilities: BERT-family self-attention returns its maps after that
    dropout, so in training an attention loss would compare the teacher's maps with randomly zeroed and rescaled ones
    (a KL dominated by the dropped entries; an MSE whose minimum is 0.9 x the teacher's map). The other dropouts stay."""
    for module in model.modules():
        if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None),
                                                                          torch.nn.Dropout):
            module.dropout.p = 0.0


def configured_attention_dropout(model: torch.nn.Module) -> None:
    """Undo `no_attention_dropout`: the attention-probability dropout of ``model``'s config again (TinyBERT's
    prediction step, after an intermediate step with attention matches; a model whose attention always takes the
    manual path, MPNet, trained on without it)."""
    p = getattr(model.config, "attention_probs_dropout_prob", None)
    if p is None:
        return
    for module in model.modules():
        if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None),
                                                                          torch.nn.Dropout):
            module.dropout.p = p


def embedding_dropout(model: torch.nn.Module, on: bool) -> None:
    """Dropout on the embeddings' output (after their LayerNorm) off (``on`` false), or back as it was before this
    turned it off (TinyBERT's prediction step after an intermediate step with an embedding match; a dropout this did
    not change is left as it is): that output is the student's side of an embedding match (hidden state 0), which in
    training compared the teacher's embeddings with randomly zeroed and rescaled ones (an identical student's loss
    above 0; an MSE whose minimum is 0.9 x the teacher's), as attention matches did before
    `no_attention_dropout`."""
    for module in model.modules():
        dropout = getattr(module, "dropout", None)
        if not (type(module).__name__.endswith("Embeddings") and isinstance(dropout, torch.nn.Dropout)):
            continue
        if not on and not hasattr(dropout, "compress_p"):
            dropout.compress_p, dropout.p = dropout.p, 0.0
        elif on and hasattr(dropout, "compress_p"):
            dropout.p = dropout.compress_p
            del dropout.compress_p


def matches_embeddings(matches) -> bool:
    """Whether a student's ``matches`` read its embeddings' output (an embedding match, or a hidden one of layer 0)."""
    return any(m.feature != "attention" and m.student_layer == 0 for m in matches)


class Distiller(torch.nn.Module):
    """The student plus one learned linear projection (student width -> teacher width) per projected match."""

    def __init__(self, student: torch.nn.Module, matches: list[Match], teacher_width: int):
        super().__init__()
        self.student = student
        width = student.config.hidden_size
        device = next(student.parameters()).device  # a student already on a GPU gets its projections there
        self.projections = torch.nn.ModuleDict(
            {m.key: torch.nn.Linear(width, teacher_width, device=device) for m in matches if m.project})
        self.matches = matches
        if any(m.feature == "attention" for m in matches):
            no_attention_dropout(student)
        else:
            configured_attention_dropout(student)
        embedding_dropout(student, on=not matches_embeddings(matches))

    def forward(self, hidden: bool = False, attentions: bool = False, **inputs):
        if attentions:
            expect_attention_maps(self.student)
        out = self.student(**inputs, output_hidden_states=hidden, output_attentions=attentions)
        projected = {}
        if hidden:
            for m in self.matches:
                if m.project:
                    projected[m.key] = self.projections[m.key](out.hidden_states[m.student_layer])
        return out, projected


@dataclass
class AlignStats:
    """Per-process counts of batches/rows whose tokenizations did not align (reported, never silently mixed)."""

    batches: int = 0
    misaligned_batches: int = 0
    rows: int = 0
    misaligned_rows: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def summed(self) -> "AlignStats":
        """The totals over every process (under DDP each counted its own batches; a collective call: every process
        makes it); a copy, this process's counts stay as they are."""
        counts = self.as_dict()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            device = process_device() if torch.distributed.get_backend() == "nccl" else "cpu"
            values = torch.tensor(list(counts.values()), dtype=torch.long, device=device)
            torch.distributed.all_reduce(values)
            counts = dict(zip(counts, (int(x) for x in values)))
        return AlignStats(**counts)

    def restore(self, saved: Optional[dict]) -> None:
        """Resumed: the counts of the batches before the checkpoint (``summed``, every process's) are carried by the
        main process alone, so that the final sum counts each batch once (a resumed run counted only its own)."""
        if saved and (not (torch.distributed.is_available() and torch.distributed.is_initialized())
                      or torch.distributed.get_rank() == 0):
            self.__dict__.update({k: int(saved[k]) for k in self.as_dict() if k in saved})


@dataclass
class KDObjective:
    """``objective(distiller, batch) -> (loss, logs)`` for `fit`.

    ``logits``: logit KD + hard labels (from cached ``teacher_logits`` in the batch when present, else from the live
    teacher). ``intermediate``: the position-wise matches. TinyBERT's two steps use one then the other."""

    teacher: torch.nn.Module
    cfg: DistillConfig
    matches: list[Match]
    regression: bool
    teacher_prefix: str = ""
    table: Optional[torch.Tensor] = None
    """Teacher id -> student id (`align.id_map`) when the tokenizers differ; None when they are the same."""
    logits: bool = True
    intermediate: bool = True
    stats: AlignStats = field(default_factory=AlignStats)

    def checkpoint_state(self) -> dict:
        """What `fit` keeps in a checkpoint beside the weights: the alignment counts so far (every process's)."""
        return self.stats.summed().as_dict()

    def restore_state(self, saved: dict) -> None:
        self.stats.restore(saved)

    def _teacher(self, batch: dict, hidden: bool, attentions: bool):
        p = self.teacher_prefix
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.teacher.eval()
        inputs = {k: batch[p + k] for k in MODEL_INPUTS if p + k in batch}
        if attentions:
            expect_attention_maps(self.teacher)
        with torch.inference_mode():
            out = self.teacher(**inputs, output_hidden_states=hidden, output_attentions=attentions)
        clone = lambda xs: None if xs is None else tuple(x.clone() for x in xs)  # noqa: E731 (normal tensors)
        return out.logits.clone(), clone(out.hidden_states), clone(out.attentions)

    def __call__(self, model, batch: dict):
        use = self.matches if self.intermediate else []
        need_h = any(m.feature != "attention" for m in use)
        need_a = any(m.feature == "attention" for m in use)
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        out, projected = model(hidden=need_h, attentions=need_a, **inputs)
        terms: dict[str, tuple[torch.Tensor, float]] = {}
        t_logits = t_hidden = t_att = None
        if use:
            t_logits, t_hidden, t_att = self._teacher(batch, need_h, need_a)
        if self.logits:
            s_logits = out.logits
            if self.cfg.kd_weight > 0:  # 0: plain fine-tuning (the no-teacher baseline)
                if t_logits is None:
                    t_logits = (batch["teacher_logits"] if "teacher_logits" in batch
                                else self._teacher(batch, False, False)[0])
                kd = (logits_mse(s_logits, t_logits) if self.regression
                      else kd_loss(s_logits, t_logits, self.cfg.temperature))
                terms["kd"] = (kd, self.cfg.kd_weight)
            terms["hard"] = (hard_label_loss(s_logits, batch["labels"], batch.get("gold")),
                             self.cfg.hard_label_weight)
        # no logit loss (two_step's first step, or matches alone): the head and the layers no match reaches get no
        # gradient, left as they are (fit(unused_parameters=True) for DDP; a weight-0 term had AdamW decay them)
        if use:
            terms.update(self._intermediate(batch, out, projected, t_hidden, t_att, use))
        return combine(terms)

    def _intermediate(self, batch, out, projected, t_hidden, t_att, use):
        mask = batch["attention_mask"]
        if self.table is None:
            rows = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
        else:
            p = self.teacher_prefix
            if self.table.device != mask.device:  # once, not a copy of the vocabulary-sized map every batch
                self.table = self.table.to(mask.device)
            rows = aligned_rows(batch["input_ids"], mask, batch[p + "input_ids"], batch[p + "attention_mask"],
                                self.table)
        n_bad = int((~rows).sum())
        self.stats.batches += 1
        self.stats.rows += int(rows.numel())
        self.stats.misaligned_rows += n_bad
        self.stats.misaligned_batches += int(n_bad > 0)
        terms = {}
        if not bool(rows.any()):  # nothing aligns: a zero term through what the matches reach, so that the same
            # parameters get a gradient as in an aligned batch (DDP); the head and the layers no match reaches get
            # none (a zero term through the logits had AdamW decay them in two_step's first step)
            reached = [projected[m.key] if m.project else out.attentions[m.student_layer - 1]
                       if m.feature == "attention" else out.hidden_states[m.student_layer] for m in use]
            terms["intermediate_skipped"] = (sum(x.sum() for x in reached) * 0.0, 1.0)
            return terms
        width = int(mask[rows].sum(1).max())
        m_rows = mask[rows][:, :width]
        for m in use:
            if m.feature == "attention":
                s = out.attentions[m.student_layer - 1][rows][..., :width, :width]
                t = t_att[m.teacher_layer - 1][rows][..., :width, :width]
                value = attention_loss(s, t, m_rows, m.loss, m.heads)
            else:
                s = projected[m.key] if m.project else out.hidden_states[m.student_layer]
                value = hidden_mse(s[rows][:, :width], t_hidden[m.teacher_layer][rows][:, :width], m_rows)
            terms[m.key] = (value, m.weight)
        return terms
