"""Shared fixtures: the real GLUE folder, tiny random BERT models with the real MiniLM WordPiece tokenizer."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

GLUE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    assert (GLUE / "SST-2" / "train.tsv").is_file(), f"GLUE data not found at {GLUE}"
    return GLUE


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder from the offline zoo (verified by sha256)."""
    from teachers.zoo import resolve

    return Path(resolve("minilm-l6"))


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def tiny_bert_config(num_labels: int = 2, **overrides):
    from transformers import BertConfig

    kw = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=128, num_labels=num_labels)
    kw.update(overrides)
    return BertConfig(**kw)


@pytest.fixture
def tiny_bert_dir(tmp_path, tokenizer) -> Path:
    """A saved tiny random BERT sequence classifier (2 labels) with MiniLM's tokenizer."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    folder = tmp_path / "tiny-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export_int8(model, folder: Path) -> Path:
    """``model`` (a BERT classifier) exported to ``folder/fp32.onnx`` and quantized to ``folder/int8.onnx`` (dynamic,
    QInt8 weights) with onnxruntime, the plain way: batch and sequence dynamic."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ids = torch.ones(1, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():  # the tracer's notes on transformers' mask code (constants in the trace)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model.eval(), (ids, ids, torch.zeros_like(ids)), str(folder / "fp32.onnx"),
                          input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, opset_version=17, dynamo=False)
    quantize_dynamic(str(folder / "fp32.onnx"), str(folder / "int8.onnx"), weight_type=QuantType.QInt8)
    return folder / "int8.onnx"


def flip_first_onnx_scores(monkeypatch):
    """Make `compress.quantize`'s first ONNX scoring (the fp32 parity run) give half its rows the opposite argmax: an
    ONNX graph whose scores differ from torch's (on near-ties, in real runs). Returns the real function."""
    import compress.quantize as Q

    real, calls = Q.onnx_predict, []

    def flipped_first(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            out = out.copy()
            out[: len(out) // 2] *= -1
        return out

    monkeypatch.setattr(Q, "onnx_predict", flipped_first)
    return real


def unlabelled_mrpc(glue_dir: Path, folder: Path) -> Path:
    """``folder`` as GLUE's own MRPC download: the shared train/dev files and a test.tsv without labels (index, #1 ID,
    #2 ID, #1 String, #2 String; five rows)."""
    import shutil

    folder.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(glue_dir / "MRPC" / name, folder / name)
    lines = (glue_dir / "MRPC" / "test.tsv").read_text(encoding="utf-8-sig").splitlines()
    (folder / "test.tsv").write_text("\n".join("\t".join([str(i) if i else "index", *line.split("\t")[1:]])
                                               for i, line in enumerate(lines[:6])) + "\n", encoding="utf-8")
    return folder
