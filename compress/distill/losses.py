"""Distillation losses: small pure functions of tensors (no model, no state), each checked by hand in
tests/test_distill_losses.py.

Shapes: logits (batch, classes); hidden states (batch, seq, width); attention maps (batch, heads, seq, seq) as the
models return them with ``output_attentions=True`` (softmax probabilities); ``mask`` (batch, seq) is the attention
mask, 1 on real tokens and 0 on padding. Padding never contributes to a position-wise loss.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) of the temperature-softened distributions, averaged over the batch
    ("batchmean") and scaled by T^2 so gradients keep their size across temperatures."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def logits_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits (the logit KD of regression tasks)."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor,
                    gold: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy with the gold labels, or MSE for a regression target (float labels). ``gold`` (batch,), 1 for
    rows whose label is real and 0 for rows without one (augmented copies): the mean is over gold rows only, and a
    batch without any is 0."""
    if labels.is_floating_point():
        per_row = F.mse_loss(student_logits.float().view(-1), labels.float().view(-1), reduction="none")
    else:
        per_row = F.cross_entropy(student_logits.float(), labels, reduction="none")
    if gold is None:
        return per_row.mean()
    w = gold.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1.0)


def hidden_mse(student_h: torch.Tensor, teacher_h: torch.Tensor, mask: torch.Tensor,
               projection: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """MSE between hidden states over real tokens only: sum of squared differences on unmasked positions divided
    by (unmasked positions x teacher width). ``projection`` maps the student width to the teacher's (a learned
    ``nn.Linear``); without one the widths must be equal."""
    s = projection(student_h) if projection is not None else student_h
    if s.shape != teacher_h.shape:
        raise ValueError(f"hidden_mse: student {tuple(s.shape)} vs teacher {tuple(teacher_h.shape)}"
                         " (a projection is needed when widths differ)")
    m = mask.float().unsqueeze(-1)  # (b, l, 1); a bf16 count of tokens would round (4001 -> 4000)
    sq = (s.float() - teacher_h.float()).pow(2) * m
    return sq.sum() / (m.sum().clamp_min(1.0) * s.shape[-1])


def _heads_match(student_att: torch.Tensor, teacher_att: torch.Tensor,
                 heads: str = "each") -> tuple[torch.Tensor, torch.Tensor]:
    """``each`` with equal head counts: compared head by head. Otherwise (``mean``, or different head counts) both
    are averaged over heads (one map each)."""
    if heads == "mean" or student_att.shape[1] != teacher_att.shape[1]:
        return student_att.mean(dim=1, keepdim=True), teacher_att.mean(dim=1, keepdim=True)
    return student_att, teacher_att


def attention_loss(student_att: torch.Tensor, teacher_att: torch.Tensor, mask: torch.Tensor,
                   kind: str = "mse", heads: str = "each") -> torch.Tensor:
    """Attention-map loss over real (query, key) pairs.

    ``mse``: squared difference of attention probabilities averaged over heads x real queries x real keys.
    ``kl``: KL(teacher row || student row) summed over keys, averaged over heads x real query rows (MiniLM's
    attention-distribution transfer). ``heads="mean"``, or different head counts: both maps are first averaged over
    heads (head i of a student pretrained apart from the teacher has no reason to mirror the teacher's head i).
    """
    if heads not in ("each", "mean"):
        raise ValueError(f"attention_loss: heads must be 'each' or 'mean', got {heads!r}")
    s, t = _heads_match(student_att.float(), teacher_att.float(), heads)
    if s.shape[-2:] != t.shape[-2:] or s.shape[0] != t.shape[0]:
        raise ValueError(f"attention_loss: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    heads = s.shape[1]
    m = mask.to(s.dtype)
    query = m[:, None, :, None]  # (b, 1, l, 1)
    pair = query * m[:, None, None, :]  # (b, 1, l, l)
    if kind == "mse":
        sq = (s - t).pow(2) * pair
        return sq.sum() / (pair.sum().clamp_min(1.0) * heads)
    if kind == "kl":
        # teacher probability is 0 on masked keys, so xlogy drops them; clamp keeps log(student) finite
        kl = (torch.special.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))) * pair
        return kl.sum() / (query.sum().clamp_min(1.0) * heads)
    raise ValueError(f"attention_loss: kind must be 'mse' or 'kl', got {kind!r}")


def combine(terms: dict[str, tuple[torch.Tensor, float]]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of named loss terms -> (total, {name: unweighted value}) for logging. Zero-weight terms are
    left out of the sum (and out of the graph)."""
    total: Optional[torch.Tensor] = None
    logs: dict[str, float] = {}
    for name, (value, weight) in terms.items():
        logs[name] = float(value.detach())
        if weight == 0:
            continue
        total = value * weight if total is None else total + value * weight
    if total is None:
        raise ValueError("combine: every loss term has weight 0")
    return total, logs
