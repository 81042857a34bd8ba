"""Small measurements behind design choices in compress/ (each prints its numbers; one thread unless said).

    python scripts/bench_kernels.py skiplayernorm        # ORT SkipLayerNormalization vs Add + LayerNormalization
    python scripts/bench_kernels.py adamw                # one AdamW step, 17M-parameter student: loop/foreach/fused
    python scripts/bench_kernels.py graphs QUANTIZE_DIR  # int8 of the fused vs the plain graph, dev rows, batch 1
    python scripts/bench_kernels.py hidden-rms           # hidden-state RMS per layer, MPNet-base vs MiniLM-L6 (zoo)
    python scripts/bench_kernels.py int8 QUANTIZE_DIR... # each dir's int8 models vs its fp32 export: SST-2 dev
                                                         # accuracy, probability error, p50 latency (1, 2 threads)
    python scripts/bench_kernels.py tables QUANTIZE_DIR  # its int8 dynamic model's embedding tables as fp32, int8
                                                         # rows, int4 blocks (all tables / word only, scales plain or
                                                         # searched): |logit - fp32 logit| on SST-2 dev, file size
    python scripts/bench_kernels.py nbits QUANTIZE_DIR   # its int8 dynamic model vs int4 matmul weights (MatMulNBits):
                                                         # SST-2 dev accuracy, file size, p50 latency (1, 2 threads)

Why: compress.export leaves out SkipLayerNormalization (slow CPU kernel); compress.train uses fused AdamW;
quantize.optimize defaults to the fused graph; docs/distill.md rules out loss scale as the cause of cross-family
intermediate matches hurting; int8 measures quantize.reduce_range (run the quantize stage twice, once with
``--set quantize.reduce_range=true`` in a copy of the run folder, then compare the two quantize folders).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _per_call_us(fn, n: int, warmup: int = 50) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def skiplayernorm() -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h

    hidden = 384
    for batch, seq in ((1, 25), (1, 128), (8, 128)):
        x = np.random.rand(batch, seq, hidden).astype(np.float32)
        y = np.random.rand(batch, seq, hidden).astype(np.float32)
        inits = [onnx.numpy_helper.from_array(np.random.rand(hidden).astype(np.float32), n) for n in ("g", "b")]
        graphs = {
            "SkipLayerNormalization": [h.make_node("SkipLayerNormalization", ["x", "y", "g", "b"], ["o"],
                                                   domain="com.microsoft", epsilon=1e-12)],
            "Add + LayerNormalization": [h.make_node("Add", ["x", "y"], ["s"]),
                                         h.make_node("LayerNormalization", ["s", "g", "b"], ["o"], axis=-1,
                                                     epsilon=1e-12)]}
        row = []
        for name, nodes in graphs.items():
            ins = [h.make_tensor_value_info(n, T.FLOAT, [batch, seq, hidden]) for n in ("x", "y")]
            model = h.make_model(h.make_graph(nodes, "g", ins, [h.make_tensor_value_info("o", T.FLOAT, None)], inits),
                                 opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # no re-fusion
            sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            row.append(f"{name} {_per_call_us(lambda: sess.run(None, {'x': x, 'y': y}), 1000):8.1f} us")
        print(f"{batch} x {seq} x {hidden}: " + "  |  ".join(row) + "  (per session.run)")


def adamw() -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
                                                     intermediate_size=1536))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    print(f"{sum(p.numel() for p in params) / 1e6:.1f}M parameters, {torch.get_num_threads()} threads")
    for name, kw in (("default (per-tensor loop)", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        print(f"  {name:26s} {_per_call_us(opt.step, 20, warmup=3) / 1000:6.1f} ms per step")


def _round_robin_p50(files: dict[str, Path], feeds: dict[str, list[dict]]) -> None:
    """Print each model's p50 at 1 and 2 threads over its feeds (``feeds[name]``: the same texts for every model,
    each tokenized for it), the models taking turns on every text."""
    from compress.export import session

    for threads in (1, 2):
        sessions = {k: session(p, threads=threads, spin=False) for k, p in files.items()}
        times = {k: [] for k in sessions}
        for i in range(min(len(f) for f in feeds.values())):
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feeds[k][i])
                times[k].append(time.perf_counter() - t0)
        print(f"{threads} thread(s): " + "  |  ".join(f"{k} p50 {np.median(v) * 1e3:.3f} ms" for k, v in times.items()))


def graphs(qdir: Path) -> None:
    """Plain exported graph vs the fused graph, each int8 dynamic, timed round-robin on SST-2 dev rows, batch 1."""
    from transformers import AutoTokenizer

    from compress.bench import dev_feeds
    from compress.config import QuantizeConfig, TaskConfig
    from compress.data import load_task, tokenize
    from compress.export import optimize_onnx, session
    from compress.quantize import quantize_dynamic

    import tempfile

    dev = tokenize(load_task(TaskConfig(name="sst2"), seed=0).dev, AutoTokenizer.from_pretrained(qdir / "tokenizer"),
                   128)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        optimize_onnx(qdir / "model.onnx", tmp / "fused.onnx")
        files = {"int8 of the plain graph": quantize_dynamic(qdir / "model.onnx", tmp / "plain_int8.onnx",
                                                             QuantizeConfig()),
                 "int8 of the fused graph": quantize_dynamic(tmp / "fused.onnx", tmp / "fused_int8.onnx",
                                                             QuantizeConfig())}
        names = [i.name for i in session(files["int8 of the plain graph"]).get_inputs()]
        shared = dev_feeds(dev.select(range(200)), names)
        _round_robin_p50(files, {k: shared for k in files})


def _probabilities(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _versus_fp32(name: str, path: Path, ref: np.ndarray, dev, collator, labels: np.ndarray) -> None:
    """Print one model's dev accuracy (one text at a time), its argmax agreement with ``ref`` (fp32 probabilities)
    and its largest and mean |p - p_fp32| of the predicted probabilities, and its file size."""
    from compress.export import onnx_predict, session

    p = _probabilities(onnx_predict(session(path), dev, collator, 1))
    err = np.abs(p - ref).max(1)
    print(f"  {name}: accuracy {100 * np.mean(p.argmax(1) == labels):.2f}, same argmax as fp32 "
          f"{100 * np.mean(p.argmax(1) == ref.argmax(1)):.2f}%, |p - p_fp32| max {err.max():.4f} mean "
          f"{err.mean():.4f}, {path.stat().st_size / 1e6:.2f} MB")


def int8(qdirs: list[Path], rows: int = 200) -> None:
    """Every int8_*.onnx of each quantize folder against that folder's fp32 export (model.onnx), SST-2 dev one text at
    a time (as bundles run): accuracy, argmax agreement with fp32, largest and mean |p - p_fp32| of the predicted
    probabilities; then p50 latency on ``rows`` dev texts, every model timed round-robin (so load drifts hit all)."""
    from transformers import AutoTokenizer

    from compress.bench import dev_feeds
    from compress.config import TaskConfig
    from compress.data import Collator, load_task, tokenize
    from compress.export import onnx_predict, session

    data = load_task(TaskConfig(name="sst2"), seed=0)
    labels = np.asarray(data.dev["label"])

    files, feeds = {}, {}
    for qdir in qdirs:
        tok = AutoTokenizer.from_pretrained(qdir / "tokenizer")
        dev = tokenize(data.dev, tok, 128)
        collator = Collator({"": tok})
        ref = _probabilities(onnx_predict(session(qdir / "model.onnx"), dev, collator, 1))
        print(f"{qdir}: fp32 accuracy {100 * np.mean(ref.argmax(1) == labels):.2f}")
        for path in sorted(qdir.glob("int8_*.onnx")):
            _versus_fp32(path.name, path, ref, dev, collator, labels)
            files[f"{qdir}/{path.name}"] = path
            names = [i.name for i in session(path).get_inputs()]
            feeds[f"{qdir}/{path.name}"] = dev_feeds(dev.select(range(rows)), names)
    _round_robin_p50(files, feeds)


def tables(qdir: Path) -> None:
    """The int8 dynamic model of a quantize folder rebuilt with every embedding lookup fp32 (beside the nodes its
    guard kept fp32), then its tables stored each way `compress.embed_rows` can: mean and largest |logit - fp32
    logit| over SST-2 dev one text at a time (fp32: the folder's fused model_opt.onnx), accuracy, file size. Behind
    `embed_rows.INT4_MIN_ROWS` and `int4_blocks`' scale search."""
    import json
    import tempfile

    from transformers import AutoTokenizer

    from compress import embed_rows
    from compress.config import QuantizeConfig, TaskConfig
    from compress.data import Collator, load_task, tokenize
    from compress.export import onnx_predict, session
    from compress.quantize import lookup_nodes, quantize_dynamic, row_tables

    record = json.loads((qdir / "quantize.json").read_text())
    src = qdir / record["int8"]["dynamic"]["source"]
    lookups = lookup_nodes(src)
    data = load_task(TaskConfig(name="sst2"), seed=0)
    labels = np.asarray(data.dev["label"])
    tok = AutoTokenizer.from_pretrained(qdir / "tokenizer")
    dev, collator = tokenize(data.dev, tok, 128), Collator({"": tok})
    ref = onnx_predict(session(src), dev, collator, 1)

    def plain(w: np.ndarray, block: int = embed_rows.BLOCK):  # each block's largest |value| / 7, no search
        rows, width = w.shape
        blocks = w.reshape(rows, width // block, block)
        scale = np.abs(blocks).max(axis=2) / 7
        scale[scale == 0] = 1
        q = (np.clip(np.rint(blocks / scale[..., None]), -8, 7).astype(np.int16) + 8).reshape(rows, width)
        return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8), scale.astype(np.float32)

    searched, min_rows = embed_rows.int4_blocks, embed_rows.INT4_MIN_ROWS
    with tempfile.TemporaryDirectory() as tmp:
        kept = quantize_dynamic(src, Path(tmp) / "kept.onnx", QuantizeConfig(),
                                exclude=sorted(set(record["int8"]["dynamic"]["excluded_nodes"]) | set(lookups)))
        variants = {"fp32 tables": kept}
        for name, bits, blocks, rows in (("int8 rows", 8, searched, min_rows),
                                         ("int4 every table, plain scales", 4, plain, 0),
                                         ("int4 word table, plain scales", 4, plain, min_rows),
                                         ("int4 word table, searched scales", 4, searched, min_rows)):
            embed_rows.int4_blocks, embed_rows.INT4_MIN_ROWS = blocks, rows
            path = Path(tmp) / f"{len(variants)}.onnx"
            try:
                if row_tables(kept, path, lookups, bits):  # no table to store: nothing written
                    variants[name] = path
            finally:
                embed_rows.int4_blocks, embed_rows.INT4_MIN_ROWS = searched, min_rows
        print(f"{qdir}: int8 dynamic, {len(lookups)} lookups; |logit - fp32 logit| on {len(labels)} dev texts")
        for name, path in variants.items():
            logits = onnx_predict(session(path), dev, collator, 1)
            diff = np.abs(logits - ref)
            print(f"  {name:34s} mean {diff.mean():.4f} max {diff.max():.3f}  accuracy "
                  f"{100 * np.mean(logits.argmax(1) == labels):.2f}  {path.stat().st_size / 1e6:.2f} MB")


def nbits(qdir: Path, rows: int = 200) -> None:
    """A quantize folder's int8 dynamic model against int4 matmul weights (onnxruntime's MatMulNBits: blocks of 32
    values along the input dimension, symmetric, one fp32 scale each; ``accuracy_level`` 4: activations int8 inside
    the kernel, which VNNI runs) on the same fp32 graphs: the fused graph (its Attention nodes' weights stay fp32,
    MatMulNBits takes MatMuls only), that graph's int4 model then int8 dynamic for the rest (QAttention), and the
    plain export (every linear layer int4). SST-2 dev one text at a time against the fused fp32 graph; p50 at 1 and
    2 threads on ``rows`` dev texts, round-robin. Why ``quantize`` has no int4 matmul mode."""
    import json
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from transformers import AutoTokenizer

    from compress.bench import dev_feeds
    from compress.config import QuantizeConfig, TaskConfig
    from compress.data import Collator, load_task, tokenize
    from compress.export import onnx_predict, session
    from compress.quantize import quantize_dynamic

    logging.disable(logging.INFO)  # the quantizers' line per node
    record = json.loads((qdir / "quantize.json").read_text())["int8"]["dynamic"]
    fused = qdir / record["source"]
    data = load_task(TaskConfig(name="sst2"), seed=0)
    labels = np.asarray(data.dev["label"])
    tok = AutoTokenizer.from_pretrained(qdir / "tokenizer")
    dev, collator = tokenize(data.dev, tok, 128), Collator({"": tok})
    ref = _probabilities(onnx_predict(session(fused), dev, collator, 1))
    print(f"{qdir}: fp32 ({fused.name}) accuracy {100 * np.mean(ref.argmax(1) == labels):.2f}, "
          f"{fused.stat().st_size / 1e6:.2f} MB")

    def int4(src: Path, dst: Path) -> Path:
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
        return dst

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"int8 dynamic (the folder's)": qdir / record["file"],
                 "int4 matmuls, fused graph": int4(fused, tmp / "fused_int4.onnx"),
                 "int4 plain export": int4(qdir / "model.onnx", tmp / "plain_int4.onnx")}
        files["int4 matmuls + int8 dynamic rest"] = quantize_dynamic(files["int4 matmuls, fused graph"],
                                                                     tmp / "mixed.onnx", QuantizeConfig())
        for name, path in files.items():
            _versus_fp32(name, path, ref, dev, collator, labels)
        names = [i.name for i in session(fused).get_inputs()]
        shared = dev_feeds(dev.select(range(rows)), names)
        _round_robin_p50(files, {k: shared for k in files})


