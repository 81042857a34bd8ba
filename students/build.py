"""One entry point: a student spec (recipe data) + the fine-tuned teacher -> (student model, its tokenizer, info)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compress.config import StudentConfig
from compress.data import TaskSpec
from compress.modeling import count_params, max_positions
from students.layer_drop import layer_drop_student
from students.narrow import narrow_student


@dataclass
class Student:
    model: torch.nn.Module
    tokenizer: object
    info: dict = field(default_factory=dict)


def build_student(spec: StudentConfig, teacher: torch.nn.Module, teacher_tokenizer, task: TaskSpec) -> Student:
    """Model surgery only: no training. Impossible specs raise CompressError saying why."""
    if spec.kind == "layer_drop":
        model, kept = layer_drop_student(teacher, spec.layers, spec.keep_layers, spec.hidden, spec.heads,
                                         spec.ffn)
        info = {"kind": "layer_drop", "kept_layers": kept}
        tokenizer = teacher_tokenizer
    else:
        # task.max_length is checked against the teacher's positions: a random student takes as many
        model, tokenizer, info = narrow_student(spec, teacher_tokenizer, task,
                                                max(512, max_positions(teacher.config) or 0))
        info = {"kind": "narrow", **info}
    c = model.config
    info.update(layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
                ffn=getattr(c, "intermediate_size", None), params=count_params(model),
                teacher_params=count_params(teacher))
    return Student(model, tokenizer, info)
