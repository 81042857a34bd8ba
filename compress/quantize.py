"""Stage `quantize`: ONNX fp32 (parity-checked) and accuracy-guarded int8 models of the run's newest model.

1. Export the model to ONNX (`compress.export`), check parity with torch on dev, fuse (ORT transformer optimizer).
2. int8 through ``onnxruntime.quantization``:
   - dynamic: int8 weights, activations quantized per run (u8), on the fused graph (Attention -> QAttention);
   - static: activation ranges calibrated on task training rows (MinMax / Entropy / Percentile), QDQ or QOperator,
     on the unfused graph after ``quant_pre_process`` (the fused contrib ops have no static int8 kernels).
3. Accuracy guard: the int8 model's task metric on dev against ONNX fp32. Beyond ``max_drop`` points, every
   quantizable node's sensitivity (logit error on held-out training rows when only that node is int8) ranks the
   nodes, and the first are kept in fp32 (1, 2, 4, ... of them) until the drop is within budget: the embedding
   lookups first (fp32 there costs file size, no compute), then the matmuls, each group most sensitive first. An
   embedding table kept fp32 is then stored as int8 rows with a scale per row, gathered before they are dequantized
   (`row_tables`, `compress.embed_rows`) when the model stays within budget (``table_bits: 4``: every table as int4
   blocks first, those the quantizer made int8 too). A model that stays beyond budget, or needs every node in fp32,
   is written but not marked shippable. Exclusions are recorded.
4. ORT format (``.ort``) of every int8 model, for mobile runtimes.

Writes ``model.onnx`` (fp32), ``model_opt.onnx`` (fused fp32), ``int8_<mode>.onnx`` (+ ``.ort``), ``tokenizer/``,
``quantize.json``.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import io
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx

from compress import embed_rows
from compress.config import QuantizeConfig, Recipe, newest_source
from compress.data import Collator, load_task, tokenize
from compress.embed_rows import LOOKUP_OPS
from compress.errors import CompressError
from compress.evaluate import predict
from compress.export import (SHIPPED_BATCH, check_parity, export_onnx, onnx_predict, optimize_checked, score_shipped,
                             session)
from compress.manifest import scratch_dir, write_json
from compress.ort_session import to_ort_format
from compress.metrics import compute_metrics
from compress.modeling import count_params, load_trained

log = logging.getLogger(__name__)


class _NoPreprocessHint(logging.Filter):
    """onnxruntime.quantization logs a pre-processing hint on the root logger at every call; the dynamic path
    quantizes an already fused/cleaned graph and the static path does pre-process, so the hint is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


logging.getLogger().addFilter(_NoPreprocessHint())

DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization"]
STATIC_OPS = ["MatMul", "Gemm", "Gather"]
"""Static int8 only where ORT has int8 kernels: elementwise/softmax Q/DQ pairs cost time and accuracy."""


# ------------------------------------------------------------------------------------------------ which model
def source_model(recipe: Recipe, inputs: dict[str, Path], source: Optional[str] = None) -> tuple[str, Path]:
    """(name, folder) of the model to quantize: ``source`` (teacher / prune / a student name), else the newest."""
    students = [s.name for s in (getattr(recipe, "students", None) or [])]
    source = source or newest_source(recipe, inputs)
    if source in ("teacher", "prune"):
        if source not in inputs:
            raise CompressError(f"{recipe.path}: quantize.source: stage {source!r} is not configured in this recipe")
        candidates = [inputs[source] / "model"]
    elif source in students:
        candidates = [inputs["distill"] / source / "model", inputs["distill"] / source, inputs["distill"] / "model"]
    else:
        raise CompressError(f"{recipe.path}: quantize.source: {source!r} is not teacher, prune or a student "
                            f"({', '.join(students) or 'no students'})")
    for folder in candidates:
        if (folder / "config.json").is_file():
            return source, folder
    raise CompressError(f"{candidates[0]}: no saved model for quantize.source {source!r}")


def source_in_run(recipe: Recipe, run_dir: Path, source: str) -> Path:
    """The folder of the model ``source`` (teacher / prune / a student) that the quantize stage read, looked up in
    the run folder ``run_dir`` as it is now (one moved or copied since finds its own copy)."""
    inputs = {s: run_dir / s for s in ("teacher", "distill", "prune") if (run_dir / s).is_dir()}
    return source_model(recipe, inputs, source)[1]


