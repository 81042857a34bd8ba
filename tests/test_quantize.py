"""int8 quantization: argmax agreement with fp32, the accuracy guard (budget 0 -> fp32 exclusions), the stage on a
teacher-only run, source selection, config errors."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from compress.config import QuantizeConfig, Recipe, from_dict
from compress.data import Collator, load_split, tokenize
from compress.errors import CompressError
from compress.export import export_onnx, onnx_predict, session
from compress.quantize import (DYNAMIC_OPS, guard, lookup_nodes, quantizable_nodes, quantize_dynamic,
                               quantize_model, source_model)
from conftest import flip_first_onnx_scores, tiny_bert_config
from compress.config import TaskConfig
from pathlib import Path


@pytest.fixture(scope="module")
def sst2(tokenizer, glue_dir):
    cfg = TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"))
    dev = tokenize(load_split(cfg, "dev").select(range(128)), tokenizer, 64)
    train = tokenize(load_split(cfg, "train").select(range(64)), tokenizer, 64)
    return dev, train, Collator({"": tokenizer})


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(initializer_range=0.2)).eval()


def test_int8_dynamic_and_static_agree_with_fp32(tmp_path, tiny_model, sst2):
    dev, train, collator = sst2
    labels = np.asarray(dev["label"])
    rec = quantize_model(tiny_model, dev, labels, ["accuracy"], collator, QuantizeConfig(max_drop=100.0), tmp_path,
                         calib_rows=train, sens_rows=train.select(range(16)))
    fp32 = onnx_predict(session(tmp_path / "model.onnx"), dev, collator)
    assert rec["fp32"]["parity"]["max_abs_diff"] < 1e-4
    for mode in ("dynamic", "static"):
        entry = rec["int8"][mode]
        int8 = onnx_predict(session(tmp_path / entry["file"]), dev, collator)
        agree = float((int8.argmax(-1) == fp32.argmax(-1)).mean())
        assert agree >= 0.9, f"{mode}: int8 agrees with fp32 on only {agree:.2%} of dev rows"
        assert 0 < np.abs(int8 - fp32).max() < 0.5  # really quantized, and close
        assert entry["shippable"] and entry["excluded_nodes"] == []
        # the int8 model is ~4x smaller and its .ort twin loads in onnxruntime
        assert rec["sizes"][entry["file"]] < 0.45 * rec["sizes"]["model.onnx"]
        twin = ort.InferenceSession(str(tmp_path / entry["ort_file"]), providers=["CPUExecutionProvider"])
        rows = dev.select(range(16))  # the same model: a static (QDQ) .ort is saved with its int8 kernels fused
        assert np.abs(onnx_predict(twin, rows, collator, 1) - onnx_predict(session(tmp_path / entry["file"]), rows,
                                                                          collator, 1)).max() < 1e-3, mode
    static = onnx_load_ops(tmp_path / "int8_static.onnx")
    assert "QuantizeLinear" in static and "DequantizeLinear" in static
    assert "DynamicQuantizeLinear" in onnx_load_ops(tmp_path / "int8_dynamic.onnx")


def test_int8_metrics_are_those_of_one_text_at_a_time(tmp_path, tiny_model, sst2):
    """Dynamic int8 computes activation scales over the whole batch, padding included: its logits for a row change
    with the rows batched with it. The recorded metrics are those of rows run alone, as a bundle runs them."""
    dev, train, collator = sst2
    labels = np.asarray(dev["label"])
    rec = quantize_model(tiny_model, dev, labels, ["accuracy"], collator, QuantizeConfig(max_drop=100.0), tmp_path,
                         calib_rows=train, sens_rows=train.select(range(16)))
    assert rec["scored_batch"] == 1
    for name in ("model.onnx", "int8_static.onnx", "int8_dynamic.onnx"):
        sess = session(tmp_path / name)
        alone, batched = onnx_predict(sess, dev, collator, batch_size=1), onnx_predict(sess, dev, collator)
        if name == "int8_dynamic.onnx":
            assert np.abs(alone - batched).max() > 1e-3  # the batch changes a row's logits
            assert rec["int8"]["dynamic"]["metrics"]["accuracy"] == float((alone.argmax(-1) == labels).mean())
        else:  # fp32 and static int8: the same logits either way
            np.testing.assert_allclose(alone, batched, atol=1e-4)
            if name == "int8_static.onnx":
                assert rec["int8"]["static"]["metrics"]["accuracy"] == float((alone.argmax(-1) == labels).mean())


@pytest.mark.parametrize("method, per_channel, fmt, op", [
    ("entropy", False, "qoperator", "QLinearMatMul"),
    ("percentile", True, "qdq", "DequantizeLinear"),
])
def test_static_calibration_methods(tmp_path, tiny_model, sst2, method, per_channel, fmt, op):
    dev, train, collator = sst2
    cfg = from_dict(QuantizeConfig, {"modes": ["static"], "per_channel": per_channel, "format": fmt,
                                     "calibration": {"method": method, "samples": 32}, "max_drop": 100.0})
    rec = quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator, cfg, tmp_path,
                         calib_rows=train.select(range(32)), sens_rows=train.select(range(8)))
    entry = rec["int8"]["static"]
    assert entry["settings"]["calibration"]["method"] == method and entry["settings"]["per_channel"] is per_channel
    assert op in onnx_load_ops(tmp_path / "int8_static.onnx")
    import onnx

    # activations QUInt8, weights QInt8 (QInt8 activations ran 2-4x slower here): told apart by their zero points
    zero_points = {t.name: t.data_type for t in onnx.load(str(tmp_path / "int8_static.onnx")).graph.initializer
                   if t.name.endswith("zero_point")}
    outputs = {n: v for n, v in zero_points.items() if n.endswith("_output_0_zero_point") or n == "logits_zero_point"}
    assert outputs and set(outputs.values()) == {onnx.TensorProto.UINT8}, outputs
    assert onnx.TensorProto.INT8 in zero_points.values()  # the matmuls' weights
    fp32 = onnx_predict(session(tmp_path / "model.onnx"), dev, collator)
    int8 = onnx_predict(session(tmp_path / "int8_static.onnx"), dev, collator)
    assert (int8.argmax(-1) == fp32.argmax(-1)).mean() >= 0.85


def test_calibration_runs_one_unpadded_row_per_collect(tmp_path, tiny_model, sst2, monkeypatch):
    """ORT's histogram calibrators keep every row's activations until they build histograms (memory grew ~4.6 MiB a
    row on MiniLM) and stack them (rows had to be padded, and padding fed the histograms). The rows are now collected
    one at a time: each collect sees one row of its own length with no padding, as many collects as rows."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    dev, train, collator = sst2
    rows = train.select(range(12))
    lengths = [len(ids) for ids in rows["input_ids"]]
    assert len(set(lengths)) > 1  # rows of different lengths: padding would have been needed to stack them
    seen = []
    original = HistogramCalibrater.collect_data

    def spy(self, reader):
        feeds = []
        wrapped = type("R", (), {"get_next": lambda _: feeds.append(f := reader.get_next()) or f})()
        original(self, wrapped)
        seen.append([(f["input_ids"].shape[1], int(f["attention_mask"].min())) for f in feeds if f])

    monkeypatch.setattr(HistogramCalibrater, "collect_data", spy)
    cfg = from_dict(QuantizeConfig, {"modes": ["static"], "calibration": {"method": "entropy", "samples": 12},
                                     "max_drop": 100.0})
    quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator, cfg, tmp_path,
                   calib_rows=rows, sens_rows=train.select(range(4)))
    assert seen == [[(n, 1)] for n in lengths]


