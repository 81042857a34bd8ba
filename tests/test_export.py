"""ONNX export: parity with torch on real SST-2 dev rows, dynamic axes, pruned (non-uniform) shapes, fusions, errors."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch
from transformers import BertForSequenceClassification
from transformers.pytorch_utils import prune_linear_layer

from compress.config import TaskConfig
from compress.data import Collator, load_split, tokenize
from compress.errors import CompressError
from compress.evaluate import predict
from compress.export import check_parity, export_onnx, onnx_predict, optimize_onnx, session
from conftest import tiny_bert_config


@pytest.fixture(scope="module")
def dev_rows(tokenizer, glue_dir):
    dev = load_split(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2")), "dev").select(range(96))
    return tokenize(dev, tokenizer, 64), Collator({"": tokenizer})


def pruned_tiny_bert() -> BertForSequenceClassification:
    """A tiny BERT with different shapes per layer: layer 0 keeps 2 of 4 heads, layer 1 keeps 40 of 64 FFN units."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(initializer_range=0.2))
    model.prune_heads({0: [1, 2]})
    layer = model.bert.encoder.layer[1]
    keep = torch.arange(0, 64, 64 / 40).long()[:40]
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
    layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    return model


def test_export_uniform_parity_on_dev_and_dynamic_axes(tmp_path, dev_rows):
    ds, collator = dev_rows
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(initializer_range=0.2)).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [d for d in sess.get_inputs()[0].shape] == ["batch", "sequence"]
    torch_logits = predict(model, ds, collator, batch_size=32)
    onnx_logits = onnx_predict(sess, ds, collator, batch_size=17)  # other batch sizes and padded lengths than export
    parity = check_parity(torch_logits, onnx_logits)
    assert parity.rows == 96 and parity.max_abs_diff < 1e-4 and parity.argmax_agreement == 1.0
    assert np.abs(torch_logits).max() > 1e-3  # a real comparison, not of zeros


def test_export_pruned_nonuniform_in_train_mode(tmp_path, dev_rows):
    """Export from a model left in train mode: the graph must be the eval graph (no dropout) and the mode restored."""
    ds, collator = dev_rows
    model = pruned_tiny_bert().train()
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    path = export_onnx(model, tmp_path / "pruned.onnx")
    assert model.training, "export must restore the model's train mode"
    sess = session(path)
    a, b = onnx_predict(sess, ds, collator), onnx_predict(sess, ds, collator)
    np.testing.assert_array_equal(a, b)  # deterministic: no dropout in the graph
    parity = check_parity(predict(model, ds, collator), a)
    assert parity.max_abs_diff < 1e-4 and parity.argmax_agreement == 1.0


def test_ort_fusions_on_pruned_shapes_keep_parity(tmp_path, dev_rows, caplog):
    ds, collator = dev_rows
    model = pruned_tiny_bert().eval()
    plain = export_onnx(model, tmp_path / "pruned.onnx")
    with caplog.at_level(logging.WARNING):
        stats = optimize_onnx(plain, tmp_path / "pruned_opt.onnx")
    assert not [r for r in caplog.records if "hidden size" in r.getMessage()]  # pruned widths are meant to differ
    assert stats == {"EmbedLayerNormalization": 1, "Attention": 2, "BiasGelu": 2}  # what it added, not what was there
    ops = [n.op_type for n in onnx.load(str(tmp_path / "pruned_opt.onnx")).graph.node]
    assert ops.count("LayerNormalization") == 4  # kept, not fused into SkipLayerNormalization
    assert "SkipLayerNormalization" not in stats  # slow CPU kernel (compress.export.SLOW_FUSIONS)
    check_parity(predict(model, ds, collator), onnx_predict(session(tmp_path / "pruned_opt.onnx"), ds, collator))


def _ops(path) -> set:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_sessions_run_without_the_slow_fusion_peers_with_stock_settings(tmp_path):
    model = pruned_tiny_bert().eval()
    fused = tmp_path / "m_opt.onnx"
    optimize_onnx(export_onnx(model, tmp_path / "m.onnx"), fused)
    session(fused, threads=1, save_optimized=tmp_path / "ours.onnx")
    session(fused, threads=1, stock=True, save_optimized=tmp_path / "stock.onnx")
    assert "SkipLayerNormalization" not in _ops(tmp_path / "ours.onnx")
    assert "LayerNormalization" in _ops(tmp_path / "ours.onnx")
    assert "SkipLayerNormalization" in _ops(tmp_path / "stock.onnx")  # what ORT does by default


