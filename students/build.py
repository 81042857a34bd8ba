"""One entry point: a student spec (recipe data) + the fine-tuned teacher -> (student model, its tokenizer, info)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compress.config import StudentConfig, layer_widths
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
    info.update(layers=c.num_hidden_layers, hidden=c.hidden_size, **layer_widths(c), params=count_params(model),
                teacher_params=count_params(teacher))
    return Student(model, tokenizer, info)



def teacher_shape(recipe):
    """The recipe's teacher as the teacher stage will hand it on, built from its config on the meta device (its shape,
    no weights), with the teacher's tokenizer loader; None where the shape is not known beforehand: a config that
    does not load (the teacher stage says why), a teacher pruned earlier (stock from_config would not rebuild its
    per-layer widths)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from compress import hub
    from compress.modeling import load_tokenizer, task_kwargs
    from compress.tasks import task_spec
    from teachers.zoo import resolve

    name = recipe.teacher.model
    source, offline = resolve(name), hub.load_kwargs(name)
    try:
        config = AutoConfig.from_pretrained(source, **offline)
        spec = task_spec(recipe.task)
    except Exception:  # noqa: BLE001 - the teacher stage says why, in its words
        return None
    if any(getattr(config, k, None) for k in ("compress_layer_sizes", "compress_pruning", "pruned_heads")):
        return None
    for key, value in task_kwargs(spec).items():
        setattr(config, key, value)
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):  # the run's random state left as it was
            teacher = AutoModelForSequenceClassification.from_config(config)
    except Exception:  # noqa: BLE001 - a model type from_config cannot build here: the teacher stage says why
        return None
    return teacher, (lambda: load_tokenizer(source, offline, f"model {name!r}: cannot load its tokenizer", "")), spec


def student_shape(spec: StudentConfig, teacher, tokenizer, task: TaskSpec) -> Student:
    """`build_student` on the teacher's shape (`teacher_shape`): the distill stage's own surgery, before it runs (a
    checkpoint student loads its checkpoint); the teacher's tokenizer (``tokenizer``: its loader) only where the
    student reads it. Impossible specs raise CompressError as the stage would."""
    needs = spec.kind == "narrow" and spec.init == "random" and spec.tokenizer is None
    with torch.random.fork_rng(devices=[]):  # a random student's init draws: the teacher stage's must not move
        return build_student(spec, teacher, tokenizer() if needs else None, task)