def onnx_load_ops(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_guard_budget_zero_keeps_sensitive_nodes_fp32(tmp_path, tiny_model, sst2, monkeypatch):
    """Budget 0 on a metric int8 can only lose on (closeness to fp32): the guard must rank every node, keep the most
    sensitive in fp32, and record what it excluded. Node by node here (no groups: the exact order is checked)."""
    import compress.quantize as Q

    monkeypatch.setattr(Q, "GROUP_FROM", 10**6)
    dev, _, collator = sst2
    fp32_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    ref = onnx_predict(session(fp32_path), dev, collator)

    def score(path):  # 0 for fp32 itself, < 0 for any quantization error (float rounding of a rewritten Gemm: 1e-7)
        return {"closeness": -round(float(np.abs(onnx_predict(session(path), dev, collator) - ref).mean()), 5)}

    make = functools.partial(quantize_dynamic, fp32_path, cfg=QuantizeConfig())

    def make_kw(dst, exclude=(), only=None):
        return make(dst, exclude=exclude, only=only)

    def sensitivity(nodes):
        return -score(make_kw(tmp_path / "one.onnx", only=nodes))["closeness"]

    candidates = quantizable_nodes(fp32_path, DYNAMIC_OPS)
    assert len(candidates) >= 8  # embeddings, q/k/v/o, ffn in/out per layer, pooler, classifier
    lookups = lookup_nodes(fp32_path)
    assert lookups and set(lookups) <= set(candidates) and all("embeddings" in n for n in lookups)
    result = guard(make_kw, tmp_path / "int8.onnx", score, {"closeness": 0.0}, candidates, sensitivity, 0.0, tmp_path,
                   lookups=tuple(lookups))
    assert result.tries[0]["drop"] > 0, "int8 must lose something on this metric"
    assert result.excluded, "the guard must keep some nodes in fp32"
    assert set(result.sensitivity) == set(candidates) and result.sensitivity_runs == len(candidates)
    # embedding lookups first (fp32 costs no compute there), then the rest, each group most sensitive first
    order = sorted(candidates, key=lambda n: (n not in lookups, -result.sensitivity[n]))
    assert result.excluded == order[:len(result.excluded)]
    assert [t["excluded"] for t in result.tries][:3] == [0, 1, 2]  # 1, 2, 4, ... most sensitive nodes
    # budget 0 can only be met with every node fp32, which leaves nothing int8: not shippable
    assert result.drop <= 0.0 and not result.shippable and "every" in result.reason
    assert len(result.excluded) == len(candidates)


@pytest.mark.parametrize("fixes, expected", [({"emb"}, ["emb"]), ({"mm1"}, ["mm1"])])
def test_guard_tries_lookups_first_and_requantizes_useless_ones(tmp_path, capsys, fixes, expected):
    """Embedding lookups go first (fp32 there costs size, not time), then matmuls by sensitivity; a lookup kept in
    fp32 that the budget does not need is put back to int8. Fake quantizer: a file holding the exclusion set."""
    def make(dst, exclude=(), only=None):
        dst.write_text(json.dumps(sorted(exclude)))
        return dst

    def score(path):  # within the 0.5-point budget only when one of ``fixes`` is kept fp32
        return {"accuracy": 0.90 if fixes & set(json.loads(path.read_text())) else 0.88}

    sens = {"emb": 0.1, "mm1": 0.9, "mm2": 0.5, "mm3": 0.2}
    result = guard(make, tmp_path / "int8.onnx", score, {"accuracy": 0.90}, list(sens),
                   lambda nodes: sum(sens[n] for n in nodes), 0.5, tmp_path, lookups=("emb",), mode="static")
    # its lines name the mode: they sit between the dynamic model's result and the static one's
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["[quantize] guard: int8 static loses 2.00 points > 0.5: keeping its most sensitive of 4 "
                         "nodes fp32, 1, 2, 4... at a time (each try scored on all guard rows)",
                         f"[quantize] guard: int8 static with 1 node fp32 loses {0 if expected == ['emb'] else 2:.2f} "
                         f"points"], lines
    assert result.shippable and result.excluded == expected
    assert json.loads((tmp_path / "int8.onnx").read_text()) == expected  # the file written is the one reported
    if expected == ["mm1"]:  # [emb] failed, [emb, mm1] passed, then emb went back to int8
        assert [(t["excluded"], t.get("requantized")) for t in result.tries] == [(0, None), (1, None), (2, None),
                                                                                 (1, "emb")]


def test_guard_within_budget_only_with_every_matmul_fp32_is_not_shippable(tmp_path):
    """Every matmul kept fp32, the embedding lookups put back to int8: an fp32 model with int8 tables (no int8
    compute), which was shipped as "int8 static ... shippable" (found by a quantization audit); as a model with
    nothing left int8 is, it is written and marked not shippable, saying why."""
    def make(dst, exclude=(), only=None):
        dst.write_text(json.dumps(sorted(exclude)))
        return dst

    sens = {"emb": 0.1, "mm1": 0.9, "mm2": 0.5}
    result = guard(make, tmp_path / "int8.onnx",
                   lambda path: {"accuracy": 0.90 if {"mm1", "mm2"} <= set(json.loads(path.read_text())) else 0.88},
                   {"accuracy": 0.90}, list(sens), lambda nodes: sum(sens[n] for n in nodes), 0.5, tmp_path,
                   lookups=("emb",), mode="static")
    assert result.excluded == ["mm1", "mm2"] and result.drop == 0.0 and not result.shippable
    assert result.reason == ("within budget only with every matmul in fp32 (int8 left in the embedding lookups "
                             "alone: no int8 compute)")
    assert json.loads((tmp_path / "int8.onnx").read_text()) == ["mm1", "mm2"]


def test_guard_budget_is_inclusive_at_the_first_try_and_in_the_loop(tmp_path):
    """A drop equal to the budget is within it: budget 0 ships an int8 model that scores exactly as fp32 (first try,
    nothing kept fp32), and a try that brings the drop to exactly 0 stops the loop there."""
    def make(dst, exclude=(), only=None):
        dst.write_text(json.dumps(sorted(exclude)))
        return dst

    sens = {"mm1": 0.9, "mm2": 0.5}
    same = guard(make, tmp_path / "a.onnx", lambda path: {"accuracy": 0.90}, {"accuracy": 0.90}, list(sens),
                 lambda nodes: sum(sens[n] for n in nodes), 0.0, tmp_path)
    assert same.shippable and same.excluded == [] and len(same.tries) == 1 and same.drop == 0.0
    fixed = guard(make, tmp_path / "b.onnx",
                  lambda path: {"accuracy": 0.90 if "mm1" in json.loads(path.read_text()) else 0.88},
                  {"accuracy": 0.90}, list(sens), lambda nodes: sum(sens[n] for n in nodes), 0.0, tmp_path)
    assert fixed.shippable and fixed.excluded == ["mm1"] and [t["excluded"] for t in fixed.tries] == [0, 1]


def test_guard_over_budget_with_no_candidate_node_says_so(tmp_path):
    """int8 over budget and no node the guard could keep fp32: the model stays as quantized, not shippable, with the
    first try's numbers (the loop never ran, and its metrics and drop were read unset: UnboundLocalError)."""
    def make(dst, exclude=(), only=None):
        dst.write_text(json.dumps(sorted(exclude)))
        return dst

    built = []
    result = guard(lambda dst, **kw: built.append(kw.get("exclude", ())) or make(dst, **kw), tmp_path / "int8.onnx",
                   lambda path: {"accuracy": 0.80}, {"accuracy": 0.90}, [], lambda nodes: 0.0, 0.5, tmp_path)
    assert not result.shippable and result.excluded == []
    assert result.metrics == {"accuracy": 0.80} and result.drop == pytest.approx(10.0)
    assert json.loads((tmp_path / "int8.onnx").read_text()) == []
    assert built == [()]  # built once (it was built again after the guard gave up)


def test_guard_over_budget_with_every_node_fp32_ships_that_try_without_building_it_again(tmp_path):
    """Every node kept fp32 and still over the budget: the last try's model (built and scored) is the one left; it
    was deleted and the same model built once more."""
    built = []

    def make(dst, exclude=(), only=None):
        built.append(tuple(sorted(exclude)))
        dst.write_text(json.dumps(sorted(exclude)))
        return dst

    result = guard(make, tmp_path / "int8.onnx", lambda path: {"accuracy": 0.80}, {"accuracy": 0.90},
                   ["a", "b", "c"], lambda nodes: 0.0, 0.5, tmp_path)
    assert not result.shippable and "even with every node in fp32" in result.reason
    assert built == [(), ("a",), ("a", "b"), ("a", "b", "c")]
    assert json.loads((tmp_path / "int8.onnx").read_text()) == ["a", "b", "c"] and result.excluded == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no try left behind


def test_guard_of_a_nan_fp32_score_stops_at_once(tmp_path):
    """An fp32 model whose score is nan (a regression teacher predicting a constant: pearson nan) cannot be judged:
    the guard "lost nan points" at every try, kept 1, 2, 4... nodes fp32 until all were (a quantization and a
    sensitivity run each), then reported the budget as the reason. One quantization, not shippable, the reason."""
    made = []

    def make(dst, exclude=(), only=None):
        made.append(sorted(exclude))
        dst.write_text("x")
        return dst

    def sensitivity(nodes):
        raise AssertionError("no sensitivity run")

    result = guard(make, tmp_path / "int8.onnx", lambda path: {"pearson": float("nan")}, {"pearson": float("nan")},
                   [f"n{i}" for i in range(72)], sensitivity, 1.0, tmp_path)
    assert made == [[]] and not result.shippable and result.excluded == []
    assert result.reason == ("the fp32 model's pearson is nan (constant predictions, or under 2 guard rows): int8 "
                             "cannot be judged against it")


@pytest.mark.parametrize("prefer", ["speed", "size"])
def test_guard_prefer_decides_whether_lookups_go_first(tmp_path, tiny_model, sst2, monkeypatch, prefer):
    """The stage hands the guard the embedding lookups (speed) or none (size: sensitivity alone decides)."""
    import compress.quantize as Q

    dev, train, collator = sst2
    seen = []
    real = Q.guard
    monkeypatch.setattr(Q, "guard", lambda *a, **kw: seen.append(kw["lookups"]) or real(*a, **kw))
    cfg = from_dict(QuantizeConfig, {"modes": ["dynamic"], "max_drop": 100.0, "guard_prefer": prefer,
                                     "optimize": False})
    rec = quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator, cfg, tmp_path,
                         calib_rows=train, sens_rows=train.select(range(16)))
    assert rec["int8"]["dynamic"]["settings"]["guard_prefer"] == prefer
    if prefer == "speed":
        assert seen == [tuple(lookup_nodes(tmp_path / "model.onnx"))] and seen[0]
    else:
        assert seen == [()]


def test_embedding_tables_kept_fp32_are_stored_as_int8_rows(tmp_path, tiny_model, sst2):
    """The guard kept the embedding lookups fp32: the tables become int8 rows + a scale per row (a quarter of the
    bytes), each lookup gathers int8 rows and dequantizes those (the graph ORT runs holds no fp32 table: ORT folded
    the whole table back at load before, peaking 117 MiB higher on the quickstart's model), logits barely move, and
    the record says which tables; over budget, the file is left as it was."""
    from compress.quantize import GuardResult, _compact_lookups, row_tables

    dev, _, collator = sst2
    fp32_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    lookups = lookup_nodes(fp32_path)
    dst = quantize_dynamic(fp32_path, tmp_path / "int8.onnx", QuantizeConfig(), exclude=lookups)
    before = onnx_predict(session(dst), dev, collator)
    size = dst.stat().st_size

    tables = row_tables(dst, tmp_path / "rows.onnx", lookups)
    assert "bert.embeddings.word_embeddings.weight" in " ".join(tables) and len(tables) == 3  # word, position, type
    assert set(tables.values()) == {8}
    assert row_tables(dst, tmp_path / "none.onnx", []) == {} and not (tmp_path / "none.onnx").exists()
    rows = tmp_path / "rows.onnx"
    word = 30522 * 32 * 4  # the fp32 word table of the tiny model (hidden 32)
    assert size - rows.stat().st_size > 0.7 * word
    after = onnx_predict(session(rows, save_optimized=tmp_path / "ran.onnx"), dev, collator)
    # int8 rows move the logits a little (this random model amplifies: int8 activations downstream)
    assert np.abs(after - before).max() < 0.25 and (after.argmax(-1) == before.argmax(-1)).mean() >= 0.9
    import onnx

    assert sum(n.name.endswith("_GatherRows") for n in onnx.load(str(rows)).graph.node) == 3
    ran = {tuple(i.dims): i.data_type for i in onnx.load(str(tmp_path / "ran.onnx")).graph.initializer}
    assert ran[(30522, 32)] == onnx.TensorProto.INT8 and ran[(30522, 1)] == onnx.TensorProto.FLOAT  # rows, scales

    def result():
        return GuardResult(dst, {"accuracy": 0.5}, 0.0, True, list(lookups), [], {}, "within budget")

    res = result()
    fields = _compact_lookups(dst, tmp_path / "trial.onnx", res, lookups, lambda p: {"accuracy": 0.5},
                              {"accuracy": 0.5}, 0.3)
    assert fields == {"row_int8_tables": list(tables)} and dst.stat().st_size < size
    assert res.tries[-1]["row_tables"] == tables
    dst2 = quantize_dynamic(fp32_path, tmp_path / "int8b.onnx", QuantizeConfig(), exclude=lookups)
    res = result()
    res.path = dst2
    fields = _compact_lookups(dst2, tmp_path / "trial2.onnx", res, lookups, lambda p: {"accuracy": 0.49},
                              {"accuracy": 0.5}, 0.3)  # 1 point lost > 0.3: keep the fp32 tables
    assert fields["row_int8_tables"] == [] and dst2.stat().st_size == size and res.metrics == {"accuracy": 0.5}
    res = result()  # a score of nan (a pearson of constant outputs after the rewrite) is no pass: it was shipped
    res.path = dst2
    fields = _compact_lookups(dst2, tmp_path / "trial3.onnx", res, lookups, lambda p: {"accuracy": float("nan")},
                              {"accuracy": 0.5}, 0.3)
    assert fields["row_int8_tables"] == [] and dst2.stat().st_size == size and res.metrics == {"accuracy": 0.5}