def test_parity_failure_reports_numbers():
    ref = np.array([[0.0, 1.0], [2.0, 0.0], [0.1, 0.2]], dtype=np.float32)
    bad = ref.copy()
    bad[2] = [0.3, 0.2]  # argmax flips, |d| = 0.2
    with pytest.raises(CompressError, match=r"max \|dlogit\| = 0\.2 \(tolerance 0\.001: quantize\.parity_atol\), "
                                            r"argmax agreement = 0\.6667 \(required 0\.999: "
                                            r"quantize\.parity_min_agreement\)"):  # the settings to loosen, named
        check_parity(ref, bad, atol=1e-3)
    with pytest.raises(CompressError, match="shape"):
        check_parity(ref, ref[:, :1])
    # each check on its own (the case above trips both): the tolerance is the tolerance ...
    assert check_parity(ref, ref + 0.0009, atol=1e-3).max_abs_diff == pytest.approx(0.0009, rel=1e-3)
    with pytest.raises(CompressError, match=r"max \|dlogit\| = 0\.0011 "):
        check_parity(ref, ref + 0.0011, atol=1e-3)
    # ... and a near tie flipped within it still fails on agreement
    tie = np.array([[0.5, 0.5004], [2.0, 0.0]], dtype=np.float32)
    flipped = tie.copy()
    flipped[0] = [0.5004, 0.5]
    with pytest.raises(CompressError, match=r"argmax agreement = 0\.5000"):
        check_parity(tie, flipped, atol=1e-3)
    assert check_parity(tie, flipped, atol=1e-3, min_agreement=0.5).argmax_agreement == 0.5
    with pytest.raises(CompressError, match="nan"):  # a NaN output fails whatever the tolerance (regression: no argmax)
        check_parity(ref[:, :1], ref[:, :1] * np.nan, atol=np.inf)


def test_missing_and_corrupt_onnx_files(tmp_path):
    with pytest.raises(CompressError, match="ONNX file not found"):
        session(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    with pytest.raises(CompressError, match="corrupt.onnx: not a loadable ONNX model"):
        session(corrupt)


def test_a_small_vocabulary_model_exports_and_its_fixed_inputs_fit(tmp_path, tokenizer):
    """A model whose vocabulary has fewer than 2000 tokens (a domain BPE tokenizer) failed its ONNX export, and then
    the bench's FLOP count and fixed-shape inputs, with 'index out of range' (random example ids were 1000-20000)."""
    from compress.bench import fixed_inputs, forward_flops

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=300))
    path = export_onnx(model, tmp_path / "m.onnx")
    feeds = fixed_inputs(["input_ids", "attention_mask", "token_type_ids"], 2, 16, vocab_size=300)
    assert feeds["input_ids"].max() < 300
    assert session(path).run(["logits"], feeds)[0].shape == (2, 2)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")  # load_trained reads one; forward_flops does not use it
    assert forward_flops(str(tmp_path / "model"), [(1, 16)])["b1xs16"] > 0
    assert fixed_inputs(["input_ids"], 1, 8)["input_ids"].max() >= 1000  # unknown vocabulary: as before


def test_export_traces_with_inputs_on_the_models_device():
    """A model trained on a GPU is exported where it is: the tracing inputs follow its weights' device (they were
    built on the CPU: "Expected all tensors to be on the same device"). The meta device stands in for a GPU here."""
    from compress.export import example_inputs

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    on_cpu = example_inputs(model)
    assert set(on_cpu) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(t.device.type == "cpu" and t.shape == (2, 8) for t in on_cpu.values())
    assert on_cpu["attention_mask"][1, 6:].sum() == 0 and on_cpu["attention_mask"][0].all()
    moved = example_inputs(model.to("meta"))
    assert all(t.device.type == "meta" for t in moved.values())