# ------------------------------------------------------------------------------------------------ quantizers
# LOOKUP_OPS (Gather, EmbedLayerNormalization): quantized only when they read a weight table (the embeddings), not
# the many index Gathers of shape arithmetic


def quantizable_nodes(path: Path, op_types: list[str], weights_only: bool = False) -> list[str]:
    """Names of the nodes that int8 changes: every matmul-like node of ``op_types`` (those between two activations,
    QK^T and attention x V, too, unless ``weights_only``) and the lookups of a weight table. ``weights_only``: a MatMul
    only with a weight (an initializer) as its second input, as dynamic int8 (ORT's ``MatMulConstBOnly``) quantizes."""
    model = onnx.load(str(path), load_external_data=False)
    # a table is a float matrix; a Gather of shape arithmetic reads an int64 index initializer (the graph
    # quant_pre_process folds for static int8 has many), which int8 leaves alone
    tables = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2}
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in op_types
            and (n.op_type not in LOOKUP_OPS or any(i in tables for i in n.input))
            and not (weights_only and n.op_type == "MatMul" and n.input[1] not in weights)]


def lookup_nodes(path: Path) -> list[str]:
    """The quantizable lookups of a weight table (`LOOKUP_OPS` reading an initializer: the embeddings)."""
    return quantizable_nodes(path, list(LOOKUP_OPS))


def row_tables(src: Path, dst: Path, nodes: list[str], bits: int = 8) -> dict[str, int]:
    """Store the fp32 weight tables read by the lookup ``nodes`` (embedding matrices the guard kept fp32) as int8 rows
    with one fp32 scale per row (``bits=4``: int4 blocks, where `compress.embed_rows` can), each lookup gathering rows
    and dequantizing only those (the fp32 table is never rebuilt; a quarter of the file, the load's peak memory of an
    all-int8 model). Writes ``dst``; returns the tables rewritten and their bits (none: ``dst`` is not written)."""
    model = onnx.load(str(src))
    tables = embed_rows.rewrite(model, nodes, bits)
    if tables:
        onnx.save(model, str(dst))
    return tables


class RowsReader:
    """Calibration rows for onnxruntime: one tokenized row per run, unpadded, as int64 feeds. ``set_range`` lets ORT
    collect one row at a time (``CalibStridedMinMax``: ranges and histograms are merged row by row, so memory does
    not grow with ``calibration.samples`` and rows of different lengths are never padded into the histograms)."""

    def __init__(self, ds, names: list[str]):
        self.ds, self.names, self.i, self.end = ds, names, 0, len(ds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self.ds))

    def get_next(self) -> Optional[dict]:
        if self.i >= self.end:
            return None
        row = self.ds[self.i]
        self.i += 1
        ids = np.asarray([row["input_ids"]], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in row:
            feeds["token_type_ids"] = np.asarray([row["token_type_ids"]], dtype=np.int64)
        return {k: feeds.get(k, np.zeros_like(ids)) for k in self.names}

    def __len__(self) -> int:
        return len(self.ds)


def _names(nodes) -> list[str]:
    """Node names as the quantizer sees them: it rewrites a Gemm ``X`` into MatMul ``X_MatMul`` + Add first."""
    return [m for n in nodes for m in (n, f"{n}_MatMul")]


def quantize_dynamic(src: Path, dst: Path, cfg: QuantizeConfig, exclude=(), only=None) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_dynamic

    ort_dynamic(str(src), str(dst), op_types_to_quantize=DYNAMIC_OPS, per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
                weight_type=QuantType.QInt8 if cfg.weight_type == "qint8" else QuantType.QUInt8,
                nodes_to_exclude=_names(exclude), nodes_to_quantize=_names(only) if only else None,
                # the fused graph's contrib ops lack type info ORT needs otherwise
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


@dataclass
class StaticQuantizer:
    """Static int8 with ranges calibrated once (cached) and reused for every exclusion set the guard tries."""

    src: Path
    cfg: QuantizeConfig
    calib_rows: object  # tokenized datasets.Dataset
    workdir: Path
    _cache: Optional[Path] = field(default=None, init=False)

    def __call__(self, dst: Path, exclude=(), only=None) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        cfg = self.cfg
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.calibration.method]
        cache = self.workdir / f"calibration-{cfg.calibration.method}.json"
        names = [i.name for i in session(self.src).get_inputs()] if self._cache is None else []
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "CalibPercentile": cfg.calibration.percentile,
                 "CalibStridedMinMax": 1}  # despite its name, every method: collect (and merge) one row at a time
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram collector prints a line per collect call
            quantize_static(
                str(self.src), str(dst), RowsReader(self.calib_rows, names) if self._cache is None else None,
                quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=STATIC_OPS, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                calibrate_method=method,
                activation_type=QuantType.QUInt8 if cfg.activation_type == "quint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8 if cfg.weight_type == "qint8" else QuantType.QUInt8,
                nodes_to_exclude=_names(exclude), nodes_to_quantize=_names(only) if only else None,
                extra_options=extra, calibration_cache_path=str(cache))
        self._cache = cache
        if cfg.format == "qdq" and only:  # a sensitivity: only those nodes int8, their fp32 co-readers unrounded
            read_unrounded(dst, quantized=_names(only))
        elif cfg.format == "qdq" and exclude:
            read_unrounded(dst, _names(exclude))
        return dst


