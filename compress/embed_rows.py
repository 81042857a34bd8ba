"""Embedding tables as int8 rows (or int4 blocks), gathered before they are dequantized.

The quantize stage's accuracy guard keeps an embedding lookup fp32 when int8 costs accuracy there (one scale for a
whole table is too coarse). Such a table is then stored as int8 rows with one fp32 scale per row (symmetric; error at
most half a step of each row's own scale) and every lookup of it gathers the int8 rows and the scales of the ids it is
given, then dequantizes only those (Gather, Gather, Cast, Mul): the fp32 table never exists.

The first form of this (until 2026-12-07) rebuilt the whole table (Cast + Mul of two initializers), which ORT folds
back to fp32 when a session loads: the quickstart's int8 dynamic model then peaked at 223 MiB while loading (107.5 MiB
gathered first, about as its static int8 model), held 34 MiB more once loaded, and its ``.ort`` copy (an ORT-format
model is not folded at load) stored the fp32 table: 50.6 MB instead of 15.0. Same accuracy, same speed
(docs/quantization.md, the accuracy guard).

ORT's fused ``EmbedLayerNormalization`` reads whole fp32 tables, so a fused lookup of a rewritten table is unfused:
word + position + token-type rows summed, ``LayerNormalization``, and the attention's mask index as the fused op
counts it (the mask's ones per row). A lookup this cannot rewrite (another op, a Gather on another axis, a fused op
with options this does not rebuild) keeps its table whole: Cast + Mul as before.

``bits=4`` (``quantize.table_bits: 4``) stores a gathered table as int4 instead, in blocks of `BLOCK` values of a row
with one fp32 scale each (symmetric, -8..7 around ORT's zero point 8: `int4_blocks`), looked up by onnxruntime's
``com.microsoft.GatherBlockQuantized`` (uint8-packed data: onnxruntime and onnxruntime-web >= 1.22), which
dequantizes only the rows it gathers: about 0.6 of the bytes of int8 rows (a 384-wide table: 0.625 bytes a value
against 1.01). A table rebuilt whole, one whose width is not a multiple of `BLOCK` or one of fewer than
`INT4_MIN_ROWS` rows stays int8 rows.

Every tensor and node this adds gets a name the graph does not use yet: the base names (``<lookup output>_scale``,
``<table>_int8_rows``, ...) can be taken already, ORT's dynamic quantizer names a tensor's scale ``<tensor>_scale``
when a quantized MatMul reads it (a duplicate definition, an invalid model, before).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOOKUP_OPS = ("Gather", "EmbedLayerNormalization")
"""Operators that look rows up in a weight table (an initializer)."""
MS = "com.microsoft"
BLOCK = 32
"""Values of a row that share one int4 scale (GatherBlockQuantized wants a power of two, at least 16)."""
INT4_MIN_ROWS = 4096
"""Tables of fewer rows stay int8 rows under ``bits=4``: position and token-type tables (512 and 2 rows in BERT) are
read by every token, so their int4 error moves every input, for ~0.1 MB saved (the quickstart's int8 dynamic model,
mean |logit - fp32 model's logit| on SST-2 dev: 0.195 with all three tables int4, 0.100 with the word table alone,
0.085 with `int4_blocks`' searched scales; int8 rows 0.047, fp32 tables 0.040: `python scripts/bench_kernels.py
tables QUANTIZE_DIR`)."""


def int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (rows x width, fp32) as int8 rows and one fp32 scale per row (rows x 1; an all-zero row: scale 1)."""
    scale = (np.abs(w).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def int4_blocks(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (rows x width, fp32; width a multiple of ``block``) as int4 values -8..7, two a byte (the even column in
    the low nibble, offset by 8: GatherBlockQuantized's default zero point), and one fp32 scale per ``block`` values
    of a row (rows x width / block; an all-zero block: scale 1). Each block's scale is the one of 22 candidates
    (its largest |value| times 0.5..1.0, over 7 or 8) with the least squared error: clipping an outlier for finer steps
    can pay (the quickstart's int8 dynamic model, its word table int4: mean |logit - fp32 model's logit| 0.085 on
    SST-2 dev, 0.100 with the largest |value| / 7 alone; int8 rows 0.047: `scripts/bench_kernels.py tables`)."""
    rows, width = w.shape
    blocks = w.reshape(rows, width // block, block)
    largest = np.abs(blocks).max(axis=2)
    zero = largest == 0
    largest[zero] = 1.0
    scale, least = largest / 7.0, np.full(largest.shape, np.inf)
    for share in np.linspace(0.5, 1.0, 11):
        for steps in (7.0, 8.0):
            s = largest * np.float32(share / steps)
            err = ((np.clip(np.rint(blocks / s[..., None]), -8, 7) * s[..., None] - blocks) ** 2).sum(axis=2)
            better = err < least
            scale, least = np.where(better, s, scale), np.where(better, err, least)
    scale = np.where(zero, 1.0, scale).astype(np.float32)  # every candidate is exact there: 0.5 / 7 was kept
    q = (np.clip(np.rint(blocks / scale[..., None]), -8, 7).astype(np.int16) + 8).reshape(rows, width)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8), scale


def _eln_plan(node: onnx.NodeProto, consumers: dict[str, int], graph_outputs: set[str] = frozenset()) -> bool:
    """Whether a fused ``EmbedLayerNormalization`` can be rebuilt from plain ops here: the default mask index (the
    count of ones a row), and a mask given whenever that index is read (by a node or as a graph output; ORT's fusion
    without a mask still names a ``_dummy_mask_index`` output that nothing reads: it is dropped)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if set(attrs) - {"epsilon", "mask_index_type"} or attrs.get("mask_index_type", 1) != 1:
        return False
    inputs = list(node.input) + [""] * (9 - len(node.input))
    outputs = list(node.output) + [""] * (3 - len(node.output))
    return not (outputs[1] and (consumers.get(outputs[1]) or outputs[1] in graph_outputs) and not inputs[7])


def rewrite(model: onnx.ModelProto, nodes: list[str], bits: int = 8) -> dict[str, int]:
    """Store the 2-D fp32 tables read by the lookup ``nodes`` (names) as int8 rows (``bits=4``: int4 blocks where
    every lookup gathers), in place; returns the tables rewritten and the bits each got. Lookups that can be, gather
    rows (a fused embedding is unfused); a table with any other reader is rebuilt whole instead (Cast + Mul of int8
    rows, folded by ORT at load)."""
    if bits not in (4, 8):
        raise ValueError(f"bits: 4 or 8, got {bits}")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    tables: list[str] = []
    for node in graph.node:
        if node.name in wanted and node.op_type in LOOKUP_OPS:
            tables += [i for i in node.input if i in inits and inits[i].data_type == TensorProto.FLOAT
                       and len(inits[i].dims) == 2 and i not in tables]
    if not tables:
        return {}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    taken = ({n for node in graph.node for n in (*node.input, *node.output)} | set(inits) | graph_outputs
             | {i.name for i in graph.input} | {v.name for v in graph.value_info}
             | {i.values.name for i in graph.sparse_initializer})
    node_names = {node.name for node in graph.node}

    def fresh(base: str, used: set[str] = taken) -> str:
        """``base``, or ``base_2``, ``base_3``, ... : a name the graph does not use yet (now taken)."""
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        return name

    def node(op: str, inputs: list[str], outputs: list[str], name: str, **kw) -> onnx.NodeProto:
        return helper.make_node(op, inputs, outputs, name=fresh(name, node_names), **kw)

    def gatherable(reader: onnx.NodeProto) -> bool:
        if reader.op_type == "Gather":
            axis = next((helper.get_attribute_value(a) for a in reader.attribute if a.name == "axis"), 0)
            return axis == 0 and reader.input[0] in tables and reader.input[1] not in tables
        return (reader.op_type == "EmbedLayerNormalization" and reader.domain == MS
                and _eln_plan(reader, consumers, graph_outputs))

    readers = {t: [n for n in graph.node if t in n.input] for t in tables}
    gathered = {t for t in tables if t not in graph_outputs and all(gatherable(n) for n in readers[t])}
    ln_domain = next((n.domain for n in graph.node if n.op_type == "LayerNormalization"), None)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if ln_domain is None and opset < 17:  # no LayerNormalization to unfuse a fused embedding with
        gathered -= {t for t in gathered if any(n.op_type == "EmbedLayerNormalization" for n in readers[t])}

    width = {t: inits[t].dims[1] for t in tables}
    packed = {t for t in gathered if bits == 4 and width[t] % BLOCK == 0 and inits[t].dims[0] >= INT4_MIN_ROWS}
    rows_of, scale_of = {}, {}
    for name in tables:
        if name in packed:
            q, scale = int4_blocks(numpy_helper.to_array(inits[name]), BLOCK)
            rows_of[name], scale_of[name] = fresh(f"{name}_int4_blocks"), fresh(f"{name}_block_scale")
        else:
            q, scale = int8_rows(numpy_helper.to_array(inits[name]))
            rows_of[name], scale_of[name] = fresh(f"{name}_int8_rows"), fresh(f"{name}_row_scale")
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, rows_of[name]),
                                  numpy_helper.from_array(scale, scale_of[name])])
    const = {}
    if any(t in gathered for t in tables):
        const = {k: fresh(f"embed_rows_{k}") for k in ("zero", "one", "axis1")}
        graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), const[k])
                                  for k, v in (("zero", 0), ("one", 1), ("axis1", [1]))])
    made: list[onnx.NodeProto] = []

    def lookup(table: str, ids: str, out: str, tag: str) -> list[onnx.NodeProto]:
        """``out`` = the rows of ``table`` at ``ids``: int8 rows gathered and dequantized, or a plain Gather."""
        if table not in gathered:
            return [node("Gather", [table, ids], [out], f"{tag}_Gather")]
        if table in packed:
            return [node("GatherBlockQuantized", [rows_of[table], ids, scale_of[table]], [out], f"{tag}_GatherInt4",
                         domain=MS, block_size=BLOCK, gather_axis=0, quantize_axis=1)]  # no bits attribute:
            # 4 is its default, and onnxruntime 1.22 refuses the attribute (1.21: no uint8 data at all)
        rows, scale, fp32 = fresh(f"{out}_int8"), fresh(f"{out}_scale"), fresh(f"{out}_rows")
        return [node("Gather", [rows_of[table], ids], [rows], f"{tag}_GatherRows"),
                node("Gather", [scale_of[table], ids], [scale], f"{tag}_GatherScales"),
                node("Cast", [rows], [fp32], f"{tag}_Cast", to=TensorProto.FLOAT),
                node("Mul", [fp32, scale], [out], f"{tag}_Dequantize")]

    def unfused(fused: onnx.NodeProto) -> list[onnx.NodeProto]:
        """A fused EmbedLayerNormalization as plain ops (its outputs' names kept)."""
        ids, segments, word, position, segment, gamma, beta, mask, positions = \
            list(fused.input) + [""] * (9 - len(fused.input))
        out, mask_index, summed = list(fused.output) + [""] * (3 - len(fused.output))
        eps = next((helper.get_attribute_value(a) for a in fused.attribute if a.name == "epsilon"), 1e-12)
        tag = fused.name or "EmbedLayerNormalization"
        parts = [fresh(f"{tag}_word"), fresh(f"{tag}_position")]
        new = lookup(word, ids, parts[0], f"{tag}_word")
        if not positions:  # 0 .. length - 1, shared by the batch's rows
            shape, length, positions = fresh(f"{tag}_ids_shape"), fresh(f"{tag}_length"), fresh(f"{tag}_position_ids")
            new += [node("Shape", [ids], [shape], f"{tag}_Shape"),
                    node("Gather", [shape, const["one"]], [length], f"{tag}_Length", axis=0),
                    node("Range", [const["zero"], length, const["one"]], [positions], f"{tag}_Range")]
        new += lookup(position, positions, parts[1], f"{tag}_position")
        if segments and segment:
            parts.append(fresh(f"{tag}_segment"))
            new += lookup(segment, segments, parts[-1], f"{tag}_segment")
        total = parts[0]
        for i, part in enumerate(parts[1:], 1):  # the last sum is the op's embedding_sum output when it has one
            name = (summed or fresh(f"{tag}_sum")) if i == len(parts) - 1 else fresh(f"{tag}_sum{i}")
            new.append(node("Add", [total, part], [name], f"{tag}_Add{i}"))
            total = name
        new.append(node("LayerNormalization", [total, gamma, beta], [out], f"{tag}_LayerNorm", axis=-1, epsilon=eps,
                        **({"domain": ln_domain} if ln_domain else {})))
        if mask_index and mask:  # the fused op's mask index: the mask's ones a row (no mask: nothing reads it)
            axes = {"axes": [1]} if opset < 13 else {}
            new.append(node("ReduceSum", [mask] + ([] if axes else [const["axis1"]]), [mask_index],
                            f"{tag}_MaskIndex", keepdims=0, **axes))
        return new

    for old in list(graph.node):
        if old.op_type == "Gather" and old.input[0] in gathered:
            made += lookup(old.input[0], old.input[1], old.output[0], old.name or old.output[0])
        elif old.op_type == "EmbedLayerNormalization" and any(t in gathered for t in old.input):
            made += unfused(old)
        else:
            made.append(old)
    whole = [t for t in tables if t not in gathered]
    head = []
    for name in whole:  # the table rebuilt whole, under its own name (ORT folds it at load)
        fp32 = fresh(f"{name}_rows_fp32")
        head += [node("Cast", [rows_of[name]], [fp32], f"{name}_Cast", to=TensorProto.FLOAT),
                 node("Mul", [fp32, scale_of[name]], [name], f"{name}_Mul")]
    del graph.node[:]
    graph.node.extend(head + made)
    read = {name for n in graph.node for name in n.input}
    for unread in [i for i in graph.initializer if i.name in const.values() and i.name not in read]:
        graph.initializer.remove(unread)  # only an unfused EmbedLayerNormalization reads them; left, ORT warned of
        # each ("Removing initializer 'embed_rows_one'. It is not used by any node") at every session's load
    if packed and not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return {t: 4 if t in packed else 8 for t in tables}