def test_a_fused_embedding_of_int8_rows_is_unfused_and_gives_the_same_logits_padded_or_not(tmp_path, tiny_model,
                                                                                          sst2):
    """ORT's fused EmbedLayerNormalization reads whole fp32 tables: with its tables as int8 rows it becomes word +
    position + token-type rows (int8 rows gathered, then dequantized), LayerNormalization and the attention's mask
    index; the logits are those of the fused op on the same dequantized tables, one text at a time and in padded
    batches (the mask index), and the .ort copy keeps the tables int8 (it held the folded fp32 table before)."""
    import onnx

    from compress import embed_rows
    from compress.export import optimize_onnx
    from compress.quantize import row_tables

    dev, _, collator = sst2
    fused = tmp_path / "fused.onnx"
    assert optimize_onnx(export_onnx(tiny_model, tmp_path / "model.onnx"), fused).get("EmbedLayerNormalization")
    lookups = lookup_nodes(fused)
    dst = quantize_dynamic(fused, tmp_path / "int8.onnx", QuantizeConfig(), exclude=lookups)
    assert [n.op_type for n in onnx.load(str(dst)).graph.node if n.name in lookups] == ["EmbedLayerNormalization"]
    same = onnx.load(str(dst))  # the reference: the fused op on the tables the rows give back
    for init in same.graph.initializer:
        if init.name in row_tables(dst, tmp_path / "rows.onnx", lookups):
            q, scale = embed_rows.int8_rows(onnx.numpy_helper.to_array(init))
            init.CopyFrom(onnx.numpy_helper.from_array(q.astype(np.float32) * scale, init.name))
    onnx.save(same, str(tmp_path / "same.onnx"))
    rows = onnx.load(str(tmp_path / "rows.onnx"))
    kinds = [n.op_type for n in rows.graph.node]
    assert "EmbedLayerNormalization" not in kinds and kinds.count("ReduceSum") == 1 and "Range" in kinds
    for batch in (1, 8):  # 8: padded rows, the mask index counts each row's tokens
        want = onnx_predict(session(tmp_path / "same.onnx"), dev, collator, batch_size=batch)
        got = onnx_predict(session(tmp_path / "rows.onnx"), dev, collator, batch_size=batch)
        assert np.abs(got - want).max() < 0.05 and (got.argmax(-1) == want.argmax(-1)).mean() >= 0.98, batch
    from compress.ort_session import to_ort_format

    word = 30522 * 32 * 4  # the tiny model's fp32 word table
    for name in ("same", "rows"):
        to_ort_format(tmp_path / f"{name}.onnx", tmp_path / f"{name}.ort")
    assert (tmp_path / "same.ort").stat().st_size - (tmp_path / "rows.ort").stat().st_size > 0.7 * word


def test_a_table_with_another_reader_is_rebuilt_whole():
    """A table read by something besides lookups (here a ReduceSum beside the Gather) cannot be gathered row by row:
    it is stored as int8 rows and rebuilt whole (Cast + Mul under its own name, folded by ORT at load), as before."""
    from onnx import TensorProto, helper, numpy_helper

    from compress import embed_rows

    table = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup"),
         helper.make_node("ReduceSum", ["table"], ["total"], keepdims=0, name="other")],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert embed_rows.rewrite(model, ["lookup"], bits=4) == {"table": 8}  # rebuilt whole: int8 rows even so
    assert [n.name for n in model.graph.node] == ["table_Cast", "table_Mul", "lookup", "other"]
    q, scale = embed_rows.int8_rows(table)
    rows, total = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": np.array([3, 7])})
    np.testing.assert_allclose(rows, (q * scale)[[3, 7]], rtol=1e-6)
    np.testing.assert_allclose(total, (q * scale).sum(), rtol=1e-4)