def read_unrounded(path: Path, nodes: Sequence[str] = (), quantized: Optional[Sequence[str]] = None) -> None:
    """In the QDQ model at ``path``, the ``nodes`` kept fp32 (with ``quantized``: every node but those) read their
    activations as they are. ORT's quantizer puts one Q/DQ pair on a tensor for all its readers, excluded nodes too,
    so a node the guard kept fp32 computed in fp32 on int8-rounded inputs (QOperator models have no such sharing), and
    a sensitivity measured with one node int8 rounded the input of the nodes that share it (a query projection's: the
    key and value projections' and the residual Add's). Each such input is rewired from the pair's DequantizeLinear
    to the tensor the pair quantizes (weights, DequantizeLinear of an initializer, stay)."""
    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {init.name for init in graph.initializer}
    keep, changed = set(nodes), False
    if quantized is not None:
        keep = {n.name for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")} - set(quantized)
    for node in graph.node:
        if node.name not in keep:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in initializers:
                node.input[k] = q.input[0]
                changed = True
    if changed:
        onnx.save(model, str(path))


def preprocess_for_static(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-processing (shape inference, basic graph clean-up) before static quantization."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)  # symbolic shapes fail on the attention mask
    return dst


# ------------------------------------------------------------------------------------------------ the guard
def _move(src: Path, dst: Path) -> None:
    """Put the scratch file ``src`` in place of ``dst``: a rename, or, when the scratch folder is on another file
    system (os.replace fails: "Invalid cross-device link"), a copy beside ``dst`` renamed onto it."""
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        src.unlink()


@dataclass
class GuardResult:
    path: Path
    metrics: dict[str, float]
    drop: float
    """Points (x100) of the first metric lost against fp32 (negative: int8 scored higher)."""
    shippable: bool
    excluded: list[str]
    tries: list[dict]
    sensitivity: dict[str, float]
    """Single-node sensitivities measured (`SensitivityOrder`: only as many as the exclusions tried needed)."""
    reason: str
    sensitivity_groups: dict[str, float] = field(default_factory=dict)
    """Scores of the node groups measured before their nodes ("first .. last (n nodes)")."""
    sensitivity_runs: int = 0


def points(metrics: dict[str, float]) -> float:
    return 100.0 * next(iter(metrics.values()))


GROUP_FROM = 24
"""A tier of at least this many nodes is measured group by group first (`SensitivityOrder`)."""


class SensitivityOrder:
    """The guard's candidates, most sensitive first, measured only as far as the exclusions tried need them.

    ``sensitivity(nodes)``: the error (logit MSE on held-out rows) when only ``nodes`` are int8; one model written,
    loaded and run per call, seconds on a 12-layer model. ``tiers`` are ranked one after the other (the embedding
    lookups before the rest, under ``guard_prefer: speed``); a tier is measured when the first of its nodes is asked
    for. A tier of fewer than ``GROUP_FROM`` nodes is measured node by node. A larger one is first cut, in graph
    order, into ~sqrt(n) groups of consecutive nodes (about a layer each) measured together; a group's error bounds
    each member's from above when quantization errors add, so best-first over groups and nodes opens a group (measures
    its nodes one by one) before it can emit any node ranked after the group: the first k nodes come out in
    single-node order, and only the groups whose error beats the k-th node's are opened. Errors do not add exactly
    (they can cancel), so the order is exact only as far as they do; the guard scores every exclusion set on dev
    regardless. The single-node errors measured on MPNet-base are skewed (one node carries most of its group's
    error): its first matmul exclusion costs 10 group runs + 10 for the group opened, against 98 single-node runs."""

    def __init__(self, candidates: list[str], sensitivity: Callable[[list[str]], float], tiers: tuple = ()):
        self.sensitivity = sensitivity
        rest = [n for n in candidates if not any(n in t for t in tiers)]
        self.tiers = [[n for n in candidates if n in t] for t in tiers] + [rest]
        self.tiers = [t for t in self.tiers if t]
        self.position = {n: i for i, n in enumerate(candidates)}
        self.scores: dict[str, float] = {}
        self.groups: dict[str, float] = {}
        self.runs = 0
        self.emitted: list[str] = []
        self._heap: list = []
        self._tier = -1
        self._bar = None

    def __len__(self) -> int:
        return len(self.position)

    def _measure(self, nodes: list[str]) -> float:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="node sensitivity", unit="run", leave=False)
        self.runs += 1
        self._bar.update(1)
        return float(self.sensitivity(list(nodes)))

    def _push_node(self, node: str) -> None:
        self.scores[node] = self._measure([node])
        heapq.heappush(self._heap, (-self.scores[node], self.position[node], 0, node))

    def _next_tier(self) -> bool:
        self._tier += 1
        if self._tier >= len(self.tiers):
            return False
        tier = self.tiers[self._tier]
        if len(tier) < GROUP_FROM:
            for node in tier:
                self._push_node(node)
            return True
        size = math.ceil(math.sqrt(len(tier)))
        for i in range(0, len(tier), size):
            group = tier[i:i + size]
            score = self._measure(group)
            self.groups[f"{group[0]} .. {group[-1]} ({len(group)} nodes)"] = score
            heapq.heappush(self._heap, (-score, self.position[group[0]], 1, group))
        return True

    def first(self, k: int) -> list[str]:
        """The k most sensitive candidates (tier by tier), measuring what they need; k >= len: every candidate, the
        unmeasured ones in graph order (keeping all of them fp32 needs no ranking)."""
        if k >= len(self):  # what is measured in its order, then the rest (groups not opened, tiers not reached)
            rest = [heapq.heappop(self._heap) for _ in range(len(self._heap))]
            self.emitted += [n for *_, is_group, item in rest for n in (item if is_group else [item])]
            done = set(self.emitted)
            self.emitted += [n for n in self.position if n not in done]
            return list(self.emitted)
        while len(self.emitted) < k:
            if not self._heap:
                if not self._next_tier():
                    break
                continue
            _, _, is_group, item = heapq.heappop(self._heap)
            if is_group:
                for node in item:
                    self._push_node(node)
            else:
                self.emitted.append(item)
        return self.emitted[:k]

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def guard(make: Callable[..., Path], dst: Path, score: Callable[[Path], dict], fp32_metrics: dict,
          candidates: list[str], sensitivity: Callable[[list[str]], float], max_drop: float,
          workdir: Path, lookups: tuple[str, ...] = (), label: str = "quantize", mode: str = "") -> GuardResult:
    """Quantize with ``make(dst, exclude=..., only=...)``; while the dev drop exceeds ``max_drop`` keep the
    1, 2, 4, ... first ``candidates`` in fp32, ``score(path)`` -> dev metrics.

    Order: the ``lookups`` among the candidates (embedding tables: an fp32 lookup costs no compute, only file size)
    by sensitivity, then every other node (matmuls: fp32 costs time) by sensitivity, measured lazily
    (`SensitivityOrder`: ``sensitivity(nodes)`` is the error with only ``nodes`` int8). Once within budget, each
    lookup kept in fp32 is tried in int8 again and stays int8 if the model is still within budget (no size for
    nothing)."""
    base = points(fp32_metrics)
    make(dst)
    metrics = score(dst)
    int8 = f"int8 {mode}" if mode else "int8"  # its lines sit among those of the other mode
    if not math.isfinite(base):  # every try would "lose nan points": nothing to keep in fp32 can fix that
        name = next(iter(fp32_metrics))
        reason = (f"the fp32 model's {name} is {base / 100:g} (constant predictions, or under 2 guard rows): int8 "
                  f"cannot be judged against it")
        print(f"[{label}] guard: {reason}; {int8} not shippable", flush=True)
        return GuardResult(dst, metrics, float("nan"), False, [], [{"excluded": 0, "metrics": metrics, "drop": None}],
                           {}, reason)
    tries = [{"excluded": 0, "metrics": metrics, "drop": round(base - points(metrics), 4)}]
    if base - points(metrics) <= max_drop:
        return GuardResult(dst, metrics, base - points(metrics), True, [], tries, {}, "within budget")
    print(f"[{label}] guard: {int8} loses {base - points(metrics):.2f} points > {max_drop:g}: keeping its most "
          f"sensitive of {len(candidates)} nodes fp32, 1, 2, 4... at a time (each try scored on all guard rows)",
          flush=True)
    ranking = SensitivityOrder(candidates, sensitivity, tiers=(tuple(lookups),))
    try:
        return _exclude_until_within(make, dst, score, base, ranking, max_drop, workdir, lookups, tries, label, int8)
    finally:
        ranking.close()
        log.info("guard: %d sensitivity runs for %d candidates", ranking.runs, len(candidates))


def _exclude_until_within(make, dst: Path, score, base: float, ranking: SensitivityOrder, max_drop: float,
                          workdir: Path, lookups, tries: list[dict], label: str = "quantize",
                          int8: str = "int8") -> GuardResult:
    def result(shippable: bool, excluded: list[str], metrics: dict, drop: float, reason: str) -> GuardResult:
        return GuardResult(dst, metrics, drop, shippable, excluded, tries, dict(ranking.scores), reason,
                           dict(ranking.groups), ranking.runs)

    total = len(ranking)
    k, excluded = 1, []
    metrics = tries[-1]["metrics"]  # no candidate at all: the loop never runs, the first try's numbers stand
    drop = base - points(metrics)
    while k <= total:
        excluded = ranking.first(k)
        trial = workdir / f"guard-{k}.onnx"
        make(trial, exclude=excluded)
        metrics = score(trial)
        drop = base - points(metrics)
        tries.append({"excluded": k, "metrics": metrics, "drop": round(drop, 4)})
        print(f"[{label}] guard: {int8} with {k} node{'s' if k > 1 else ''} fp32 loses {drop:.2f} points", flush=True)
        if drop <= max_drop:
            for node in [n for n in excluded if n in lookups]:
                fewer = [n for n in excluded if n != node]
                if not fewer:  # no exclusion at all is the first try, already over budget
                    continue
                again = workdir / "guard-fewer.onnx"
                make(again, exclude=fewer)
                m2 = score(again)
                tries.append({"excluded": len(fewer), "requantized": node, "metrics": m2,
                              "drop": round(base - points(m2), 4)})
                if base - points(m2) <= max_drop:
                    os.replace(again, trial)
                    excluded, metrics, drop = fewer, m2, base - points(m2)
            _move(trial, dst)
            if len(excluded) == total:
                return result(False, excluded, metrics, drop,
                              "within budget only with every quantizable node in fp32 (no int8 left)")
            compute = [n for n in ranking.position if n not in lookups]  # MatMul, Gemm: what int8 speeds up
            if compute and set(compute) <= set(excluded):  # the lookups put back alone: an fp32 model, smaller
                return result(False, excluded, metrics, drop,
                              "within budget only with every matmul in fp32 (int8 left in the embedding lookups "
                              "alone: no int8 compute)")
            return result(True, excluded, metrics, drop,
                          f"within budget with {len(excluded)} of {total} nodes kept in fp32")
        if k == total:  # every node fp32 and still over: that model, built and scored, is the one left
            _move(trial, dst)
            break
        trial.unlink()
        k = total if k < total <= 2 * k else 2 * k
    # (no candidate at all: dst is the first try, all int8, already built and scored)
    return result(False, excluded, metrics, drop,
                  f"drop {drop:.2f} points stays above the budget {max_drop:g} even with every node in fp32")


def _compact_lookups(dst: Path, trial: Path, res: GuardResult, lookups: list[str], score, fp32_metrics: dict,
                     max_drop: float, bits: int = 8, make=None) -> dict:
    """After the guard: store the embedding tables it kept fp32 as int8 rows (`row_tables`) when the model stays
    within budget; updates ``res`` and ``dst`` in place. ``bits=4`` tries every table as int4 blocks first, those
    the quantizer made int8 too (the model rebuilt by ``make`` with every lookup fp32), then the kept ones as int8
    rows; an int4 try in which no table qualifies (`embed_rows.INT4_MIN_ROWS`, whole blocks) is not scored (it was
    int8 rows, scored again by the next try and noted as int4 lost). Returns the record fields (nothing when no table
    was kept and none is tried as int4)."""
    if not res.shippable:
        return {}
    kept = [n for n in res.excluded if n in lookups]
    tries = [(8, dst, kept)] if kept else []
    if bits == 4 and lookups:
        src = dst
        if make is not None and set(lookups) - set(kept):  # the quantizer's int8 tables: back to fp32 to repack
            src = make(trial.with_name("lookups-fp32.onnx"), exclude=[*res.excluded, *(set(lookups) - set(kept))])
        tries.insert(0, (4, src, list(lookups) if src != dst else kept))
    notes, ran = {}, False
    for b, src, nodes in tries:
        tables = row_tables(src, trial, nodes, b)
        if b == 4 and tables and 4 not in tables.values():  # int8 rows only: not scored twice, nor called int4
            notes["row_int4_note"] = (f"no table of >= {embed_rows.INT4_MIN_ROWS} rows and whole blocks of "
                                      f"{embed_rows.BLOCK}: no int4 tried")
            continue
        if not tables:
            continue
        ran = True
        metrics = score(trial)
        drop = points(fp32_metrics) - points(metrics)
        res.tries.append({"excluded": len(res.excluded), "row_tables": tables, "metrics": metrics,
                          "drop": round(drop, 4)})
        if drop <= max_drop:  # a nan score (a pearson of constant outputs) is no pass either
            _move(trial, dst)
            res.metrics, res.drop = metrics, drop
            return {"row_int8_tables": [t for t, n in tables.items() if n == 8],
                    **({"row_int4_tables": [t for t, n in tables.items() if n == 4]} if bits == 4 else {}), **notes}
        notes[f"row_int{b}_note"] = (f"int4 blocks lost {drop:.2f} points" + (": int8 rows tried" if kept else "")
                                     if b == 4 else f"int8 rows lost {drop:.2f} points: tables left fp32")
    if not ran:
        return {"row_int4_tables": [], **notes} if notes else {}
    return {"row_int8_tables": [], **({"row_int4_tables": []} if bits == 4 else {}), **notes}


# ------------------------------------------------------------------------------------------------ the stage
def run(recipe: Recipe, out: Path, inputs: dict[str, Path]) -> dict:
    cfg: QuantizeConfig = recipe.quantize
    name, folder = source_model(recipe, inputs, cfg.source)
    model, tokenizer = load_trained(folder)
    model.eval()
    data = load_task(recipe.task, seed=recipe.seed)
    spec, ml = data.spec, recipe.task.max_length
    dev = tokenize(data.dev, tokenizer, ml)
    calib_src = data.train.select(range(min(cfg.calibration.samples, len(data.train))))
    sens_src = data.holdout if len(data.holdout) else data.train
    sens_rows = tokenize(sens_src.select(range(min(cfg.sensitivity_rows, len(sens_src)))), tokenizer, ml)
    if "static" in cfg.modes and len(calib_src) < cfg.calibration.samples:
        log.warning("quantize.calibration.samples %d: the task has %d training rows; calibrating on those",
                    cfg.calibration.samples, len(calib_src))
    collator = Collator({"": tokenizer}, regression=spec.is_regression)
    labels = np.asarray(dev["label"])
    guard_set = None
    if cfg.guard_rows == "holdout":
        if not len(data.holdout):
            raise CompressError(f"{recipe.path}: quantize.guard_rows: holdout needs held-out rows (task.holdout > 0)")
        rows = tokenize(data.holdout, tokenizer, ml)
        guard_set = (rows, np.asarray(rows["label"]))
    tokenizer.save_pretrained(out / "tokenizer")
    result = quantize_model(model, dev, labels, spec.metrics, collator, cfg, out,
                            calib_rows=tokenize(calib_src, tokenizer, ml), sens_rows=sens_rows, guard_set=guard_set)
    result["source"] = {"model": name, "folder": str(folder)}
    # as used (the config's are caps); calibration rows only where static int8 read them (a dynamic-only stage is
    # reused whatever calibration says: `compress.pipeline._as_read`)
    result["rows"] = {**({"calibration": len(calib_src)} if "static" in cfg.modes else {}),
                      "sensitivity": len(sens_rows)}
    if data.test is not None:
        result["rows"]["test"] = score_test(result, out, tokenize(data.test, tokenizer, ml), collator, spec.metrics)
    write_json(out / "quantize.json", result)
    best = next((a for a in result["int8"].values() if a["shippable"]), None)
    metrics = {"dev": best["metrics"] if best else result["fp32"]["metrics"], "fp32_dev": result["fp32"]["metrics"],
               **{f"int8_{m}_dev": a["metrics"] for m, a in result["int8"].items()}}
    if data.test is not None:
        metrics.update(test=(best or result["fp32"])["test_metrics"], fp32_test=result["fp32"]["test_metrics"],
                       **{f"int8_{m}_test": a["test_metrics"] for m, a in result["int8"].items()})
    return {"metrics": metrics, "params": count_params(model), **result}


def score_test(record: dict, out: Path, test, collator: Collator, metric_names: list[str]) -> int:
    """A labelled test split (MRPC's): the ONNX fp32 model and every int8 one scored on it (the int8 ones one text at a
    time, as shipped), ``test_metrics`` beside each one's dev ``metrics``; nothing is chosen or judged on it. Returns
    its row count."""
    labels = np.asarray(test["label"])
    fp32 = record["fp32"]
    fp32["test_metrics"] = compute_metrics(metric_names, onnx_predict(session(out / fp32["file"]), test, collator),
                                           labels)
    for mode, entry in record["int8"].items():
        entry["test_metrics"] = score_shipped(out / entry["file"], test, collator, metric_names, labels)
        print(f"[quantize] int8 {mode} on the labelled test split ({len(test)} rows): {_fmt(entry['test_metrics'])} "
              f"(fp32 {_fmt(fp32['test_metrics'])})", flush=True)
    return len(test)


def quantize_model(model, dev, labels: np.ndarray, metric_names: list[str], collator: Collator,
                   cfg: QuantizeConfig, out: Path, *, calib_rows, sens_rows, guard_set=None,
                   label: str = "quantize", verdicts: bool = True) -> dict:
    """Export, parity, fusions, int8 (each of cfg.modes) with the guard; files into ``out``; returns the record.
    ``guard_set``: (rows, labels) whose metric the guard's budget judges instead of dev (`QuantizeConfig.guard_rows`);
    dev is then measured once per int8 model, after the guard. ``label``: the progress lines' tag; ``verdicts`` False
    (compress search: every candidate is measured, its budget is latency) prints no shippable verdict."""
    out = Path(out)
    torch_logits = predict(model, dev, collator)
    fp32 = export_onnx(model, out / "model.onnx")
    onnx_logits = onnx_predict(session(fp32), dev, collator)
    parity = check_parity(torch_logits, onnx_logits, atol=cfg.parity_atol,  # named as the recipe's output, not
                          min_agreement=cfg.parity_min_agreement, what=f"ONNX fp32 export ({fp32.name})")  # the tmp
    record = {"scored_batch": SHIPPED_BATCH,  # int8 metrics: dev texts one at a time, as the bundle runs them
              "fp32": {"file": fp32.name, "parity": parity.as_dict(),  # the metrics of the file recorded
                       "metrics": compute_metrics(metric_names, onnx_logits, labels),
                       "torch_metrics": compute_metrics(metric_names, torch_logits, labels)}}  # the bench's torch row
    dynamic_src = fp32
    if cfg.optimize:  # dynamic int8 starts from the fused graph; the bench times it as fp32 fused
        try:  # nothing fused: no copy (it would help nothing)
            fused, opt_parity = optimize_checked(fp32, out / "model_opt.onnx", model.config.model_type, torch_logits,
                                                 dev, collator, atol=cfg.parity_atol,
                                                 min_agreement=cfg.parity_min_agreement)
        except CompressError as e:  # a fusion that changed the logits: quantize the plain export, say so
            print(f"[{label}] the ORT-fused graph is not exact ({e}); dynamic int8 starts from the plain export",
                  flush=True)
            (out / "model_opt.onnx").unlink(missing_ok=True)
            fused = None
        if fused:
            record["fp32_opt"] = {"file": "model_opt.onnx", "fused": fused, "parity": opt_parity.as_dict()}
            dynamic_src = out / "model_opt.onnx"

    def score_dev(path: Path) -> dict:
        return score_shipped(path, dev, collator, metric_names, labels)

    if guard_set is None:
        score, guard_fp32 = score_dev, record["fp32"]["metrics"]
    else:
        g_rows, g_labels = guard_set

        def score(path: Path) -> dict:
            return score_shipped(path, g_rows, collator, metric_names, g_labels)

        guard_fp32 = compute_metrics(metric_names, onnx_predict(session(dynamic_src), g_rows, collator), g_labels)
        record["guard"] = {"rows": f"holdout ({len(g_rows)} rows)", "fp32_metrics": guard_fp32}

    record["int8"] = {}
    with scratch_dir("quantize") as tmp:
        tmp = Path(tmp)
        for mode in cfg.modes:
            if mode == "dynamic":
                src, ops = dynamic_src, DYNAMIC_OPS
                make = lambda dst, exclude=(), only=None, s=src: quantize_dynamic(s, dst, cfg, exclude, only)  # noqa: E731
            else:
                src, ops = preprocess_for_static(fp32, tmp / "static-src.onnx"), STATIC_OPS
                make = StaticQuantizer(src, cfg, calib_rows, tmp)
            sens_ref = onnx_predict(session(src), sens_rows, collator, SHIPPED_BATCH)

            def sensitivity(nodes: list[str], make=make) -> float:
                path = make(tmp / "only-these.onnx", only=nodes)
                logits = onnx_predict(session(path), sens_rows, collator, SHIPPED_BATCH)
                return float(np.mean((logits - sens_ref) ** 2))

            dst = out / f"int8_{mode}.onnx"
            lookups = lookup_nodes(src)
            candidates = quantizable_nodes(src, ops, weights_only=mode == "dynamic")
            res = guard(make, dst, score, guard_fp32, candidates, sensitivity,
                        cfg.max_drop, tmp, lookups=tuple(lookups) if cfg.guard_prefer == "speed" else (), label=label,
                        mode=mode)
            compact = _compact_lookups(dst, tmp / "rows.onnx", res, lookups, score, guard_fp32, cfg.max_drop,
                                       cfg.table_bits, make)
            metrics, guarded = res.metrics, {}
            if guard_set is not None:  # the guard judged other rows: dev measured once, for the model it chose
                metrics, guarded = score_dev(dst), {"guard_metrics": res.metrics}
            entry = {"file": dst.name, "source": src.name if src.parent == out else "model.onnx (pre-processed)",
                     "metrics": metrics, **guarded, "drop_points": round(res.drop, 4), "max_drop": cfg.max_drop,
                     "shippable": res.shippable, "guard": res.reason, "excluded_nodes": res.excluded,
                     "tries": res.tries, "sensitivity": {k: float(f"{v:.4g}") for k, v in res.sensitivity.items()},
                     "sensitivity_groups": {k: float(f"{v:.4g}") for k, v in res.sensitivity_groups.items()},
                     "sensitivity_runs": res.sensitivity_runs,
                     "settings": _settings(cfg, mode, fused=src != fp32), **compact}
            if cfg.ort_format:
                entry["ort_file"] = to_ort_format(dst, out / f"int8_{mode}.ort").name
            record["int8"][mode] = entry
            # the guard's rows, when not dev: their scores beside their drop (dev's beside it read as a contradiction)
            on = "" if guard_set is None else (f"; on the {record['guard']['rows']} {_fmt(res.metrics)} (fp32 "
                                               f"{_fmt(guard_fp32)})")
            verdict = f", {'shippable' if res.shippable else 'NOT shippable'}: {res.reason}" if verdicts else \
                " (no accuracy guard in the search)"
            print(f"[{label}] int8 {mode}: {_fmt(metrics)} (fp32 {_fmt(record['fp32']['metrics'])}){on}, "
                  f"drop {res.drop:.2f} points{verdict}")
    for f in sorted([*out.glob("*.onnx"), *out.glob("*.ort")]):  # the .ort too: it can hold fp32 tables again
        record.setdefault("sizes", {})[f.name] = f.stat().st_size
    return record


def _settings(cfg: QuantizeConfig, mode: str, fused: bool = False) -> dict:
    """The int8 settings of ``mode`` as recorded; ``fused``: dynamic int8 started from the ORT-fused graph (not so
    when ``cfg.optimize`` is on but nothing fused or the fused graph failed its parity check)."""
    base = {"mode": mode, "per_channel": cfg.per_channel, "weight_type": cfg.weight_type,
            "reduce_range": cfg.reduce_range, "guard_prefer": cfg.guard_prefer}
    if mode == "dynamic":
        return {**base, "activation_type": "quint8 (dynamic)", "op_types": DYNAMIC_OPS, "fused_graph": fused}
    return {**base, "activation_type": cfg.activation_type, "format": cfg.format, "op_types": STATIC_OPS,
            "calibration": {"method": cfg.calibration.method, "samples": cfg.calibration.samples,
                            "percentile": cfg.calibration.percentile}}


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