def hidden_rms() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from teachers.zoo import resolve

    sentences = ["a gripping , funny film that never lets up .", "the plot is thin and the acting worse .",
                 "it 's a charming and often affecting journey ."]
    for name in ("mpnet-base", "minilm-l6"):
        path = resolve(name)
        tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        batch = tok(sentences, padding=True, return_tensors="pt")
        with torch.no_grad():
            states = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].bool()
        print(f"{name}: RMS per layer (0 = embeddings) "
              + " ".join(f"{float(s[mask].pow(2).mean().sqrt()):.2f}" for s in states))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["skiplayernorm", "adamw", "graphs", "hidden-rms", "int8", "tables", "nbits"])
    ap.add_argument("quantize_dir", nargs="*", default=["runs/quickstart/quantize"],
                    help="graphs, int8, tables, nbits: quantize stage folders (model.onnx + tokenizer/; all but "
                         "int8 read the first)")
    args = ap.parse_args()
    {"skiplayernorm": skiplayernorm, "adamw": adamw, "hidden-rms": hidden_rms,
     "graphs": lambda: graphs(Path(args.quantize_dir[0])),
     "int8": lambda: int8([Path(d) for d in args.quantize_dir]),
     "tables": lambda: tables(Path(args.quantize_dir[0])),
     "nbits": lambda: nbits(Path(args.quantize_dir[0]))}[args.what]()


if __name__ == "__main__":
    main()