def test_a_gathered_table_leaves_no_unread_initializer():
    """The constants only an unfused EmbedLayerNormalization reads (zero, one, axis 1) were added to every model with
    a gathered table: onnxruntime warned of each unread one at every session's load, three warnings a model."""
    from onnx import TensorProto, helper, numpy_helper

    from compress import embed_rows

    table = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)], [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert embed_rows.rewrite(model, ["lookup"]) == {"table": 8}
    read = {name for n in model.graph.node for name in n.input}
    assert sorted(i.name for i in model.graph.initializer) == ["table_int8_rows", "table_row_scale"] and \
        {i.name for i in model.graph.initializer} <= read
    q, scale = embed_rows.int8_rows(table)
    rows, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": np.array([3, 7])})
    np.testing.assert_allclose(rows, (q * scale)[[3, 7]], rtol=1e-6)


def test_int4_blocks_are_what_ort_gathers_and_only_tables_of_whole_blocks_get_them(monkeypatch):
    """``bits=4``: a table whose width is a multiple of BLOCK becomes packed int4 (two values a byte) with one scale
    per block, gathered by GatherBlockQuantized; ORT's rows are the numpy decoding of those bytes (the nibble order
    and zero point as ORT reads them), each block no further from the fp32 rows than plain rounding to its largest
    value / 7 (most nearer: the scale searched, the least error of its 22 candidates; an all-zero block: scale 1,
    not a candidate's); a table of another width, or of few rows (`INT4_MIN_ROWS`: position and token-type tables),
    stays int8 rows in the same model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress import embed_rows

    rng = np.random.default_rng(0)
    assert embed_rows.BLOCK == 32
    wide = rng.normal(size=(50, 2 * embed_rows.BLOCK)).astype(np.float32)
    wide[7, : embed_rows.BLOCK] = 0.0  # an all-zero block: scale 1, zeros back
    odd = rng.normal(size=(50, 24)).astype(np.float32)
    monkeypatch.setattr(embed_rows, "INT4_MIN_ROWS", 50)
    few = rng.normal(size=(49, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["wide", "ids"], ["a"], name="la"),
         helper.make_node("Gather", ["odd", "ids"], ["b"], name="lb"),
         helper.make_node("Gather", ["few", "small_ids"], ["c"], name="lc")],
        "g", [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "S"]) for n in ("ids", "small_ids")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "S", w])
         for n, w in (("a", 64), ("b", 24), ("c", 32))],
        [numpy_helper.from_array(t, n) for n, t in (("wide", wide), ("odd", odd), ("few", few))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert embed_rows.rewrite(model, ["la", "lb", "lc"], bits=4) == {"wide": 4, "odd": 8, "few": 8}
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    packed, scale = inits["wide_int4_blocks"], inits["wide_block_scale"]
    assert packed.dtype == np.uint8 and packed.shape == (50, embed_rows.BLOCK) and scale.shape == (50, 2)
    nibbles = np.stack([packed & 15, packed >> 4], axis=-1).reshape(50, -1).astype(np.float32) - 8
    decoded = (nibbles.reshape(50, 2, -1) * scale[..., None]).reshape(50, -1)
    blocks = wide.reshape(50, 2, -1)  # no block's squared error above that of plain rounding to its largest |value| / 7
    plain = np.abs(blocks).max(axis=2, keepdims=True) / 7
    plain[plain == 0] = 1
    plain_err = ((np.rint(blocks / plain) * plain - blocks) ** 2).sum(axis=2)
    assert np.all(((decoded.reshape(50, 2, -1) - blocks) ** 2).sum(axis=2) <= plain_err + 1e-6)
    assert np.mean(((decoded.reshape(50, 2, -1) - blocks) ** 2).sum(axis=2) < plain_err - 1e-6) > 0.5
    assert np.all(decoded[7, : embed_rows.BLOCK] == 0) and scale[7, 0] == 1  # not 0 (0 / 0: nan cast to int)
    largest = np.abs(blocks).max(axis=2)  # some blocks clip their largest value for finer steps (the search's share)
    assert np.any(scale[largest > 0] < largest[largest > 0] / 8 - 1e-6)
    best = np.min([((np.clip(np.rint(blocks / s), -8, 7) * s - blocks) ** 2).sum(axis=2)  # the 22 candidates' best
                   for share in np.linspace(0.5, 1.0, 11) for steps in (7, 8)
                   for s in [np.maximum(largest, 1e-30)[..., None] * np.float32(share / steps)]], axis=0)
    assert np.allclose(((decoded.reshape(50, 2, -1) - blocks) ** 2).sum(axis=2), best, rtol=1e-4, atol=1e-7)
    ids = rng.integers(0, 50, (2, 5))
    a, b, _ = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids, "small_ids": ids % 49})
    np.testing.assert_allclose(a, decoded[ids], rtol=1e-6)
    q, s = embed_rows.int8_rows(odd)
    np.testing.assert_allclose(b, (q * s)[ids], rtol=1e-6)
    with pytest.raises(ValueError, match="bits"):
        embed_rows.rewrite(model, ["la"], bits=2)


def test_int4_tables_are_kept_only_within_budget_else_int8_rows(tmp_path, tiny_model, sst2):
    """``table_bits: 4`` on a real export (the tiny BERT, hidden 32: one block a row; fused embedding too): the
    tables shrink below their int8 rows, logits stay near; the guard keeps int4 within budget, else tries int8 rows
    and records why (a scorer that marks down any model with an int4 lookup)."""
    import onnx

    from compress.export import optimize_onnx
    from compress.quantize import GuardResult, _compact_lookups, row_tables

    dev, _, collator = sst2
    fused = tmp_path / "fused.onnx"
    optimize_onnx(export_onnx(tiny_model, tmp_path / "model.onnx"), fused)
    lookups = lookup_nodes(fused)
    dst = quantize_dynamic(fused, tmp_path / "int8.onnx", QuantizeConfig(), exclude=lookups)
    before = onnx_predict(session(dst), dev, collator)
    assert set(row_tables(dst, tmp_path / "r8.onnx", lookups, 8).values()) == {8}
    four = row_tables(dst, tmp_path / "r4.onnx", lookups, 4)  # the word table; position and token type: int8 rows
    assert sorted(four.values()) == [4, 8, 8] and [b for t, b in four.items() if "word_embeddings" in t] == [4]
    word = 30522 * 32  # values of the tiny model's word table: int8 rows 1 byte each, int4 blocks 0.5 + 4/32
    assert (tmp_path / "r8.onnx").stat().st_size - (tmp_path / "r4.onnx").stat().st_size > 0.3 * word
    after = onnx_predict(session(tmp_path / "r4.onnx"), dev, collator)
    assert np.abs(after - before).max() < 0.5 and (after.argmax(-1) == before.argmax(-1)).mean() >= 0.9

    def int4_in(path):
        return any(n.op_type == "GatherBlockQuantized" for n in onnx.load(str(path)).graph.node)

    def result(path, excluded):
        return GuardResult(path, {"accuracy": 0.5}, 0.0, True, excluded, [], {}, "within budget")

    def make(dst, exclude=()):
        return quantize_dynamic(fused, dst, QuantizeConfig(), exclude=exclude)

    ok, int4_lost = (lambda p: {"accuracy": 0.5}), (lambda p: {"accuracy": 0.49 if int4_in(p) else 0.5})
    note = "int4 blocks lost 1.00 points"
    # the guard kept the lookups fp32 / left them to the quantizer (int8 per tensor: rebuilt fp32 by make, repacked)
    for name, excluded, scorer, want, tried in (
            ("ok", lookups, ok, {"row_int8_tables": 2, "row_int4_tables": 1}, [[4, 8]]),
            ("int8", lookups, int4_lost, {"row_int8_tables": 3, "row_int4_tables": [],
                                          "row_int4_note": note + ": int8 rows tried"}, [[4, 8], [8]]),
            ("repacked", [], ok, {"row_int8_tables": 2, "row_int4_tables": 1}, [[4, 8]]),
            ("as-is", [], int4_lost, {"row_int8_tables": [], "row_int4_tables": [], "row_int4_note": note}, [[4, 8]])):
        path = make(tmp_path / f"{name}.onnx", exclude=excluded)
        size, res = path.stat().st_size, result(path, list(excluded))
        fields = _compact_lookups(path, tmp_path / f"{name}-trial.onnx", res, lookups, scorer, {"accuracy": 0.5},
                                  0.3, bits=4, make=make)
        assert {k: len(v) if isinstance(v, list) and v else v for k, v in fields.items()} == want, name
        assert [sorted(set(t["row_tables"].values())) for t in res.tries] == tried, name
        assert int4_in(path) == (name in ("ok", "repacked")) and (path.stat().st_size == size) == (name == "as-is")


def test_an_int4_try_rebuilds_with_the_guards_exclusions_and_one_with_no_int4_table_is_not_scored(tmp_path,
                                                                                                   monkeypatch):
    """``table_bits: 4``: the model rebuilt with every lookup fp32 keeps the nodes the guard kept fp32 (a matmul
    here). When no table qualifies (fewer rows than `INT4_MIN_ROWS`), the int4 try gave int8 rows: scored (an extra
    scoring), then scored again as the int8 rows try, and noted "int4 blocks lost" with no int4 block in it. It is
    now skipped and noted; with the table qualifying it is scored once and kept."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress import embed_rows
    from compress.quantize import GuardResult, _compact_lookups

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], name="lk"),
         helper.make_node("MatMul", ["emb", "w"], ["y"], name="mm")],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 4])],
        [numpy_helper.from_array(rng.normal(size=(100, 64)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.normal(size=(64, 4)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fp32.onnx"))
    excludes = []

    def make(dst, exclude=()):
        excludes.append(sorted(exclude))
        return quantize_dynamic(tmp_path / "fp32.onnx", dst, QuantizeConfig(), exclude=exclude)

    scored = []

    def lose(path):
        scored.append(path)
        return {"accuracy": 0.49}

    few = "no table of >= 4096 rows and whole blocks of 32: no int4 tried"
    for excluded, want in ((["mm"], {"row_int4_tables": [], "row_int4_note": few}),
                           (["lk", "mm"], {"row_int8_tables": [], "row_int4_tables": [], "row_int4_note": few,
                                           "row_int8_note": "int8 rows lost 1.00 points: tables left fp32"})):
        dst = make(tmp_path / "int8.onnx", exclude=excluded)
        size, scored[:], excludes[:] = dst.stat().st_size, [], []
        res = GuardResult(dst, {"accuracy": 0.5}, 0.0, True, excluded, [], {}, "within budget")
        fields = _compact_lookups(dst, tmp_path / "trial.onnx", res, ["lk"], lose, {"accuracy": 0.5}, 0.3, 4, make)
        assert fields == want and dst.stat().st_size == size
        assert len(scored) == len(res.tries) == ("lk" in excluded)  # the int8 rows of a kept table: once
        assert excludes == ([] if "lk" in excluded else [["lk", "mm"]])  # rebuilt: the guard's matmul stays fp32
    monkeypatch.setattr(embed_rows, "INT4_MIN_ROWS", 100)
    res = GuardResult(dst, {"accuracy": 0.5}, 0.0, True, ["mm"], [], {}, "within budget")
    fields = _compact_lookups(dst, tmp_path / "trial.onnx", res, ["lk"], lambda p: {"accuracy": 0.5},
                              {"accuracy": 0.5}, 0.0, 4, make)  # a drop of 0 is within a budget of 0
    assert fields == {"row_int8_tables": [], "row_int4_tables": ["table"]} and res.tries[-1]["row_tables"] == {
        "table": 4}
    kinds = {n.name: n.op_type for n in onnx.load(str(dst)).graph.node}
    assert kinds["mm"] == "MatMul" and "GatherBlockQuantized" in kinds.values()  # the guard's fp32 matmul kept


def test_the_stage_passes_table_bits_on_in_both_modes(tmp_path, tiny_model, sst2):
    """``quantize.table_bits: 4`` through the stage (dynamic on the fused graph, static with its calibrated
    quantizer as the rebuilder): the word table (30522 rows, hidden 32) is int4 blocks, the position and token-type
    tables int8 rows, each model smaller than at the default 8 and recorded so."""
    import onnx

    dev, train, collator = sst2
    files = {}
    for bits in (8, 4):
        cfg = from_dict(QuantizeConfig, {"modes": ["dynamic", "static"], "max_drop": 100.0, "table_bits": bits,
                                         "ort_format": False})
        (tmp_path / str(bits)).mkdir()
        rec = quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator, cfg,
                             tmp_path / str(bits), calib_rows=train.select(range(16)), sens_rows=train.select(range(4)))
        files[bits] = rec["sizes"]
        for mode, entry in rec["int8"].items():
            if bits == 8:
                assert "row_int4_tables" not in entry and "row_int8_tables" not in entry, mode
                continue
            assert len(entry["row_int4_tables"]) == 1 and len(entry["row_int8_tables"]) == 2, mode
            assert "word_embeddings" in entry["row_int4_tables"][0], (mode, entry["row_int4_tables"])
            assert entry["tries"][-1]["row_tables"] == {**{t: 4 for t in entry["row_int4_tables"]},
                                                        **{t: 8 for t in entry["row_int8_tables"]}}
            model = onnx.load(str(tmp_path / "4" / entry["file"]))
            assert sum(n.op_type == "GatherBlockQuantized" for n in model.graph.node) == 1, mode
            session(tmp_path / "4" / entry["file"])  # ORT loads it
            assert files[4][entry["file"]] < files[8][entry["file"]] - 0.3 * 30522 * 32, mode


def test_int4_tables_of_an_mpnet(tmp_path, sst2):
    """MPNet (the offline teacher's architecture): its word table becomes int4 blocks, its position table and the
    relative-attention bias table every layer reads (32 rows) stay int8 rows; the graph loads and its logits stay
    near those of the same model with int8 rows (a random model: near, not equal)."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from compress.export import optimize_onnx
    from compress.quantize import row_tables

    dev, _, collator = sst2
    torch.manual_seed(0)
    model = MPNetForSequenceClassification(MPNetConfig(
        vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=130, initializer_range=0.2)).eval()
    fused = tmp_path / "fused.onnx"
    optimize_onnx(export_onnx(model, tmp_path / "mpnet.onnx"), fused, "mpnet")
    lookups = lookup_nodes(fused)
    kept = quantize_dynamic(fused, tmp_path / "kept.onnx", QuantizeConfig(), exclude=lookups)
    four = row_tables(kept, tmp_path / "r4.onnx", lookups, 4)
    assert {t.split(".")[-2]: b for t, b in four.items()} == {
        "word_embeddings": 4, "position_embeddings": 8, "relative_attention_bias": 8}, four
    assert row_tables(kept, tmp_path / "r8.onnx", lookups, 8)
    r4, r8 = (onnx_predict(session(tmp_path / f"r{b}.onnx"), dev, collator) for b in (4, 8))
    assert np.abs(r4 - r8).max() < 0.5 and (r4.argmax(-1) == r8.argmax(-1)).mean() >= 0.9


def _eln_model(inputs: list[str], outputs: list[str], read: list[str], tables: dict):
    """A graph of one ORT EmbedLayerNormalization ``eln`` (int32 ids, segments, mask), ``read``: its graph outputs."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = next(iter(tables.values())).shape[1]
    node = helper.make_node("EmbedLayerNormalization", inputs, outputs, name="eln", domain="com.microsoft",
                            epsilon=1e-12)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.INT32, ["B", "S"]) for n in ("ids", "seg", "mask")
                      if n in inputs],
        [helper.make_tensor_value_info(o, TensorProto.INT32 if "mask" in o else TensorProto.FLOAT,
                                       ["B"] if "mask" in o else ["B", "S", hidden]) for o in read],
        [numpy_helper.from_array(t, n) for n, t in tables.items()]
        + [numpy_helper.from_array(np.linspace(0.5, 1.5, hidden).astype(np.float32), "gamma"),
           numpy_helper.from_array(np.zeros(hidden, np.float32), "beta")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def test_a_fused_embedding_without_a_mask_is_unfused_without_a_mask_index():
    """ORT's fusion makes an EmbedLayerNormalization without a mask (7 inputs) when it finds no attention mask, but
    still names a ``_dummy_mask_index`` output: unread, it is dropped (a ReduceSum of no input before: an invalid
    model); read as a graph output (ORT gives zeros there), the fused op is kept, its tables rebuilt whole."""
    import onnx

    from compress import embed_rows

    rng = np.random.default_rng(0)
    tables = {n: rng.normal(size=(rows, 8)).astype(np.float32) for n, rows in (("word", 50), ("pos", 16), ("type", 2))}
    same = {n: (lambda q, s: q.astype(np.float32) * s)(*embed_rows.int8_rows(t)) for n, t in tables.items()}
    feeds = {"ids": rng.integers(0, 50, (3, 6)).astype(np.int32), "seg": rng.integers(0, 2, (3, 6)).astype(np.int32)}
    inputs = ["ids", "seg", "word", "pos", "type", "gamma", "beta"]
    for read, fused in ((["out"], False), (["out", "eln_dummy_mask_index"], True)):
        model = _eln_model(inputs, ["out", "eln_dummy_mask_index"], read, tables)
        assert embed_rows.rewrite(model, ["eln"]) == {"word": 8, "pos": 8, "type": 8}
        onnx.checker.check_model(model, full_check=True)
        assert ("EmbedLayerNormalization" in [n.op_type for n in model.graph.node]) == fused
        want = ort.InferenceSession(_eln_model(inputs, ["out", "eln_dummy_mask_index"], read, same).SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_the_names_a_rewrite_adds_are_unused_ones(tmp_path):
    """A lookup whose output a dynamic int8 MatMul reads: ORT's quantizer named its scale ``<output>_scale``, the name
    the gathered row scales took too (a duplicate definition: ORT refused the model); two unnamed lookups of one table
    get nodes and tensors of their own."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress import embed_rows
    from compress.quantize import row_tables

    rng = np.random.default_rng(0)
    table, w = rng.normal(size=(50, 16)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32)

    def model(tab):
        graph = helper.make_graph(
            [helper.make_node("Gather", ["table", "ids"], ["emb"], name="lookup"),
             helper.make_node("MatMul", ["emb", "w"], ["y"], name="mm"),
             helper.make_node("Gather", ["table", "ids"], ["emb2"])],
            "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 4]),
             helper.make_tensor_value_info("emb2", TensorProto.FLOAT, ["B", "S", 16])],
            [numpy_helper.from_array(tab, "table"), numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    q, scale = embed_rows.int8_rows(table)
    for name, tab in (("fp32", table), ("same", q.astype(np.float32) * scale)):
        onnx.save(model(tab), str(tmp_path / f"{name}.onnx"))
        quantize_dynamic(tmp_path / f"{name}.onnx", tmp_path / f"{name}_int8.onnx", QuantizeConfig(),
                         exclude=["lookup", ""])
    assert "emb_scale" in {o for n in onnx.load(str(tmp_path / "fp32_int8.onnx")).graph.node for o in n.output}
    assert row_tables(tmp_path / "fp32_int8.onnx", tmp_path / "rows.onnx", ["lookup", ""]) == {"table": 8}
    rows = onnx.load(str(tmp_path / "rows.onnx"))
    onnx.checker.check_model(rows, full_check=True)
    assert sum(n.op_type == "Gather" for n in rows.graph.node) == 4
    ids = {"ids": rng.integers(0, 50, (2, 5))}
    want = session(tmp_path / "same_int8.onnx").run(None, ids)
    got = session(tmp_path / "rows.onnx").run(None, ids)
    for w_, g in zip(want, got):
        np.testing.assert_allclose(g, w_, rtol=1e-6)


def test_lookups_are_the_embedding_tables_not_shape_gathers(tmp_path, tiny_model):
    """The graph quant_pre_process folds for static int8 has Gathers of shape arithmetic with int64 index
    initializers: they are not candidates (int8 leaves them alone; each would cost the guard a sensitivity run and a
    requantize try for nothing). Only the word/position/token-type tables are, in both graphs."""
    import onnx

    from compress.quantize import STATIC_OPS, preprocess_for_static

    fp32_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    static_src = preprocess_for_static(fp32_path, tmp_path / "static-src.onnx")
    folded = onnx.load(str(static_src))
    ints = {i.name for i in folded.graph.initializer if i.data_type == onnx.TensorProto.INT64}
    assert any(n.op_type == "Gather" and any(i in ints for i in n.input) for n in folded.graph.node)  # they exist
    for path in (fp32_path, static_src):
        lookups = lookup_nodes(path)
        assert sorted(lookups) == sorted(f"/model/bert/embeddings/{t}_embeddings/Gather"
                                         for t in ("word", "position", "token_type")), (path.name, lookups)
    gathers = [n for n in quantizable_nodes(static_src, STATIC_OPS) if "Gather" in n]
    assert sorted(gathers) == sorted(lookup_nodes(static_src))


def test_sensitivity_order_opens_only_the_groups_the_first_nodes_need():
    """100 matmuls + 3 lookups, errors additive (a group's = the sum of its nodes') and skewed as measured on MPNet
    (a few nodes dominate): the first k come out in exact single-node order, lookups first, from 3 lookup runs + 10
    group runs + 10 per group opened, and only the groups whose sum beats the k-th node are opened. Asking for
    every node measures nothing more (keeping all of them fp32 needs no order)."""
    from compress.quantize import SensitivityOrder

    rng = np.random.default_rng(0)
    lookups = ["emb.word", "emb.pos", "emb.type"]
    matmuls = [f"layer{i // 10}.mm{i % 10}" for i in range(100)]
    err = dict(zip(lookups + matmuls, rng.lognormal(sigma=2.5, size=103).tolist()))
    calls = []
    order = SensitivityOrder(lookups + matmuls, lambda nodes: calls.append(list(nodes)) or sum(err[n] for n in nodes),
                             tiers=(tuple(lookups),))
    assert order.first(2) == sorted(lookups, key=lambda n: -err[n])[:2] and len(calls) == 3  # no matmul measured yet
    exact = sorted(lookups, key=lambda n: -err[n]) + sorted(matmuls, key=lambda n: -err[n])
    for k in (4, 8, 16):
        assert order.first(k) == exact[:k]
    groups = [c for c in calls if len(c) > 1]
    assert len(groups) == 10 and all(len(g) == 10 for g in groups)
    sums = {f"layer{i}": sum(err[f"layer{i}.mm{j}"] for j in range(10)) for i in range(10)}
    opened = {c[0].split(".")[0] for c in calls if len(c) == 1 and c[0].startswith("layer")}
    assert opened == {g for g, total in sums.items() if total > err[exact[15]]}
    assert len(calls) == 3 + 10 + 10 * len(opened) and len(opened) < 10
    assert order.scores == {c[0]: err[c[0]] for c in calls if len(c) == 1}
    before = len(calls)
    everything = order.first(103)
    assert sorted(everything) == sorted(lookups + matmuls) and everything[:16] == exact[:16] and len(calls) == before


def test_guard_within_budget_does_nothing(tmp_path, tiny_model, sst2):
    dev, _, collator = sst2
    fp32_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    calls = []
    result = guard(lambda dst, exclude=(), only=None: quantize_dynamic(fp32_path, dst, QuantizeConfig(), exclude, only),
                   tmp_path / "int8.onnx", lambda p: {"accuracy": 0.5}, {"accuracy": 0.5},
                   quantizable_nodes(fp32_path, DYNAMIC_OPS), lambda n: calls.append(n) or 0.0, 1.0, tmp_path)
    assert result.shippable and result.excluded == [] and calls == [] and len(result.tries) == 1


def recipe_for(tmp_path, glue_dir, **quantize) -> Recipe:
    return from_dict(Recipe, {
        "name": "q", "runs_dir": str(tmp_path / "runs"),
        "task": {"name": "sst2", "data_dir": str(glue_dir / "SST-2"), "max_length": 32, "max_train_samples": 64,
                 "max_eval_samples": 64, "holdout": 0.001},
        "teacher": {"model": "minilm-l6"}, "quantize": {"modes": ["dynamic"], "sensitivity_rows": 8, **quantize}},
        file="recipe.yaml")


def test_stage_quantizes_the_teacher_of_a_teacher_only_run(tmp_path, tiny_bert_dir, glue_dir, capsys, monkeypatch):
    from compress.quantize import run

    recipe = recipe_for(tmp_path, glue_dir)
    teacher = tmp_path / "runs" / "q" / "teacher"
    (teacher).mkdir(parents=True)
    tiny_bert_dir.rename(teacher / "model")
    out = tmp_path / "out"
    out.mkdir()
    result = run(recipe, out, {"teacher": teacher})
    assert result["source"]["model"] == "teacher"
    saved = json.loads((out / "quantize.json").read_text())
    assert set(saved["int8"]) == {"dynamic"} and (out / "int8_dynamic.onnx").is_file()
    assert (out / "int8_dynamic.ort").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert saved["fp32"]["parity"]["rows"] == 64
    assert set(result["metrics"]["dev"]) == {"accuracy"}
    # the rows used, not the config's caps; no calibration rows in a dynamic-only run (none are read: a new
    # calibration setting does not redo it, `compress.pipeline._as_read`)
    assert "calibration" not in saved["rows"] and 0 < saved["rows"]["sensitivity"] <= 8
    # the stage's line gives the guard's verdict (a search's, which has no guard, gives none)
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("[quantize] int8 dynamic: "))
    assert ("shippable: " in line or "NOT shippable: " in line) and "no accuracy guard" not in line, line
    # with static int8: the calibration rows used, not the config's cap (calibration.samples 128 of a 64-row task)
    static = recipe_for(tmp_path, glue_dir, modes=["static"], max_drop=100.0)
    shutil.rmtree(out)
    out.mkdir()
    run(static, out, {"teacher": teacher})
    assert json.loads((out / "quantize.json").read_text())["rows"]["calibration"] == 64
    # calibration.samples below the task's rows: static int8 is calibrated on that many, as recorded
    import compress.quantize as Q

    seen, real = [], Q.quantize_model
    monkeypatch.setattr(Q, "quantize_model", lambda *a, **k: seen.append(len(k["calib_rows"])) or real(*a, **k))
    shutil.rmtree(out)
    out.mkdir()
    run(recipe_for(tmp_path, glue_dir, modes=["static"], max_drop=100.0, calibration={"samples": 16}), out,
        {"teacher": teacher})
    assert seen == [16] == [json.loads((out / "quantize.json").read_text())["rows"]["calibration"]]


def test_stage_scores_a_labelled_test_split_beside_dev(tmp_path, tiny_bert_dir, glue_dir, capsys):
    """MRPC's test split is labelled: the teacher and the students were scored on it, the ONNX and int8 models were
    not, so a bundle could say nothing of its test score. Each is scored on it now (int8 one pair at a time, as
    shipped), its first rows under task.max_eval_samples, and nothing is judged on it."""
    from compress.quantize import run

    recipe = recipe_for(tmp_path, glue_dir)
    recipe.task.name, recipe.task.data_dir = "mrpc", str(glue_dir / "MRPC")
    teacher = tmp_path / "runs" / "q" / "teacher"
    teacher.mkdir(parents=True)
    tiny_bert_dir.rename(teacher / "model")
    out = tmp_path / "out"
    out.mkdir()
    result = run(recipe, out, {"teacher": teacher})
    saved = json.loads((out / "quantize.json").read_text())
    assert saved["rows"]["test"] == 64
    entry = saved["int8"]["dynamic"]
    assert set(entry["test_metrics"]) == {"f1", "accuracy"} and set(saved["fp32"]["test_metrics"]) == {"f1", "accuracy"}
    from transformers import AutoTokenizer

    from compress.data import load_task

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    test = tokenize(load_task(recipe.task).test, tok, 32)
    alone = onnx_predict(session(out / entry["file"]), test, Collator({"": tok}), batch_size=1)
    assert entry["test_metrics"]["accuracy"] == float((alone.argmax(-1) == np.asarray(test["label"])).mean())
    assert result["metrics"]["int8_dynamic_test"] == entry["test_metrics"]
    assert result["metrics"]["fp32_test"] == saved["fp32"]["test_metrics"]
    best = entry if entry["shippable"] else saved["fp32"]
    assert result["metrics"]["test"] == best["test_metrics"]
    assert "[quantize] int8 dynamic on the labelled test split (64 rows): f1=" in capsys.readouterr().out


def test_guard_judges_held_out_rows_and_dev_is_measured_once(tmp_path, tiny_model, sst2, capsys):
    """quantize.guard_rows=holdout: the budget reads another split, dev is measured for the model chosen. The line
    printed gives the held-out scores beside their drop (dev's alone were printed beside it)."""
    dev, train, collator = sst2
    labels = np.asarray(dev["label"])
    held = train.select(range(48))
    rec = quantize_model(tiny_model, dev, labels, ["accuracy"], collator,
                         QuantizeConfig(modes=["dynamic"], max_drop=0.0, ort_format=False), tmp_path,
                         calib_rows=train, sens_rows=train.select(range(8)),
                         guard_set=(held, np.asarray(held["label"])))
    assert rec["guard"]["rows"] == "holdout (48 rows)"
    entry = rec["int8"]["dynamic"]
    alone = lambda rows: onnx_predict(session(tmp_path / entry["file"]), rows, collator, batch_size=1)  # noqa: E731
    assert entry["metrics"]["accuracy"] == float((alone(dev).argmax(-1) == labels).mean())
    assert entry["guard_metrics"]["accuracy"] == float((alone(held).argmax(-1) == np.asarray(held["label"])).mean())
    fp32_held = rec["guard"]["fp32_metrics"]["accuracy"]
    assert entry["drop_points"] == pytest.approx(100 * (fp32_held - entry["guard_metrics"]["accuracy"]), abs=1e-3)
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("[quantize] int8 dynamic: "))
    assert line.startswith(f"[quantize] int8 dynamic: accuracy={entry['metrics']['accuracy']:.4f} (fp32 "
                           f"accuracy={rec['fp32']['metrics']['accuracy']:.4f}); on the holdout (48 rows) "
                           f"accuracy={entry['guard_metrics']['accuracy']:.4f} (fp32 accuracy={fp32_held:.4f}), "
                           f"drop {entry['drop_points']:.2f} points, "), line


def test_stage_guard_rows_holdout_judges_the_tasks_held_out_rows(tmp_path, tiny_bert_dir, glue_dir):
    """The stage with ``guard_rows: holdout`` hands the guard the task's held-out training rows (not dev, not the
    training rows): the guard's scores are the int8 model's on exactly those rows, dev its score on dev."""
    from compress.data import load_task
    from compress.quantize import run

    recipe = recipe_for(tmp_path, glue_dir, guard_rows="holdout", ort_format=False)
    teacher = tmp_path / "runs" / "q" / "teacher"
    teacher.mkdir(parents=True)
    tiny_bert_dir.rename(teacher / "model")
    out = tmp_path / "out"
    out.mkdir()
    run(recipe, out, {"teacher": teacher})
    saved = json.loads((out / "quantize.json").read_text())
    data = load_task(recipe.task, seed=recipe.seed)
    assert saved["guard"]["rows"] == f"holdout ({len(data.holdout)} rows)" and 0 < len(data.holdout) != len(data.dev)
    entry = saved["int8"]["dynamic"]
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    collator = Collator({"": tok})
    for split, got in ((data.holdout, entry["guard_metrics"]), (data.dev, entry["metrics"])):
        rows = tokenize(split, tok, 32)
        logits = onnx_predict(session(out / entry["file"]), rows, collator, batch_size=1)
        assert got["accuracy"] == float((logits.argmax(-1) == np.asarray(rows["label"])).mean())


def test_guard_rows_option(tmp_path, tiny_bert_dir, glue_dir):
    """At its default the option stays out of the quantize section (older run folders keep their fingerprints);
    holdout without held-out rows is one clear error."""
    from compress.quantize import run

    assert "guard_rows" not in recipe_for(tmp_path, glue_dir).section("quantize")
    assert recipe_for(tmp_path, glue_dir, guard_rows="holdout").section("quantize")["guard_rows"] == "holdout"
    bad = recipe_for(tmp_path, glue_dir, guard_rows="holdout")
    bad.task.holdout = 0.0
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    tiny_bert_dir.rename(teacher / "model")
    (tmp_path / "out").mkdir()
    with pytest.raises(CompressError, match="quantize.guard_rows: holdout needs held-out rows"):
        run(bad, tmp_path / "out", {"teacher": teacher})
    with pytest.raises(CompressError, match="quantize.guard_rows"):
        recipe_for(tmp_path, glue_dir, guard_rows="test")


def test_quantize_stage_revision_redoes_run_folders_scored_in_batches(tmp_path, glue_dir, monkeypatch):
    """The quantize stage's outputs changed meaning (2: int8 scored one text at a time; 3: fp32 metrics of the ONNX
    file, .ort without the slow fusions): its fingerprint carries a revision, so older run folders redo it (and bench,
    report, bundle after it); other stages keep theirs."""
    import compress.pipeline as pl

    recipe = recipe_for(tmp_path, glue_dir)
    payloads = []
    monkeypatch.setattr(pl, "fingerprint", lambda payload: payloads.append(payload) or f"fp{len(payloads)}")
    stages = {s.name: s for s in pl.STAGES}
    pl._fingerprint(recipe, stages["teacher"], {})
    pl._fingerprint(recipe, stages["quantize"], {"teacher": {"outputs": {"model/model.safetensors": "ab"}}})
    assert "revision" not in payloads[0]
    assert payloads[1]["revision"] == stages["quantize"].revision == 3


def test_source_model_prefers_newest(tmp_path, glue_dir):
    recipe = recipe_for(tmp_path, glue_dir)
    for stage in ("teacher", "prune"):
        (tmp_path / stage / "model").mkdir(parents=True)
        (tmp_path / stage / "model" / "config.json").write_text("{}")
    inputs = {s: tmp_path / s for s in ("teacher", "prune")}
    assert source_model(recipe, inputs) == ("prune", tmp_path / "prune" / "model")
    assert source_model(recipe, inputs, "teacher")[1] == tmp_path / "teacher" / "model"
    with pytest.raises(CompressError, match="quantize.source: 'tiny' is not teacher, prune or a student"):
        source_model(recipe, inputs, "tiny")
    (tmp_path / "prune" / "model" / "config.json").unlink()
    with pytest.raises(CompressError, match="no saved model"):
        source_model(recipe, inputs)


@pytest.mark.parametrize("section, message", [
    ({"modes": []}, "quantize.modes: give at least one"),
    ({"max_drop": -1}, "quantize.max_drop: must be >= 0"),
    ({"modes": ["fp16"]}, r"quantize.modes\[0\]: expected one of"),
    ({"calibration": {"method": "kl"}}, "quantize.calibration.method: expected one of"),
    ({"calibration": {"samples": 0}}, "quantize.calibration.samples: must be >= 1"),
    # ORT refuses s8 activations x u8 weights, but only once static int8 has calibrated, after export, parity,
    # fusion and the whole dynamic mode, with its own ValueError: refused with the recipe instead
    ({"activation_type": "qint8", "weight_type": "quint8"},
     "quantize.activation_type: qint8 activations need qint8 weights"),
])
def test_quantize_config_errors(section, message):
    with pytest.raises(CompressError, match=message):
        from_dict(QuantizeConfig, section, file="r.yaml", where="quantize")


def test_an_inexact_fusion_falls_back_to_the_plain_graph_and_a_corrupt_model_is_one_line(tmp_path, tiny_model, sst2,
                                                                                        monkeypatch, tiny_bert_dir):
    import shutil

    import compress.quantize as Q
    from compress.modeling import load_trained

    def inexact(*args, **kwargs):
        raise CompressError("model_opt.onnx parity check failed: max |diff| 0.01")

    monkeypatch.setattr(Q, "optimize_checked", inexact)
    dev, train, collator = sst2
    rec = Q.quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator,
                           QuantizeConfig(modes=["dynamic"], max_drop=100.0), tmp_path, calib_rows=train,
                           sens_rows=train.select(range(16)))
    assert "fp32_opt" not in rec and rec["int8"]["dynamic"]["shippable"] and not (tmp_path / "model_opt.onnx").exists()
    assert rec["sizes"]["int8_dynamic.ort"] > 0  # the .ort files are listed with the .onnx ones
    broken = shutil.copytree(tiny_bert_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CompressError, match=r"broken: cannot load the saved model \(.*\); rerun the stage"):
        load_trained(broken)



def test_reduce_range_quantizes_weights_to_7_bits_in_both_modes(tmp_path, tiny_model, sst2):
    """``reduce_range: true``: every int8 weight initializer of the dynamic and the static model lies in -64..64 (8-bit
    ones reach -127/127), the settings record it, and the models still agree with fp32."""
    import onnx
    from onnx import numpy_helper

    dev, train, collator = sst2

    def int8_weights(path) -> np.ndarray:
        model = onnx.load(str(path))
        found = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
                 and len(t.dims) == 2]
        assert found, path
        return np.concatenate([a.ravel() for a in found]).astype(np.int32)

    ranges = {}
    for reduce in (False, True):
        out = tmp_path / str(reduce)
        out.mkdir()
        cfg = from_dict(QuantizeConfig, {"reduce_range": reduce, "max_drop": 100.0, "calibration": {"samples": 32}})
        rec = quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator, cfg, out,
                             calib_rows=train.select(range(32)), sens_rows=train.select(range(8)))
        fp32 = onnx_predict(session(out / "model.onnx"), dev, collator)
        for mode in ("dynamic", "static"):
            assert rec["int8"][mode]["settings"]["reduce_range"] is reduce
            w = int8_weights(out / f"int8_{mode}.onnx")
            ranges[reduce, mode] = (int(w.min()), int(w.max()))
            int8 = onnx_predict(session(out / f"int8_{mode}.onnx"), dev, collator)
            assert (int8.argmax(-1) == fp32.argmax(-1)).mean() >= 0.85, (reduce, mode)
    for mode in ("dynamic", "static"):
        assert ranges[True, mode][0] >= -64 and ranges[True, mode][1] <= 64, ranges
        assert ranges[False, mode][0] < -64 or ranges[False, mode][1] > 64, ranges


