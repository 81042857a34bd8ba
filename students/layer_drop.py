"""DistilBERT-style students: keep a subset of an encoder's layers, copy everything else.

Works for any model whose transformer blocks are one `nn.ModuleList` with ``config.num_hidden_layers`` entries
(BERT, MPNet, RoBERTa, ELECTRA, DistilBERT...): the model is deep-copied, the list is replaced by the chosen layers
and the config updated, so embeddings, pooler and task head come along unchanged.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from compress.config import layer_widths
from compress.errors import CompressError


def encoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The (dotted name, ModuleList) holding the model's transformer layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0 \
                and len({type(m) for m in module}) == 1 and name.endswith("layer"):
            return name, module
    for name, module in model.named_modules():  # any list of identical blocks of the configured depth
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0 and len({type(m) for m in module}) == 1:
            return name, module
    raise CompressError(f"{type(model).__name__}: no nn.ModuleList of {n} layers found; layer-drop students need an "
                        "encoder whose layers are a ModuleList (BERT, MPNet, RoBERTa...)")


def pick_layers(total: int, keep: int) -> list[int]:
    """``keep`` of ``total`` layers (1-based), evenly spaced and ending with the last one: 6 -> 3 gives [2, 4, 6]."""
    if not 1 <= keep <= total:
        raise CompressError(f"cannot keep {keep} of {total} layers (the student can have 1 to {total})")
    return [round((j + 1) * total / keep) for j in range(keep)]


def drop_layers(model: torch.nn.Module, keep: list[int], *, what: str = "teacher") -> torch.nn.Module:
    """A deep copy of ``model`` with only the layers ``keep`` (1-based, in order) in its encoder."""
    name, layers = encoder_layers(model)
    total = len(layers)
    bad = [i for i in keep if not 1 <= i <= total]
    if bad:
        raise CompressError(f"layer {bad[0]} does not exist: the {what} has {total} layers (counted from 1)")
    if len(set(keep)) != len(keep):
        raise CompressError(f"layers {keep}: each layer can be kept once")
    if sorted(keep) != list(keep):
        raise CompressError(f"layers {keep}: list them in increasing order")
    student = copy.deepcopy(model).requires_grad_(True)  # a frozen teacher still gives a trainable student
    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    old = getattr(parent, attr)
    new = torch.nn.ModuleList([old[i - 1] for i in keep])
    for idx, layer in enumerate(new):  # layer indices used by caches / attention bookkeeping
        for m in layer.modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = idx
    setattr(parent, attr, new)
    student.config.num_hidden_layers = len(keep)
    if getattr(student.config, "layer_types", None) is not None:
        student.config.layer_types = [student.config.layer_types[i - 1] for i in keep]
    _keep_pruning_fields(student.config, keep)
    return student


def _keep_pruning_fields(config, keep: list[int]) -> None:
    """Renumber the config's per-layer records of removed heads and neurons for the layers ``keep`` (1-based):
    HF's ``pruned_heads`` (layer index -> heads) and `compress.prune`'s ``compress_layer_sizes`` and
    ``compress_pruning`` (one entry per layer), with ``intermediate_size`` the kept layers' widest FFN
    (`compress.prune.write_config`'s convention). The student's record counts its own layers (``num_layers``, each
    layer its own ``source``), as a layer-drop student of an unpruned teacher's does: the teacher's dropped layers
    are no layers of the student's (pruning ratios count the units the student has, `compress.prune.plan`)."""
    pruned = getattr(config, "pruned_heads", None)
    if pruned:
        pruned = {int(k): v for k, v in pruned.items()}
        config.pruned_heads = {new: list(pruned[old - 1]) for new, old in enumerate(keep) if old - 1 in pruned}
    if getattr(config, "compress_layer_sizes", None):
        config.compress_layer_sizes = [config.compress_layer_sizes[i - 1] for i in keep]
        config.intermediate_size = max(s["ffn"] for s in config.compress_layer_sizes)  # the kept layers' widest
    if getattr(config, "compress_pruning", None):
        record = dict(config.compress_pruning)
        record["layers"] = [{**record["layers"][old - 1], "source": new} for new, old in enumerate(keep)]
        record["num_layers"] = len(keep)
        config.compress_pruning = record


def layer_drop_student(teacher: torch.nn.Module, layers: Optional[int] = None,
                       keep_layers: Optional[list[int]] = None, hidden: Optional[int] = None,
                       heads: Optional[int] = None, ffn: Optional[int] = None) -> tuple[torch.nn.Module, list[int]]:
    """The DistilBERT student of ``teacher``: default every other layer (half the depth, the last kept).
    ``hidden``, ``heads``, ``ffn``: refused unless the teacher's (its layers are copied whole)."""
    total = teacher.config.num_hidden_layers
    widths = layer_widths(teacher.config)  # a pruned teacher's layers' own (one a layer where they differ)
    for key, want, have in (("hidden", hidden, teacher.config.hidden_size), ("heads", heads, widths["heads"]),
                            ("ffn", ffn, widths["ffn"])):
        if want is not None and want != have:
            raise CompressError(f"{key} {want}: a layer-drop student keeps the teacher's {key} ({have}); "
                                "use kind: narrow for another shape")
    if keep_layers is None:
        n = layers if layers is not None else max(1, total // 2)
        if n > total:
            raise CompressError(f"layers {n}: the teacher has only {total} layers to copy from")
        keep_layers = pick_layers(total, n)
    return drop_layers(teacher, list(keep_layers)), list(keep_layers)