def test_a_graph_the_optimizer_fuses_nothing_in_is_not_kept_as_fused(tmp_path, dev_rows):
    """The optimizer's statistics count the LayerNormalization nodes the export already has (opset 17): an MPNet with
    ReLU (no Attention or BiasGelu pattern) fused nothing, yet its copy was kept and recorded as the fused graph
    ({"LayerNormalization": 5}). Only what the optimizer added counts."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from compress.export import optimize_checked

    ds, collator = dev_rows
    torch.manual_seed(0)
    model = MPNetForSequenceClassification(MPNetConfig(
        vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=130, hidden_act="relu")).eval()
    plain = export_onnx(model, tmp_path / "mpnet.onnx")
    ref = onnx_predict(session(plain), ds, collator)
    assert optimize_checked(plain, tmp_path / "mpnet_opt.onnx", "mpnet", ref, ds, collator) == ({}, None)
    assert not (tmp_path / "mpnet_opt.onnx").exists()


def test_a_model_of_one_token_type_takes_no_token_type_ids():
    """A BERT of one token type (RoBERTa-like, type_vocab_size 1) is exported without token_type_ids (its tokenizer
    gives none); two token types keep them."""
    from transformers import BertForSequenceClassification

    from compress.export import input_names

    one = BertForSequenceClassification(tiny_bert_config(type_vocab_size=1))
    assert input_names(one) == ("input_ids", "attention_mask")
    two = BertForSequenceClassification(tiny_bert_config(type_vocab_size=2))
    assert input_names(two) == ("input_ids", "attention_mask", "token_type_ids")


def test_the_exported_logits_have_a_dynamic_batch_axis(tmp_path):
    """The logits' batch axis is dynamic like the inputs' (the graph declared the tracing batch, 2, for its output)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    sess = session(export_onnx(model, tmp_path / "m.onnx"))
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    assert sess.get_outputs()[0].shape == ["batch", 2]


def test_a_failed_export_leaves_no_temporary_file_and_restores_the_mode(tmp_path, monkeypatch):
    """The exporter writes a temporary file beside the target, renamed onto it once complete: an exporter failing
    half-way leaves neither that file nor a target, and the model's train mode is restored."""
    from pathlib import Path

    def failing(model, args, f, **kwargs):
        Path(f).write_bytes(b"half a model")
        raise RuntimeError("exporter failed")

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).train()
    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == [] and model.training


def test_a_half_precision_model_is_exported_in_fp32(tmp_path):
    """A model held in fp16 is exported as fp32 (``model.float()``): fp32 inputs of the graph's weights, fp32 logits."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval().half()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert {t.data_type for t in onnx.load(str(path)).graph.initializer
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)} == {onnx.TensorProto.FLOAT}
    feeds = {"input_ids": np.array([[101, 2307, 102]]), "attention_mask": np.ones((1, 3), dtype=np.int64),
             "token_type_ids": np.zeros((1, 3), dtype=np.int64)}
    assert session(path).run(["logits"], feeds)[0].dtype == np.float32


def test_fused_if_exact_keeps_the_fused_copy_and_removes_the_plain_export(tmp_path, dev_rows):
    """Fusions matched and kept the logits: the fp32 reference is ``<stem>_fused.onnx`` and the plain export is gone."""
    from compress.export import fused_if_exact

    ds, collator = dev_rows
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(initializer_range=0.2)).eval()
    plain = export_onnx(model, tmp_path / "teacher.onnx")
    fused = fused_if_exact(plain, "bert", ds.select(range(16)), collator)
    assert fused == tmp_path / "teacher_fused.onnx" and "Attention" in _ops(fused)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher_fused.onnx"]


def test_the_ort_optimizers_modules_log_errors_only_under_both_their_names():
    """ORT's transformer optimizer imports its modules from its folder under bare names too ("fusion_attention") and
    warns for every pruned layer under them; both spellings are set to errors only (by folder, compared as strings:
    resolving ~4,000 module paths took 0.16 s of every optimization)."""
    import logging

    import onnxruntime.transformers.optimizer  # noqa: F401  (puts its folder on sys.path)
    import fusion_attention  # noqa: F401

    from compress.export import _quiet_ort_transformers

    for name in ("fusion_attention", "onnxruntime.transformers.optimizer"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    _quiet_ort_transformers()
    assert logging.getLogger("fusion_attention").level == logging.ERROR
    assert logging.getLogger("onnxruntime.transformers.optimizer").level == logging.ERROR
    assert logging.getLogger("compress.export").level != logging.ERROR