def test_ort_format_of_a_static_model_leaves_out_the_slow_fusion(tmp_path, tiny_model, sst2):
    """The .ort file bakes ORT's optimisations in (extended level for a QDQ model, to fuse its int8 kernels), and a
    session loading it does not redo them: the fusions our sessions disable (`SLOW_FUSIONS`: SkipLayerNormalization,
    a slow CPU kernel) must be left out of the conversion too, or every shipped .ort runs the slow kernel."""
    from compress.export import optimize_onnx
    from compress.ort_session import to_ort_format
    from compress.quantize import StaticQuantizer, preprocess_for_static

    _, train, _ = sst2
    src = preprocess_for_static(export_onnx(tiny_model, tmp_path / "model.onnx"), tmp_path / "pre.onnx")
    cfg = from_dict(QuantizeConfig, {"modes": ["static"], "calibration": {"samples": 8}})
    static = StaticQuantizer(src, cfg, train.select(range(8)), tmp_path)(tmp_path / "int8_static.onnx")
    ort_file = to_ort_format(static, tmp_path / "int8_static.ort")
    assert b"QLinearMatMul" in ort_file.read_bytes() or b"QGemm" in ort_file.read_bytes()  # int8 kernels fused
    assert b"SkipLayerNormalization" not in ort_file.read_bytes()
    # a dynamic model of the fused graph has DequantizeLinear (its quantized embeddings): converted the same way
    fused = tmp_path / "model_opt.onnx"
    optimize_onnx(tmp_path / "model.onnx", fused)
    dynamic = to_ort_format(quantize_dynamic(fused, tmp_path / "int8_dynamic.onnx", cfg), tmp_path / "int8_dynamic.ort")
    assert b"SkipLayerNormalization" not in dynamic.read_bytes()
    (tmp_path / "broken.onnx").write_bytes(b"not a model")  # onnxruntime's failure: one line, no .ort left
    with pytest.raises(CompressError, match=r"broken\.onnx: conversion to ORT format failed \("):
        to_ort_format(tmp_path / "broken.onnx", tmp_path / "broken.ort")
    assert not (tmp_path / "broken.ort").exists()
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "unknown_op.onnx")  # an ONNX file onnxruntime cannot load
    with pytest.raises(CompressError, match=r"unknown_op\.onnx: conversion to ORT format failed \(.*NoSuchOp"):
        to_ort_format(tmp_path / "unknown_op.onnx", tmp_path / "unknown_op.ort")
    assert not (tmp_path / "unknown_op.ort").exists()


