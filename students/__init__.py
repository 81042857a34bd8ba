"""Student builders: model surgery only (no training).

- `layer_drop` (DistilBERT): the teacher's width, a subset of its layers, weights copied from the teacher.
- `narrow` (TinyBERT): a smaller BERT, random or from a general-distilled checkpoint truncated to fewer layers.

`build_student(spec, teacher, teacher_tokenizer, task)` picks the builder from ``spec.kind``.
"""

from students.build import build_student
from students.layer_drop import drop_layers, encoder_layers, pick_layers

__all__ = ["build_student", "drop_layers", "encoder_layers", "pick_layers"]
