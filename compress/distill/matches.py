"""Distillation matches as data: the recipe's explicit matches plus those ``layer_map`` generates, resolved against
both models' depths and widths. Pure Python (no torch): `compress validate` checks a recipe's matches with it before
anything trains, and the distill stage builds its losses from the same list."""

from __future__ import annotations

from dataclasses import dataclass

from compress.config import DistillConfig, MatchConfig
from compress.errors import CompressError


@dataclass(frozen=True)
class Match:
    """One resolved match: indices checked against both models, projection decided."""

    key: str
    teacher_layer: int
    student_layer: int
    feature: str
    loss: str
    weight: float
    project: bool
    heads: str = "each"


def resolve_matches(cfg: DistillConfig, teacher_config, student_config, where: str = "distill") -> list[Match]:
    """Explicit matches plus the ones ``layer_map`` generates, checked against both models' depths; those of weight 0
    are left out (an explicit one at weight 0 removes the ``layer_map`` match of the same pair and feature)."""
    t_n, s_n = teacher_config.num_hidden_layers, student_config.num_hidden_layers
    specs: list[tuple[str, MatchConfig]] = [(f"{where}.matches[{i}]", m) for i, m in enumerate(cfg.matches)]
    if cfg.layer_map is not None:
        # uniform: student layer i of s_n learns from teacher layer i * t_n / s_n, at least 1 (a student deeper than
        # its teacher shares the teacher's layers; layer 0 is the embeddings, and has no attention map)
        pairs = ([(max(1, round(i * t_n / s_n)), i) for i in range(1, s_n + 1)] if cfg.layer_map == "uniform"
                 else [(t_n, s_n)])
        w = cfg.layer_map_weight
        for feature in cfg.layer_map_features:
            if feature == "embedding":
                specs.append((f"{where}.layer_map", MatchConfig(0, 0, "embedding", weight=w)))
                continue
            loss, heads = ("kl", cfg.attention_heads) if feature == "attention" else ("mse", "each")
            specs += [(f"{where}.layer_map", MatchConfig(t, s, feature, loss, weight=w, heads=heads))
                      for t, s in pairs]
    out, seen = [], set()
    for origin, m in specs:
        t_layer, s_layer = (0, 0) if m.feature == "embedding" else (m.teacher_layer, m.student_layer)
        floor = 1 if m.feature == "attention" else 0  # layer 0 is the embeddings: no attention map
        if min(t_layer, s_layer) < floor:  # the recipe's validation refuses these; a config built in code is not
            # validated, and out.attentions[0 - 1] would be the last layer's map, silently
            raise CompressError(f"{origin}: a {m.feature} match of teacher layer {t_layer} and student layer "
                                f"{s_layer}: its layers start at {floor}")
        if t_layer > t_n:
            raise CompressError(f"{origin}: teacher_layer {t_layer}: the teacher has {t_n} layers")
        if s_layer > s_n:
            raise CompressError(f"{origin}: student_layer {s_layer}: the student has {s_n} layers")
        widths_differ = teacher_config.hidden_size != student_config.hidden_size
        if m.feature != "attention" and m.projection == "none" and widths_differ:
            raise CompressError(f"{origin}.projection: none, but the student is {student_config.hidden_size} wide "
                                f"and the teacher {teacher_config.hidden_size}")
        project = m.feature != "attention" and (m.projection == "linear" or (m.projection == "auto" and widths_differ))
        key = f"{m.feature}_t{t_layer}_s{s_layer}"  # names the match's projection (in checkpoints too)
        # hidden states 0 are the embeddings' output: a hidden 0/0 match is the embedding match (both were computed)
        kind = "embedding" if m.feature == "hidden" and (t_layer, s_layer) == (0, 0) else m.feature
        pair = f"{kind}_t{t_layer}_s{s_layer}"
        if pair in seen:
            if ".matches[" in origin:  # two explicit matches of one pair: the second was silently dropped
                raise CompressError(f"{origin}: a second {kind} match of teacher layer {t_layer} and student "
                                    f"layer {s_layer}; give each pair once (its loss, weight and heads in one entry)")
            continue  # a layer_map match an explicit one already covers: the explicit settings win
        seen.add(pair)
        if m.weight == 0:  # left out of training, not computed at weight 0: its projection would get no gradient,
            continue       # which DDP waits for forever; an explicit weight 0 also turns a layer_map pair off
        out.append(Match(key, t_layer, s_layer, m.feature, m.loss, m.weight, project, m.heads))
    if cfg.two_step and not out:  # its first step would train on nothing (AdamW's decay alone moving the weights)
        raise CompressError(f"{where}.two_step: every intermediate match has weight 0; give one a weight > 0 or "
                            f"turn two_step off")
    if not out and cfg.kd_weight == 0 and cfg.hard_label_weight == 0:  # weight-0 matches turned every one off
        raise CompressError(f"{where}: kd_weight and hard_label_weight are both 0 and every intermediate match has "
                            f"weight 0: nothing would train the student; give one of them a weight > 0")
    return out