def test_dynamic_settings_say_the_plain_graph_when_the_fused_one_was_refused(tmp_path, tiny_model, sst2, monkeypatch):
    """optimize: true, but the fused graph failed its parity check: dynamic int8 starts from the plain export, and its
    recorded settings must say so (they said fused_graph: true, from the config alone)."""
    import compress.quantize as Q

    def not_exact(src, dst, *args, **kwargs):
        raise CompressError(f"{dst} parity check failed")

    monkeypatch.setattr(Q, "optimize_checked", not_exact)
    dev, train, collator = sst2
    rec = quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator,
                         QuantizeConfig(modes=["dynamic"], max_drop=100.0, ort_format=False), tmp_path,
                         calib_rows=train, sens_rows=train.select(range(4)))
    entry = rec["int8"]["dynamic"]
    assert "fp32_opt" not in rec and entry["source"] == "model.onnx"
    assert entry["settings"]["fused_graph"] is False


def _other_file_system(path: Path) -> Path | None:
    """A writable folder on another file system than ``path`` (/dev/shm, a tmpfs), else None."""
    import os

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != path.stat().st_dev:
        return shm
    return None


def test_guard_publishes_from_a_scratch_folder_on_another_file_system(tmp_path):
    """The stage's scratch folder (the guard's tries) is in the system's temporary folder, the guarded model in the
    run folder: often two file systems (a tmpfs /tmp). The chosen try was moved there with os.replace, which fails
    across them: "Invalid cross-device link"."""
    import tempfile

    shm = _other_file_system(tmp_path)
    if shm is None:
        pytest.skip("no second file system to put the scratch folder on")

    def make(dst, exclude=(), only=None):
        dst.write_text(json.dumps(sorted(exclude)))
        return dst

    def score(path):  # within budget once mm1 is kept fp32
        return {"accuracy": 0.90 if "mm1" in json.loads(path.read_text()) else 0.88}

    with tempfile.TemporaryDirectory(dir=shm) as scratch:
        result = guard(make, tmp_path / "int8.onnx", score, {"accuracy": 0.90}, ["mm1", "mm2"],
                       lambda nodes: 1.0 if "mm1" in nodes else 0.1, 0.5, Path(scratch))
    assert result.shippable and result.excluded == ["mm1"]
    assert json.loads((tmp_path / "int8.onnx").read_text()) == ["mm1"]


