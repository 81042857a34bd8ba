"""Embedding tables as int8 rows, gathered before they are dequantized.

The quantize stage's accuracy guard keeps an embedding lookup fp32 when int8 costs accuracy there (one scale for a
whole table is too coarse). Such a table is then stored as int8 rows with one fp32 scale per row (symmetric; error at
most half a step of each row's own scale) and every lookup of it gathers the int8 rows and the scales of the ids it is
given, then dequantizes only those (Gather, Gather, Cast, Mul): the fp32 table never exists.

The first form of this (until 2026-12-07) rebuilt the whole table (Cast + Mul of two initializers), which ORT folds
back to fp32 when a session loads: the quickstart's int8 dynamic model then peaked at 223 MiB while loading (106 MiB
gathered first, as its static int8 model), held 34 MiB more once loaded, and its ``.ort`` copy (an ORT-format model
is not folded at load) stored the fp32 table: 50.6 MB instead of 15.6. Same logits, same speed.

ORT's fused ``EmbedLayerNormalization`` reads whole fp32 tables, so a fused lookup of a rewritten table is unfused:
word + position + token-type rows summed, ``LayerNormalization``, and the attention's mask index as the fused op
counts it (the mask's ones per row). A lookup this cannot rewrite (another op, a Gather on another axis, a fused op
with options this does not rebuild) keeps its table whole: Cast + Mul as before.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOOKUP_OPS = ("Gather", "EmbedLayerNormalization")
"""Operators that look rows up in a weight table (an initializer)."""
MS = "com.microsoft"


def int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (rows x width, fp32) as int8 rows and one fp32 scale per row (rows x 1; an all-zero row: scale 1)."""
    scale = (np.abs(w).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def _eln_plan(node: onnx.NodeProto, consumers: dict[str, int]) -> bool:
    """Whether a fused ``EmbedLayerNormalization`` can be rebuilt from plain ops here: the default mask index (the
    count of ones a row), and a mask given whenever that index is read."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if set(attrs) - {"epsilon", "mask_index_type"} or attrs.get("mask_index_type", 1) != 1:
        return False
    inputs = list(node.input) + [""] * (9 - len(node.input))
    outputs = list(node.output) + [""] * (3 - len(node.output))
    return not (outputs[1] and consumers.get(outputs[1]) and not inputs[7])


def rewrite(model: onnx.ModelProto, nodes: list[str]) -> list[str]:
    """Store the 2-D fp32 tables read by the lookup ``nodes`` (names) as int8 rows, in place; returns the tables
    rewritten. Lookups that can be, gather int8 rows (a fused embedding is unfused); a table with any other reader
    is rebuilt whole instead (Cast + Mul, folded by ORT at load)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    tables: list[str] = []
    for node in graph.node:
        if node.name in wanted and node.op_type in LOOKUP_OPS:
            tables += [i for i in node.input if i in inits and inits[i].data_type == TensorProto.FLOAT
                       and len(inits[i].dims) == 2 and i not in tables]
    if not tables:
        return []
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}

    def gatherable(node: onnx.NodeProto) -> bool:
        if node.op_type == "Gather":
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
            return axis == 0 and node.input[0] in tables and node.input[1] not in tables
        return (node.op_type == "EmbedLayerNormalization" and node.domain == MS and _eln_plan(node, consumers))

    readers = {t: [n for n in graph.node if t in n.input] for t in tables}
    gathered = {t for t in tables if t not in graph_outputs and all(gatherable(n) for n in readers[t])}
    ln_domain = next((n.domain for n in graph.node if n.op_type == "LayerNormalization"), None)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if ln_domain is None and opset < 17:  # no LayerNormalization to unfuse a fused embedding with
        gathered -= {t for t in gathered if any(n.op_type == "EmbedLayerNormalization" for n in readers[t])}

    for name in tables:
        q, scale = int8_rows(numpy_helper.to_array(inits[name]))
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8_rows"),
                                  numpy_helper.from_array(scale, f"{name}_row_scale")])
    if any(t in gathered for t in tables):
        graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), f"embed_rows_{k}")
                                  for k, v in (("zero", 0), ("one", 1), ("axis1", [1]))])
    made: list[onnx.NodeProto] = []

    def lookup(table: str, ids: str, out: str, tag: str) -> list[onnx.NodeProto]:
        """``out`` = the rows of ``table`` at ``ids``: int8 rows gathered and dequantized, or a plain Gather."""
        if table not in gathered:
            return [helper.make_node("Gather", [table, ids], [out], name=f"{tag}_Gather")]
        return [helper.make_node("Gather", [f"{table}_int8_rows", ids], [f"{out}_int8"], name=f"{tag}_GatherRows"),
                helper.make_node("Gather", [f"{table}_row_scale", ids], [f"{out}_scale"], name=f"{tag}_GatherScales"),
                helper.make_node("Cast", [f"{out}_int8"], [f"{out}_rows"], to=TensorProto.FLOAT, name=f"{tag}_Cast"),
                helper.make_node("Mul", [f"{out}_rows", f"{out}_scale"], [out], name=f"{tag}_Dequantize")]

    def unfused(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """A fused EmbedLayerNormalization as plain ops (its outputs' names kept)."""
        ids, segments, word, position, segment, gamma, beta, mask, positions = \
            list(node.input) + [""] * (9 - len(node.input))
        out, mask_index, summed = list(node.output) + [""] * (3 - len(node.output))
        eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-12)
        tag = node.name or "EmbedLayerNormalization"
        new = lookup(word, ids, f"{tag}_word", f"{tag}_word")
        if not positions:  # 0 .. length - 1, shared by the batch's rows
            positions = f"{tag}_position_ids"
            new += [helper.make_node("Shape", [ids], [f"{tag}_ids_shape"], name=f"{tag}_Shape"),
                    helper.make_node("Gather", [f"{tag}_ids_shape", "embed_rows_one"], [f"{tag}_length"], axis=0,
                                     name=f"{tag}_Length"),
                    helper.make_node("Range", ["embed_rows_zero", f"{tag}_length", "embed_rows_one"], [positions],
                                     name=f"{tag}_Range")]
        new += lookup(position, positions, f"{tag}_position", f"{tag}_position")
        parts = [f"{tag}_word", f"{tag}_position"]
        if segments and segment:
            new += lookup(segment, segments, f"{tag}_segment", f"{tag}_segment")
            parts.append(f"{tag}_segment")
        total = parts[0]
        for i, part in enumerate(parts[1:], 1):  # the last sum is the op's embedding_sum output when it has one
            name = (summed or f"{tag}_sum") if i == len(parts) - 1 else f"{tag}_sum{i}"
            new.append(helper.make_node("Add", [total, part], [name], name=f"{tag}_Add{i}"))
            total = name
        new.append(helper.make_node("LayerNormalization", [total, gamma, beta], [out], axis=-1, epsilon=eps,
                                    name=f"{tag}_LayerNorm", **({"domain": ln_domain} if ln_domain else {})))
        if mask_index:  # the fused op's mask index: the mask's ones a row
            axes = {"axes": [1]} if opset < 13 else {}
            new.append(helper.make_node("ReduceSum", [mask] + ([] if axes else ["embed_rows_axis1"]), [mask_index],
                                        keepdims=0, name=f"{tag}_MaskIndex", **axes))
        return new

    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in gathered:
            made += lookup(node.input[0], node.input[1], node.output[0], node.name or node.output[0])
        elif node.op_type == "EmbedLayerNormalization" and any(t in gathered for t in node.input):
            made += unfused(node)
        else:
            made.append(node)
    whole = [t for t in tables if t not in gathered]
    head = []
    for name in whole:  # the table rebuilt whole, under its own name (ORT folds it at load)
        head += [helper.make_node("Cast", [f"{name}_int8_rows"], [f"{name}_rows_fp32"], to=TensorProto.FLOAT,
                                  name=f"{name}_Cast"),
                 helper.make_node("Mul", [f"{name}_rows_fp32", f"{name}_row_scale"], [name], name=f"{name}_Mul")]
    del graph.node[:]
    graph.node.extend(head + made)
    return tables