def _int8_ops(path) -> list[str]:
    """The quantized operators of an ONNX file (ORT also rewrites every Gemm to MatMul + Add, quantized or not)."""
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node
            if "quant" in n.op_type.lower() or "Integer" in n.op_type or n.op_type.startswith("Q")]


def test_dynamic_guard_candidates_are_the_nodes_dynamic_int8_changes(tmp_path, sst2, monkeypatch):
    """Dynamic int8 (ORT's MatMulConstBOnly) leaves a MatMul of two activations (QK^T, attention x V: in the plain
    graph, and in an MPNet graph even fused) fp32. As guard candidates they cost a sensitivity run each for nothing,
    and, counted among the nodes kept fp32, let a model with no int8 node left pass as shippable: a 4-layer BERT's
    plain graph has 29 such nodes and 8 more, and 32 kept fp32 are "32 of 37"."""
    import compress.quantize as Q

    dev, train, collator = sst2
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(initializer_range=0.2, num_hidden_layers=4)).eval()
    real = Q.score_shipped

    def score_shipped(path, *args):  # only the fp32 graph is within the budget of 0 points
        metrics = real(path, *args)
        return {k: v - 0.05 for k, v in metrics.items()} if _int8_ops(path) else metrics

    monkeypatch.setattr(Q, "score_shipped", score_shipped)
    rec = quantize_model(model, dev, np.asarray(dev["label"]), ["accuracy"], collator,
                         QuantizeConfig(modes=["dynamic"], optimize=False, max_drop=0.0, ort_format=False), tmp_path,
                         calib_rows=train, sens_rows=train.select(range(4)))
    entry = rec["int8"]["dynamic"]
    assert not _int8_ops(tmp_path / entry["file"]) and not entry["shippable"], entry["guard"]
    assert not [n for n in entry["sensitivity"] if n.endswith(("self/MatMul", "self/MatMul_1"))]


def test_the_fp32_record_scores_the_onnx_file_not_the_torch_model(tmp_path, tiny_model, sst2, monkeypatch):
    """record["fp32"] names model.onnx, but its metrics (and the guard's baseline) were the torch model's logits,
    which may differ from the file's on near-ties within the parity tolerance. They are the file's own now."""
    import compress.quantize as Q

    dev, train, collator = sst2
    labels = np.asarray(dev["label"])
    real = flip_first_onnx_scores(monkeypatch)
    cfg = QuantizeConfig(modes=["dynamic"], max_drop=100.0, optimize=False, parity_atol=1.0e3,
                         parity_min_agreement=0.1, ort_format=False)
    rec = Q.quantize_model(tiny_model, dev, labels, ["accuracy"], collator, cfg, tmp_path, calib_rows=train,
                           sens_rows=train.select(range(16)))
    flipped = real(session(tmp_path / "model.onnx"), dev, collator)
    flipped[: len(flipped) // 2] *= -1
    onnx = Q.compute_metrics(["accuracy"], flipped, labels)
    torch_metrics = Q.compute_metrics(["accuracy"], Q.predict(tiny_model, dev, collator), labels)
    assert onnx != torch_metrics and rec["fp32"]["metrics"] == onnx


def test_a_static_node_kept_fp32_reads_its_input_unrounded(tmp_path, tiny_model, sst2):
    """ORT's QDQ quantizer puts one Q/DQ pair on a tensor for all its readers, excluded ones too: a MatMul the guard
    kept fp32 (a query projection, whose input the key and value projections also read) computed on int8-rounded
    inputs. It reads the tensor itself now; the quantized readers keep the pair."""
    import onnx

    from compress.quantize import StaticQuantizer, preprocess_for_static

    _, train, _ = sst2
    src = preprocess_for_static(export_onnx(tiny_model, tmp_path / "model.onnx"), tmp_path / "pre.onnx")
    cfg = from_dict(QuantizeConfig, {"modes": ["static"], "calibration": {"samples": 8}})
    matmuls = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul"]
    query, key = (next(m for m in matmuls if f"layer.0/attention/self/{p}/" in m) for p in ("query", "key"))
    out = StaticQuantizer(src, cfg, train.select(range(8)), tmp_path)(tmp_path / "int8.onnx", exclude=[query])
    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    nodes = {n.name: n for n in graph.node}
    assert producer[nodes[query].input[0]].op_type == "LayerNormalization"  # was the shared DequantizeLinear
    assert producer[nodes[key].input[0]].op_type == "DequantizeLinear"
    assert producer[nodes[key].input[0]].input[0] in {o for o in producer if producer[o].op_type == "QuantizeLinear"}
    assert session(out).run(None, {"input_ids": np.array([[101, 2307, 102]]),
                                   "attention_mask": np.ones((1, 3), dtype=np.int64),
                                   "token_type_ids": np.zeros((1, 3), dtype=np.int64)})[0].shape == (1, 2)
    # a sensitivity ("only that node int8"): the query projection alone reads the rounded tensor, not its co-readers
    # (they read it rounded too: the sensitivity measured three matmuls and the residual Add)
    one = StaticQuantizer(src, cfg, train.select(range(8)), tmp_path)(tmp_path / "one.onnx", only=[query])
    graph = onnx.load(str(one)).graph
    producer = {o: n for n in graph.node for o in n.output}
    nodes = {n.name: n for n in graph.node}
    assert producer[nodes[query].input[0]].op_type == "DequantizeLinear"
    assert producer[nodes[key].input[0]].op_type == "LayerNormalization"
    readers = [n for n in graph.node if producer[nodes[query].input[0]].output[0] in n.input]
    assert [n.name for n in readers] == [query]


def test_a_parity_failure_names_the_export_not_the_temporary_file(tmp_path, tiny_model, sst2):
    """The stage's error named <run>/.quantize.tmp-<pid>/model.onnx, a folder removed as the error is read."""
    from compress.quantize import quantize_model

    dev, train, collator = sst2
    cfg = QuantizeConfig(modes=["dynamic"], optimize=False, parity_atol=1e-12, ort_format=False)
    with pytest.raises(CompressError, match=r"^ONNX fp32 export \(model\.onnx\) parity check failed on \d+ dev rows"):
        quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator, cfg, tmp_path,
                       calib_rows=train, sens_rows=train.select(range(4)))


def test_the_stage_reports_the_first_shippable_int8_model_else_fp32(tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    """The stage's dev metrics are those of the first int8 model the guard marked shippable; an int8 model over its
    budget is never the one reported, and with none shippable the fp32 model's are."""
    import copy

    import compress.quantize as Q

    recipe = recipe_for(tmp_path, glue_dir, modes=["dynamic", "static"])
    teacher = tmp_path / "runs" / "q" / "teacher"
    teacher.mkdir(parents=True)
    tiny_bert_dir.rename(teacher / "model")
    record = {"fp32": {"file": "model.onnx", "metrics": {"accuracy": 0.90}},
              "int8": {"dynamic": {"file": "int8_dynamic.onnx", "metrics": {"accuracy": 0.70}, "shippable": False},
                       "static": {"file": "int8_static.onnx", "metrics": {"accuracy": 0.89}, "shippable": True}}}
    monkeypatch.setattr(Q, "quantize_model", lambda *a, **k: copy.deepcopy(record))
    for shippable, expected in ((True, {"accuracy": 0.89}), (False, {"accuracy": 0.90})):
        record["int8"]["static"]["shippable"] = shippable
        out = tmp_path / f"out-{shippable}"
        out.mkdir()
        metrics = Q.run(recipe, out, {"teacher": teacher})["metrics"]
        assert metrics["dev"] == expected and metrics["fp32_dev"] == {"accuracy": 0.90}
        assert metrics["int8_dynamic_dev"] == {"accuracy": 0.70}


def test_embedding_tables_of_a_model_that_is_not_shippable_are_left_alone(tmp_path, tiny_model):
    """`_compact_lookups` rewrites the fp32 tables as int8 rows only for a model the guard marked shippable: one it
    did not mark (over budget, or every node kept fp32) is left as the guard wrote it and records no tables."""
    from compress.quantize import GuardResult, _compact_lookups

    fp32_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    lookups = lookup_nodes(fp32_path)
    dst = quantize_dynamic(fp32_path, tmp_path / "int8.onnx", QuantizeConfig(), exclude=lookups)
    before = dst.read_bytes()
    scored = []
    res = GuardResult(dst, {"accuracy": 0.5}, 0.0, False, list(lookups), [], {}, "every node fp32")
    fields = _compact_lookups(dst, tmp_path / "trial.onnx", res, lookups,
                              lambda p: scored.append(p) or {"accuracy": 0.5}, {"accuracy": 0.5}, 0.3)
    assert fields == {} and scored == [] and res.tries == [] and dst.read_bytes() == before
    assert not (tmp_path / "trial.onnx").exists()


def test_per_channel_reaches_both_quantizers_and_dynamic_int8_quantizes_the_fused_attention(tmp_path, tiny_model, sst2):
    """``per_channel: true`` gives the int8 weights of the dynamic and the static model one scale per output channel
    (false: one per tensor), and dynamic int8 of the ORT-fused graph turns its Attention nodes into QAttention."""
    import onnx
    from onnx import numpy_helper

    from compress.export import optimize_onnx
    from compress.quantize import StaticQuantizer, preprocess_for_static

    _, train, _ = sst2
    fp32 = export_onnx(tiny_model, tmp_path / "model.onnx")
    pre = preprocess_for_static(fp32, tmp_path / "pre.onnx")

    def vector_scales(path) -> int:  # float scale initializers with more than one value: per-channel weights
        return sum(1 for t in onnx.load(str(path)).graph.initializer if t.name.endswith("scale")
                   and t.data_type == onnx.TensorProto.FLOAT and numpy_helper.to_array(t).size > 1)

    for per_channel in (True, False):
        cfg = from_dict(QuantizeConfig, {"per_channel": per_channel, "calibration": {"samples": 8}})
        work = tmp_path / str(per_channel)
        work.mkdir()
        dynamic = quantize_dynamic(fp32, work / "dynamic.onnx", cfg)
        static = StaticQuantizer(pre, cfg, train.select(range(8)), work)(work / "static.onnx")
        assert (vector_scales(dynamic) > 0) is per_channel and (vector_scales(static) > 0) is per_channel
    fused = tmp_path / "model_opt.onnx"
    assert optimize_onnx(fp32, fused)["Attention"] == 2
    dynamic = quantize_dynamic(fused, tmp_path / "fused.onnx", QuantizeConfig())
    ops = [n.op_type for n in onnx.load(str(dynamic)).graph.node]
    assert ops.count("QAttention") == 2 and "Attention" not in ops


def test_dynamic_int8_starts_from_the_fused_graph_when_it_is_exact(tmp_path, tiny_model, sst2):
    """optimize: true and the fused graph passed its parity check: dynamic int8 quantizes model_opt.onnx (QAttention),
    and its record says so."""
    dev, train, collator = sst2
    rec = quantize_model(tiny_model, dev, np.asarray(dev["label"]), ["accuracy"], collator,
                         QuantizeConfig(modes=["dynamic"], max_drop=100.0, ort_format=False), tmp_path,
                         calib_rows=train, sens_rows=train.select(range(4)))
    entry = rec["int8"]["dynamic"]
    assert rec["fp32_opt"]["file"] == "model_opt.onnx" and entry["source"] == "model_opt.onnx"
    assert entry["settings"]["fused_graph"] is True
    assert "QAttention" in onnx_load_ops(tmp_path / entry["file"])


def test_ort_format_level_follows_dequantize_nodes_alone(tmp_path, monkeypatch):
    """A dynamic int8 model has DequantizeLinear nodes (its int8 embedding tables) and no QuantizeLinear: it is
    converted at the extended level as a static (QDQ) one is, so its pairs are fused into the .ort; a graph with
    neither stays at the basic level."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.ort_session import to_ort_format

    levels, real = [], ort.InferenceSession

    def spy(path, options, *args, **kwargs):
        levels.append(options.graph_optimization_level)
        return real(path, options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    inits = [numpy_helper.from_array(np.arange(6, dtype=np.int8).reshape(3, 2), "table_q"),
             numpy_helper.from_array(np.array(0.5, dtype=np.float32), "table_scale")]
    dq = helper.make_graph([helper.make_node("DequantizeLinear", ["table_q", "table_scale"], ["table"]),
                            helper.make_node("Gather", ["table", "ids"], ["y"])], "dq",
                           [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=inits)
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for name, graph in (("dq", dq), ("plain", plain)):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / f"{name}.onnx")
        assert to_ort_format(tmp_path / f"{name}.onnx", tmp_path / f"{name}.ort").is_file()
    assert levels == [ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC]


def test_a_lookup_put_back_to_int8_reports_the_metrics_of_the_model_shipped(tmp_path):
    """The lookup kept fp32 goes back to int8 when the model stays within budget: the metrics and the drop recorded
    are those of that model (the one written), not of the try that kept the lookup fp32."""
    def make(dst, exclude=(), only=None):
        dst.write_text(json.dumps(sorted(exclude)))
        return dst

    def score(path):
        excluded = set(json.loads(path.read_text()))
        return {"accuracy": (0.90 if "emb" in excluded else 0.896) if "mm1" in excluded else 0.88}

    sens = {"emb": 0.1, "mm1": 0.9, "mm2": 0.5}
    result = guard(make, tmp_path / "int8.onnx", score, {"accuracy": 0.90}, list(sens),
                   lambda nodes: sum(sens[n] for n in nodes), 0.5, tmp_path, lookups=("emb",))
    assert result.shippable and result.excluded == ["mm1"]
    assert json.loads((tmp_path / "int8.onnx").read_text()) == ["mm1"]
    assert result.metrics == {"accuracy": 0.896} and result.drop == pytest.approx(0.4)


def test_a_gemm_alone_is_quantized_dynamically_when_asked_for_by_its_graph_name(tmp_path, tiny_model):
    """Dynamic int8 rewrites a Gemm ``X`` into MatMul ``X_MatMul`` + Add before quantizing: a sensitivity run asking for
    the pooler's or the classifier's Gemm alone by its graph name must still quantize it (else it measured nothing)."""
    import onnx

    fp32 = export_onnx(tiny_model, tmp_path / "model.onnx")
    gemms = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Gemm"]
    assert gemms, "the pooler and the classifier export as Gemm"
    for gemm in gemms:
        dynamic = quantize_dynamic(fp32, tmp_path / "dynamic.onnx", QuantizeConfig(), only=[gemm])
        assert _int8_ops(dynamic).count("MatMulInteger") == 1, gemm
